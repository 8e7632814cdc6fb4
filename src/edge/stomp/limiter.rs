//! The SEND rate per user, across all of a user's sessions on this node: one token bucket per
//! user in a bounded map. Time is passed in, so the rules are tested with simulated time.

use neulbi_domain::UserId;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Users tracked at once before idle buckets are evicted.
pub const DEFAULT_MAX_USERS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug)]
struct Buckets {
    by_user: HashMap<UserId, Bucket>,
    max_users: usize,
}

/// A shared, cheaply cloned handle to per-user token buckets. Sessions that hold clones of one
/// limiter share each user's budget, so opening more connections does not multiply it.
#[derive(Clone)]
pub struct SendLimiter {
    inner: Arc<Mutex<Buckets>>,
}

impl Default for SendLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_USERS)
    }
}

impl fmt::Debug for SendLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SendLimiter({} users)", self.buckets().by_user.len())
    }
}

impl SendLimiter {
    /// A limiter tracking at most `max_users` buckets (at least one).
    pub fn new(max_users: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Buckets {
                by_user: HashMap::new(),
                max_users: max_users.max(1),
            })),
        }
    }

    /// Takes one token from `user`'s bucket (holding `burst`, refilled at `per_second`);
    /// false when it is empty.
    ///
    /// When the map is full, buckets that have refilled completely are dropped first (they are
    /// the same as a new bucket); if none has, the one refilled longest ago goes, which at
    /// worst grants that user a fresh burst early.
    pub fn try_take(&self, user: UserId, burst: u32, per_second: u32, now: Instant) -> bool {
        let burst = f64::from(burst.max(1));
        let rate = f64::from(per_second.max(1));
        let mut buckets = self.buckets();
        if !buckets.by_user.contains_key(&user) && buckets.by_user.len() >= buckets.max_users {
            let full_after = burst / rate;
            buckets.by_user.retain(|_, b| {
                now.saturating_duration_since(b.refilled).as_secs_f64() < full_after
            });
            if buckets.by_user.len() >= buckets.max_users
                && let Some(oldest) = buckets
                    .by_user
                    .iter()
                    .min_by_key(|(_, b)| b.refilled)
                    .map(|(u, _)| *u)
            {
                buckets.by_user.remove(&oldest);
            }
        }
        let bucket = buckets.by_user.entry(user).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        if now > bucket.refilled {
            bucket.refilled = now;
        }
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, Buckets> {
        // Each update leaves the map consistent, so a panicked holder cannot corrupt it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use uuid::Uuid;

    fn user(n: u128) -> UserId {
        UserId::from_uuid(Uuid::from_u128(n))
    }

    #[test]
    fn clones_share_one_budget_per_user() {
        let now = Instant::now();
        let a = SendLimiter::default();
        let b = a.clone();
        assert!(a.try_take(user(1), 2, 1, now));
        assert!(b.try_take(user(1), 2, 1, now));
        assert!(!a.try_take(user(1), 2, 1, now), "the burst is shared");
        assert!(b.try_take(user(2), 2, 1, now), "other users are separate");
        assert!(a.try_take(user(1), 2, 1, now + Duration::from_secs(1)));
    }

    #[test]
    fn the_map_is_bounded() {
        let now = Instant::now();
        let limiter = SendLimiter::new(2);
        assert!(limiter.try_take(user(1), 1, 1, now));
        assert!(limiter.try_take(user(2), 1, 1, now));
        // Full and nobody refilled yet: the oldest goes.
        let later = now + Duration::from_millis(10);
        assert!(limiter.try_take(user(3), 1, 1, later));
        assert_eq!(limiter.buckets().by_user.len(), 2);
        // After the refill time every bucket is full and may go.
        let much_later = now + Duration::from_secs(5);
        assert!(limiter.try_take(user(4), 1, 1, much_later));
        assert_eq!(limiter.buckets().by_user.len(), 1);
    }
}
