//! The event hub: interest index, fan-out, the batched writer and the cross-instance listener.
//!
//! ```text
//! socket reader / POST /event ──Pending──▶ writer (group commit, one NOTIFY per batch) ──ack──▶ reply slot
//!                                  │ committed batch
//!                                  ▼
//! LISTEN core4_events ──────▶ dispatcher (strictly in id order, once each) ──frame──▶ subscriber queues
//! poll (epoch, head) ───────▶ re-check principals, expire tokens, catch-up hint
//! keepalive ────────────────▶ one task pings every subscriber, closes the silent ones
//! ```
//! A subscriber ([`conn::Conn`]) does not depend on its transport: its queue is drained by a
//! sender that writes WebSocket frames (`session`) or Server-Sent Events (`sse`). "Writer" is
//! only the group commit (`writer`). Ids are gapless and commit in order (see
//! `migrations/0002_events.sql`), so the dispatcher only keeps the last id it published:
//! anything it has not seen is read from the table by id range.

mod conn;
mod dispatch;
mod index;
mod limits;
pub mod protocol;
mod recheck;
pub mod retention;
mod session;
mod sse;
mod writer;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use poem::Upgraded;
use sqlx::PgPool;
use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
};
use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::WebSocketConfig};

pub use self::writer::Stored;
use self::{
    conn::{Conn, ConnAuth, Sent},
    dispatch::Dispatch,
    limits::Users,
    writer::{Pending, ReplyTo},
};
use crate::{
    auth::{Auth, Principal},
    domain::{Channel, PermissionSet},
    error::{ApiError, ApiResult},
    metrics::Metrics,
    settings::EventSettings,
    storage,
};

/// Close codes the server uses (defined with the frames in core4-proto).
pub use core4_proto::close;

/// Replayed rows read per query.
const REPLAY_PAGE: i64 = 500;

/// Bytes the WebSocket reader keeps per socket (idle sockets must stay small).
const READ_BUFFER: usize = 1024;

#[derive(Clone)]
pub struct Hub {
    inner: Option<Arc<Shared>>,
}

pub(crate) struct Shared {
    pool: PgPool,
    auth: Auth,
    settings: EventSettings,
    metrics: Metrics,
    /// Tags this instance's NOTIFYs, so its listener can skip them.
    instance: String,
    /// channel -> sockets interested in it.
    /// channel -> subscribers.
    index: index::Index,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    users: Users,
    writer: RwLock<Option<mpsc::UnboundedSender<Pending>>>,
    dispatch: mpsc::UnboundedSender<Dispatch>,
    /// The highest id the dispatcher has published.
    last_published: AtomicI64,
    next_conn: AtomicU64,
    stopping: AtomicBool,
    sessions: AtomicUsize,
    sessions_done: Notify,
    tasks: Mutex<Tasks>,
    /// The clock of `Conn::last_seen`.
    clock: Instant,
}

#[derive(Default)]
struct Tasks {
    writer: Option<JoinHandle<()>>,
    dispatcher: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// Starts the writer, the dispatcher, the listener and the re-check poll on `pool`.
    pub async fn start(
        pool: PgPool,
        auth: Auth,
        settings: EventSettings,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let head = storage::events::head(&pool).await?;
        let (epoch, _) = storage::events::poll_state(&pool).await?;
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let (dispatch_tx, dispatch_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Shared {
            pool,
            auth,
            settings,
            metrics,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            index: index::Index::default(),
            conns: Mutex::default(),
            users: Users::default(),
            writer: RwLock::new(Some(writer_tx)),
            dispatch: dispatch_tx,
            last_published: AtomicI64::new(head),
            next_conn: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            sessions: AtomicUsize::new(0),
            sessions_done: Notify::new(),
            tasks: Mutex::default(),
            clock: Instant::now(),
        });
        let writer = tokio::spawn(writer::run(inner.clone(), writer_rx));
        let dispatcher = tokio::spawn(dispatch::run(inner.clone(), dispatch_rx, head));
        let listener = tokio::spawn(dispatch::listen(inner.clone()));
        let recheck = tokio::spawn(recheck::run(inner.clone(), epoch));
        let keepalive = tokio::spawn(keepalive(inner.clone()));
        let retention = tokio::spawn(retention::run(
            inner.pool.clone(),
            inner.settings.retention.clone(),
            Duration::from_secs(inner.settings.retention_interval_secs.max(1)),
        ));
        *lock(&inner.tasks) = Tasks {
            writer: Some(writer),
            dispatcher: Some(dispatcher),
            background: vec![listener, recheck, keepalive, retention],
        };
        Ok(Self { inner: Some(inner) })
    }

    /// A hub that is never started (for printing the spec without a database).
    pub fn offline() -> Self {
        Self { inner: None }
    }

    fn inner(&self) -> ApiResult<&Arc<Shared>> {
        self.inner
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("the event hub is not running".into()))
    }

    pub fn settings(&self) -> Option<&EventSettings> {
        self.inner.as_ref().map(|i| &i.settings)
    }

    /// Admits a socket for `principal` before the upgrade: refused when the hub is stopping, the
    /// instance has `max_connections` sockets open (503), or the user `max_connections_per_user`
    /// (429).
    pub fn admit(&self, principal: Principal, token: &str) -> Result<Admission, Refused> {
        let inner = self.inner()?;
        if inner.stopping.load(Ordering::SeqCst) {
            return Err(Refused::Busy("the server is shutting down".into()));
        }
        let s = &inner.settings;
        // Held while counting and inserting, so concurrent upgrades cannot overshoot the cap.
        let mut conns = lock(&inner.conns);
        if conns.len() >= s.max_connections {
            return Err(Refused::Busy(format!(
                "this server has the most event connections it accepts ({}) open; try again later or another instance",
                s.max_connections
            )));
        }
        let Some(user) = inner
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
        let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(
            id,
            principal.id,
            user,
            ConnAuth {
                token: token.into(),
                name: principal.name,
                perms: Arc::new(principal.perms),
                exp: principal.claims.exp,
                channels: Vec::new(),
            },
            s.outbound_queue,
            s.max_unacked,
            inner.last_published.load(Ordering::SeqCst),
            inner.now_ms(),
        ));
        conns.insert(id, conn.clone());
        drop(conns);
        inner
            .metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        inner.sessions.fetch_add(1, Ordering::SeqCst);
        Ok(Admission {
            inner: inner.clone(),
            conn,
        })
    }

    /// Publishes one message for an HTTP caller and waits for its commit: the socket's checks
    /// (channel name, write permission, the user's message rate) and error phrases, as an
    /// [`ApiError`]. With a `key`, a message stored before under the same (author, key) is acked
    /// as a duplicate instead of being stored again.
    pub async fn publish(
        &self,
        principal: &Principal,
        raw_channel: &str,
        data: String,
        key: Option<String>,
    ) -> ApiResult<Stored> {
        let inner = self.inner()?;
        let s = &inner.settings;
        if data.len() > s.max_frame_bytes {
            return Err(ApiError::PayloadTooLarge(format!(
                "message too large: {} bytes of `text` (limit {})",
                data.len(),
                s.max_frame_bytes
            )));
        }
        let channel = Channel::parse(raw_channel)
            .map_err(|e| ApiError::BadRequest(format!("malformed message: {e}")))?
            .as_str()
            .to_string();
        if !principal.perms.event(&channel, true) {
            return Err(ApiError::Forbidden(format!(
                "no write permission on channel [{channel}]"
            )));
        }
        if !inner
            .users
            .share(&principal.id, s.burst)
            .try_send(s.messages_per_second, s.burst)
        {
            inner.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "rate limit exceeded: at most {} messages per second per user (burst {}); message not stored",
                    s.messages_per_second, s.burst
                ),
                retry_after: 1,
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pending = Pending {
            channel,
            author: principal.name.clone(),
            data,
            key,
            reply: ReplyTo::Caller(tx),
        };
        let shutting_down = || ApiError::Busy {
            message: "the server is shutting down; message not stored".into(),
            retry_after: 5,
        };
        if inner.stopping.load(Ordering::SeqCst) || inner.submit(pending).is_err() {
            return Err(shutting_down());
        }
        match rx.await {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err((protocol::ErrorKind::Internal, _))) => Err(ApiError::internal(
                anyhow::anyhow!("storing a message failed"),
            )),
            Ok(Err((_, message))) => Err(ApiError::Unavailable(message)),
            Err(_) => Err(shutting_down()),
        }
    }

    /// The WebSocket settings of event sockets: small buffers, a hard cap on frames far above the
    /// configured limit (frames between the two get an error frame, not a closed socket).
    pub fn websocket_config(&self) -> WebSocketConfig {
        let limit = self
            .settings()
            .map(|s| s.max_frame_bytes)
            .unwrap_or(64 * 1024);
        let hard = limit.saturating_mul(16).max(1 << 20);
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(16 * 1024)
            .max_message_size(Some(hard))
            .max_frame_size(Some(hard))
    }

    /// Stops accepting messages, flushes the writer (every acknowledged message is committed and
    /// published), then closes every socket with 1001 after what is queued for it.
    pub async fn shutdown(&self) {
        let Some(inner) = &self.inner else { return };
        if inner.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        write(&inner.writer).take();
        let (writer, dispatcher, background) = {
            let mut t = lock(&inner.tasks);
            (
                t.writer.take(),
                t.dispatcher.take(),
                std::mem::take(&mut t.background),
            )
        };
        let flush =
            Duration::from_millis(inner.settings.commit_timeout_ms) + Duration::from_secs(5);
        if let Some(w) = writer {
            let _ = tokio::time::timeout(flush, w).await;
        }
        let _ = inner.dispatch.send(Dispatch::Stop);
        if let Some(d) = dispatcher {
            let _ = tokio::time::timeout(flush, d).await;
        }
        for task in background {
            task.abort();
        }
        let conns: Vec<_> = lock(&inner.conns).values().cloned().collect();
        for conn in conns {
            conn.close(close::GOING_AWAY, "server shutting down");
        }
        let drained = async {
            loop {
                let done = inner.sessions_done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if inner.sessions.load(Ordering::SeqCst) == 0 {
                    return;
                }
                done.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .is_err()
        {
            tracing::warn!("event sockets did not close within 5 s");
        }
    }
}

/// Why a socket was not admitted.
#[derive(Debug)]
pub enum Refused {
    /// The instance is full or stopping: 503 with this message (the client should come back
    /// later or go to another instance).
    Busy(String),
    /// Any other refusal (429 for the per-user limit).
    Api(ApiError),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

/// Pings every open socket each `ping_interval_secs` (one task for all of them: idle sockets
/// get no timer of their own) and closes those that sent nothing, not even a pong, for two
/// intervals: 1001 `no pong`. Interval 0 turns this off.
async fn keepalive(inner: Arc<Shared>) {
    let secs = inner.settings.ping_interval_secs;
    if secs == 0 {
        return;
    }
    let period = Duration::from_secs(secs);
    let silence = 2 * period.as_millis() as u64;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        let now = inner.now_ms();
        let mut silent = 0usize;
        for conn in inner.conns() {
            if conn.is_closed() {
                continue;
            }
            if now.saturating_sub(conn.last_seen()) >= silence {
                conn.close(close::GOING_AWAY, close::NO_PONG);
                silent += 1;
            } else {
                conn.push_ping();
            }
        }
        if silent > 0 {
            tracing::debug!(silent, "closed event sockets that answered no ping");
        }
    }
}

/// A socket admitted before its upgrade; dropping it (socket ended or upgrade failed) removes it
/// from the hub.
pub struct Admission {
    inner: Arc<Shared>,
    conn: Arc<Conn>,
}

impl Admission {
    /// Serves the upgraded socket until it closes.
    pub async fn serve(self, ws: WebSocketStream<Upgraded>, since: Option<i64>) {
        session::run(self.inner.clone(), self.conn.clone(), ws, since).await;
        drop(self);
    }

    /// Subscribes to `channels` (replaying after `since`) and returns the Server-Sent Events
    /// stream; the subscriber leaves the hub when the stream is dropped.
    /// `keepalive`: the longest silence on the stream (a comment breaks it).
    pub async fn into_event_stream(
        self,
        channels: Vec<String>,
        since: Option<i64>,
        keepalive: Duration,
    ) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> + Send + 'static {
        sse::stream(self, channels, since, keepalive).await
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let inner = &self.inner;
        let conn = &self.conn;
        conn.mark_closed();
        let channels = conn.with_auth(|a| std::mem::take(&mut a.channels));
        inner.set_index(conn, &channels, &[]);
        lock(&inner.conns).remove(&conn.id);
        Users::release(&conn.user);
        inner
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        if inner.sessions.fetch_sub(1, Ordering::SeqCst) == 1 {
            inner.sessions_done.notify_waiters();
        }
    }
}

/// The hub stops and takes no more messages.
#[derive(Debug)]
pub(crate) struct Stopping;

/// The outcome of an interest request.
pub(crate) struct Granted {
    pub channels: Vec<String>,
    pub denied: Vec<(String, String)>,
    /// With a `since`: where the replay starts.
    pub since: Option<i64>,
    /// With a `since`: what the replay skips (see [`Conn::begin_hold`]).
    pub sent: Sent,
}

/// Normalises the requested names once (`Channel::parse`) and keeps those `perms` may read, up
/// to `max_channels`; the rest are left out with the reason. Linear in the names (the caller
/// bounds their number).
fn grant(perms: &PermissionSet, requested: &[String], max_channels: usize) -> Granted {
    let mut channels: Vec<String> = Vec::new();
    let mut denied: Vec<(String, String)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::with_capacity(requested.len());
    for raw in requested {
        if raw.trim().is_empty() {
            continue;
        }
        let ch = match Channel::parse(raw) {
            Ok(ch) => ch.as_str().to_string(),
            Err(e) => {
                let shown = protocol::clip(raw);
                if seen.insert(shown.clone()) {
                    denied.push((shown, e));
                }
                continue;
            }
        };
        if !seen.insert(ch.clone()) {
            continue;
        }
        if !perms.event(&ch, false) {
            denied.push((ch, "no read permission".into()));
        } else if channels.len() >= max_channels {
            denied.push((ch, format!("more than {max_channels} channels")));
        } else {
            channels.push(ch);
        }
    }
    Granted {
        channels,
        denied,
        since: None,
        sent: Sent::default(),
    }
}

impl Shared {
    /// Moves `conn` from the `old` channels to the `new` ones in the index.
    fn set_index(&self, conn: &Arc<Conn>, old: &[String], new: &[String]) {
        let left: Vec<String> = old.iter().filter(|c| !new.contains(c)).cloned().collect();
        let joined: Vec<String> = new.iter().filter(|c| !old.contains(c)).cloned().collect();
        conn.track_channels(&left, &joined);
        self.index.move_conn(conn, &left, &joined);
        let delta = new.len() as i64 - old.len() as i64;
        self.metrics
            .subscriptions
            .fetch_add(delta, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Replaces the socket's interests; with `since`, live events are held for the replay,
    /// without it the socket starts live at the last published id.
    fn set_interest(&self, conn: &Arc<Conn>, requested: &[String], since: Option<i64>) -> Granted {
        let perms = conn.with_auth(|a| a.perms.clone());
        let mut granted = grant(&perms, requested, self.settings.max_channels);
        if since.is_none() {
            conn.start_live(self.last_published.load(Ordering::SeqCst));
        }
        let old = conn.with_auth(|a| std::mem::replace(&mut a.channels, granted.channels.clone()));
        self.set_index(conn, &old, &granted.channels);
        if let Some(since) = since {
            granted.since = Some(since);
            granted.sent = conn.begin_hold(since, &granted.channels);
        }
        granted
    }

    /// A `since` beyond the last stored id would hide the next live events as "already had".
    async fn clamp_since(&self, since: Option<i64>) -> Option<i64> {
        match since {
            Some(s) if s > self.last_published.load(Ordering::SeqCst) => {
                let head = storage::events::head(&self.pool)
                    .await
                    .unwrap_or_else(|_| self.last_published.load(Ordering::SeqCst));
                Some(s.min(head))
            }
            other => other,
        }
    }

    /// After [`Self::set_interest`] with a `since`: tells what retention pruned, queues the
    /// stored messages the socket was not sent yet (waiting for room as its sender drains), then
    /// releases the live events held meanwhile.
    async fn replay(&self, conn: &Conn, granted: Granted) {
        let Some(since) = granted.since else { return };
        let mut cursor = since;
        let (channels, sent) = (granted.channels, granted.sent);
        // Messages retention deleted are reported as gone before the replay, not left as a gap.
        match storage::events::truncated(&self.pool, &channels, since).await {
            Ok(cut) => {
                for (channel, first) in cut {
                    conn.push_notice(protocol::truncated_frame(&channel, first));
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading what retention pruned failed"),
        }
        while !channels.is_empty() && !conn.is_closed() {
            let rows = match storage::events::replay(&self.pool, &channels, cursor, REPLAY_PAGE)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "replay failed");
                    conn.end_hold(true);
                    conn.push_notice(protocol::error_frame(
                        protocol::ErrorKind::ReplayStopped,
                        "replay stopped: the database is not reachable; page the rest from /event/history",
                    ));
                    return;
                }
            };
            let n = rows.len() as i64;
            for row in rows {
                cursor = row.id;
                if sent.contains(&row.channel, row.id) {
                    continue;
                }
                conn.wait_for_room().await;
                conn.push_replayed(row.id, protocol::event_frame(&row));
            }
            self.metrics
                .events_replayed
                .fetch_add(n as u64, Ordering::Relaxed);
            if n < REPLAY_PAGE {
                break;
            }
        }
        conn.end_hold(false);
    }

    /// Adds one channel (a message sent to a readable channel not yet in the set, as core4
    /// does); false when it is not readable or the set is full.
    fn add_interest(&self, conn: &Arc<Conn>, channel: &str) -> bool {
        let added = conn.with_auth(|a| {
            if a.channels.iter().any(|c| c == channel)
                || !a.perms.event(channel, false)
                || a.channels.len() >= self.settings.max_channels
            {
                false
            } else {
                a.channels.push(channel.to_string());
                true
            }
        });
        if added {
            self.set_index(conn, &[], &[channel.to_string()]);
        }
        added
    }

    /// Drops the interests the socket's current permissions no longer allow, and tells it.
    fn refilter(&self, conn: &Arc<Conn>) {
        let (kept, withdrawn) = conn.with_auth(|a| {
            let (kept, withdrawn): (Vec<String>, Vec<String>) = a
                .channels
                .iter()
                .cloned()
                .partition(|c| a.perms.event(c, false));
            a.channels = kept.clone();
            (kept, withdrawn)
        });
        if withdrawn.is_empty() {
            return;
        }
        let mut old = kept.clone();
        old.extend(withdrawn.iter().cloned());
        self.set_index(conn, &old, &kept);
        let denied: Vec<(String, String)> = withdrawn
            .into_iter()
            .map(|c| (c, "no read permission".to_string()))
            .collect();
        conn.push_notice(protocol::interest_frame(
            &kept,
            &denied,
            None,
            "permissions changed, interest now in",
        ));
    }

    /// Hands a message to the writer; false when the hub is stopping.
    fn submit(&self, pending: Pending) -> Result<(), Stopping> {
        match read(&self.writer).as_ref() {
            Some(tx) => tx.send(pending).map_err(|_| Stopping),
            None => Err(Stopping),
        }
    }

    fn conns(&self) -> Vec<Arc<Conn>> {
        lock(&self.conns).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grant_dedups_in_one_pass_and_keeps_the_limit() {
        let perms = PermissionSet::default();
        let long = "x".repeat(70);
        let g = grant(
            &perms,
            &names(&["a", " A ", "a", &long, &long, "b c", "b c"]),
            2,
        );
        assert!(g.channels.is_empty());
        assert_eq!(
            g.denied,
            [
                ("a".to_string(), "no read permission".to_string()),
                (
                    protocol::clip(&long),
                    "channel name is longer than 64 characters".to_string()
                ),
                (
                    "b c".to_string(),
                    "channel name contains whitespace or control characters".to_string()
                ),
            ]
        );

        // Many names (up to the caller's cap) stay cheap: one set lookup each.
        let admin = PermissionSet::new(vec!["cop".into()]);
        let many: Vec<String> = (0..256).map(|i| format!("ch{i}")).collect();
        let g = grant(&admin, &many, 64);
        assert_eq!(g.channels, many[..64]);
        assert_eq!(g.denied.len(), 192);
        assert_eq!(g.denied[0], ("ch64".into(), "more than 64 channels".into()));
    }
}
