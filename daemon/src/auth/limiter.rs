//! Failed-login limits per user name and per client address (fixed windows, in memory).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::error::ApiError;

#[derive(Clone)]
pub struct LoginLimiter {
    max: u32,
    window: Duration,
    failures: Arc<Mutex<HashMap<String, (Instant, u32)>>>,
}

impl LoginLimiter {
    pub fn new(max: u32, window_secs: u64) -> Self {
        Self {
            max,
            window: Duration::from_secs(window_secs.max(1)),
            failures: Arc::default(),
        }
    }

    /// 429 when any of `keys` used up its failures in the current window.
    pub fn check(&self, keys: &[String]) -> Result<(), ApiError> {
        let now = Instant::now();
        let map = self
            .failures
            .lock()
            .map_err(|_| ApiError::internal(anyhow::anyhow!("limiter poisoned")))?;
        for key in keys {
            if let Some((start, count)) = map.get(key)
                && now.duration_since(*start) < self.window
                && *count >= self.max
            {
                let retry_after = (self.window - now.duration_since(*start)).as_secs().max(1);
                return Err(ApiError::TooManyRequests {
                    message: "too many failed logins; try again later".into(),
                    retry_after,
                });
            }
        }
        Ok(())
    }

    pub fn record_failure(&self, keys: &[String]) {
        let now = Instant::now();
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        for key in keys {
            let entry = map.entry(key.clone()).or_insert((now, 0));
            if now.duration_since(entry.0) >= self.window {
                *entry = (now, 0);
            }
            entry.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_trips_after_max_failures_for_either_key() {
        let l = LoginLimiter::new(2, 60);
        let keys = vec!["user:bob".to_string(), "ip:1.2.3.4".to_string()];
        assert!(l.check(&keys).is_ok());
        l.record_failure(&keys);
        l.record_failure(&keys);
        assert!(
            matches!(l.check(&keys), Err(ApiError::TooManyRequests { retry_after, .. }) if retry_after > 0)
        );
        assert!(l.check(&["ip:1.2.3.4".to_string()]).is_err());
        assert!(l.check(&["user:alice".to_string()]).is_ok());
    }
}
