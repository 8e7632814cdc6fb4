//! A fixed-window counter of failed sign-ins, per key (an account lookup, a client address).
//! In memory on each node: with N nodes an attacker gets at most N times the budget, which the
//! argon2 cost per attempt still keeps small.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most tracked keys; the table is pruned of expired windows (or cleared) past this.
const MAX_KEYS: usize = 100_000;

/// Counts failures per key within a window.
pub struct RateLimiter {
    max_failures: u32,
    window: Duration,
    entries: Mutex<HashMap<String, (u32, Instant)>>,
}

impl RateLimiter {
    /// A limiter allowing `max_failures` per `window`.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        // Entries are plain counters; a panic elsewhere cannot leave them inconsistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(seconds)` until the window ends if `key` has used up its failures.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let entries = self.lock();
        match entries.get(key) {
            Some((n, start)) if *n >= self.max_failures && start.elapsed() < self.window => {
                Err((self.window - start.elapsed()).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Records a failure of `key`.
    pub fn fail(&self, key: &str) {
        let mut entries = self.lock();
        if entries.len() >= MAX_KEYS {
            let window = self.window;
            entries.retain(|_, (_, start)| start.elapsed() < window);
            if entries.len() >= MAX_KEYS {
                entries.clear();
            }
        }
        let entry = entries.entry(key.to_owned()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 = entry.0.saturating_add(1);
    }

    /// Forgets `key`'s failures (after a success).
    pub fn reset(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_budget_and_resets() {
        let l = RateLimiter::new(2, Duration::from_secs(60));
        assert!(l.check("a").is_ok());
        l.fail("a");
        l.fail("a");
        assert!(l.check("a").is_err());
        assert!(l.check("b").is_ok());
        l.reset("a");
        assert!(l.check("a").is_ok());
    }
}
