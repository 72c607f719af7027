//! Interest: which channels a subscriber receives. Grants the requested channels its
//! permissions allow, moves it in the interest index, replays what it missed after a `since`,
//! and re-filters its channels when its permissions change. The same for sockets and event
//! streams.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
};

use super::{
    protocol,
    shared::Shared,
    subscriber::{Sent, Subscriber},
};
use crate::{
    domain::{Channel, PermissionSet},
    storage,
};

/// Replayed rows read per query at most; fewer when they are large (see [`REPLAY_PAGE_BYTES`]).
const REPLAY_PAGE: i64 = 500;
/// Rows read by the first query of a replay, before their size is known.
const REPLAY_FIRST_PAGE: i64 = 16;
/// About how many bytes of rows one replay query reads: a replay to a client that does not read
/// holds its current page while it waits for room.
const REPLAY_PAGE_BYTES: usize = 1 << 20;

/// The outcome of an interest request.
pub struct Granted {
    pub channels: Vec<String>,
    pub denied: Vec<(String, String)>,
    /// With a `since`: where the replay starts.
    pub since: Option<i64>,
    /// With a `since`: what the replay skips (see [`Subscriber::begin_hold`]).
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
    /// Replaces the subscriber's interests; with `since`, live events are held for the replay,
    /// without it the subscriber starts live at the last published id.
    pub fn set_interest(
        &self,
        sub: &Arc<Subscriber>,
        requested: &[String],
        since: Option<i64>,
    ) -> Granted {
        let perms = sub.with_auth(|a| a.perms.clone());
        let mut granted = grant(&perms, requested, self.settings().max_channels);
        if since.is_none() {
            sub.start_live(self.last_published());
        }
        let old = sub.with_auth(|a| std::mem::replace(&mut a.channels, granted.channels.clone()));
        self.set_index(sub, &old, &granted.channels);
        if let Some(since) = since {
            granted.since = Some(since);
            granted.sent = sub.begin_hold(since, &granted.channels);
        }
        granted
    }

    /// A `since` beyond the last stored id would hide the next live events as "already had".
    pub async fn clamp_since(&self, since: Option<i64>) -> Option<i64> {
        match since {
            Some(s) if s > self.last_published() => {
                let head = storage::events::head(self.pool())
                    .await
                    .unwrap_or_else(|_| self.last_published());
                Some(s.min(head))
            }
            other => other,
        }
    }

    /// After [`Self::set_interest`] with a `since`: tells what retention pruned, queues the
    /// stored messages the subscriber was not sent yet (waiting for room as its sender drains), then
    /// releases the live events held meanwhile.
    pub async fn replay(&self, sub: &Subscriber, granted: Granted) {
        let Some(since) = granted.since else { return };
        let mut cursor = since;
        let (channels, sent) = (granted.channels, granted.sent);
        // Messages retention deleted are reported as gone before the replay, not left as a gap.
        match storage::events::truncated(self.pool(), &channels, since).await {
            Ok(cut) => {
                for (channel, first) in cut {
                    sub.push_notice(protocol::truncated_frame(&channel, first));
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading what retention pruned failed"),
        }
        let mut page = REPLAY_FIRST_PAGE;
        while !channels.is_empty() && !sub.is_closed() {
            let rows = match storage::events::replay(self.pool(), &channels, cursor, page).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "replay failed");
                    sub.end_hold(true);
                    sub.push_notice(protocol::error_frame(
                        protocol::ErrorKind::ReplayStopped,
                        "replay stopped: the database is not reachable; page the rest from /event/history",
                    ));
                    return;
                }
            };
            let n = rows.len() as i64;
            let full = n == page;
            let bytes: usize = rows.iter().map(|r| r.data.len() + 128).sum();
            page = ((REPLAY_PAGE_BYTES * rows.len().max(1)) / bytes.max(1))
                .clamp(REPLAY_FIRST_PAGE as usize, REPLAY_PAGE as usize) as i64;
            for row in rows {
                cursor = row.id;
                if sent.contains(&row.channel, row.id) {
                    continue;
                }
                sub.wait_for_room().await;
                sub.push_replayed(row.id, protocol::event_frame(&row));
            }
            self.metrics()
                .events_replayed
                .fetch_add(n as u64, Ordering::Relaxed);
            if !full {
                break;
            }
        }
        sub.end_hold(false);
    }

    /// Adds one channel (a message sent to a readable channel not yet in the set, as core4
    /// does); false when it is not readable or the set is full.
    pub fn add_interest(&self, sub: &Arc<Subscriber>, channel: &str) -> bool {
        let added = sub.with_auth(|a| {
            if a.channels.iter().any(|c| c == channel)
                || !a.perms.event(channel, false)
                || a.channels.len() >= self.settings().max_channels
            {
                false
            } else {
                a.channels.push(channel.to_string());
                true
            }
        });
        if added {
            self.set_index(sub, &[], &[channel.to_string()]);
        }
        added
    }

    /// Drops the interests the subscriber's current permissions no longer allow, and tells it.
    pub fn refilter(&self, sub: &Arc<Subscriber>) {
        let (kept, withdrawn) = sub.with_auth(|a| {
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
        self.set_index(sub, &old, &kept);
        let denied: Vec<(String, String)> = withdrawn
            .into_iter()
            .map(|c| (c, "no read permission".to_string()))
            .collect();
        sub.push_notice(protocol::interest_frame(
            &kept,
            &denied,
            None,
            "permissions changed, interest now in",
        ));
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
