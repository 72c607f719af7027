//! Plain async functions over the pool or a transaction, one file per table.

pub mod events;
pub mod roles;
pub mod server;
pub mod tokens;

/// Is this a unique violation (PostgreSQL 23505)?
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
}
