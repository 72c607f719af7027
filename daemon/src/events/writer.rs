//! The batching writer: every message is committed before it is acknowledged, and messages that
//! arrive while a commit is running share the next transaction (group commit).
//!
//! A batch that fails before PostgreSQL got it is retried; one whose COMMIT outcome is unknown (the
//! connection died mid-flight, e.g. PostgreSQL restarting) is looked up in `event_batches` before it
//! is retried, and the batch id's primary key makes a double store impossible. Senders wait up to
//! `commit_timeout_ms` for the database to come back before they get an error frame.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Inner, conn::Conn, dispatch::Dispatch, protocol};
use crate::storage::{
    self,
    events::{EventRow, NewBatch},
};

/// A message on its way to the database.
pub struct Pending {
    pub conn: Arc<Conn>,
    pub channel: String,
    pub author: String,
    pub data: String,
    /// The message also added its channel to the sender's interests (changes the ack's `type`).
    pub added_interest: bool,
}

pub async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let max = inner.settings.batch_max.max(1);
    let mut batch = Vec::with_capacity(max);
    while rx.recv_many(&mut batch, max).await > 0 {
        commit(&inner, &mut batch).await;
    }
    tracing::debug!("event writer flushed and stopped");
}

async fn commit(inner: &Inner, batch: &mut Vec<Pending>) {
    let started = Instant::now();
    let mut rows = NewBatch::default();
    for p in batch.iter_mut() {
        rows.names.push("message".into());
        rows.authors.push(std::mem::take(&mut p.author));
        rows.channels.push(std::mem::take(&mut p.channel));
        rows.data.push(std::mem::take(&mut p.data));
    }
    match store(inner, &rows).await {
        Ok((first, created)) => {
            let n = batch.len() as u64;
            inner
                .metrics
                .record_commit(n, started.elapsed().as_micros() as u64);
            inner
                .metrics
                .messages_published
                .fetch_add(n, Ordering::Relaxed);
            for (i, p) in batch.drain(..).enumerate() {
                p.conn
                    .push_reply(protocol::ack_frame(first + i as i64, p.added_interest));
            }
            let events = rows_to_events(rows, first, created);
            let _ = inner.dispatch.send(Dispatch::Local(events));
        }
        Err(message) => {
            let frame = protocol::error_frame(&message);
            for p in batch.drain(..) {
                p.conn.push_reply(frame.clone());
            }
        }
    }
}

fn rows_to_events(rows: NewBatch, first: i64, created: OffsetDateTime) -> Vec<EventRow> {
    let NewBatch {
        names,
        authors,
        channels,
        data,
    } = rows;
    names
        .into_iter()
        .zip(authors)
        .zip(channels)
        .zip(data)
        .enumerate()
        .map(|(i, (((name, author), channel), data))| EventRow {
            id: first + i as i64,
            created,
            name,
            author,
            channel,
            data,
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

async fn store(inner: &Inner, rows: &NewBatch) -> Result<(i64, OffsetDateTime), String> {
    let batch = Uuid::new_v4();
    let deadline = Instant::now() + Duration::from_millis(inner.settings.commit_timeout_ms);
    let mut in_doubt = false;
    let mut delay = Duration::from_millis(50);
    loop {
        let e = if in_doubt {
            match storage::events::batch_outcome(&inner.pool, batch).await {
                Ok(Some(stored)) => return Ok(stored),
                Ok(None) => {
                    in_doubt = false;
                    continue;
                }
                Err(e) => e,
            }
        } else {
            match storage::events::append(&inner.pool, batch, &inner.instance, rows).await {
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
            return Err("message not stored: internal error".into());
        }
        if Instant::now() + delay > deadline {
            tracing::warn!(error = %e, in_doubt, "giving up on a batch of events");
            return Err(if in_doubt {
                "message may not have been stored: the database is not reachable; check the history before sending it again".into()
            } else {
                "message not stored: the database is not reachable".into()
            });
        }
        tracing::debug!(error = %e, in_doubt, "batch commit failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}
