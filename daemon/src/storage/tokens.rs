//! `revoked_sessions` and `auth_epoch`.

use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;

use crate::error::{ApiError, ApiResult};

/// Revokes a session until every token of it has expired (a token refreshed just now lives
/// `lifetime_secs`). Only principal caches hear of it (a cheap flush); open sockets find it through
/// [`revoked_since`], so a logout does not make every instance re-verify every socket.
pub async fn revoke(pool: &PgPool, sid: &str, lifetime_secs: i64) -> ApiResult<()> {
    let sid =
        uuid::Uuid::parse_str(sid).map_err(|_| ApiError::Unauthorized("invalid token".into()))?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO revoked_sessions (sid, expires_at)
         VALUES ($1, now() + make_interval(secs => $2)) ON CONFLICT DO NOTHING",
    )
    .bind(sid)
    .bind(lifetime_secs as f64)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify('core4_auth', 'revoke')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Sessions revoked at or after `since` (database time), and the latest revocation time seen.
pub async fn revoked_since(
    pool: &PgPool,
    since: OffsetDateTime,
) -> ApiResult<(Vec<String>, Option<OffsetDateTime>)> {
    let rows: Vec<(uuid::Uuid, OffsetDateTime)> = sqlx::query_as(
        "SELECT sid, revoked_at FROM revoked_sessions WHERE revoked_at >= $1 ORDER BY revoked_at",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let latest = rows.last().map(|(_, at)| *at);
    Ok((
        rows.into_iter().map(|(sid, _)| sid.to_string()).collect(),
        latest,
    ))
}

/// Marks that tokens or permissions changed; commit it with the change itself. Its NOTIFY
/// reaches the principal cache of every instance at commit.
pub async fn bump_epoch(tx: &mut Transaction<'_, Postgres>) -> ApiResult<()> {
    sqlx::query("UPDATE auth_epoch SET n = n + 1")
        .execute(&mut **tx)
        .await?;
    sqlx::query("SELECT pg_notify('core4_auth', '')")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Drops revocations whose tokens have all expired, with an hour's margin for instances whose
/// clocks run behind the database's.
pub async fn purge_expired(pool: &PgPool) -> ApiResult<u64> {
    Ok(
        sqlx::query("DELETE FROM revoked_sessions WHERE expires_at < now() - interval '1 hour'")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
