//! `server_settings`: deployment-wide values generated once.

use sqlx::PgPool;

use crate::error::ApiResult;

/// Returns the stored value of `key`, storing `candidate` first if there is none. Every instance
/// on the database gets the same answer, whoever wrote it first.
pub async fn get_or_init(pool: &PgPool, key: &str, candidate: &str) -> ApiResult<String> {
    sqlx::query(
        "INSERT INTO server_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(candidate)
    .execute(pool)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT value FROM server_settings WHERE key = $1")
            .bind(key)
            .fetch_one(pool)
            .await?,
    )
}
