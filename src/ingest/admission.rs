//! Who may hold an RTMP connection open.
//!
//! A connection whose publish has been accepted is a publisher and keeps its place. Every other
//! connection is *pending*: it is bounded in all (`rtmp.max_pending`, and never more than
//! `rtmp.max_connections` less the publishers) and per address (`rtmp.max_pending_per_address`).
//! A new connection over either bound does not wait and is not refused: the pending connection
//! that has got least far ([`Stage`]), the oldest among equals, is closed to make room; one
//! admitted less than [`NEWCOMER_GRACE`] ago counts as handshaking at least, so that a newcomer
//! has time to show its progress. A flood of half-open, garbage or slow connections,
//! from one address or many, therefore only ever displaces itself, and an encoder that answers
//! the handshake promptly moves ahead of all of it within one round trip. Only when every place
//! is a publisher is a connection refused at accept.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::RtmpConfig;
use crate::metrics::Metrics;
use crate::sync::lock;

/// How far a pending connection has got. Ordered: a later stage is kept over an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// TCP accepted; nothing useful received yet.
    Accepted,
    /// The client's first handshake packet (C0+C1, RTMP spec §5.2.2) arrived and was answered, or
    /// (RTMPS) the TLS handshake is done.
    Handshaking,
    /// The RTMP handshake is complete.
    Handshaken,
    /// `connect` was accepted; the client may now ask to publish.
    Connected,
}

/// The bounds, from `rtmp.*`.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Connections open at once, publishers included.
    pub total: usize,
    /// Pending connections at once.
    pub pending: usize,
    /// Pending connections from one address (IPv6: one /64) at once.
    pub per_address: usize,
    /// Publishes with an unknown key one address may attempt per minute, in bursts of as many.
    pub key_failures_per_minute: u32,
}

impl AdmissionLimits {
    pub fn new(config: &RtmpConfig) -> Self {
        Self {
            total: config.max_connections.max(1),
            pending: config.max_pending.max(1),
            per_address: config.max_pending_per_address.max(1),
            key_failures_per_minute: config.key_failures_per_minute.max(1),
        }
    }
}

/// Why a pending connection was closed to make room: the `reason` label of
/// `ladderd_rtmp_connections_dropped_total`, and the config key that bounded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Displaced {
    /// The address had `rtmp.max_pending_per_address` pending connections.
    Address,
    /// `rtmp.max_pending` (or `rtmp.max_connections`) pending connections were open.
    Pending,
}

impl Displaced {
    fn label(self) -> &'static str {
        match self {
            Displaced::Address => "pending_per_address",
            Displaced::Pending => "pending",
        }
    }
}

/// How long a newly admitted connection counts as handshaking, whatever it has sent: several
/// round trips, so that a real client is past the handshake by then.
pub const NEWCOMER_GRACE: Duration = Duration::from_millis(500);

/// Warnings about a full budget are repeated at most this often: a flood must not flood the log.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

pub struct Admission {
    limits: AdmissionLimits,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    keys: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Addresses whose key failures are remembered at once; beyond it, those whose bucket has
/// refilled are forgotten first (a fresh bucket is what an unknown address gets anyway).
const KEY_FAILURE_ADDRESSES: usize = 65_536;

/// A token bucket of key attempts for one address.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Whether the address was told it is throttled since the bucket last had a token.
    warned: bool,
}

impl Bucket {
    fn refill(&mut self, now: Instant, capacity: f64) {
        let per_second = capacity / 60.0;
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * per_second).min(capacity);
        self.at = now;
    }
}

#[derive(Default)]
struct State {
    /// Pending connections by (stage, arrival): the first entry is the one closed first.
    pending: BTreeMap<(Stage, u64), Pending>,
    per_address: HashMap<IpAddr, usize>,
    publishers: usize,
    arrivals: u64,
    last_warning: Option<Instant>,
}

struct Pending {
    address: IpAddr,
    admitted: Instant,
    close: CancellationToken,
}

/// The address a per-address bound counts against: an IPv4 address (IPv4-mapped IPv6 included),
/// or the /64 an IPv6 address is in (one host is commonly given a whole /64).
fn budget_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

impl Admission {
    pub fn new(limits: AdmissionLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { limits, metrics, state: Mutex::new(State::default()), keys: Mutex::new(HashMap::new()) })
    }

    /// Whether `peer` may try a stream key now: false once its unknown keys used up
    /// `rtmp.key_failures_per_minute`, until the bucket refills. A throttled address is refused
    /// without its key being looked at, so guessing cannot go faster than that.
    pub fn may_try_key(&self, peer: IpAddr) -> bool {
        let address = budget_address(peer);
        let capacity = f64::from(self.limits.key_failures_per_minute);
        let mut keys = lock(&self.keys);
        let Some(bucket) = keys.get_mut(&address) else { return true };
        bucket.refill(Instant::now(), capacity);
        if bucket.tokens >= 1.0 {
            bucket.warned = false;
            return true;
        }
        if !std::mem::replace(&mut bucket.warned, true) {
            tracing::warn!(
                %address,
                config_key = "rtmp.key_failures_per_minute",
                limit = self.limits.key_failures_per_minute,
                "RTMP publishes from this address are refused for now: too many unknown stream keys"
            );
        }
        false
    }

    /// Records a publish from `peer` refused for its key.
    pub fn key_failed(&self, peer: IpAddr) {
        let address = budget_address(peer);
        let capacity = f64::from(self.limits.key_failures_per_minute);
        let now = Instant::now();
        let mut keys = lock(&self.keys);
        if keys.len() >= KEY_FAILURE_ADDRESSES && !keys.contains_key(&address) {
            keys.retain(|_, b| {
                b.refill(now, capacity);
                b.tokens < capacity
            });
            if keys.len() >= KEY_FAILURE_ADDRESSES {
                // Every remembered address is still throttled: this many attackers are beyond
                // what a per-address bound can do, and the map must stay bounded.
                return;
            }
        }
        let bucket = keys.entry(address).or_insert(Bucket { tokens: capacity, at: now, warned: false });
        bucket.refill(now, capacity);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }

    /// A place for a connection from `peer`, making room if needed; `None` when every place is
    /// taken by a publisher.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Ticket> {
        let address = budget_address(peer);
        let mut state = lock(&self.state);
        let from_address = state.per_address.get(&address).copied().unwrap_or(0);
        if from_address >= self.limits.per_address {
            self.displace(&mut state, Displaced::Address, |p| p.address == address);
        } else {
            let pending_limit = self.limits.pending.min(self.limits.total.saturating_sub(state.publishers));
            if state.pending.len() >= pending_limit {
                if state.pending.is_empty() {
                    return None;
                }
                self.displace(&mut state, Displaced::Pending, |_| true);
            }
        }
        state.arrivals += 1;
        let key = (Stage::Accepted, state.arrivals);
        let close = CancellationToken::new();
        state.pending.insert(key, Pending { address, admitted: Instant::now(), close: close.clone() });
        *state.per_address.entry(address).or_insert(0) += 1;
        self.metrics.rtmp_pending_connections.set(state.pending.len() as i64);
        Some(Ticket { admission: self.clone(), address, place: Place::Pending(key), close })
    }

    /// Closes the least advanced, oldest pending connection that `which` picks. One in its
    /// [`NEWCOMER_GRACE`] counts as handshaking at least: it has had no time to show more.
    fn displace(&self, state: &mut State, why: Displaced, which: impl Fn(&Pending) -> bool) {
        let now = Instant::now();
        let rank = |&(stage, arrival): &(Stage, u64), p: &Pending| {
            let new = now.duration_since(p.admitted) < NEWCOMER_GRACE;
            (if new { stage.max(Stage::Handshaking) } else { stage }, arrival)
        };
        let victim = state.pending.iter().filter(|(_, p)| which(p)).min_by_key(|(k, p)| rank(k, p));
        let Some(&(stage, arrival)) = victim.map(|(k, _)| k) else { return };
        let Some(victim) = state.pending.remove(&(stage, arrival)) else { return };
        Self::forget_address(state, victim.address);
        victim.close.cancel();
        self.metrics.rtmp_connections_dropped.with_label_values(&[why.label()]).inc();
        if state.last_warning.is_none_or(|t| now.duration_since(t) >= WARNING_INTERVAL) {
            state.last_warning = Some(now);
            let (config_key, limit) = match why {
                Displaced::Address => ("rtmp.max_pending_per_address", self.limits.per_address),
                Displaced::Pending => ("rtmp.max_pending", self.limits.pending.min(self.limits.total)),
            };
            tracing::warn!(
                config_key,
                limit,
                address = %victim.address,
                ?stage,
                "RTMP pending connections at their limit: the least advanced one was closed to make room (repeated at most every 10 s; ladderd_rtmp_connections_dropped_total counts each)"
            );
        } else {
            tracing::debug!(address = %victim.address, reason = why.label(), "pending RTMP connection closed to make room");
        }
    }

    fn forget_address(state: &mut State, address: IpAddr) {
        if let Some(n) = state.per_address.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                state.per_address.remove(&address);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Pending((Stage, u64)),
    Publisher,
    /// Displaced: the admission no longer counts this connection.
    Gone,
}

/// One connection's place. Dropping it gives the place back.
pub struct Ticket {
    admission: Arc<Admission>,
    address: IpAddr,
    place: Place,
    close: CancellationToken,
}

impl Ticket {
    /// Cancelled when the connection has been displaced and must close.
    pub fn displaced(&self) -> CancellationToken {
        self.close.clone()
    }

    /// Records progress: a pending connection that got further is kept longer.
    pub fn reached(&mut self, stage: Stage) {
        let Place::Pending(key) = self.place else { return };
        if stage <= key.0 {
            return;
        }
        let mut state = lock(&self.admission.state);
        let Some(entry) = state.pending.remove(&key) else {
            self.place = Place::Gone;
            return;
        };
        let moved = (stage, key.1);
        state.pending.insert(moved, entry);
        self.place = Place::Pending(moved);
    }

    /// Whether this connection's address may try a stream key now ([`Admission::may_try_key`]).
    pub fn may_try_key(&self) -> bool {
        self.admission.may_try_key(self.address)
    }

    /// Records a publish refused for its key against this connection's address.
    pub fn key_failed(&self) {
        self.admission.key_failed(self.address);
    }

    /// The publish was accepted: from now on the connection is never displaced.
    pub fn publishing(&mut self) {
        let Place::Pending(key) = self.place else { return };
        let mut state = lock(&self.admission.state);
        if state.pending.remove(&key).is_none() {
            self.place = Place::Gone;
            return;
        }
        Admission::forget_address(&mut state, self.address);
        state.publishers += 1;
        self.place = Place::Publisher;
        self.admission.metrics.rtmp_pending_connections.set(state.pending.len() as i64);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = lock(&self.admission.state);
        match self.place {
            Place::Pending(key) => {
                if state.pending.remove(&key).is_some() {
                    Admission::forget_address(&mut state, self.address);
                }
            }
            Place::Publisher => state.publishers = state.publishers.saturating_sub(1),
            Place::Gone => {}
        }
        self.admission.metrics.rtmp_pending_connections.set(state.pending.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(total: usize, pending: usize, per_address: usize) -> Arc<Admission> {
        let limits = AdmissionLimits { total, pending, per_address, key_failures_per_minute: 10 };
        Admission::new(limits, Arc::new(Metrics::new()))
    }

    #[test]
    fn unknown_keys_are_throttled_per_address_and_the_bucket_refills() {
        let a = admission(10, 10, 10);
        let (guesser, other) = (ip("198.51.100.7"), ip("198.51.100.8"));
        for _ in 0..10 {
            assert!(a.may_try_key(guesser));
            a.key_failed(guesser);
        }
        assert!(!a.may_try_key(guesser), "ten failures in a burst use up the minute's allowance");
        assert!(a.may_try_key(other), "another address is not affected");
        // One failure is given back every 6 s: pretend that much time passed.
        lock(&a.keys).get_mut(&guesser).expect("remembered").at -= Duration::from_secs(7);
        assert!(a.may_try_key(guesser));
        a.key_failed(guesser);
        assert!(!a.may_try_key(guesser));
        // IPv6 counts by /64.
        for _ in 0..10 {
            a.key_failed(ip("2001:db8::1"));
        }
        assert!(!a.may_try_key(ip("2001:db8::ffff")));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_newcomer_is_passed_over_while_an_older_connection_can_go() {
        let a = admission(100, 2, 10);
        let old = a.admit(ip("10.0.0.1")).expect("place");
        std::thread::sleep(NEWCOMER_GRACE + Duration::from_millis(50));
        let mut advanced_but_new = a.admit(ip("10.0.0.2")).expect("place");
        advanced_but_new.reached(Stage::Handshaken);
        let fresh = a.admit(ip("10.0.0.3")).expect("place");
        // The newest two are in their grace: the settled one goes, as it got no further.
        assert!(old.displaced().is_cancelled());
        assert!(!advanced_but_new.displaced().is_cancelled() && !fresh.displaced().is_cancelled());
        // In their grace, one that shows more progress outranks one presumed to be handshaking.
        let newest = a.admit(ip("10.0.0.4")).expect("place");
        assert!(fresh.displaced().is_cancelled());
        assert!(!advanced_but_new.displaced().is_cancelled() && !newest.displaced().is_cancelled());
        assert_eq!(a.metrics.rtmp_connections_dropped.with_label_values(&["pending"]).get(), 2);
    }

    #[test]
    fn publishers_keep_their_places_and_the_rest_is_refused_only_when_all_are_publishers() {
        let a = admission(2, 8, 8);
        let mut p1 = a.admit(ip("10.0.0.1")).expect("place");
        p1.publishing();
        let mut p2 = a.admit(ip("10.0.0.2")).expect("place");
        p2.publishing();
        assert!(a.admit(ip("10.0.0.3")).is_none(), "every place is a publisher's");
        drop(p2);
        let pending = a.admit(ip("10.0.0.3")).expect("a publisher left");
        // The one place left is pending: a newcomer displaces it, never the publisher.
        let newcomer = a.admit(ip("10.0.0.4")).expect("place");
        assert!(pending.displaced().is_cancelled() && !p1.displaced().is_cancelled());
        assert_eq!(a.metrics.rtmp_pending_connections.get(), 1);
        drop(newcomer);
        assert_eq!(a.metrics.rtmp_pending_connections.get(), 0);
    }

    #[test]
    fn an_address_displaces_only_its_own_and_ipv6_counts_by_64() {
        let a = admission(100, 100, 2);
        let mine: Vec<Ticket> =
            ["2001:db8:1:2::10", "2001:db8:1:2:ffff::1"].iter().map(|s| a.admit(ip(s)).expect("place")).collect();
        let other = a.admit(ip("2001:db8:1:3::10")).expect("place");
        let v4 = a.admit(ip("::ffff:192.0.2.1")).expect("place");
        let v4_again = a.admit(ip("192.0.2.1")).expect("place");
        let third = a.admit(ip("2001:db8:1:2::99")).expect("place");
        assert!(mine[0].displaced().is_cancelled(), "the same /64's oldest goes");
        assert!(!mine[1].displaced().is_cancelled() && !third.displaced().is_cancelled());
        assert!(!other.displaced().is_cancelled(), "another /64 is another address");
        assert!(!v4.displaced().is_cancelled() && !v4_again.displaced().is_cancelled(), "mapped IPv4 is that IPv4");
        let _v4_third = a.admit(ip("192.0.2.1")).expect("place");
        assert!(v4.displaced().is_cancelled());
        assert_eq!(a.metrics.rtmp_connections_dropped.with_label_values(&["pending_per_address"]).get(), 2);
    }

    #[test]
    fn a_displaced_ticket_that_advances_or_publishes_gives_nothing_back_twice() {
        let a = admission(3, 1, 8);
        let mut first = a.admit(ip("10.0.0.1")).expect("place");
        let second = a.admit(ip("10.0.0.2")).expect("place");
        assert!(first.displaced().is_cancelled());
        first.reached(Stage::Connected);
        first.publishing();
        drop(first);
        // The displaced ticket neither became a publisher nor freed the other's place.
        assert_eq!(a.metrics.rtmp_pending_connections.get(), 1);
        let third = a.admit(ip("10.0.0.3")).expect("place");
        assert!(second.displaced().is_cancelled());
        drop(third);
        let state = lock(&a.state);
        assert_eq!((state.pending.len(), state.publishers, state.per_address.len()), (0, 0, 0));
    }
}
