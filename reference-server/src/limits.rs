//! Abuse limits: token buckets keyed by who is asking.
//!
//! Three budgets beside the per-connection send allowance (in `session`): logins
//! and signups per source address and per username (password guessing and
//! account spam; each attempt costs an Argon2id hash), and sends per user across
//! all of that user's devices (a user cannot multiply its send rate by opening
//! more connections). Past a budget the answer is `rate_limited` (429).
//!
//! A bucket is two numbers, refilled lazily when its key asks again. The map of
//! buckets is bounded: past [`MAX_KEYS`] keys, the buckets that have refilled to
//! full (their key has been quiet long enough to have its whole burst back) are
//! dropped, since a fresh bucket is exactly the same; if every bucket is busy, the
//! oldest-looking half goes, which can only make the limit more lenient.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

use parking_lot::Mutex;

/// Most keys one limiter remembers before it forgets quiet ones.
pub const MAX_KEYS: usize = 100_000;

/// A rate: `per_sec` sustained, `burst` at once; `per_sec == 0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Rate {
            per_sec: per_sec as f64,
            burst: burst.max(1) as f64,
        }
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets by key.
pub struct Limiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(rate: Rate) -> Self {
        Limiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; false when its budget is spent.
    pub fn allow(&self, key: &K) -> bool {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &K, now: Instant) -> bool {
        let rate = self.rate;
        if rate.per_sec == 0.0 {
            return true;
        }
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            forget_quiet(&mut buckets, rate, now);
        }
        let b = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: rate.burst,
            last: now,
        });
        b.tokens = refill(*b, rate, now);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn refill(b: Bucket, rate: Rate, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
    (b.tokens + elapsed * rate.per_sec).min(rate.burst)
}

/// Drops buckets that are full again; if none is, the half least recently used.
fn forget_quiet<K: Hash + Eq + Clone>(buckets: &mut HashMap<K, Bucket>, rate: Rate, now: Instant) {
    buckets.retain(|_, b| refill(*b, rate, now) < rate.burst);
    if buckets.len() >= MAX_KEYS {
        let mut ages: Vec<Instant> = buckets.values().map(|b| b.last).collect();
        let (_, median, _) = ages.select_nth_unstable(buckets.len() / 2);
        let median = *median;
        buckets.retain(|_, b| b.last > median);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_gets_its_burst_then_its_rate_and_keys_are_apart() {
        let l = Limiter::new(Rate::new(10, 3));
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.allow_at(&"a", t0)));
        assert!(!l.allow_at(&"a", t0));
        assert!(l.allow_at(&"b", t0), "another key has its own bucket");
        assert!(l.allow_at(&"a", t0 + Duration::from_millis(100)));
        assert!(!l.allow_at(&"a", t0 + Duration::from_millis(100)));
    }

    #[test]
    fn zero_means_no_limit_and_the_map_stays_bounded() {
        let free = Limiter::new(Rate::new(0, 1));
        assert!((0..1000).all(|_| free.allow(&1u32)));
        let l = Limiter::new(Rate::new(1, 2));
        let t0 = Instant::now();
        for k in 0..(MAX_KEYS as u64 + 10) {
            l.allow_at(&k, t0);
        }
        assert!(l.buckets.lock().len() <= MAX_KEYS);
    }
}
