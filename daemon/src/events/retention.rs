//! Retention: one task per instance prunes stored messages by the `[[events.retention]]` rules,
//! every `events.retention_interval_secs`, in small batches (one short transaction each, pausing
//! between them), so writers are never blocked. Several instances may prune at once: a batch
//! deletes what is there and the rest of the round finds less to do.

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::{domain::Channel, settings::RetentionRule, storage};

/// Messages deleted per transaction.
const BATCH: i64 = 2_000;
/// Pause between batches, so that a large backlog does not crowd out the writers.
const PAUSE: Duration = Duration::from_millis(5);

/// The rule that applies to `channel`: the first whose glob matches.
pub fn rule_for<'a>(rules: &'a [RetentionRule], channel: &str) -> Option<&'a RetentionRule> {
    let channel = Channel::parse(channel).ok()?;
    rules.iter().find(|r| channel.matches(&r.channel))
}

pub async fn run(pool: PgPool, rules: Vec<RetentionRule>, every: Duration) {
    if rules.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        match prune_round(&pool, &rules).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention pruned messages"),
            Err(e) => tracing::warn!(error = %e, "retention round failed; trying again next round"),
        }
    }
}

/// One pass over every channel; returns how many messages were deleted.
pub async fn prune_round(
    pool: &PgPool,
    rules: &[RetentionRule],
) -> Result<u64, crate::error::ApiError> {
    let mut deleted = 0;
    for channel in storage::events::channels(pool).await? {
        let Some(rule) = rule_for(rules, &channel) else {
            continue;
        };
        let through = match rule.max_count {
            Some(keep) => storage::events::count_cutoff(pool, &channel, keep).await?,
            None => None,
        };
        let older_than = rule.max_age_secs.and_then(|s| {
            OffsetDateTime::now_utc().checked_sub(Duration::from_secs(s).try_into().ok()?)
        });
        loop {
            let n = storage::events::prune(pool, &channel, through, older_than, BATCH).await?;
            deleted += n;
            if n < BATCH as u64 {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_applies() {
        let rule = |channel: &str, max_count| RetentionRule {
            channel: channel.into(),
            max_count: Some(max_count),
            max_age_secs: None,
        };
        let rules = [rule("chat-*", 1), rule("*", 2)];
        assert_eq!(rule_for(&rules, "chat-ops").unwrap().max_count, Some(1));
        assert_eq!(rule_for(&rules, "Message").unwrap().max_count, Some(2));
        assert!(rule_for(&rules[..1], "message").is_none());
    }
}
