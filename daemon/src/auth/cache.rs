//! Verified principals, kept in memory so a token check costs no query while nothing changed.
//!
//! Every change that can end a token or alter rights commits a `NOTIFY core4_auth` with it (see
//! `storage::tokens::bump_epoch`); each instance listens and drops the whole cache. The cache is
//! only used while that listener is connected, and a generation counter keeps a row read before
//! an invalidation from being stored after it.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{PgPool, postgres::PgListener};

use crate::storage::roles::PrincipalRow;

pub const CHANNEL: &str = "core4_auth";
/// A safety net on top of invalidation.
const TTL: Duration = Duration::from_secs(30);
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct PrincipalCache {
    map: Mutex<HashMap<String, (PrincipalRow, Instant)>>,
    generation: AtomicU64,
    enabled: AtomicBool,
    /// Woken at every invalidation, so open sockets are re-checked at once, not at the next poll.
    changed: tokio::sync::Notify,
}

impl PrincipalCache {
    pub fn get(&self, jti: &str) -> Option<PrincipalRow> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        let map = self.map.lock().ok()?;
        map.get(jti)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(row, _)| row.clone())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Stores `row` unless the cache was invalidated since `generation` was read.
    pub fn insert(&self, generation: u64, jti: &str, row: &PrincipalRow) {
        if !self.enabled.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut map) = self.map.lock() else { return };
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(jti.to_string(), (row.clone(), Instant::now()));
    }

    pub fn invalidate(&self) {
        if let Ok(mut map) = self.map.lock() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            map.clear();
        }
        self.changed.notify_one();
    }

    /// Resolves after the next invalidation (or at once if one happened since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn set_enabled(&self, on: bool) {
        self.invalidate();
        self.enabled.store(on, Ordering::Release);
    }

    /// Listens for invalidations until the pool closes; reconnects after a drop, with the cache
    /// off while disconnected (a missed notification must not leave a revoked token usable).
    pub async fn listen(&self, pool: PgPool) {
        loop {
            if pool.is_closed() {
                self.set_enabled(false);
                return;
            }
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "auth invalidation listener cannot connect");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if listener.listen(CHANNEL).await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            self.set_enabled(true);
            while let Ok(Some(_)) = listener.try_recv().await {
                self.invalidate();
            }
            self.set_enabled(false);
            if pool.is_closed() {
                return; // shutting down
            }
            tracing::warn!("auth invalidation listener lost its connection; reconnecting");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> PrincipalRow {
        PrincipalRow {
            name: name.into(),
            is_active: true,
            token_version: 0,
            revoked: false,
            perm_total: vec![],
            role_total: vec![],
        }
    }

    #[test]
    fn a_row_read_before_an_invalidation_is_not_stored_after_it() {
        let cache = PrincipalCache::default();
        cache.set_enabled(true);
        let generation = cache.generation();
        cache.invalidate();
        cache.insert(generation, "jti", &row("a"));
        assert!(cache.get("jti").is_none());
        cache.insert(cache.generation(), "jti", &row("a"));
        assert_eq!(cache.get("jti").unwrap().name, "a");
    }

    #[test]
    fn a_disabled_cache_stores_and_answers_nothing() {
        let cache = PrincipalCache::default();
        cache.insert(cache.generation(), "jti", &row("a"));
        assert!(cache.get("jti").is_none());
        cache.set_enabled(true);
        cache.insert(cache.generation(), "jti", &row("a"));
        cache.set_enabled(false);
        assert!(cache.get("jti").is_none());
    }
}
