//! NVIDIA GPUs on this machine: which ones there are (CUDA driver API, through cudarc), how busy
//! they are (NVML), and which of the engines ladderd uses really work on each (FFmpeg's
//! h264_cuvid, h264_nvenc and hevc_nvenc open; the h264 decoder's CUDA hwaccel decodes a picture
//! into GPU memory; the CUDA scaling graph scales one).
//!
//! This is discovery only, below the transcoder: it knows no stage or backend. The transcoder
//! asks it (`transcode::probe`), hands it the check of its own zero-copy path (so that the probe
//! runs the code the pipeline runs), and turns the answers into its stage offers and placement.
//!
//! The probe runs once per process; how busy each GPU is changes, so [`live_stats`] reads NVML
//! again (at most every [`STATS_MAX_AGE`]) for placement and metrics.
//!
//! A GPU model is never trusted by name: an H100 has NVDEC but no NVENC, a GeForce card has
//! NVENC but refuses sessions beyond its limit, a container may see the GPU but lack the video
//! libraries. Only opening the codec tells, so the probe opens it and keeps FFmpeg's answer.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

use crate::ffi::hw;

/// The environment variable that switches engines off for ladderd whatever the probe finds, as a
/// comma-separated list of `nvenc`, `nvdec`, `scale` (e.g. `nvenc` to run the hybrid plan on a
/// GPU that has NVENC, or to leave NVENC to another service). Each engine it names is reported
/// as refused with this variable as the reason.
pub const DISABLE_VAR: &str = "LADDERD_NVIDIA_DISABLE";

/// The NVIDIA driver as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverInfo {
    /// The CUDA version the driver implements (cuDriverGetVersion), e.g. `12.4`.
    pub cuda_version: String,
    /// The driver's own version as NVML reports it (e.g. `550.54.15`), when NVML works.
    pub driver_version: Option<String>,
}

/// One GPU, by its CUDA device ordinal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// The CUDA device ordinal: what FFmpeg's `gpu` option (h264_nvenc, h264_cuvid) and
    /// `av_hwdevice_ctx_create`'s device string mean. It honours `CUDA_VISIBLE_DEVICES`, and
    /// need not be nvidia-smi's index (CUDA orders fastest first unless `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
    pub index: u32,
    pub name: String,
    /// `GPU-…`, as nvidia-smi prints it; the key that finds this GPU in NVML.
    pub uuid: Option<String>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    /// Percent of time NVENC was busy over NVML's last sampling period.
    pub encoder_utilization: Option<u32>,
    /// Percent of time NVDEC was busy over NVML's last sampling period.
    pub decoder_utilization: Option<u32>,
    /// Active NVENC sessions, from every process on the machine.
    pub encoder_sessions: Option<u32>,
    /// Each figure above that is missing, with why (`"encoder_stats: Not supported"`).
    pub stats_missing: Vec<String>,
    /// Whether FFmpeg can create a CUDA device context on this GPU.
    pub cuda_device: Result<(), String>,
    pub nvenc_h264: Result<(), String>,
    pub nvenc_hevc: Result<(), String>,
    /// NVDEC through h264_cuvid, pictures in system memory.
    pub nvdec_h264: Result<(), String>,
    /// NVDEC through FFmpeg's h264 decoder with the CUDA hwaccel: a real picture decoded into a
    /// CUDA frame (the zero-copy path's decoder).
    pub nvdec_cuda: Result<(), String>,
    /// The CUDA scaling graph (scale_cuda, or scale_npp) scaled a picture in GPU memory.
    pub cuda_scale: Result<(), String>,
}

impl GpuInfo {
    /// How many of the stages ladderd can put on NVIDIA this GPU offers.
    pub fn usable_stages(&self) -> usize {
        let decode = self.nvdec_h264.is_ok() || self.nvdec_cuda.is_ok();
        usize::from(decode) + usize::from(self.scale_offer().is_ok()) + usize::from(self.nvenc_h264.is_ok())
    }

    /// Whether this GPU can scale: the scaling graph works, and NVDEC gives it CUDA frames
    /// (this build scales on the GPU only what NVDEC decoded there).
    pub fn scale_offer(&self) -> Result<(), String> {
        match (&self.nvdec_cuda, &self.cuda_scale) {
            (Ok(()), Ok(())) => Ok(()),
            (_, Err(why)) => Err(why.clone()),
            (Err(why), Ok(())) => Err(format!("CUDA scaling takes NVDEC's CUDA frames, which do not come: {why}")),
        }
    }

    /// Marks the engines named in `list` (the value of [`DISABLE_VAR`]) as refused.
    pub(crate) fn disable(&mut self, list: &str) {
        let why = |engine: &str| Err(format!("{engine} is switched off by {DISABLE_VAR}={list}"));
        for engine in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match engine {
                "nvenc" => (self.nvenc_h264, self.nvenc_hevc) = (why("NVENC"), why("NVENC")),
                "nvdec" => (self.nvdec_h264, self.nvdec_cuda) = (why("NVDEC"), why("NVDEC")),
                "scale" => self.cuda_scale = why("CUDA scaling"),
                other => tracing::warn!(engine = other, "{DISABLE_VAR} names an unknown engine (nvenc, nvdec, scale)"),
            }
        }
    }
}

/// What this machine offers, as found when it was probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The CUDA driver, or why it cannot be used (every NVIDIA stage then gets this reason).
    pub driver: Result<DriverInfo, String>,
    /// NVML (utilization, sessions, memory), or why its figures are missing.
    pub nvml: Result<(), String>,
    pub gpus: Vec<GpuInfo>,
}

/// Whether the zero-copy path works on a GPU: NVDEC into CUDA frames, and CUDA scaling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroCopy {
    /// FFmpeg's h264 decoder with the CUDA hwaccel decoded a real picture into a CUDA frame.
    pub decode: Result<(), String>,
    /// The scaling graph scaled a picture in GPU memory and it downloaded at the right size.
    pub scale: Result<(), String>,
}

/// Probes this machine: CUDA driver, NVML, an FFmpeg open of each engine on each GPU, and
/// `zero_copy`, the caller's check of its zero-copy path on a GPU.
///
/// Opening encoders and decoders takes a moment per GPU and holds an NVENC session while it
/// runs; call it once per process, not per channel.
pub fn probe(zero_copy: &dyn Fn(u32) -> ZeroCopy) -> Probe {
    let nvml = Nvml::init().map_err(|e| format!("NVML cannot start: {e}"));
    let cuda = match hw::cuda_driver() {
        Ok(cuda) => cuda,
        Err(why) => return Probe { driver: Err(why), nvml: nvml.map(drop), gpus: Vec::new() },
    };
    let driver_version = nvml.as_ref().ok().and_then(|n| n.sys_driver_version().ok());
    let cuda_version = format!("{}.{}", cuda.version / 1000, (cuda.version % 1000) / 10);
    let gpus = cuda
        .devices
        .into_iter()
        .map(|dev| {
            let gpu = dev.ordinal;
            let zero_copy = zero_copy(gpu);
            let mut info = GpuInfo {
                index: gpu,
                name: dev.name,
                uuid: dev.uuid.as_ref().ok().cloned(),
                memory_total_bytes: dev.total_memory.ok(),
                memory_used_bytes: None,
                encoder_utilization: None,
                decoder_utilization: None,
                encoder_sessions: None,
                stats_missing: Vec::new(),
                cuda_device: hw::probe_cuda_device(gpu),
                nvenc_h264: hw::probe_encoder("h264_nvenc", gpu),
                nvenc_hevc: hw::probe_encoder("hevc_nvenc", gpu),
                nvdec_h264: hw::probe_decoder("h264_cuvid", gpu),
                nvdec_cuda: zero_copy.decode,
                cuda_scale: zero_copy.scale,
            };
            let stats = GpuStats::read(nvml.as_ref().map_err(|_| "NVML is not available"), gpu, dev.uuid.as_ref());
            info.memory_total_bytes = stats.memory_total_bytes.or(info.memory_total_bytes);
            info.memory_used_bytes = stats.memory_used_bytes;
            info.encoder_utilization = stats.encoder_utilization;
            info.decoder_utilization = stats.decoder_utilization;
            info.encoder_sessions = stats.encoder_sessions;
            info.stats_missing = stats.missing;
            if let Ok(list) = std::env::var(DISABLE_VAR) {
                info.disable(&list);
            }
            info
        })
        .collect();
    Probe { driver: Ok(DriverInfo { cuda_version, driver_version }), nvml: nvml.map(drop), gpus }
}

/// Checks `gpu` again as `probe` found it: its CUDA device, then each NVENC and NVDEC engine that
/// opened then (a GPU coming back from quarantine must do what it did before). `Err` names the
/// first that fails now.
pub fn recheck(gpu: &GpuInfo) -> Result<(), String> {
    hw::cuda_driver()?;
    hw::probe_cuda_device(gpu.index).map_err(|e| format!("CUDA device: {e}"))?;
    if gpu.nvenc_h264.is_ok() {
        hw::probe_encoder("h264_nvenc", gpu.index).map_err(|e| format!("h264_nvenc: {e}"))?;
    }
    if gpu.nvdec_h264.is_ok() {
        hw::probe_decoder("h264_cuvid", gpu.index).map_err(|e| format!("h264_cuvid: {e}"))?;
    }
    Ok(())
}

/// How busy one GPU is now, from NVML: what placement's tie-breakers and the GPU gauges use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuStats {
    /// The CUDA device ordinal (as in [`GpuInfo::index`]).
    pub index: u32,
    /// Percent of time a kernel ran on the GPU over NVML's last sampling period (`scale_cuda`).
    #[serde(default)]
    pub gpu_utilization: Option<u32>,
    /// Percent of time NVENC was busy over NVML's last sampling period.
    pub encoder_utilization: Option<u32>,
    /// Percent of time NVDEC was busy over NVML's last sampling period.
    pub decoder_utilization: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    /// Active NVENC sessions on the GPU, from every process (NVML's encoder stats).
    pub encoder_sessions: Option<u32>,
    /// Each figure above that is missing, with why (`"encoder_stats: Not supported"`).
    pub missing: Vec<String>,
}

impl GpuStats {
    pub fn empty(index: u32) -> Self {
        Self {
            index,
            gpu_utilization: None,
            encoder_utilization: None,
            decoder_utilization: None,
            memory_used_bytes: None,
            memory_total_bytes: None,
            encoder_sessions: None,
            missing: Vec::new(),
        }
    }

    /// Reads GPU `index` from NVML, finding it by its UUID: NVML and CUDA may enumerate in
    /// different orders, so the UUID, not the index, links them.
    fn read(nvml: Result<&Nvml, &str>, index: u32, uuid: Result<&String, &String>) -> Self {
        let mut stats = Self::empty(index);
        let (nvml, uuid) = match (nvml, uuid) {
            (Ok(n), Ok(u)) => (n, u),
            (Err(why), _) => {
                stats.missing.push(format!("all: {why}"));
                return stats;
            }
            (_, Err(why)) => {
                stats.missing.push(format!("all: CUDA gives no UUID to find the GPU in NVML: {why}"));
                return stats;
            }
        };
        let device = match nvml.device_by_uuid(uuid.as_str()) {
            Ok(d) => d,
            Err(e) => {
                stats.missing.push(format!("all: NVML has no device {uuid}: {e}"));
                return stats;
            }
        };
        match device.memory_info() {
            Ok(m) => {
                stats.memory_total_bytes = Some(m.total);
                stats.memory_used_bytes = Some(m.used);
            }
            Err(e) => stats.missing.push(format!("memory_info: {e}")),
        }
        match device.utilization_rates() {
            Ok(u) => stats.gpu_utilization = Some(u.gpu),
            Err(e) => stats.missing.push(format!("utilization_rates: {e}")),
        }
        match device.encoder_utilization() {
            Ok(u) => stats.encoder_utilization = Some(u.utilization),
            Err(e) => stats.missing.push(format!("encoder_utilization: {e}")),
        }
        match device.decoder_utilization() {
            Ok(u) => stats.decoder_utilization = Some(u.utilization),
            Err(e) => stats.missing.push(format!("decoder_utilization: {e}")),
        }
        match device.encoder_stats() {
            Ok(s) => stats.encoder_sessions = Some(s.session_count),
            Err(e) => stats.missing.push(format!("encoder_stats: {e}")),
        }
        stats
    }
}

/// How often NVML is read at most: its utilization figures are averages over its own sampling
/// period (a second or more), so reading faster only costs time.
pub const STATS_MAX_AGE: Duration = Duration::from_secs(2);

/// Where GPU figures come from; NVML in the daemon, a fake in tests.
pub trait StatsSource: Send + Sync {
    fn sample(&self) -> Vec<GpuStats>;
}

/// The last sample of a [`StatsSource`], taken again when it is older than `max_age`.
pub struct StatsCache<S> {
    source: S,
    max_age: Duration,
    last: Mutex<Option<(Instant, Arc<Vec<GpuStats>>)>>,
}

impl<S: StatsSource> StatsCache<S> {
    pub fn new(source: S, max_age: Duration) -> Self {
        Self { source, max_age, last: Mutex::new(None) }
    }

    /// The figures as of at most `max_age` before `now`. Callers that come while a sample is
    /// being taken wait for it rather than sample again.
    pub fn get(&self, now: Instant) -> Arc<Vec<GpuStats>> {
        let mut last = crate::sync::lock(&self.last);
        if let Some((at, stats)) = last.as_ref()
            && now.saturating_duration_since(*at) < self.max_age
        {
            return stats.clone();
        }
        let stats = Arc::new(self.source.sample());
        *last = Some((now, stats.clone()));
        stats
    }
}

/// NVML, for the GPUs the probe found.
struct NvmlStats {
    nvml: Result<Nvml, String>,
    gpus: Vec<(u32, Result<String, String>)>,
}

impl StatsSource for NvmlStats {
    fn sample(&self) -> Vec<GpuStats> {
        let nvml = self.nvml.as_ref().map_err(String::as_str);
        self.gpus.iter().map(|(index, uuid)| GpuStats::read(nvml, *index, uuid.as_ref())).collect()
    }
}

impl GpuStats {
    /// The figures as `ladderd_gpu_*` gauges take them (ratios rather than percents).
    pub fn gauges(&self) -> crate::metrics::GpuStats {
        let ratio = |p: Option<u32>| p.map(|p| f64::from(p.min(100)) / 100.0);
        crate::metrics::GpuStats {
            gpu_utilization: ratio(self.gpu_utilization),
            encoder_utilization: ratio(self.encoder_utilization),
            decoder_utilization: ratio(self.decoder_utilization),
            memory_used_bytes: self.memory_used_bytes,
            memory_total_bytes: self.memory_total_bytes,
        }
    }
}

/// The current figures from NVML of every GPU `probe` found (the process's probe: the first
/// call decides which GPUs are read), read again when the last reading is older than
/// [`STATS_MAX_AGE`]. Blocks for the NVML calls (milliseconds) when it reads: call it from a
/// thread that may block, not from an async task. Empty on a machine without GPUs.
pub fn live_stats(probe: &Probe) -> Arc<Vec<GpuStats>> {
    static CACHE: OnceLock<StatsCache<NvmlStats>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let gpus = probe
                .gpus
                .iter()
                .map(|g| (g.index, g.uuid.clone().ok_or_else(|| "the probe found no UUID".to_string())))
                .collect::<Vec<_>>();
            // No GPU, no NVML: nothing to read, and no library to load.
            let nvml = if gpus.is_empty() {
                Err("no GPU".to_string())
            } else {
                Nvml::init().map_err(|e| format!("NVML cannot start: {e}"))
            };
            StatsCache::new(NvmlStats { nvml, gpus }, STATS_MAX_AGE)
        })
        .get(Instant::now())
}

/// A few aligned lines: the driver, NVML, then each GPU with its figures and engines.
impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const W: usize = 16;
        let yes_no = |r: &Result<(), String>| match r {
            Ok(()) => "yes".to_string(),
            Err(why) => format!("no: {why}"),
        };
        match &self.driver {
            Ok(d) => {
                let version = d.driver_version.as_deref().unwrap_or("version unknown");
                writeln!(f, "{:<W$}{version} (CUDA {})", "NVIDIA driver", d.cuda_version)?
            }
            Err(why) => writeln!(f, "{:<W$}not available: {why}", "NVIDIA driver")?,
        }
        match &self.nvml {
            Ok(()) => writeln!(f, "{:<W$}yes", "NVML")?,
            Err(why) => writeln!(f, "{:<W$}not available: {why}", "NVML")?,
        }
        if self.gpus.is_empty() {
            return writeln!(f, "{:<W$}none", "GPUs");
        }
        writeln!(f, "{:<W$}{}", "GPUs", self.gpus.len())?;
        for g in &self.gpus {
            writeln!(f)?;
            let uuid = g.uuid.as_deref().map(|u| format!(" ({u})")).unwrap_or_default();
            writeln!(f, "{:<W$}{}{uuid}", format!("GPU {}", g.index), g.name)?;
            let gib = |bytes: Option<u64>| bytes.map_or("?".to_string(), |b| format!("{:.1}", b as f64 / GIB));
            writeln!(
                f,
                "  {:<w$}{} GiB used of {} GiB",
                "memory",
                gib(g.memory_used_bytes),
                gib(g.memory_total_bytes),
                w = W - 2
            )?;
            let pct = |p: Option<u32>| p.map_or("?".to_string(), |p| format!("{p} %"));
            writeln!(
                f,
                "  {:<w$}NVENC {}, NVDEC {}, {} NVENC session{}",
                "busy",
                pct(g.encoder_utilization),
                pct(g.decoder_utilization),
                g.encoder_sessions.map_or("?".to_string(), |n| n.to_string()),
                if g.encoder_sessions == Some(1) { "" } else { "s" },
                w = W - 2
            )?;
            writeln!(f, "  {:<w$}{}", "CUDA device", yes_no(&g.cuda_device), w = W - 2)?;
            writeln!(f, "  {:<w$}{}", "NVDEC h264", yes_no(&g.nvdec_h264), w = W - 2)?;
            writeln!(f, "  {:<w$}{}", "NVDEC to CUDA", yes_no(&g.nvdec_cuda), w = W - 2)?;
            writeln!(f, "  {:<w$}{}", "CUDA scaling", yes_no(&g.cuda_scale), w = W - 2)?;
            writeln!(f, "  {:<w$}{}", "NVENC h264", yes_no(&g.nvenc_h264), w = W - 2)?;
            writeln!(f, "  {:<w$}{}", "NVENC hevc", yes_no(&g.nvenc_hevc), w = W - 2)?;
            for missing in &g.stats_missing {
                writeln!(f, "  {:<w$}{missing}", "NVML missing", w = W - 2)?;
            }
        }
        Ok(())
    }
}

const GIB: f64 = (1u64 << 30) as f64;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const NO_NVENC: &str = "opening h264_nvenc on GPU 0 failed: Function not implemented (error -38)";

    /// An H100-like GPU, with or without NVDEC and NVENC.
    pub(crate) fn gpu(index: u32, nvdec: bool, nvenc: bool) -> GpuInfo {
        let r = |ok: bool, why: &str| if ok { Ok(()) } else { Err(why.to_string()) };
        GpuInfo {
            index,
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: Some(format!("GPU-0000000{index}-1111-2222-3333-444444444444")),
            memory_total_bytes: Some(80 << 30),
            memory_used_bytes: Some(1 << 29),
            encoder_utilization: Some(0),
            decoder_utilization: Some(12),
            encoder_sessions: Some(0),
            stats_missing: Vec::new(),
            cuda_device: Ok(()),
            nvenc_h264: r(nvenc, NO_NVENC),
            nvenc_hevc: r(nvenc, "opening hevc_nvenc on GPU 0 failed: Function not implemented (error -38)"),
            nvdec_h264: r(nvdec, "opening h264_cuvid on GPU 0 failed: Operation not permitted (error -1)"),
            nvdec_cuda: r(nvdec, NO_NVDEC_CUDA),
            cuda_scale: Ok(()),
        }
    }

    pub(crate) const NO_NVDEC_CUDA: &str = "decoding H.264 into CUDA frames on GPU 0 failed: no picture";

    pub(crate) fn with_gpus(gpus: Vec<GpuInfo>) -> Probe {
        let driver = DriverInfo { cuda_version: "12.4".into(), driver_version: Some("550.54.15".into()) };
        Probe { driver: Ok(driver), nvml: Ok(()), gpus }
    }

    #[test]
    fn nvml_percents_become_gauge_ratios_and_missing_figures_stay_missing() {
        let stats = GpuStats {
            gpu_utilization: Some(40),
            encoder_utilization: Some(100),
            decoder_utilization: Some(250),
            memory_used_bytes: Some(3 << 30),
            ..GpuStats::empty(1)
        };
        let g = stats.gauges();
        assert_eq!(g.gpu_utilization, Some(0.4));
        assert_eq!(g.encoder_utilization, Some(1.0));
        assert_eq!(g.decoder_utilization, Some(1.0), "NVML never reports more than all of the time");
        assert_eq!((g.memory_used_bytes, g.memory_total_bytes), (Some(3 << 30), None));
    }

    #[test]
    fn engines_can_be_switched_off_by_the_operator() {
        let mut g = gpu(0, true, true);
        g.disable("nvenc, scale,bogus");
        let why = format!("NVENC is switched off by {DISABLE_VAR}=nvenc, scale,bogus");
        assert_eq!((g.nvenc_h264.clone(), g.nvenc_hevc.clone()), (Err(why.clone()), Err(why)));
        assert_eq!(g.cuda_scale, Err(format!("CUDA scaling is switched off by {DISABLE_VAR}=nvenc, scale,bogus")));
        assert_eq!((g.nvdec_h264.clone(), g.nvdec_cuda.clone()), (Ok(()), Ok(())));
        let mut g = gpu(0, true, true);
        g.disable("nvdec");
        let why = format!("NVDEC is switched off by {DISABLE_VAR}=nvdec");
        assert_eq!((g.nvdec_h264.clone(), g.nvdec_cuda.clone()), (Err(why.clone()), Err(why.clone())));
        assert_eq!(g.scale_offer(), Err(format!("CUDA scaling takes NVDEC's CUDA frames, which do not come: {why}")));
        assert_eq!(g.nvenc_h264, Ok(()));
    }

    /// Counts its samples; each sample reports the count as the encoder utilization.
    struct Counting(std::sync::atomic::AtomicU32);

    impl StatsSource for Counting {
        fn sample(&self) -> Vec<GpuStats> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let mut s = GpuStats::empty(0);
            s.encoder_utilization = Some(n);
            vec![s]
        }
    }

    #[test]
    fn nvml_is_read_again_only_when_the_last_reading_is_old() {
        let cache = StatsCache::new(Counting(0.into()), STATS_MAX_AGE);
        let t0 = Instant::now();
        let util = |stats: Arc<Vec<GpuStats>>| stats[0].encoder_utilization;
        assert_eq!(util(cache.get(t0)), Some(1));
        assert_eq!(util(cache.get(t0 + Duration::from_millis(1999))), Some(1), "fresh enough");
        assert_eq!(util(cache.get(t0 + STATS_MAX_AGE)), Some(2), "read again");
        assert_eq!(util(cache.get(t0 + STATS_MAX_AGE + Duration::from_millis(10))), Some(2));
        // A clock that goes backwards is not "older".
        assert_eq!(util(cache.get(t0)), Some(2));
    }

    #[test]
    fn json_keeps_the_shape_and_every_reason() {
        let probe = with_gpus(vec![gpu(0, true, false)]);
        let json = serde_json::to_value(&probe).expect("serializes");
        assert_eq!(json["driver"]["Ok"]["cuda_version"], "12.4");
        assert_eq!(json["nvml"]["Ok"], serde_json::Value::Null);
        assert_eq!(json["gpus"][0]["index"], 0);
        assert_eq!(json["gpus"][0]["memory_total_bytes"], 80u64 << 30);
        assert_eq!(json["gpus"][0]["nvdec_h264"]["Ok"], serde_json::Value::Null);
        assert_eq!(json["gpus"][0]["nvenc_h264"]["Err"], NO_NVENC);
        let back: Probe = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, probe);

        let none = Probe { driver: Err(hw::NO_DRIVER.into()), nvml: Err("NVML cannot start".into()), gpus: Vec::new() };
        let text = serde_json::to_string(&none).expect("serializes");
        assert_eq!(
            text,
            r#"{"driver":{"Err":"no NVIDIA driver (cannot load libcuda.so.1)"},"nvml":{"Err":"NVML cannot start"},"gpus":[]}"#
        );
        assert_eq!(serde_json::from_str::<Probe>(&text).expect("deserializes"), none);
    }

    #[test]
    fn the_text_lines_up() {
        let mut g = gpu(0, true, false);
        g.encoder_sessions = None;
        g.stats_missing.push("encoder_stats: Not supported".into());
        let text = with_gpus(vec![g]).to_string();
        assert_eq!(
            text,
            "\
NVIDIA driver   550.54.15 (CUDA 12.4)
NVML            yes
GPUs            1

GPU 0           NVIDIA H100 80GB HBM3 (GPU-00000000-1111-2222-3333-444444444444)
  memory        0.5 GiB used of 80.0 GiB
  busy          NVENC 0 %, NVDEC 12 %, ? NVENC sessions
  CUDA device   yes
  NVDEC h264    yes
  NVDEC to CUDA yes
  CUDA scaling  yes
  NVENC h264    no: opening h264_nvenc on GPU 0 failed: Function not implemented (error -38)
  NVENC hevc    no: opening hevc_nvenc on GPU 0 failed: Function not implemented (error -38)
  NVML missing  encoder_stats: Not supported
"
        );
    }
}
