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
//! A subscriber (`subscriber::Subscriber`) does not depend on its transport: its queue is
//! drained by a sender that writes WebSocket frames (`session`) or Server-Sent Events (`sse`). "Writer" is
//! only the group commit (`writer`). Ids are gapless and commit in order (see
//! `migrations/0002_events.sql`), so the dispatcher only keeps the last id it published:
//! anything it has not seen is read from the table by id range.
//!
//! Who owns what:
//! - this file: the [`Hub`] the API holds (start, admit, HTTP publish, shutdown), the
//!   [`Admission`] of one subscriber, and the keepalive task;
//! - `shared`: the hub's state behind methods (settings, pool, the open subscribers, the
//!   hand-offs to the writer and the dispatcher, the last published id, the stop flag);
//! - `interest`: granting channels, moving a subscriber in the index, replay, re-filtering;
//! - `index`: channel → subscribers; `subscriber`: one subscriber and its bounded queue;
//!   `limits`: per-user caps and message buckets;
//! - `writer`: the group commit; `dispatch`: fan-out in id order and the LISTEN task;
//!   `recheck`: token expiry, revocation and permission re-checks; `retention`: pruning;
//! - `session`: a WebSocket's reader and sender; `sse`: an event stream's sender;
//!   `protocol`: the frames.

mod dispatch;
mod index;
mod interest;
mod limits;
pub mod protocol;
mod recheck;
pub mod retention;
mod session;
mod shared;
mod sse;
mod subscriber;
mod writer;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use poem::Upgraded;
use sqlx::PgPool;
use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::WebSocketConfig};

pub use self::writer::Stored;
use self::{
    dispatch::Dispatch,
    shared::{Shared, Tasks},
    subscriber::Subscriber,
    writer::{Pending, ReplyTo},
};
use crate::{
    auth::{Auth, Principal},
    domain::Channel,
    error::{ApiError, ApiResult},
    metrics::Metrics,
    settings::EventSettings,
    storage::{self, events::AccountKey},
};

/// Close codes the server uses (defined with the frames in core4-proto).
pub use core4_proto::close;

/// Bytes the WebSocket reader keeps per socket (idle sockets must stay small: tungstenite
/// zero-fills the buffer up to its capacity, so all of it is resident). A larger frame grows the
/// buffer to its length and is read in steps of this size.
const READ_BUFFER: usize = 1024;

#[derive(Clone)]
pub struct Hub {
    /// `None` for a hub that is never started.
    shared: Option<Arc<Shared>>,
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
        let (shared, receivers) = Shared::new(pool, auth, settings, metrics, head);
        let writer = tokio::spawn(writer::run(shared.clone(), receivers.writer));
        let dispatcher = tokio::spawn(dispatch::run(shared.clone(), receivers.dispatch, head));
        let listener = tokio::spawn(dispatch::listen(shared.clone()));
        let recheck = tokio::spawn(recheck::run(shared.clone(), epoch));
        let keepalive = tokio::spawn(keepalive(shared.clone()));
        let retention = tokio::spawn(retention::run(
            shared.pool().clone(),
            shared.settings().retention.clone(),
            Duration::from_secs(shared.settings().retention_interval_secs.max(1)),
        ));
        shared.keep_tasks(Tasks {
            writer: Some(writer),
            dispatcher: Some(dispatcher),
            background: vec![listener, recheck, keepalive, retention],
        });
        Ok(Self {
            shared: Some(shared),
        })
    }

    /// A hub that is never started (for printing the spec without a database).
    pub fn offline() -> Self {
        Self { shared: None }
    }

    fn shared(&self) -> ApiResult<&Arc<Shared>> {
        self.shared
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("the event hub is not running".into()))
    }

    pub fn settings(&self) -> Option<&EventSettings> {
        self.shared.as_ref().map(|s| s.settings())
    }

    /// Admits a subscriber for `principal` (before a WebSocket upgrade or an event stream):
    /// refused when the hub is stopping, the instance has `max_connections` subscribers open
    /// (503), or the user `max_connections_per_user` (429).
    pub fn admit(&self, principal: Principal, token: &str) -> Result<Admission, Refused> {
        let shared = self.shared()?;
        let sub = shared.admit(principal, token)?;
        Ok(Admission {
            shared: shared.clone(),
            sub,
        })
    }

    /// Publishes one message for an HTTP caller and waits for its commit: the socket's checks
    /// (channel name, write permission, the user's message rate) and error phrases, as an
    /// [`ApiError`]. With a `key`, a message the same account stored before with that key is
    /// acked as a duplicate instead of being stored again.
    pub async fn publish(
        &self,
        principal: &Principal,
        raw_channel: &str,
        data: String,
        key: Option<String>,
    ) -> ApiResult<Stored> {
        let shared = self.shared()?;
        let s = shared.settings();
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
        if !shared.try_send_as(&principal.id) {
            shared
                .metrics()
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
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
            key: key.map(|k| AccountKey::new(&principal.id, &k)),
            reply: ReplyTo::Caller(tx),
        };
        let shutting_down = || ApiError::Busy {
            message: "the server is shutting down; message not stored".into(),
            retry_after: 5,
        };
        if shared.is_stopping() || shared.submit(pending).is_err() {
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
        let write_buffer = 16 * 1024;
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(write_buffer)
            // Only grows past `write_buffer` while the client does not read. The sender waits
            // for room after every frame, so what piles up beyond that are the automatic pongs of
            // a client that pings and never reads: a bound, then the socket is closed.
            .max_write_buffer_size(write_buffer + 2 * hard)
            .max_message_size(Some(hard))
            .max_frame_size(Some(hard))
    }

    /// Stops accepting messages, flushes the writer (every acknowledged message is committed and
    /// published), then closes every subscriber with 1001 after what is queued for it.
    pub async fn shutdown(&self) {
        let Some(shared) = &self.shared else { return };
        if !shared.stop_taking_messages() {
            return;
        }
        let Tasks {
            writer,
            dispatcher,
            background,
        } = shared.take_tasks();
        let flush =
            Duration::from_millis(shared.settings().commit_timeout_ms) + Duration::from_secs(5);
        if let Some(w) = writer {
            let _ = tokio::time::timeout(flush, w).await;
        }
        shared.dispatch(Dispatch::Stop);
        if let Some(d) = dispatcher {
            let _ = tokio::time::timeout(flush, d).await;
        }
        for task in background {
            task.abort();
        }
        for sub in shared.subscribers() {
            sub.close(close::GOING_AWAY, "server shutting down");
        }
        if tokio::time::timeout(Duration::from_secs(5), shared.all_left())
            .await
            .is_err()
        {
            tracing::warn!("event sockets did not close within 5 s");
        }
    }
}

/// Why a subscriber was not admitted.
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

/// Pings every open subscriber each `ping_interval_secs` (one task for all of them: idle ones
/// get no timer of their own) and closes those that sent nothing, not even a pong, for two
/// intervals: 1001 `no pong`. Interval 0 turns this off.
async fn keepalive(shared: Arc<Shared>) {
    let secs = shared.settings().ping_interval_secs;
    if secs == 0 {
        return;
    }
    let period = Duration::from_secs(secs);
    let silence = 2 * period.as_millis() as u64;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.is_stopping() {
            return;
        }
        let now = shared.now_ms();
        let mut silent = 0usize;
        for sub in shared.subscribers() {
            if sub.is_closed() {
                continue;
            }
            if now.saturating_sub(sub.last_seen()) >= silence {
                sub.close(close::GOING_AWAY, close::NO_PONG);
                silent += 1;
            } else {
                sub.push_ping();
            }
        }
        if silent > 0 {
            tracing::debug!(silent, "closed event sockets that answered no ping");
        }
    }
}

/// A subscriber admitted before its upgrade or stream; dropping it (socket or stream ended,
/// upgrade failed) removes it from the hub.
pub struct Admission {
    shared: Arc<Shared>,
    sub: Arc<Subscriber>,
}

impl Admission {
    /// Serves the upgraded socket until it closes.
    pub async fn serve(self, ws: WebSocketStream<Upgraded>, since: Option<i64>) {
        session::run(self.shared.clone(), self.sub.clone(), ws, since).await;
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
        self.shared.leave(&self.sub);
    }
}
