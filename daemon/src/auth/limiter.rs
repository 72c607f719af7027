//! Failed-login limits (fixed windows, in memory, per instance), after OWASP's guidance: an
//! attempt is counted *before* its password is verified, so parallel guesses cannot slip past the
//! limit, and refunded when it succeeds. Three counters:
//!
//! - per (user name, client address): the tight one, a guesser's own budget;
//! - per client address: one address spraying many names;
//! - per user name, over all addresses that never logged in as that user: a distributed guesser.
//!   A client address the user logged in from before is not subject to it, so strangers cannot
//!   lock a user out from where the user works.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{error::ApiError, settings::LoginLimitSettings};

#[derive(Clone)]
pub struct LoginLimiter {
    limits: LoginLimitSettings,
    window: Duration,
    failures: Arc<Mutex<HashMap<String, (Instant, u32)>>>,
}

/// One counted login attempt: hand it back with [`LoginLimiter::succeeded`] when the password
/// was right; a failed attempt simply keeps counting.
#[must_use]
pub struct Attempt {
    keys: Vec<(String, Instant)>,
}

const MAX_KEYS: usize = 100_000;

impl LoginLimiter {
    pub fn new(limits: &LoginLimitSettings) -> Self {
        Self {
            limits: limits.clone(),
            window: Duration::from_secs(limits.window.max(1)),
            failures: Arc::default(),
        }
    }

    fn user_key(name_key: &str) -> String {
        format!("user:{name_key}")
    }

    /// Whether failed logins from strangers used up the budget of this user name.
    pub fn user_exhausted(&self, name_key: &str) -> bool {
        let now = Instant::now();
        let Ok(map) = self.failures.lock() else {
            return true;
        };
        map.get(&Self::user_key(name_key))
            .is_some_and(|(start, n)| {
                now.duration_since(*start) < self.window && *n >= self.limits.max_failures_per_user
            })
    }

    /// Counts an attempt for `name_key` from `addr` before it is verified, or refuses it with 429
    /// when a counter is used up. `known_source`: the user logged in from `addr` before, so the
    /// per-user counter neither applies nor counts.
    pub fn begin(
        &self,
        name_key: &str,
        addr: &str,
        known_source: bool,
    ) -> Result<Attempt, ApiError> {
        let now = Instant::now();
        let mut keys = vec![
            (
                format!("pair:{name_key}\u{0}{addr}"),
                self.limits.max_failures,
            ),
            (format!("addr:{addr}"), self.limits.max_failures_per_address),
        ];
        if !known_source {
            keys.push((Self::user_key(name_key), self.limits.max_failures_per_user));
        }
        let mut map = self
            .failures
            .lock()
            .map_err(|_| ApiError::internal(anyhow::anyhow!("limiter poisoned")))?;
        if map.len() > MAX_KEYS {
            let window = self.window;
            map.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        for (key, max) in &keys {
            if let Some((start, count)) = map.get(key)
                && now.duration_since(*start) < self.window
                && count >= max
            {
                let retry_after = (self.window - now.duration_since(*start)).as_secs().max(1);
                return Err(ApiError::TooManyRequests {
                    message: "too many failed logins; try again later".into(),
                    retry_after,
                });
            }
        }
        let mut counted = Vec::with_capacity(keys.len());
        for (key, _) in keys {
            let entry = map.entry(key.clone()).or_insert((now, 0));
            if now.duration_since(entry.0) >= self.window {
                *entry = (now, 0);
            }
            entry.1 += 1;
            counted.push((key, entry.0));
        }
        Ok(Attempt { keys: counted })
    }

    /// Takes a successful attempt off the counters it was counted in (while their window lasts).
    pub fn succeeded(&self, attempt: Attempt) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        for (key, window_start) in attempt.keys {
            if let Some(entry) = map.get_mut(&key)
                && entry.0 == window_start
            {
                entry.1 = entry.1.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(pair: u32, addr: u32, user: u32) -> LoginLimiter {
        LoginLimiter::new(&LoginLimitSettings {
            max_failures: pair,
            max_failures_per_address: addr,
            max_failures_per_user: user,
            window: 60,
        })
    }

    fn is_429(r: Result<Attempt, ApiError>) -> bool {
        matches!(r, Err(ApiError::TooManyRequests { retry_after, .. }) if retry_after > 0)
    }

    #[test]
    fn attempts_count_before_they_are_verified() {
        let l = limiter(3, 100, 100);
        // Three attempts in flight at once, none finished: the fourth is refused already.
        let _in_flight: Vec<Attempt> = (0..3)
            .map(|_| l.begin("bob", "a", false).unwrap())
            .collect();
        assert!(is_429(l.begin("bob", "a", false)));
        assert!(
            l.begin("bob", "b", false).is_ok(),
            "another address has its own pair budget"
        );
    }

    #[test]
    fn a_success_is_refunded() {
        let l = limiter(2, 100, 100);
        for _ in 0..10 {
            let a = l.begin("bob", "a", false).unwrap();
            l.succeeded(a);
        }
        assert!(l.begin("bob", "a", false).is_ok());
    }

    #[test]
    fn the_address_budget_spans_names() {
        let l = limiter(100, 3, 100);
        for name in ["a", "b", "c"] {
            let _ = l.begin(name, "x", false).unwrap();
        }
        assert!(is_429(l.begin("d", "x", false)));
        assert!(l.begin("d", "y", false).is_ok());
    }

    #[test]
    fn strangers_exhaust_the_user_budget_but_not_for_known_sources() {
        let l = limiter(100, 100, 3);
        for addr in ["s1", "s2", "s3"] {
            let _ = l.begin("admin", addr, false).unwrap();
        }
        assert!(l.user_exhausted("admin"));
        assert!(is_429(l.begin("admin", "s4", false)));
        assert!(l.begin("admin", "home", true).is_ok());
        assert!(!l.user_exhausted("alice"));
    }
}
