//! The hub's state, behind methods: what every task of the hub reads (settings, pool, metrics),
//! the open subscribers and the interest index, the hand-offs to the writer and the dispatcher,
//! the position of the fan-out and the stop flag. Its fields are private to this file; the
//! other files of `events/` say what they do through the methods below.
//!
//! Hot paths (the dispatcher's fan-out, a sender's loop, the writer's batch loop) only use the
//! accessors that return a reference or load an atomic: no lock or clone is added for them.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, RwLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Instant,
};

use sqlx::PgPool;
use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
};

use super::{
    Refused,
    dispatch::Dispatch,
    index::{Index, View},
    limits::Users,
    subscriber::{Subscriber, SubscriberAuth},
    writer::Pending,
};
use crate::{
    auth::{Auth, Principal},
    error::ApiError,
    metrics::Metrics,
    settings::EventSettings,
};

pub struct Shared {
    pool: PgPool,
    auth: Auth,
    settings: EventSettings,
    metrics: Metrics,
    /// Tags this instance's NOTIFYs, so its listener can skip them.
    instance: String,
    /// channel -> subscribers.
    index: Index,
    /// The open subscribers (sockets and event streams).
    subscribers: Mutex<Subscribers>,
    /// Rings when the last subscriber left.
    all_left: Notify,
    /// Per-user limits: open subscribers and the message bucket.
    users: Users,
    /// Hands messages to the writer; `None` once the hub stops.
    writer: RwLock<Option<mpsc::UnboundedSender<Pending>>>,
    dispatch: mpsc::UnboundedSender<Dispatch>,
    /// The highest id the dispatcher has published.
    last_published: AtomicI64,
    stopping: AtomicBool,
    tasks: Mutex<Tasks>,
    /// The clock of `Subscriber::last_seen`.
    clock: Instant,
}

/// The hub stops and takes no more messages.
#[derive(Debug)]
pub struct Stopping;

/// The open subscribers, by id, and the next id to give.
struct Subscribers {
    by_id: HashMap<u64, Arc<Subscriber>>,
    next_id: u64,
}

/// The hub's tasks, kept for the shutdown.
#[derive(Default)]
pub struct Tasks {
    pub writer: Option<JoinHandle<()>>,
    pub dispatcher: Option<JoinHandle<()>>,
    pub background: Vec<JoinHandle<()>>,
}

/// What the tasks started with the hub read their work from.
pub struct Receivers {
    pub writer: mpsc::UnboundedReceiver<Pending>,
    pub dispatch: mpsc::UnboundedReceiver<Dispatch>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (plain inserts and takes).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// The state of a hub whose dispatcher starts at `head` (the last stored id).
    pub fn new(
        pool: PgPool,
        auth: Auth,
        settings: EventSettings,
        metrics: Metrics,
        head: i64,
    ) -> (Arc<Self>, Receivers) {
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let (dispatch_tx, dispatch_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Self {
            pool,
            auth,
            settings,
            metrics,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            index: Index::default(),
            subscribers: Mutex::new(Subscribers {
                by_id: HashMap::new(),
                next_id: 1,
            }),
            all_left: Notify::new(),
            users: Users::default(),
            writer: RwLock::new(Some(writer_tx)),
            dispatch: dispatch_tx,
            last_published: AtomicI64::new(head),
            stopping: AtomicBool::new(false),
            tasks: Mutex::default(),
            clock: Instant::now(),
        });
        let receivers = Receivers {
            writer: writer_rx,
            dispatch: dispatch_rx,
        };
        (shared, receivers)
    }

    #[inline]
    pub fn settings(&self) -> &EventSettings {
        &self.settings
    }

    #[inline]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    #[inline]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    #[inline]
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// This instance's tag on the NOTIFYs of its batches.
    #[inline]
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Milliseconds since the hub started (the clock of `Subscriber::seen`).
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// The highest id the dispatcher has published.
    #[inline]
    pub fn last_published(&self) -> i64 {
        self.last_published.load(Ordering::SeqCst)
    }

    /// For the dispatcher, after a round of publishing up to `id`.
    #[inline]
    pub fn set_last_published(&self, id: i64) {
        self.last_published.store(id, Ordering::SeqCst);
    }

    /// A read view of the interest index for one round of publishing.
    #[inline]
    pub fn index(&self) -> View<'_> {
        self.index.view()
    }

    /// Moves `sub` from the `old` channels to the `new` ones in the index.
    pub fn set_index(&self, sub: &Arc<Subscriber>, old: &[String], new: &[String]) {
        let left: Vec<String> = old.iter().filter(|c| !new.contains(c)).cloned().collect();
        let joined: Vec<String> = new.iter().filter(|c| !old.contains(c)).cloned().collect();
        sub.track_channels(&left, &joined);
        self.index.move_subscriber(sub, &left, &joined);
        let delta = new.len() as i64 - old.len() as i64;
        self.metrics
            .subscriptions
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// Sends the dispatcher work (ignored once it stopped).
    #[inline]
    pub fn dispatch(&self, work: Dispatch) {
        let _ = self.dispatch.send(work);
    }

    /// Hands a message to the writer; `Err` when the hub is stopping.
    pub fn submit(&self, pending: Pending) -> Result<(), Stopping> {
        match self
            .writer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(tx) => tx.send(pending).map_err(|_| Stopping),
            None => Err(Stopping),
        }
    }

    #[inline]
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Marks the hub stopping and closes the writer's intake (it commits what it has, then
    /// ends); false when the hub was stopping already.
    pub fn stop_taking_messages(&self) -> bool {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.writer
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        true
    }

    /// Takes a message token from `user`'s bucket (shared with their sockets and streams); false when the
    /// user is over the message rate.
    pub fn try_send_as(&self, user: &str) -> bool {
        let s = &self.settings;
        self.users
            .share(user, s.burst)
            .try_send(s.messages_per_second, s.burst)
    }

    /// Forgets users without subscribers whose bucket has refilled.
    pub fn purge_idle_users(&self) {
        let s = &self.settings;
        self.users.purge(s.messages_per_second, s.burst);
    }

    /// Keeps the hub's tasks for [`Self::take_tasks`].
    pub fn keep_tasks(&self, tasks: Tasks) {
        *lock(&self.tasks) = tasks;
    }

    pub fn take_tasks(&self) -> Tasks {
        std::mem::take(&mut *lock(&self.tasks))
    }

    /// Admits a subscriber for `principal`: refused when the hub is stopping, the instance has
    /// `max_connections` subscribers open (503), or the user `max_connections_per_user` (429).
    pub fn admit(&self, principal: Principal, token: &str) -> Result<Arc<Subscriber>, Refused> {
        if self.is_stopping() {
            return Err(Refused::Busy("the server is shutting down".into()));
        }
        let s = &self.settings;
        // Held while counting and inserting, so concurrent upgrades cannot overshoot the cap.
        let mut subs = lock(&self.subscribers);
        if subs.by_id.len() >= s.max_connections {
            return Err(Refused::Busy(format!(
                "this server has the most event connections it accepts ({}) open; try again later or another instance",
                s.max_connections
            )));
        }
        let Some(user) = self
            .users
            .admit(&principal.id, s.max_connections_per_user, s.burst)
        else {
            return Err(Refused::Api(ApiError::TooManyRequests {
                message: format!(
                    "too many open event connections for this user (limit {})",
                    s.max_connections_per_user
                ),
                retry_after: 5,
            }));
        };
        let id = subs.next_id;
        subs.next_id += 1;
        let sub = Arc::new(Subscriber::new(
            id,
            principal.id,
            user,
            SubscriberAuth {
                token: token.into(),
                name: principal.name,
                perms: Arc::new(principal.perms),
                exp: principal.claims.exp,
                channels: Vec::new(),
            },
            s.outbound_queue,
            s.max_unacked,
            self.last_published(),
            self.now_ms(),
        ));
        subs.by_id.insert(id, sub.clone());
        drop(subs);
        self.metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        Ok(sub)
    }

    /// Takes a subscriber out of the hub (its socket or stream ended).
    pub fn leave(&self, sub: &Arc<Subscriber>) {
        sub.mark_closed();
        let channels = sub.with_auth(|a| std::mem::take(&mut a.channels));
        self.set_index(sub, &channels, &[]);
        let all_left = {
            let mut subs = lock(&self.subscribers);
            subs.by_id.remove(&sub.id);
            subs.by_id.is_empty()
        };
        Users::release(&sub.user);
        self.metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        if all_left {
            self.all_left.notify_waiters();
        }
    }

    /// A snapshot of the open subscribers.
    pub fn subscribers(&self) -> Vec<Arc<Subscriber>> {
        lock(&self.subscribers).by_id.values().cloned().collect()
    }

    /// Waits until every subscriber left the hub.
    pub async fn all_left(&self) {
        loop {
            let notified = self.all_left.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.subscribers).by_id.is_empty() {
                return;
            }
            notified.await;
        }
    }
}
