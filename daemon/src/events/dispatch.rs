//! Publishing in id order, once each: this instance's committed batches come from the writer;
//! other instances' are announced by one NOTIFY per batch and read from the table by id range.
//! After the listening connection drops, the listener reconnects and asks for a catch-up from
//! the table, so subscribers see neither a gap nor a duplicate.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::mpsc;

use super::{protocol, shared::Shared, subscriber::Pushed};
use crate::storage::{self, events::EventRow};

/// The NOTIFY channel of committed batches (payload `<instance> <first id> <last id>`).
pub const NOTIFY_CHANNEL: &str = "core4_events";
const FETCH: i64 = 1000;

pub enum Dispatch {
    /// A batch this instance committed.
    Local(Vec<EventRow>),
    /// Another instance committed up to this id.
    Remote {
        upto: i64,
    },
    /// Read everything up to `upto` (or the current head) that has not been published yet.
    CatchUp {
        upto: Option<i64>,
    },
    Stop,
}

pub async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Dispatch>, head: i64) {
    let mut last = head;
    while let Some(msg) = rx.recv().await {
        match msg {
            Dispatch::Local(events) => {
                let Some(first) = events.first().map(|e| e.id) else {
                    continue;
                };
                if first > last + 1 {
                    // Another instance committed in between; its NOTIFY may still be on the way.
                    fetch_until(&shared, &mut last, first - 1).await;
                }
                let fresh: Vec<EventRow> = events.into_iter().filter(|e| e.id > last).collect();
                publish(&shared, &mut last, &fresh);
            }
            Dispatch::Remote { upto } => {
                if upto > last {
                    fetch_until(&shared, &mut last, upto).await;
                }
            }
            Dispatch::CatchUp { upto } => {
                let upto = match upto {
                    Some(u) => u,
                    None => match storage::events::head(shared.pool()).await {
                        Ok(h) => h,
                        Err(e) => {
                            tracing::warn!(error = %e, "event catch-up could not read the head");
                            continue;
                        }
                    },
                };
                if upto > last {
                    fetch_until(&shared, &mut last, upto).await;
                }
            }
            Dispatch::Stop => break,
        }
    }
}

/// Reads and publishes every event after `last` up to `upto`; retries while the database is away
/// (ids up to `upto` are committed, so they must come).
async fn fetch_until(shared: &Shared, last: &mut i64, upto: i64) {
    let mut delay = Duration::from_millis(50);
    while *last < upto {
        match storage::events::range(shared.pool(), *last, upto, FETCH).await {
            Ok(rows) if rows.is_empty() => return,
            Ok(rows) => {
                delay = Duration::from_millis(50);
                publish(shared, last, &rows);
            }
            Err(e) => {
                if shared.is_stopping() {
                    return;
                }
                tracing::warn!(error = %e, "reading events for fan-out failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Encodes each event once and offers the shared bytes to every interested subscriber.
fn publish(shared: &Shared, last: &mut i64, events: &[EventRow]) {
    let mut dropped = 0u64;
    {
        let index = shared.index();
        for e in events {
            if index.has_subscribers(&e.channel) {
                let frame = protocol::event_frame(e);
                for sub in index.subscribers(&e.channel) {
                    if sub.push_event(e.id, &frame) == Pushed::Dropped {
                        dropped += 1;
                    }
                }
            }
            *last = e.id;
        }
    }
    shared.set_last_published(*last);
    if dropped > 0 {
        shared
            .metrics()
            .events_dropped
            .fetch_add(dropped, Ordering::Relaxed);
    }
}

/// One LISTEN connection per instance, on a pool of its own (a listening connection must never go
/// back to the shared pool).
pub async fn listen(shared: Arc<Shared>) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with((*shared.pool().connect_options()).clone());
    let mut delay = Duration::from_millis(100);
    loop {
        match subscribe(&pool).await {
            Ok(mut listener) => {
                delay = Duration::from_millis(100);
                // Whatever committed while nobody listened comes from the table.
                shared.dispatch(Dispatch::CatchUp { upto: None });
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => {
                            if let Some(upto) = remote_upto(n.payload(), shared.instance()) {
                                shared.dispatch(Dispatch::Remote { upto });
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "event listener error");
                            break;
                        }
                    }
                }
                shared
                    .metrics()
                    .listener_reconnects
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("the event listener lost its connection; reconnecting");
            }
            Err(e) => {
                tracing::debug!(error = %e, "event listener cannot connect yet");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

async fn subscribe(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}

/// The last id of another instance's batch; `None` for our own (the writer hands those over).
fn remote_upto(payload: &str, me: &str) -> Option<i64> {
    let mut parts = payload.split(' ');
    let instance = parts.next()?;
    let _first = parts.next()?;
    let last = parts.next()?.parse().ok()?;
    (instance != me).then_some(last)
}

#[cfg(test)]
mod tests {
    use super::remote_upto;

    #[test]
    fn notifications_of_this_instance_are_skipped() {
        assert_eq!(remote_upto("other 5 9", "me"), Some(9));
        assert_eq!(remote_upto("me 5 9", "me"), None);
        assert_eq!(remote_upto("garbage", "me"), None);
    }
}
