//! One task per instance keeps open subscribers honest, woken by every auth change it hears of: it closes subscribers whose token expired, and
//! when the auth epoch moved (logout, role or permission change, deactivation, deletion, password
//! change) it re-verifies each distinct token of the open subscribers once: revoked tokens close
//! their subscribers with 1008, the others get their interests re-filtered. A logout does not move
//! the epoch: the poll reads the sessions revoked since the last round and closes just their
//! subscribers. The same poll reads the event head as a cheap safety net for a NOTIFY that never
//! arrived.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use time::OffsetDateTime;

use super::{close, dispatch::Dispatch, shared::Shared, subscriber::Subscriber};
use crate::{
    auth::{Method, qual},
    error::ApiError,
    storage,
};

/// Revocations are re-read with this overlap: a logout transaction's `now()` is its start time,
/// so it can commit a little after a later-stamped one was already seen.
const REVOCATION_OVERLAP: Duration = Duration::from_secs(10);

/// The shortest time between two rounds woken by auth changes.
const MIN_GAP: Duration = Duration::from_millis(100);

/// Distinct tokens verified at once after an epoch change.
const CONCURRENCY: usize = 8;

pub async fn run(shared: Arc<Shared>, mut seen_epoch: i64) {
    let period = Duration::from_millis(shared.settings().recheck_interval_ms.max(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev_head: Option<i64> = None;
    let mut revoked_cursor = OffsetDateTime::now_utc() - REVOCATION_OVERLAP;
    let mut rounds: u64 = 0;
    let mut last_round = tokio::time::Instant::now();
    loop {
        // A change of rights or a logout anywhere wakes the round at once: the poll interval is
        // only the safety net for a notification that never came.
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.auth().changed() => {
                // Paced: a stream of changes (a user renaming itself in a loop) costs at most
                // one round per MIN_GAP, not one database check per subscriber token per change.
                tokio::time::sleep_until(last_round + MIN_GAP).await;
            }
        }
        last_round = tokio::time::Instant::now();
        rounds += 1;
        if shared.is_stopping() {
            return;
        }
        expire(&shared);
        match storage::tokens::revoked_since(shared.pool(), revoked_cursor - REVOCATION_OVERLAP)
            .await
        {
            Ok((sids, latest)) => {
                if !sids.is_empty() {
                    close_revoked(&shared, &sids);
                }
                revoked_cursor = latest.map_or(revoked_cursor, |l| l.max(revoked_cursor));
            }
            Err(e) => tracing::debug!(error = %e, "reading revocations failed"),
        }
        match storage::events::poll_state(shared.pool()).await {
            Ok((epoch, head)) => {
                // A head seen a whole interval ago and still not published: catch up.
                if let Some(h) = prev_head
                    && h > shared.last_published()
                {
                    shared.dispatch(Dispatch::CatchUp { upto: Some(h) });
                }
                prev_head = Some(head);
                // Re-checks bypass the principal cache, which may not have heard of the change yet.
                if epoch != seen_epoch && recheck_all(&shared).await {
                    seen_epoch = epoch;
                }
            }
            Err(e) => tracing::debug!(error = %e, "event poll failed"),
        }
        if rounds.is_multiple_of(20) {
            shared.purge_idle_users();
        }
        if rounds.is_multiple_of((600_000 / period.as_millis().max(1) as u64).max(1))
            && let Err(e) = storage::events::prune_batches(shared.pool()).await
        {
            tracing::debug!(error = %e, "pruning event batch records failed");
        }
    }
}

fn expire(shared: &Shared) {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for sub in shared.subscribers() {
        if sub.with_auth(|a| a.exp <= now) {
            sub.close(
                close::POLICY,
                "token expired: reconnect with a fresh token, or send a token frame before expiry",
            );
        }
    }
}

/// Closes the subscribers whose token belongs to one of the revoked sessions.
fn close_revoked(shared: &Shared, sids: &[String]) {
    let mut session_of: HashMap<Arc<str>, Option<String>> = HashMap::new();
    for sub in shared.subscribers() {
        if sub.is_closed() {
            continue;
        }
        let token = sub.with_auth(|a| a.token.clone());
        let sid = session_of
            .entry(token.clone())
            .or_insert_with(|| shared.auth().keys().verify(&token).ok().map(|c| c.sid))
            .clone();
        if sid.is_some_and(|s| sids.contains(&s)) {
            sub.close(close::POLICY, "token revoked: log in again");
        }
    }
}

/// Re-verifies every distinct token of the open subscribers. False when the database could not
/// answer for some token (the next round tries again).
async fn recheck_all(shared: &Arc<Shared>) -> bool {
    let mut by_token: HashMap<Arc<str>, Vec<Arc<Subscriber>>> = HashMap::new();
    for sub in shared.subscribers() {
        if sub.is_closed() {
            continue;
        }
        let token = sub.with_auth(|a| a.token.clone());
        by_token.entry(token).or_default().push(sub);
    }
    let results: Vec<bool> = stream::iter(by_token)
        .map(|(token, subs)| async move {
            match shared.auth().verify_token_uncached(&token).await {
                Ok(principal) if !shared.auth().allowed(&principal, qual::EVENT, Method::Read) => {
                    for sub in subs {
                        if sub.with_auth(|a| a.token == token) {
                            sub.close(
                                close::POLICY,
                                "forbidden: no access to the event endpoint any more",
                            );
                        }
                    }
                    true
                }
                Ok(principal) => {
                    let perms = Arc::new(principal.perms);
                    for sub in subs {
                        let same = sub.with_auth(|a| {
                            let same = a.token == token;
                            if same {
                                a.perms = perms.clone();
                                a.name = principal.name.clone();
                            }
                            same
                        });
                        if same {
                            shared.refilter(&sub);
                        }
                    }
                    true
                }
                Err(ApiError::Unauthorized(reason)) => {
                    for sub in subs {
                        if sub.with_auth(|a| a.token == token) {
                            sub.close(close::POLICY, format!("{reason}: log in again"));
                        }
                    }
                    true
                }
                Err(e) => {
                    tracing::debug!(error = %e, "re-verifying a socket's token failed");
                    false
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().all(|ok| ok)
}
