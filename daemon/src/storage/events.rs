//! `events`, `event_head` and `event_batches`: the stored messages of all channels.

use sqlx::PgPool;
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
}

const COLUMNS: &str = "id, created, name, author, channel, data::text AS data";

/// Appends a batch in one statement (one transaction, one NOTIFY); returns the first id and the
/// shared `created` time. Ids are `first .. first + len`.
pub async fn append(
    pool: &PgPool,
    batch: Uuid,
    instance: &str,
    rows: &NewBatch,
) -> Result<(i64, OffsetDateTime), sqlx::Error> {
    sqlx::query_as("SELECT o_first, o_created FROM append_events($1, $2, $3, $4, $5, $6)")
        .bind(batch)
        .bind(instance)
        .bind(&rows.names)
        .bind(&rows.authors)
        .bind(&rows.channels)
        .bind(&rows.data)
        .fetch_one(pool)
        .await
}

/// Where a batch was stored, if it was (the writer asks after losing its connection mid-commit).
pub async fn batch_outcome(
    pool: &PgPool,
    batch: Uuid,
) -> Result<Option<(i64, OffsetDateTime)>, sqlx::Error> {
    sqlx::query_as("SELECT first_id, created FROM event_batches WHERE batch = $1")
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

const HISTORY_WHERE: &str = "channel = $1 AND ($2::bigint IS NULL OR id < $2) \
                             AND ($3::bigint IS NULL OR id > $3)";

pub async fn history_count(pool: &PgPool, f: &HistoryFilter) -> ApiResult<u64> {
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM events WHERE {HISTORY_WHERE}"
    )))
    .bind(&f.channel)
    .bind(f.before)
    .bind(f.after)
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// One page of history, newest first.
pub async fn history(
    pool: &PgPool,
    f: &HistoryFilter,
    offset: u64,
    limit: u32,
) -> ApiResult<Vec<EventRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM events WHERE {HISTORY_WHERE} ORDER BY id DESC OFFSET $4 LIMIT $5"
    )))
    .bind(&f.channel)
    .bind(f.before)
    .bind(f.after)
    .bind(offset.min(i64::MAX as u64) as i64)
    .bind(limit as i64)
    .fetch_all(pool)
    .await?)
}
