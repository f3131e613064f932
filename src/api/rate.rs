//! Per-channel rate limiting of timed-metadata posts: a token bucket per configured channel.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::rate::TokenBucket;

/// One bucket per configured channel, created up front: the set follows the configuration (see
/// [`ChannelLimits::configure`]), so requests naming other channels never grow it.
pub struct ChannelLimits {
    buckets: RwLock<Buckets>,
}

struct Buckets {
    rate: f64,
    burst: u32,
    by_channel: HashMap<String, Mutex<TokenBucket>>,
}

/// What the limiter decided for one post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Over the rate; a token is available again after this long.
    Limited(Duration),
}

impl ChannelLimits {
    pub fn new<'a>(channels: impl IntoIterator<Item = &'a str>, rate: f64, burst: u32) -> Self {
        let limits = Self { buckets: RwLock::new(Buckets { rate, burst, by_channel: HashMap::new() }) };
        limits.configure(channels, rate, burst);
        limits
    }

    /// Follows a new configuration: buckets for new channels, none for removed ones. A channel
    /// that stays keeps its bucket (a reload is no way around the limit) unless the rate or burst
    /// changed.
    pub fn configure<'a>(&self, channels: impl IntoIterator<Item = &'a str>, rate: f64, burst: u32) {
        let mut b = crate::sync::write(&self.buckets);
        let same_limits = b.rate == rate && b.burst == burst;
        let mut by_channel = HashMap::new();
        for c in channels {
            let bucket = match b.by_channel.remove(c) {
                Some(kept) if same_limits => kept,
                _ => Mutex::new(TokenBucket::new(rate, burst)),
            };
            by_channel.insert(c.to_owned(), bucket);
        }
        *b = Buckets { rate, burst, by_channel };
    }

    pub fn knows(&self, channel: &str) -> bool {
        self.read().by_channel.contains_key(channel)
    }

    fn read(&self) -> RwLockReadGuard<'_, Buckets> {
        crate::sync::read(&self.buckets)
    }

    /// Admits or limits one post to `channel`; `None` when the channel is not configured.
    pub fn admit(&self, channel: &str, now: Instant) -> Option<Admission> {
        let buckets = self.read();
        let bucket = buckets.by_channel.get(channel)?;
        // The bucket is plain numbers that are consistent after any panic, so a poisoned lock
        // is still usable.
        let mut bucket = crate::sync::lock(bucket);
        Some(match bucket.take(now) {
            Ok(()) => Admission::Admitted,
            Err(wait) => Admission::Limited(wait),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn burst_then_refill_at_the_configured_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5.0, 5);
        for _ in 0..5 {
            assert_eq!(b.take(t0), Ok(()));
        }
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, 200 * MS);
        // One token comes back every 200 ms.
        assert!(b.take(t0 + 150 * MS).is_err());
        assert_eq!(b.take(t0 + 250 * MS), Ok(()));
        assert!(b.take(t0 + 260 * MS).is_err());
        // Idle time refills to the burst and no further.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn a_clock_read_out_of_order_does_not_refill_twice() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, 1);
        assert_eq!(b.take(t0 + Duration::from_secs(1)), Ok(()));
        assert!(b.take(t0).is_err());
        assert!(b.take(t0 + Duration::from_millis(1500)).is_err());
        assert_eq!(b.take(t0 + Duration::from_secs(2)), Ok(()));
    }

    #[test]
    fn slow_rates_report_the_wait_for_a_whole_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.5, 1);
        assert_eq!(b.take(t0), Ok(()));
        assert_eq!(b.take(t0), Err(Duration::from_secs(2)));
        assert_eq!(b.take(t0 + Duration::from_secs(1)), Err(Duration::from_secs(1)));
    }

    #[test]
    fn channels_have_separate_buckets_and_unknown_ones_none() {
        let t0 = Instant::now();
        let limits = ChannelLimits::new(["a", "b"], 1.0, 1);
        assert_eq!(limits.admit("a", t0), Some(Admission::Admitted));
        assert!(matches!(limits.admit("a", t0), Some(Admission::Limited(_))));
        assert_eq!(limits.admit("b", t0), Some(Admission::Admitted));
        assert_eq!(limits.admit("c", t0), None);
        assert!(limits.knows("a") && !limits.knows("c"));
    }

    #[test]
    fn a_new_configuration_adds_and_removes_buckets_and_keeps_the_spent_ones() {
        let t0 = Instant::now();
        let limits = ChannelLimits::new(["a", "b"], 1.0, 1);
        assert_eq!(limits.admit("a", t0), Some(Admission::Admitted));
        limits.configure(["a", "c"], 1.0, 1);
        assert!(matches!(limits.admit("a", t0), Some(Admission::Limited(_))), "a reload does not refill a bucket");
        assert_eq!(limits.admit("b", t0), None);
        assert_eq!(limits.admit("c", t0), Some(Admission::Admitted));
        // New limits start every bucket afresh.
        limits.configure(["a", "c"], 2.0, 2);
        assert_eq!(limits.admit("a", t0), Some(Admission::Admitted));
        assert_eq!(limits.admit("a", t0), Some(Admission::Admitted));
        assert!(matches!(limits.admit("a", t0), Some(Admission::Limited(_))));
    }
}
