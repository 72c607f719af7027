//! The batching writer: every message is committed before it is acknowledged, and messages that
//! arrive while a commit is running share the next transaction (group commit).
//!
//! A batch that fails before PostgreSQL got it is retried; one whose COMMIT outcome is unknown (the
//! connection died mid-flight, e.g. PostgreSQL restarting) is looked up in `event_batches` before it
//! is retried, and the batch id's primary key makes a double store impossible. Publishers wait up to
//! `commit_timeout_ms` for the database to come back before they get an error frame.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    dispatch::Dispatch,
    protocol::{self, ErrorKind},
    shared::Shared,
    subscriber::{ReplySlot, Subscriber},
};
use crate::storage::{
    self,
    events::{AccountKey, Appended, EventRow, NewBatch},
};

/// A message on its way to the database.
pub struct Pending {
    pub channel: String,
    pub author: String,
    pub data: String,
    /// Idempotency key, scoped by the author's account: stored at most once within the window.
    pub key: Option<AccountKey>,
    pub reply: ReplyTo,
}

/// Who waits for a message's outcome.
pub enum ReplyTo {
    /// A socket: the ack or error goes into the reply slot of the frame that sent it.
    Socket {
        sub: Arc<Subscriber>,
        slot: ReplySlot,
        /// The frame's correlation id, echoed on the reply.
        id: Option<String>,
        /// The message also added its channel to the socket's interests (the ack's `type`).
        added_interest: bool,
    },
    /// An HTTP request.
    Caller(oneshot::Sender<Result<Stored, Failed>>),
}

/// Why a message was not (or perhaps not) stored.
pub type Failed = (ErrorKind, String);

/// A committed message: its id, or the original's for a duplicate key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub message_id: i64,
    pub duplicate: bool,
}

impl ReplyTo {
    fn send(self, outcome: Result<Stored, &Failed>) {
        match self {
            Self::Socket {
                sub,
                slot,
                id,
                added_interest,
            } => {
                let frame = match outcome {
                    Ok(s) => protocol::ack_frame(s.message_id, added_interest, s.duplicate),
                    Err((kind, message)) => protocol::error_frame(*kind, message),
                };
                sub.fill_reply(slot, protocol::with_id(frame, id.as_deref()));
            }
            Self::Caller(tx) => {
                let _ = tx.send(outcome.map_err(Clone::clone));
            }
        }
    }
}

pub async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let max = shared.settings().batch_max.max(1);
    let mut batch = Vec::with_capacity(max);
    while rx.recv_many(&mut batch, max).await > 0 {
        commit(&shared, &mut batch).await;
    }
    tracing::debug!("event writer flushed and stopped");
}

async fn commit(shared: &Shared, batch: &mut Vec<Pending>) {
    if let Err(Isolate) = commit_together(shared, batch).await {
        // One message the database refuses must not cost the others theirs: each is stored on
        // its own, in order, and only the one at fault gets the error.
        tracing::warn!(
            messages = batch.len(),
            "a batch of events failed; storing its messages one by one"
        );
        let mut one = Vec::with_capacity(1);
        for p in batch.drain(..) {
            one.push(p);
            // Alone, a message is never sent back to be isolated: it gets its own outcome.
            let _ = commit_together(shared, &mut one).await;
        }
    }
}

/// A batch of several messages failed for a reason that is not the connection's: its messages
/// are still in the batch, to be stored one by one.
struct Isolate;

async fn commit_together(shared: &Shared, batch: &mut Vec<Pending>) -> Result<(), Isolate> {
    let started = Instant::now();
    let mut rows = NewBatch::default();
    let keyed = batch.iter().any(|p| p.key.is_some());
    let mut keys = Vec::with_capacity(if keyed { batch.len() } else { 0 });
    for p in batch.iter_mut() {
        rows.names.push("message".into());
        rows.authors.push(std::mem::take(&mut p.author));
        rows.channels.push(std::mem::take(&mut p.channel));
        rows.data.push(std::mem::take(&mut p.data));
        if keyed {
            keys.push(p.key.take());
        }
    }
    if keyed {
        rows.keys = Some(keys);
    }
    match store(shared, &rows).await {
        Ok(appended) => {
            let events = rows_to_events(rows, &appended);
            shared
                .metrics()
                .record_commit(events.len() as u64, started.elapsed().as_micros() as u64);
            shared
                .metrics()
                .messages_published
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            for (i, p) in batch.drain(..).enumerate() {
                let (message_id, duplicate) = appended.ack(i);
                p.reply.send(Ok(Stored {
                    message_id,
                    duplicate,
                }));
            }
            if !events.is_empty() {
                shared.dispatch(Dispatch::Local(events));
            }
        }
        Err(failed) if failed.0 == ErrorKind::Internal && batch.len() > 1 => {
            // Give the messages their fields back, to be tried one by one.
            let NewBatch {
                authors,
                channels,
                data,
                keys,
                ..
            } = rows;
            let mut keys = keys.map(Vec::into_iter);
            for (((p, author), channel), data) in
                batch.iter_mut().zip(authors).zip(channels).zip(data)
            {
                (p.author, p.channel, p.data) = (author, channel, data);
                p.key = keys.as_mut().and_then(Iterator::next).flatten();
            }
            return Err(Isolate);
        }
        Err(failed) => {
            for p in batch.drain(..) {
                p.reply.send(Err(&failed));
            }
        }
    }
    Ok(())
}

/// The stored messages of a batch (duplicates left out), in id order.
fn rows_to_events(rows: NewBatch, appended: &Appended) -> Vec<EventRow> {
    let NewBatch {
        names,
        authors,
        channels,
        data,
        keys: _,
    } = rows;
    names
        .into_iter()
        .zip(authors)
        .zip(channels)
        .zip(data)
        .enumerate()
        .filter_map(|(i, (((name, author), channel), data))| {
            let (id, duplicate) = appended.ack(i);
            (!duplicate).then_some(EventRow {
                id,
                created: appended.created,
                name,
                author,
                channel,
                data,
            })
        })
        .collect()
}

/// Errors worth retrying: the connection or the server, not the statement.
fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
                || c.starts_with("40")
        }),
        _ => false,
    }
}

/// Did the statement possibly reach the server (so it may have committed)?
fn maybe_sent(e: &sqlx::Error) -> bool {
    !matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
}

async fn store(shared: &Shared, rows: &NewBatch) -> Result<Appended, Failed> {
    let batch = Uuid::new_v4();
    let deadline = Instant::now() + Duration::from_millis(shared.settings().commit_timeout_ms);
    let mut in_doubt = false;
    let mut delay = Duration::from_millis(50);
    loop {
        let e = if in_doubt {
            match storage::events::batch_outcome(shared.pool(), batch).await {
                Ok(Some(stored)) => return Ok(stored),
                Ok(None) => {
                    in_doubt = false;
                    continue;
                }
                Err(e) => e,
            }
        } else {
            let window = shared.settings().idempotency_window_secs;
            match storage::events::append(shared.pool(), batch, shared.instance(), rows, window)
                .await
            {
                Ok(stored) => return Ok(stored),
                Err(e) if storage::is_unique_violation(&e) => {
                    // An earlier attempt of this batch did commit.
                    in_doubt = true;
                    continue;
                }
                Err(e) => {
                    in_doubt = maybe_sent(&e);
                    e
                }
            }
        };
        if !transient(&e) {
            tracing::error!(error = %e, "storing a batch of events failed");
            return Err((
                ErrorKind::Internal,
                "message not stored: internal error".into(),
            ));
        }
        if Instant::now() + delay > deadline {
            tracing::warn!(error = %e, in_doubt, "giving up on a batch of events");
            return Err(if in_doubt {
                (
                    ErrorKind::InDoubt,
                    "message may not have been stored: the database is not reachable; send it again with the same key, or check the history".into(),
                )
            } else {
                (
                    ErrorKind::Unavailable,
                    "message not stored: the database is not reachable".into(),
                )
            });
        }
        tracing::debug!(error = %e, in_doubt, "batch commit failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}
