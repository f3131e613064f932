//! GPU health: a GPU whose stages keep failing (an Xid error, a lost or wedged device) is
//! quarantined, so that new channels are placed elsewhere instead of starting there and falling
//! back while live, and it is probed again once a cool-down has passed.
//!
//! Errors are the stage moves channels report from a GPU to the CPU ([`GpuHealth::error`]);
//! those within [`INCIDENT`] of the previous one are the same incident.
//! [`QUARANTINE_ERRORS`] within [`QUARANTINE_WINDOW`] quarantine the GPU for
//! [`QUARANTINE_COOL_DOWN`]; the first placement after that probes it again (its CUDA device, and
//! each engine that worked before): it comes back if the probe passes, and stays out for another
//! cool-down if not. `ladderd_gpu_quarantined{gpu}` and `/readyz` show it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntGaugeVec;

use crate::sync::lock;

/// GPU errors within [`QUARANTINE_WINDOW`] that quarantine a GPU.
pub const QUARANTINE_ERRORS: usize = 3;
pub const QUARANTINE_WINDOW: Duration = Duration::from_secs(60);
/// How long a quarantined GPU is left alone before it is probed again.
pub const QUARANTINE_COOL_DOWN: Duration = Duration::from_secs(300);
/// Errors of one GPU closer together than this are one incident: a stuck decoder moves decode,
/// scale and every NVENC rung of its channel at once.
pub const INCIDENT: Duration = Duration::from_secs(1);

/// Probes one GPU again: `Ok` when it works as the startup probe found it.
pub type Reprobe = Arc<dyn Fn(u32) -> Result<(), String> + Send + Sync>;

/// The health of every GPU; clones share it.
#[derive(Clone)]
pub struct GpuHealth {
    inner: Arc<Inner>,
}

struct Inner {
    gpus: Mutex<BTreeMap<u32, Health>>,
    gauge: Option<IntGaugeVec>,
    reprobe: Reprobe,
    cool_down: Duration,
}

#[derive(Default)]
struct Health {
    errors: VecDeque<Instant>,
    quarantine: Option<Quarantine>,
}

#[derive(Clone)]
struct Quarantine {
    until: Instant,
    until_wall: SystemTime,
    reason: String,
}

/// A quarantined GPU, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Quarantined {
    pub gpu: u32,
    /// When it is probed again, RFC 3339 UTC.
    pub until: String,
    pub reason: String,
}

impl GpuHealth {
    /// `reprobe` checks a GPU whose cool-down has passed; `gauge` (labelled `gpu`) is
    /// `ladderd_gpu_quarantined`.
    pub fn new(reprobe: Reprobe, gauge: Option<IntGaugeVec>) -> Self {
        Self::with_cool_down(reprobe, gauge, QUARANTINE_COOL_DOWN)
    }

    pub fn with_cool_down(reprobe: Reprobe, gauge: Option<IntGaugeVec>, cool_down: Duration) -> Self {
        Self { inner: Arc::new(Inner { gpus: Mutex::new(BTreeMap::new()), gauge, reprobe, cool_down }) }
    }

    /// A stage on `gpu` failed (it moved to the CPU, saying `why`).
    pub fn error(&self, gpu: u32, why: &str) {
        let now = Instant::now();
        let mut gpus = lock(&self.inner.gpus);
        let h = gpus.entry(gpu).or_default();
        if h.errors.back().is_some_and(|t| now.duration_since(*t) < INCIDENT) {
            return;
        }
        h.errors.push_back(now);
        while h.errors.front().is_some_and(|t| now.duration_since(*t) > QUARANTINE_WINDOW) {
            h.errors.pop_front();
        }
        if h.quarantine.is_none() && h.errors.len() >= QUARANTINE_ERRORS {
            let reason =
                format!("{} GPU errors within {} s, the latest: {why}", h.errors.len(), QUARANTINE_WINDOW.as_secs());
            tracing::warn!(gpu, reason = %reason, cool_down_seconds = self.inner.cool_down.as_secs(), "GPU quarantined: new channels are placed elsewhere until it is probed again");
            h.quarantine = Some(self.quarantine(reason));
            self.gauge(gpu, 1);
        }
    }

    fn quarantine(&self, reason: String) -> Quarantine {
        Quarantine {
            until: Instant::now() + self.inner.cool_down,
            until_wall: SystemTime::now() + self.inner.cool_down,
            reason,
        }
    }

    fn gauge(&self, gpu: u32, value: i64) {
        if let Some(g) = &self.inner.gauge {
            g.with_label_values(&[&gpu.to_string()]).set(value);
        }
    }

    /// Whether `gpu` is quarantined now, and why. A GPU whose cool-down has passed is probed
    /// again here: back in service if the probe passes, out for another cool-down if not.
    pub fn check(&self, gpu: u32) -> Option<String> {
        let due = {
            let gpus = lock(&self.inner.gpus);
            let q = gpus.get(&gpu)?.quarantine.as_ref()?;
            if Instant::now() < q.until {
                return Some(q.reason.clone());
            }
            q.reason.clone()
        };
        // Probing opens codecs on the GPU: not under the lock.
        let probed = (self.inner.reprobe)(gpu);
        let mut gpus = lock(&self.inner.gpus);
        let h = gpus.entry(gpu).or_default();
        match probed {
            Ok(()) => {
                tracing::info!(gpu, was = %due, "quarantined GPU probed again and works; back in service");
                h.quarantine = None;
                h.errors.clear();
                self.gauge(gpu, 0);
                None
            }
            Err(e) => {
                let reason = format!("probed again after the cool-down and still failing: {e}");
                tracing::warn!(gpu, reason = %reason, "GPU stays quarantined");
                h.quarantine = Some(self.quarantine(reason.clone()));
                Some(reason)
            }
        }
    }

    /// Every GPU quarantined now.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        let gpus = lock(&self.inner.gpus);
        gpus.iter()
            .filter_map(|(gpu, h)| {
                let q = h.quarantine.as_ref()?;
                let until = time::OffsetDateTime::from(q.until_wall)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                Some(Quarantined { gpu: *gpu, until, reason: q.reason.clone() })
            })
            .collect()
    }
}

impl std::fmt::Debug for GpuHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuHealth").field("quarantined", &self.quarantined()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn repeated_errors_quarantine_a_gpu_until_a_probe_after_the_cool_down_passes() {
        let works = Arc::new(AtomicBool::new(false));
        let probe_works = works.clone();
        let probes = Arc::new(Mutex::new(Vec::new()));
        let seen = probes.clone();
        let reprobe: Reprobe = Arc::new(move |gpu| {
            lock(&seen).push(gpu);
            if probe_works.load(Ordering::SeqCst) { Ok(()) } else { Err("cuInit failed".into()) }
        });
        let gauge = prometheus::IntGaugeVec::new(prometheus::Opts::new("q", "q"), &["gpu"]).expect("gauge");
        let health = GpuHealth::with_cool_down(reprobe, Some(gauge.clone()), Duration::from_millis(200));
        health.error(0, "NVENC failed");
        for _ in 0..4 {
            health.error(0, "the same incident: every stage of a channel moved at once");
        }
        std::thread::sleep(INCIDENT);
        health.error(0, "NVENC failed");
        assert_eq!(health.check(0), None, "two incidents are not enough");
        health.error(1, "NVDEC failed");
        std::thread::sleep(INCIDENT);
        health.error(0, "the decoder stopped taking packets");
        let reason = health.check(0).expect("quarantined");
        assert!(reason.contains("3 GPU errors") && reason.contains("stopped taking packets"), "{reason}");
        assert_eq!(health.check(1), None, "another GPU is not affected");
        assert_eq!(gauge.with_label_values(&["0"]).get(), 1);
        assert_eq!(health.quarantined().iter().map(|q| q.gpu).collect::<Vec<_>>(), [0]);
        assert!(lock(&probes).is_empty(), "not probed during the cool-down");
        // After the cool-down, a probe that still fails keeps it out for another one.
        std::thread::sleep(Duration::from_millis(250));
        assert!(health.check(0).expect("still out").contains("cuInit failed"));
        assert_eq!(*lock(&probes), [0]);
        assert!(health.check(0).is_some(), "no second probe within the new cool-down");
        assert_eq!(lock(&probes).len(), 1);
        // Then one that passes brings it back.
        works.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(health.check(0), None);
        assert_eq!(gauge.with_label_values(&["0"]).get(), 0);
        assert!(health.quarantined().is_empty());
    }
}
