//! Per-user limits of one instance: open subscribers and a token bucket for messages.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(burst: u32, now: Instant) -> Self {
        Self {
            tokens: burst as f64,
            last: now,
        }
    }

    pub fn try_take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f64).min(burst.max(1) as f64);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate as f64 >= burst as f64
    }
}

/// What one user shares across their subscribers.
#[derive(Debug)]
pub struct UserShare {
    pub(super) bucket: Mutex<TokenBucket>,
    connections: Mutex<usize>,
}

#[derive(Default)]
pub struct Users {
    map: Mutex<HashMap<String, Arc<UserShare>>>,
}

impl Users {
    /// Counts a new subscriber of `user`; `None` when the user is at `max` already.
    pub fn admit(&self, user: &str, max: usize, burst: u32) -> Option<Arc<UserShare>> {
        let mut map = self.map.lock().ok()?;
        let share = map
            .entry(user.to_string())
            .or_insert_with(|| {
                Arc::new(UserShare {
                    bucket: Mutex::new(TokenBucket::new(burst, Instant::now())),
                    connections: Mutex::new(0),
                })
            })
            .clone();
        let mut n = share.connections.lock().ok()?;
        if *n >= max {
            return None;
        }
        *n += 1;
        drop(n);
        Some(share)
    }

    /// The user's share without counting a subscriber (HTTP publish takes from the same bucket).
    pub fn share(&self, user: &str, burst: u32) -> Arc<UserShare> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(user.to_string())
            .or_insert_with(|| {
                Arc::new(UserShare {
                    bucket: Mutex::new(TokenBucket::new(burst, Instant::now())),
                    connections: Mutex::new(0),
                })
            })
            .clone()
    }

    pub fn release(share: &UserShare) {
        if let Ok(mut n) = share.connections.lock() {
            *n = n.saturating_sub(1);
        }
    }

    /// Forgets users without subscribers whose bucket has refilled (so reconnecting gains nothing).
    pub fn purge(&self, rate: u32, burst: u32) {
        let now = Instant::now();
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, share| {
                let idle = share.connections.lock().map(|n| *n == 0).unwrap_or(true);
                let full = share
                    .bucket
                    .lock()
                    .map(|b| b.is_full(rate, burst, now))
                    .unwrap_or(true);
                !(idle && full)
            });
        }
    }
}

impl UserShare {
    pub fn try_send(&self, rate: u32, burst: u32) -> bool {
        self.bucket
            .lock()
            .map(|mut b| b.try_take(rate, burst, Instant::now()))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, t0);
        assert!((0..3).all(|_| b.try_take(2, 3, t0)));
        assert!(!b.try_take(2, 3, t0));
        assert!(b.try_take(2, 3, t0 + Duration::from_millis(500)));
        assert!(!b.try_take(2, 3, t0 + Duration::from_millis(600)));
        assert!(b.is_full(2, 3, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn users_are_limited_and_released() {
        let users = Users::default();
        let a = users.admit("u", 2, 5).unwrap();
        let b = users.admit("u", 2, 5).unwrap();
        assert!(users.admit("u", 2, 5).is_none());
        Users::release(&a);
        assert!(users.admit("u", 2, 5).is_some());
        drop(b);
    }
}
