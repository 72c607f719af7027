//! `revoked_tokens` and `auth_epoch`.

use sqlx::{PgPool, Postgres, Transaction};

use crate::error::{ApiError, ApiResult};

pub async fn revoke(pool: &PgPool, jti: &str, exp: i64) -> ApiResult<()> {
    let jti =
        uuid::Uuid::parse_str(jti).map_err(|_| ApiError::Unauthorized("invalid token".into()))?;
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, to_timestamp($2)) ON CONFLICT DO NOTHING")
        .bind(jti)
        .bind(exp as f64)
        .execute(&mut *tx)
        .await?;
    bump_epoch(&mut tx).await?;
    tx.commit().await?;
    Ok(())
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

/// The current auth epoch: when it moves, open sockets re-check their principals.
pub async fn epoch(pool: &PgPool) -> ApiResult<i64> {
    Ok(sqlx::query_scalar("SELECT n FROM auth_epoch")
        .fetch_one(pool)
        .await?)
}

/// Drops revocations of tokens that have expired anyway.
pub async fn purge_expired(pool: &PgPool) -> ApiResult<u64> {
    Ok(
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < now()")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
