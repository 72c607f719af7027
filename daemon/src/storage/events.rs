//! `events`, `event_head` and `event_batches`: the stored messages of all channels.

use sqlx::{PgPool, Postgres, QueryBuilder};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiResult;

/// A stored event. `data` is compact JSON text, exactly as it is sent to clients.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub created: OffsetDateTime,
    pub name: String,
    pub author: String,
    pub channel: String,
    pub data: String,
}

/// The columns of a batch to append, one entry per message.
#[derive(Debug, Default)]
pub struct NewBatch {
    pub names: Vec<String>,
    pub authors: Vec<String>,
    pub channels: Vec<String>,
    pub data: Vec<String>,
    /// Idempotency keys, one per message; `None` when no message of the batch has one.
    pub keys: Option<Vec<Option<AccountKey>>>,
}

/// An idempotency key as `events.key` stores it: the author's role id, the unit separator and
/// the client's key. The id, not the name: a name passes to another account when its holder is
/// renamed or deleted, an id never does (migration 0010).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::Type)]
#[sqlx(transparent)]
pub struct AccountKey(String);

impl AccountKey {
    /// `key` of the account with role id `account` (24 hex digits, so the two parts never run
    /// into each other).
    pub fn new(account: &str, key: &str) -> Self {
        let mut s = String::with_capacity(account.len() + 1 + key.len());
        s.push_str(account);
        s.push('\u{1f}');
        s.push_str(key);
        Self(s)
    }
}

/// Where a batch went: ids `first ..` in batch order, or with keys the id each message
/// acknowledges (its own, or the original's when `dups` says it was a duplicate).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Appended {
    pub first: i64,
    pub created: OffsetDateTime,
    pub acks: Option<Vec<i64>>,
    pub dups: Option<Vec<bool>>,
}

impl Appended {
    /// The id the `i`-th message of the batch acknowledges and whether it was a duplicate.
    pub fn ack(&self, i: usize) -> (i64, bool) {
        match (&self.acks, &self.dups) {
            (Some(acks), Some(dups)) => (acks[i], dups[i]),
            _ => (self.first + i as i64, false),
        }
    }
}

const COLUMNS: &str = "id, created, name, author, channel, data::text AS data";

/// Appends a batch in one statement (one transaction, at most one NOTIFY); keyed messages whose
/// [`AccountKey`] was stored within `window_secs` are not stored again.
pub async fn append(
    pool: &PgPool,
    batch: Uuid,
    instance: &str,
    rows: &NewBatch,
    window_secs: u64,
) -> Result<Appended, sqlx::Error> {
    sqlx::query_as(
        "SELECT o_first AS first, o_created AS created, o_acks AS acks, o_dups AS dups \
         FROM append_events($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(batch)
    .bind(instance)
    .bind(&rows.names)
    .bind(&rows.authors)
    .bind(&rows.channels)
    .bind(&rows.data)
    .bind(&rows.keys)
    .bind(window_secs.min(i64::MAX as u64) as i64)
    .fetch_one(pool)
    .await
}

/// Where a batch was stored, if it was (the writer asks after losing its connection mid-commit).
pub async fn batch_outcome(pool: &PgPool, batch: Uuid) -> Result<Option<Appended>, sqlx::Error> {
    sqlx::query_as(
        "SELECT first_id AS first, created, acks, dups FROM event_batches WHERE batch = $1",
    )
    .bind(batch)
    .fetch_optional(pool)
    .await
}

/// Forgets batch records older than an hour (only in-doubt commits need them, for seconds).
pub async fn prune_batches(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM event_batches WHERE created < clock_timestamp() - interval '1 hour'",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// The last id handed out (every id up to it is committed: ids commit in order).
pub async fn head(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT last_id FROM event_head")
        .fetch_one(pool)
        .await
}

/// The auth epoch (see `storage::tokens`) and the event head in one round trip, for the
/// once-per-interval poll of each instance.
pub async fn poll_state(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("SELECT (SELECT n FROM auth_epoch), (SELECT last_id FROM event_head)")
        .fetch_one(pool)
        .await
}

/// Events with `after < id <= upto`, oldest first, at most `limit`.
pub async fn range(
    pool: &PgPool,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM events WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3"
    )))
    .bind(after)
    .bind(upto)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Events on `channels` after `after`, oldest first, at most `limit` (resume).
pub async fn replay(
    pool: &PgPool,
    channels: &[String],
    after: i64,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM events WHERE channel = ANY($1) AND id > $2 ORDER BY id LIMIT $3"
    )))
    .bind(channels)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A history query: one channel, optional exclusive id cursors.
#[derive(Debug, Clone)]
pub struct HistoryFilter {
    pub channel: String,
    pub before: Option<i64>,
    pub after: Option<i64>,
}

/// Only the cursors that are given become conditions, so each is an index condition on
/// `events_channel_id (channel, id)` (a `$2 IS NULL OR id < $2` would not be in a generic plan).
fn push_where(qb: &mut QueryBuilder<Postgres>, f: &HistoryFilter) {
    qb.push(" WHERE channel = ").push_bind(f.channel.clone());
    if let Some(before) = f.before {
        qb.push(" AND id < ").push_bind(before);
    }
    if let Some(after) = f.after {
        qb.push(" AND id > ").push_bind(after);
    }
}

/// Counts the matching messages, but at most `limit`: the scan of the `(channel, id)` index stops
/// there, so a busy channel costs no more than `limit` index entries.
pub async fn history_count(pool: &PgPool, f: &HistoryFilter, limit: u64) -> ApiResult<u64> {
    let mut qb = QueryBuilder::new("SELECT count(*) FROM (SELECT 1 FROM events");
    push_where(&mut qb, f);
    qb.push(" LIMIT ")
        .push_bind(limit.min(i64::MAX as u64) as i64)
        .push(") AS counted");
    let n: i64 = qb.build_query_scalar().fetch_one(pool).await?;
    Ok(n as u64)
}

/// One page of history, newest first. The rows an `offset` skips are found in the index alone
/// (the newest id of the page), so only the page's own rows are read from the table.
pub async fn history(
    pool: &PgPool,
    f: &HistoryFilter,
    offset: u64,
    limit: u32,
) -> ApiResult<Vec<EventRow>> {
    let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM events"));
    push_where(&mut qb, f);
    if offset > 0 {
        qb.push(" AND id <= (SELECT id FROM events");
        push_where(&mut qb, f);
        qb.push(" ORDER BY id DESC OFFSET ")
            .push_bind(offset.min(i64::MAX as u64) as i64)
            .push(" LIMIT 1)");
    }
    qb.push(" ORDER BY id DESC LIMIT ").push_bind(limit as i64);
    Ok(qb.build_query_as().fetch_all(pool).await?)
}

/// Every channel with stored messages: a skip scan over `events_channel_id`, one index probe per
/// channel instead of a scan of every message.
pub async fn channels(pool: &PgPool) -> ApiResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "WITH RECURSIVE c(ch) AS (
             (SELECT channel FROM events ORDER BY channel LIMIT 1)
           UNION ALL
             SELECT (SELECT e.channel FROM events e WHERE e.channel > c.ch ORDER BY e.channel LIMIT 1)
             FROM c WHERE c.ch IS NOT NULL
         )
         SELECT ch FROM c WHERE ch IS NOT NULL",
    )
    .fetch_all(pool)
    .await?)
}

/// The id of the newest message of `channel` that a `max_count` rule no longer keeps.
pub async fn count_cutoff(pool: &PgPool, channel: &str, keep: u64) -> ApiResult<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM events WHERE channel = $1 ORDER BY id DESC OFFSET $2 LIMIT 1",
    )
    .bind(channel)
    .bind(keep.min(i64::MAX as u64) as i64)
    .fetch_optional(pool)
    .await?)
}

/// Deletes up to `batch` of the oldest messages of `channel` with an id up to `through` or
/// created before `older_than`, in one short transaction that also records the highest id gone.
/// Both conditions select a prefix of the channel (ids and `created` grow together), so each
/// batch reads only its own rows from the `(channel, id)` index. Returns how many went.
pub async fn prune(
    pool: &PgPool,
    channel: &str,
    through: Option<i64>,
    older_than: Option<OffsetDateTime>,
    batch: i64,
) -> ApiResult<u64> {
    let n: i64 = sqlx::query_scalar(
        "WITH doomed AS (
             SELECT id FROM (SELECT id, created FROM events WHERE channel = $1 ORDER BY id LIMIT $4) s
             WHERE s.id <= coalesce($2, -1) OR s.created < coalesce($3, '-infinity'::timestamptz)
         ), gone AS (
             DELETE FROM events WHERE id IN (SELECT id FROM doomed) RETURNING id
         ), mark AS (
             INSERT INTO event_channels_pruned (channel, pruned_through)
             SELECT $1, max(id) FROM gone HAVING count(*) > 0
             ON CONFLICT (channel) DO UPDATE
             SET pruned_through = GREATEST(event_channels_pruned.pruned_through, EXCLUDED.pruned_through)
         )
         SELECT count(*) FROM gone",
    )
    .bind(channel)
    .bind(through)
    .bind(older_than)
    .bind(batch)
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// For each of `channels` that retention pruned beyond `after`: the channel and its oldest
/// retained id (the next id, when nothing is left).
pub async fn truncated(
    pool: &PgPool,
    channels: &[String],
    after: i64,
) -> ApiResult<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT p.channel,
                coalesce((SELECT min(e.id) FROM events e WHERE e.channel = p.channel), p.pruned_through + 1)
         FROM event_channels_pruned p
         WHERE p.channel = ANY($1) AND p.pruned_through > $2
         ORDER BY p.channel",
    )
    .bind(channels)
    .bind(after)
    .fetch_all(pool)
    .await?)
}

/// What is stored per channel.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelStats {
    pub channel: String,
    pub count: i64,
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
    /// Bytes of the messages' JSON text.
    pub bytes: i64,
    /// The highest id retention deleted, if it deleted any.
    pub pruned_through: Option<i64>,
}

/// Per-channel counts for every channel with messages or a pruning record (reads every message).
pub async fn stats(pool: &PgPool) -> ApiResult<Vec<ChannelStats>> {
    Ok(sqlx::query_as(
        "SELECT coalesce(s.channel, p.channel) AS channel, coalesce(s.n, 0) AS count,
                s.oldest, s.newest, coalesce(s.bytes, 0) AS bytes, p.pruned_through
         FROM (SELECT channel, count(*) AS n, min(id) AS oldest, max(id) AS newest,
                      sum(octet_length(data::text))::bigint AS bytes
               FROM events GROUP BY channel) s
         FULL JOIN event_channels_pruned p ON p.channel = s.channel
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}
