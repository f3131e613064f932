//! Rate limits as token buckets: timed metadata posted to the API and sent by publishers.

use std::time::{Duration, Instant};

/// A token bucket: holds up to `capacity` tokens, refills at `rate` tokens per second, and a
/// post spends one. Time is passed in so that callers (and tests) own the clock.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32) -> Self {
        let capacity = f64::from(burst);
        Self { rate, capacity, tokens: capacity, last: None }
    }

    /// Spends a token at `now`, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        }
        // Requests that read the clock before another took the lock arrive slightly out of
        // order; never move the refill point backwards or that interval would be paid twice.
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}
