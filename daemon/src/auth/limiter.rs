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
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Key -> (window start, attempts counted in it).
    failures: HashMap<String, (Instant, u32)>,
    last_sweep: Option<Instant>,
}

/// One counted login attempt: hand it back with [`LoginLimiter::refund`] when the password was
/// right (or could not be judged); a failed attempt simply keeps counting.
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
            state: Arc::default(),
        }
    }

    fn user_key(name_key: &str) -> String {
        format!("user:{name_key}")
    }

    /// Whether failed logins from strangers used up the budget of this user name.
    pub fn user_exhausted(&self, name_key: &str) -> bool {
        let now = Instant::now();
        let Ok(state) = self.state.lock() else {
            return true;
        };
        state
            .failures
            .get(&Self::user_key(name_key))
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
        let mut state = self
            .state
            .lock()
            .map_err(|_| ApiError::internal(anyhow::anyhow!("limiter poisoned")))?;
        self.sweep(&mut state, now);
        let map = &mut state.failures;
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

    /// Past [`MAX_KEYS`], at most once a second: forgets ended windows and, if that is not
    /// enough, keys with a single attempt (the cheapest for a rotating attacker to create).
    fn sweep(&self, state: &mut State, now: Instant) {
        if state.failures.len() <= MAX_KEYS
            || state
                .last_sweep
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        state.last_sweep = Some(now);
        let window = self.window;
        state
            .failures
            .retain(|_, (start, _)| now.duration_since(*start) < window);
        if state.failures.len() > MAX_KEYS {
            state.failures.retain(|_, (_, n)| *n > 1);
        }
    }

    /// Takes an attempt off the counters it was counted in (while their window lasts): its
    /// password was right, or it could not be judged (busy hasher, database away).
    pub fn refund(&self, attempt: Attempt) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        for (key, window_start) in attempt.keys {
            if let Some(entry) = state.failures.get_mut(&key)
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
            l.refund(a);
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

#[cfg(test)]
mod sweep_tests {
    use super::*;

    #[test]
    fn a_full_map_forgets_single_attempts_but_keeps_repeated_guessers() {
        let l = LoginLimiter::new(&LoginLimitSettings {
            max_failures: 3,
            max_failures_per_address: 1_000_000,
            max_failures_per_user: 1_000_000,
            window: 3600,
        });
        let _ = l.begin("admin", "guesser", false).unwrap();
        let _ = l.begin("admin", "guesser", false).unwrap();
        for i in 0..MAX_KEYS / 2 {
            let _ = l.begin(&format!("n{i}"), "rotating", false).unwrap();
        }
        assert!(l.state.lock().unwrap().failures.len() <= MAX_KEYS + 3);
        let _ = l.begin("admin", "guesser", false).unwrap();
        assert!(
            l.begin("admin", "guesser", false).is_err(),
            "the repeated guesser's count survived the sweep"
        );
    }
}
