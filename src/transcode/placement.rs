//! Which GPU a channel's transcode goes to, and admission: how many NVENC sessions ladderd holds
//! on each GPU.
//!
//! Pure and sans-IO. The GPUs are data ([`GpuState`], filled in by the caller's probe), and the only
//! state is ladderd's own NVENC session count per GPU, kept by [`Placer`] as a counting semaphore.
//! The count is ours rather than NVML's because NVML only sees a session once an encoder has
//! opened it: two channels placed at the same moment would both see the same free GPU.
//!
//! One channel goes to one GPU: decode, scale and every NVENC rung share it, so frames never cross
//! between GPUs. A channel either gets a session for each of its (kept) rungs or none; splitting
//! a ladder between NVENC and x264 would hold GPU sessions while the CPU still paces the channel.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::IntGaugeVec;

use crate::config::{GpuSelection, OnGpuFull};
use crate::gpu::{GpuInfo, GpuStats};
use crate::metrics::FallbackReason;
use crate::transcode::health::GpuHealth;

/// Why hardware is not available: a fixed cause for metrics and a detail for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub cause: FallbackReason,
    pub detail: String,
}

impl Unavailable {
    pub fn new(cause: FallbackReason, detail: impl Into<String>) -> Self {
        Self { cause, detail: detail.into() }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// One GPU as NVML reports it when a channel is placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuState {
    /// CUDA device ordinal (what `transcode.gpus` lists and FFmpeg's `gpu` option takes).
    pub index: u32,
    /// NVENC sessions open on it, by any process.
    pub nvenc_sessions_used: u32,
    /// Of those, ladderd's. Reported, not used for admission: the [`Placer`]'s count is ahead of it.
    pub nvenc_sessions_ours: u32,
    /// NVENC utilization over NVML's last sample period, in percent. Other processes' encoding
    /// shows up here.
    pub encoder_utilization: u32,
    /// Free device memory in bytes.
    pub memory_free: u64,
    /// Whether it has an NVENC engine that encodes H.264 (data-center compute GPUs such as the
    /// A100 and H100 have none).
    pub has_nvenc: bool,
    /// Whether it has an NVDEC engine that decodes H.264.
    pub has_nvdec: bool,
}

impl GpuState {
    /// A probed GPU as placement sees it: engines from the probe, and how busy it is from `live`
    /// (its current NVML figures) where NVML has them, else from the probe.
    pub fn of(gpu: &GpuInfo, live: Option<&GpuStats>, sessions_ours: u32) -> GpuState {
        let pick = |now: Option<Option<u64>>, probed: Option<u64>| now.flatten().or(probed);
        let used = pick(live.map(|l| l.memory_used_bytes), gpu.memory_used_bytes);
        let total = pick(live.map(|l| l.memory_total_bytes), gpu.memory_total_bytes);
        let sessions = pick(live.map(|l| l.encoder_sessions.map(u64::from)), gpu.encoder_sessions.map(u64::from));
        let utilization =
            pick(live.map(|l| l.encoder_utilization.map(u64::from)), gpu.encoder_utilization.map(u64::from));
        GpuState {
            index: gpu.index,
            nvenc_sessions_used: sessions.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            nvenc_sessions_ours: sessions_ours,
            encoder_utilization: utilization.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            memory_free: total.unwrap_or(0).saturating_sub(used.unwrap_or(0)),
            has_nvenc: gpu.nvenc_h264.is_ok(),
            has_nvdec: gpu.nvdec_h264.is_ok() || gpu.nvdec_cuda.is_ok(),
        }
    }
}

/// Where one channel runs.
///
/// `rungs` are the channel's encoded rungs in ladder order (largest first), indexed from 0; the
/// passthrough rung is not one of them, as it needs no encoder.
///
/// | case | `gpu` | `decode_on_gpu` | `encode_on_gpu` | `reason` |
/// |---|---|---|---|---|
/// | all on a GPU | `Some` | `true` | kept rungs | `None` |
/// | GPU without NVDEC | `Some` | `false` | kept rungs | `no_nvdec` |
/// | hybrid: GPU without NVENC | `Some` | `true` | 0 | `no_nvenc` |
/// | on the CPU | `None` | `false` | 0 | why |
///
/// Scaling runs on `gpu` whenever there is one (CUDA is on every GPU): after NVDEC the frames are
/// there already, and before x264 scaling first means downloading smaller frames.
#[derive(Debug)]
pub struct Placement {
    /// The GPU the channel's GPU stages run on; `None` when everything runs on the CPU.
    pub gpu: Option<u32>,
    /// Whether the source is decoded with NVDEC on `gpu`.
    pub decode_on_gpu: bool,
    /// How many rungs are encoded with NVENC on `gpu`: every kept rung, or 0.
    pub encode_on_gpu: usize,
    /// The channel's encoded rungs (what was asked for, including any dropped).
    pub rungs: usize,
    /// Rungs left out under `on_gpu_full: drop_top_rung`, ascending; always the largest ones
    /// (`0..dropped.len()`), so the kept rungs are `dropped.len()..rungs`.
    pub dropped: Vec<usize>,
    /// One NVENC session on `gpu` per rung in `encode_on_gpu`, returned when dropped: keep it as
    /// long as the encoders run.
    pub sessions: Option<SessionGuard>,
    /// Why the stages that are on the CPU are there; `None` when nothing that could be on a GPU
    /// is on the CPU.
    pub reason: Option<Unavailable>,
}

impl Placement {
    /// Everything on the CPU (`reason: None` only for a channel with nothing to encode).
    pub fn cpu(rungs: usize, reason: Option<Unavailable>) -> Self {
        Self { gpu: None, decode_on_gpu: false, encode_on_gpu: 0, rungs, dropped: Vec::new(), sessions: None, reason }
    }

    /// Whether encoded rung `rung` is encoded at all (not dropped).
    pub fn keeps(&self, rung: usize) -> bool {
        rung < self.rungs && !self.dropped.contains(&rung)
    }

    /// Whether encoded rung `rung` is encoded with NVENC.
    pub fn rung_on_gpu(&self, rung: usize) -> bool {
        self.keeps(rung) && self.encode_on_gpu > 0
    }

    /// Releases the NVENC sessions, for when the backend choice put the encoders on the CPU after
    /// all.
    pub fn release_sessions(&mut self) {
        self.sessions = None;
        self.encode_on_gpu = 0;
    }
}

/// A publish refused under `on_gpu_full: reject`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel {channel}: refused by transcode.on_gpu_full: reject: {reason}")]
pub struct Rejected {
    pub channel: String,
    /// `gpu_full`, with the sessions each GPU had free.
    pub reason: Unavailable,
}

/// ladderd's NVENC sessions per GPU, and the placement of channels on GPUs.
///
/// Clones share the counts.
#[derive(Clone)]
pub struct Placer {
    inner: Arc<Sessions>,
}

struct Sessions {
    max_per_gpu: u32,
    /// GPUs quarantined after repeated errors are not placed on.
    health: Option<GpuHealth>,
    /// Sessions held per GPU index. A mutex rather than atomics: placement happens once per
    /// publish, and checking then taking `n` sessions has to be one step.
    held: Mutex<BTreeMap<u32, u32>>,
    /// `ladderd_gpu_nvenc_sessions{gpu}`, kept equal to `held`.
    gauge: Option<IntGaugeVec>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, u32>> {
        // Nothing panics while the lock is held, so a poisoned map is still consistent.
        crate::sync::lock(&self.held)
    }

    fn set(&self, held: &mut BTreeMap<u32, u32>, gpu: u32, count: u32) {
        held.insert(gpu, count);
        if let Some(g) = &self.gauge {
            g.with_label_values(&[&gpu.to_string()]).set(i64::from(count));
        }
    }
}

impl fmt::Debug for Placer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Placer")
            .field("max_per_gpu", &self.inner.max_per_gpu)
            .field("held", &*self.inner.lock())
            .finish()
    }
}

/// NVENC sessions held on one GPU; dropping it gives them back.
#[must_use = "the sessions are given back when the guard is dropped"]
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    gpu: u32,
    count: u32,
}

impl SessionGuard {
    pub fn gpu(&self) -> u32 {
        self.gpu
    }

    pub fn count(&self) -> u32 {
        self.count
    }
}

impl fmt::Debug for SessionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionGuard").field("gpu", &self.gpu).field("count", &self.count).finish()
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut held = self.sessions.lock();
        let now = held.get(&self.gpu).copied().unwrap_or(0).saturating_sub(self.count);
        self.sessions.set(&mut held, self.gpu, now);
    }
}

impl Placer {
    /// `max_sessions_per_gpu` is `transcode.max_sessions_per_gpu`.
    pub fn new(max_sessions_per_gpu: u32) -> Self {
        Self::build(max_sessions_per_gpu, None)
    }

    /// Like [`Placer::new`], keeping `gauge` (labelled `gpu`) at the sessions held on each GPU.
    pub fn with_gauge(max_sessions_per_gpu: u32, gauge: IntGaugeVec) -> Self {
        Self::build(max_sessions_per_gpu, Some(gauge))
    }

    fn build(max_per_gpu: u32, gauge: Option<IntGaugeVec>) -> Self {
        Self { inner: Arc::new(Sessions { max_per_gpu, health: None, held: Mutex::new(BTreeMap::new()), gauge }) }
    }

    /// Like [`Placer::with_gauge`], leaving out the GPUs `health` has quarantined.
    pub fn with_health(max_sessions_per_gpu: u32, gauge: IntGaugeVec, health: GpuHealth) -> Self {
        Self {
            inner: Arc::new(Sessions {
                max_per_gpu: max_sessions_per_gpu,
                health: Some(health),
                held: Mutex::new(BTreeMap::new()),
                gauge: Some(gauge),
            }),
        }
    }

    /// The GPU health this placer respects, if any.
    pub fn health(&self) -> Option<&GpuHealth> {
        self.inner.health.as_ref()
    }

    pub fn max_sessions_per_gpu(&self) -> u32 {
        self.inner.max_per_gpu
    }

    /// Sessions ladderd holds on `gpu` now.
    pub fn held(&self, gpu: u32) -> u32 {
        self.inner.lock().get(&gpu).copied().unwrap_or(0)
    }

    /// Sessions ladderd may still open on `gpu`.
    pub fn free(&self, gpu: u32) -> u32 {
        self.inner.max_per_gpu.saturating_sub(self.held(gpu))
    }

    /// Takes `n` sessions on `gpu` if that many are free; `None` when they are not, or `n` is 0.
    pub fn acquire(&self, gpu: u32, n: u32) -> Option<SessionGuard> {
        let mut held = self.inner.lock();
        let now = held.get(&gpu).copied().unwrap_or(0);
        if n == 0 || now.checked_add(n)? > self.inner.max_per_gpu {
            return None;
        }
        self.inner.set(&mut held, gpu, now + n);
        Some(SessionGuard { sessions: self.inner.clone(), gpu, count: n })
    }

    /// Places a channel with `rungs` encoded rungs on one of `gpus` that `allowed` lets it use.
    ///
    /// Among the GPUs with NVENC, the one with the most headroom wins: most free sessions, then
    /// lowest encoder utilization, then most free memory, then lowest index. When none has a
    /// session for every rung, `policy` decides (`drop_top_rung` retries with one rung fewer,
    /// leaving out the largest, down to one rung). Without any GPU that has NVENC, a GPU with
    /// NVDEC still decodes and scales (hybrid), chosen by free memory then index.
    ///
    /// `Err` only under [`OnGpuFull::Reject`].
    pub fn place(
        &self,
        channel: &str,
        rungs: usize,
        gpus: &[GpuState],
        allowed: &GpuSelection,
        policy: OnGpuFull,
    ) -> Result<Placement, Rejected> {
        if rungs == 0 {
            return Ok(Placement::cpu(0, None));
        }
        let allowed_gpus: Vec<&GpuState> = gpus.iter().filter(|g| allowed.allows(g.index)).collect();
        let mut quarantined = Vec::new();
        let usable: Vec<&GpuState> = allowed_gpus
            .iter()
            .copied()
            .filter(|g| match self.inner.health.as_ref().and_then(|h| h.check(g.index)) {
                Some(why) => {
                    quarantined.push(format!("GPU {} is quarantined ({why})", g.index));
                    false
                }
                None => true,
            })
            .collect();
        if usable.is_empty() && !quarantined.is_empty() {
            return Ok(Placement::cpu(rungs, Some(Unavailable::new(FallbackReason::GpuError, quarantined.join("; ")))));
        }
        let mut encoders: Vec<&GpuState> = usable.iter().copied().filter(|g| g.has_nvenc).collect();
        if encoders.is_empty() {
            return Ok(Self::without_nvenc(rungs, gpus, &usable, allowed));
        }
        {
            let held = self.inner.lock();
            let free = |g: &GpuState| self.inner.max_per_gpu.saturating_sub(held.get(&g.index).copied().unwrap_or(0));
            encoders.sort_by(|a, b| {
                free(b)
                    .cmp(&free(a))
                    .then(a.encoder_utilization.cmp(&b.encoder_utilization))
                    .then(b.memory_free.cmp(&a.memory_free))
                    .then(a.index.cmp(&b.index))
            });
        }
        let fewest = if policy == OnGpuFull::DropTopRung { 1 } else { rungs };
        for keep in (fewest..=rungs).rev() {
            let n = u32::try_from(keep).unwrap_or(u32::MAX);
            // The ranking is a snapshot: another channel may take sessions meanwhile, so a GPU
            // that turns out full is skipped rather than trusted.
            for g in &encoders {
                if let Some(sessions) = self.acquire(g.index, n) {
                    let reason = (!g.has_nvdec)
                        .then(|| Unavailable::new(FallbackReason::NoNvdec, format!("GPU {} has no NVDEC", g.index)));
                    return Ok(Placement {
                        gpu: Some(g.index),
                        decode_on_gpu: g.has_nvdec,
                        encode_on_gpu: keep,
                        rungs,
                        dropped: (0..rungs - keep).collect(),
                        sessions: Some(sessions),
                        reason,
                    });
                }
            }
        }
        let free: Vec<String> = encoders.iter().map(|g| format!("GPU {}: {}", g.index, self.free(g.index))).collect();
        let needed = if policy == OnGpuFull::DropTopRung { 1 } else { rungs };
        let reason = Unavailable::new(
            FallbackReason::GpuFull,
            format!(
                "no allowed GPU has {needed} NVENC session{} free (transcode.max_sessions_per_gpu: {}; free: {})",
                if needed == 1 { "" } else { "s" },
                self.inner.max_per_gpu,
                free.join(", ")
            ),
        );
        match policy {
            OnGpuFull::Cpu | OnGpuFull::DropTopRung => Ok(Placement::cpu(rungs, Some(reason))),
            OnGpuFull::Reject => Err(Rejected { channel: channel.to_string(), reason }),
        }
    }

    /// No allowed GPU has NVENC: decode and scale on the NVDEC GPU with the most free memory, or
    /// everything on the CPU. No sessions are taken, so this never depends on `on_gpu_full`.
    fn without_nvenc(rungs: usize, gpus: &[GpuState], usable: &[&GpuState], allowed: &GpuSelection) -> Placement {
        let decoder = usable
            .iter()
            .filter(|g| g.has_nvdec)
            .min_by(|a, b| b.memory_free.cmp(&a.memory_free).then(a.index.cmp(&b.index)));
        let indices = |gs: &mut dyn Iterator<Item = u32>| gs.map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
        let reason = if gpus.is_empty() {
            // NVML lists no GPU: in practice, no driver.
            Unavailable::new(FallbackReason::NoDriver, "no GPU found")
        } else if usable.is_empty() {
            let only = match allowed {
                GpuSelection::All => String::new(),
                GpuSelection::Only(ids) => indices(&mut ids.iter().copied()),
            };
            Unavailable::new(
                FallbackReason::NoNvenc,
                format!(
                    "transcode.gpus allows [{only}], this machine has GPUs [{}]",
                    indices(&mut gpus.iter().map(|g| g.index))
                ),
            )
        } else {
            Unavailable::new(
                FallbackReason::NoNvenc,
                format!("no NVENC on GPUs [{}]", indices(&mut usable.iter().map(|g| g.index))),
            )
        };
        match decoder {
            Some(g) => Placement {
                gpu: Some(g.index),
                decode_on_gpu: true,
                encode_on_gpu: 0,
                rungs,
                dropped: Vec::new(),
                sessions: None,
                reason: Some(reason),
            },
            None => Placement::cpu(rungs, Some(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const GIB: u64 = 1 << 30;

    fn gpu(index: u32, utilization: u32, memory_free: u64) -> GpuState {
        GpuState {
            index,
            nvenc_sessions_used: 0,
            nvenc_sessions_ours: 0,
            encoder_utilization: utilization,
            memory_free,
            has_nvenc: true,
            has_nvdec: true,
        }
    }

    fn two() -> Vec<GpuState> {
        vec![gpu(0, 10, 20 * GIB), gpu(1, 10, 20 * GIB)]
    }

    fn place(p: &Placer, rungs: usize, gpus: &[GpuState], policy: OnGpuFull) -> Placement {
        p.place("demo", rungs, gpus, &GpuSelection::All, policy).expect("placed")
    }

    #[test]
    fn the_emptier_gpu_wins() {
        let p = Placer::new(8);
        let _busy = p.acquire(0, 3).expect("free");
        let got = place(&p, 4, &two(), OnGpuFull::Cpu);
        assert_eq!((got.gpu, got.decode_on_gpu, got.encode_on_gpu, got.reason), (Some(1), true, 4, None));
        assert_eq!(got.sessions.as_ref().map(|s| (s.gpu(), s.count())), Some((1, 4)));
        assert_eq!(p.held(1), 4);
    }

    /// A GPU that keeps failing is quarantined: new channels go to the other GPU, and to the CPU
    /// (with the reason) when no other is left.
    #[test]
    fn a_quarantined_gpu_is_not_placed_on() {
        let gauge = IntGaugeVec::new(prometheus::Opts::new("s", "s"), &["gpu"]).expect("gauge");
        let health = GpuHealth::new(Arc::new(|_| Err("still broken".to_string())), None);
        let p = Placer::with_health(8, gauge, health.clone());
        assert_eq!(place(&p, 2, &two(), OnGpuFull::Cpu).gpu, Some(0));
        for _ in 0..crate::transcode::health::QUARANTINE_ERRORS {
            health.error(0, "NVENC failed");
            std::thread::sleep(crate::transcode::health::INCIDENT);
        }
        assert_eq!(place(&p, 2, &two(), OnGpuFull::Cpu).gpu, Some(1), "GPU 0 is left out");
        let only_zero = [two()[0].clone()];
        let got = place(&p, 2, &only_zero, OnGpuFull::Cpu);
        assert_eq!(got.gpu, None);
        let reason = got.reason.expect("why the CPU");
        assert!(
            reason.cause == FallbackReason::GpuError && reason.to_string().contains("GPU 0 is quarantined"),
            "{reason}"
        );
    }

    #[test]
    fn ties_go_to_lower_utilization_then_more_memory_then_lower_index() {
        let p = Placer::new(8);
        let gpus = [gpu(0, 50, 20 * GIB), gpu(1, 20, 10 * GIB), gpu(2, 20, 30 * GIB), gpu(3, 20, 30 * GIB)];
        let first = place(&p, 1, &gpus, OnGpuFull::Cpu);
        assert_eq!(first.gpu, Some(2));
        assert_eq!(place(&p, 1, &gpus, OnGpuFull::Cpu).gpu, Some(3), "GPU 2 has a session fewer free");
        let fresh = Placer::new(8);
        assert_eq!(place(&fresh, 1, &[gpu(3, 0, GIB), gpu(2, 0, GIB)], OnGpuFull::Cpu).gpu, Some(2));
    }

    #[test]
    fn sessions_return_on_drop() {
        let p = Placer::new(8);
        let got = place(&p, 4, &two(), OnGpuFull::Cpu);
        assert_eq!(p.held(0), 4);
        drop(got);
        assert_eq!((p.held(0), p.free(0)), (0, 8));
    }

    #[test]
    fn channels_spread_and_fill_then_the_policy_applies() {
        let p = Placer::new(8);
        let gpus = two();
        let a = place(&p, 4, &gpus, OnGpuFull::Cpu);
        let b = place(&p, 4, &gpus, OnGpuFull::Cpu);
        let c = place(&p, 4, &gpus, OnGpuFull::Cpu);
        let d = place(&p, 4, &gpus, OnGpuFull::Cpu);
        assert_eq!([a.gpu, b.gpu, c.gpu, d.gpu], [Some(0), Some(1), Some(0), Some(1)]);
        let e = place(&p, 4, &gpus, OnGpuFull::Cpu);
        assert_eq!((e.gpu, e.encode_on_gpu, e.sessions.is_none()), (None, 0, true));
        let reason = e.reason.expect("reason");
        assert_eq!(reason.cause, FallbackReason::GpuFull);
        assert!(reason.detail.contains("GPU 0: 0, GPU 1: 0"), "{reason}");
        drop(c);
        assert_eq!(place(&p, 4, &gpus, OnGpuFull::Cpu).gpu, Some(0), "freed sessions are used again");
    }

    #[test]
    fn policy_cpu_puts_the_whole_channel_on_the_cpu() {
        let p = Placer::new(4);
        let _held = p.acquire(0, 2).expect("free");
        let got = place(&p, 3, &[gpu(0, 0, GIB)], OnGpuFull::Cpu);
        assert_eq!((got.gpu, got.decode_on_gpu, got.encode_on_gpu, got.dropped.len()), (None, false, 0, 0));
        assert_eq!(got.reason.map(|r| r.cause), Some(FallbackReason::GpuFull));
        assert_eq!(p.held(0), 2, "nothing taken");
    }

    #[test]
    fn policy_drop_top_rung_leaves_out_the_largest_rungs() {
        let p = Placer::new(4);
        let _held = p.acquire(0, 2).expect("free");
        let got = place(&p, 4, &[gpu(0, 0, GIB)], OnGpuFull::DropTopRung);
        assert_eq!(
            (got.gpu, got.encode_on_gpu, got.dropped.clone(), got.reason.clone()),
            (Some(0), 2, vec![0, 1], None)
        );
        assert!(!got.keeps(1) && got.keeps(2) && got.rung_on_gpu(3) && !got.rung_on_gpu(4));
        assert_eq!(p.held(0), 4);
        // Not even one session left: the whole channel goes to the CPU.
        let none = place(&p, 4, &[gpu(0, 0, GIB)], OnGpuFull::DropTopRung);
        assert_eq!((none.gpu, none.dropped.len()), (None, 0));
        assert_eq!(none.reason.map(|r| r.cause), Some(FallbackReason::GpuFull));
    }

    #[test]
    fn policy_reject_refuses_the_publish() {
        let p = Placer::new(2);
        let err = p.place("demo", 3, &two(), &GpuSelection::All, OnGpuFull::Reject).unwrap_err();
        assert_eq!((err.channel.as_str(), err.reason.cause), ("demo", FallbackReason::GpuFull));
        assert!(
            err.to_string().starts_with(
                "channel demo: refused by transcode.on_gpu_full: reject: no allowed GPU has 3 NVENC sessions free"
            ),
            "{err}"
        );
        assert_eq!((p.held(0), p.held(1)), (0, 0));
        assert!(p.place("demo", 2, &two(), &GpuSelection::All, OnGpuFull::Reject).is_ok());
    }

    #[test]
    fn the_gpu_selection_restricts_the_choice() {
        let p = Placer::new(8);
        let only1 = GpuSelection::Only(vec![1]);
        let _busy = p.acquire(1, 6).expect("free");
        let got = p.place("demo", 2, &two(), &only1, OnGpuFull::Cpu).expect("placed");
        assert_eq!(got.gpu, Some(1), "GPU 0 is emptier but not allowed");
        let full = p.place("demo", 1, &two(), &only1, OnGpuFull::Cpu).expect("placed");
        assert_eq!(full.gpu, None);
        let missing = p.place("demo", 1, &two(), &GpuSelection::Only(vec![5]), OnGpuFull::Reject).expect("placed");
        let reason = missing.reason.expect("reason");
        assert_eq!((missing.gpu, reason.cause), (None, FallbackReason::NoNvenc));
        assert_eq!(reason.detail, "transcode.gpus allows [5], this machine has GPUs [0, 1]");
    }

    #[test]
    fn a_gpu_without_nvenc_decodes_and_the_cpu_encodes() {
        let p = Placer::new(8);
        let mut h100 = gpu(0, 0, 70 * GIB);
        h100.has_nvenc = false;
        let mut small = h100.clone();
        small.index = 1;
        small.memory_free = GIB;
        let got = place(&p, 4, &[small, h100.clone()], OnGpuFull::Reject);
        assert_eq!((got.gpu, got.decode_on_gpu, got.encode_on_gpu), (Some(0), true, 0));
        assert!(got.sessions.is_none() && !got.rung_on_gpu(0) && got.keeps(3));
        let reason = got.reason.expect("reason");
        assert_eq!((reason.cause, reason.detail.as_str()), (FallbackReason::NoNvenc, "no NVENC on GPUs [1, 0]"));
        assert_eq!(p.held(0), 0);

        h100.has_nvdec = false;
        let neither = place(&p, 4, &[h100], OnGpuFull::Cpu);
        assert_eq!((neither.gpu, neither.reason.map(|r| r.cause)), (None, Some(FallbackReason::NoNvenc)));
        let nothing = place(&p, 4, &[], OnGpuFull::Cpu);
        assert_eq!(nothing.reason.map(|r| r.cause), Some(FallbackReason::NoDriver));
    }

    #[test]
    fn a_gpu_without_nvdec_encodes_and_the_cpu_decodes() {
        let p = Placer::new(8);
        let mut g = gpu(0, 0, GIB);
        g.has_nvdec = false;
        let got = place(&p, 2, &[g], OnGpuFull::Cpu);
        assert_eq!((got.gpu, got.decode_on_gpu, got.encode_on_gpu), (Some(0), false, 2));
        assert_eq!(got.reason.map(|r| r.cause), Some(FallbackReason::NoNvdec));
    }

    #[test]
    fn nothing_to_encode_places_nothing() {
        let p = Placer::new(8);
        let got = place(&p, 0, &two(), OnGpuFull::Reject);
        assert_eq!((got.gpu, got.reason.is_none(), p.held(0)), (None, true, 0));
        assert!(p.acquire(0, 0).is_none());
        assert!(p.acquire(0, 9).is_none());
    }

    #[test]
    fn the_gauge_follows_the_sessions() {
        let gauge = IntGaugeVec::new(prometheus::Opts::new("s", "s"), &["gpu"]).expect("metric");
        let p = Placer::with_gauge(8, gauge.clone());
        let a = p.acquire(1, 3).expect("free");
        let b = p.acquire(1, 2).expect("free");
        assert_eq!(gauge.with_label_values(&["1"]).get(), 5);
        drop(a);
        assert_eq!(gauge.with_label_values(&["1"]).get(), 2);
        drop(b);
        assert_eq!(gauge.with_label_values(&["1"]).get(), 0);
    }

    #[test]
    fn concurrent_acquire_and_release_never_exceed_the_cap() {
        const CAP: u32 = 7;
        let p = Placer::new(CAP);
        let in_use = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let (p, in_use, peak) = (p.clone(), in_use.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut granted = 0;
                    for i in 0..2000u32 {
                        let n = 1 + (t + i) % 3;
                        if let Some(guard) = p.acquire(0, n) {
                            granted += 1;
                            let now = in_use.fetch_add(n, Ordering::SeqCst) + n;
                            peak.fetch_max(now, Ordering::SeqCst);
                            assert!(now <= CAP, "{now} sessions in use");
                            assert!(p.held(0) <= CAP);
                            in_use.fetch_sub(n, Ordering::SeqCst);
                            drop(guard);
                        }
                    }
                    granted
                })
            })
            .collect();
        let granted: u32 = threads.into_iter().map(|t| t.join().expect("no panic")).sum();
        assert!(granted > 0);
        assert!(peak.load(Ordering::SeqCst) <= CAP);
        assert_eq!(p.held(0), 0, "every session came back");
    }
}
