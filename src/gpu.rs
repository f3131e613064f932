//! NVIDIA GPUs on this machine: which ones there are (CUDA driver API, through cudarc), how busy
//! they are (NVML), and which of the engines ladderd uses really open on each (FFmpeg's
//! h264_cuvid, h264_nvenc and hevc_nvenc). [`Probe::nvidia_offer`] turns that into what
//! `transcode::backend::choose` needs: per stage, yes or the reason why not.
//!
//! A GPU model is never trusted by name: an H100 has NVDEC but no NVENC, a GeForce card has
//! NVENC but refuses sessions beyond its limit, a container may see the GPU but lack the video
//! libraries. Only opening the codec tells, so the probe opens it and keeps FFmpeg's answer.
#![deny(unsafe_code)]

use std::fmt;
use std::sync::OnceLock;

use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

use crate::ffi::hw;
use crate::transcode::backend::NvidiaOffer;

/// Why the scale stage is never offered on NVIDIA in this build.
pub const SCALE_NOT_BUILT: &str = "CUDA scaling (scale_cuda) is not part of this build; scaling runs on the CPU";

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
    pub nvdec_h264: Result<(), String>,
}

impl GpuInfo {
    /// How many of the stages ladderd can put on NVIDIA today this GPU offers.
    fn usable_stages(&self) -> usize {
        usize::from(self.nvdec_h264.is_ok()) + usize::from(self.nvenc_h264.is_ok())
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

/// Probes this machine: CUDA driver, NVML, and an FFmpeg open of each engine on each GPU.
///
/// Opening encoders and decoders takes a moment per GPU and holds an NVENC session while it
/// runs; call it once (see [`probe_cached`]), not per channel.
pub fn probe() -> Probe {
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
            };
            match (&nvml, &dev.uuid) {
                (Ok(nvml), Ok(uuid)) => read_stats(nvml, uuid, &mut info),
                (Err(_), _) => info.stats_missing.push("all: NVML is not available".into()),
                (_, Err(why)) => {
                    info.stats_missing.push(format!("all: CUDA gives no UUID to find the GPU in NVML: {why}"))
                }
            }
            info
        })
        .collect();
    Probe { driver: Ok(DriverInfo { cuda_version, driver_version }), nvml: nvml.map(drop), gpus }
}

/// The probe of this process, made on first use.
pub fn probe_cached() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(probe)
}

/// Fills in what NVML knows of the GPU with this UUID. NVML and CUDA may enumerate in different
/// orders, so the UUID, not the index, links them.
fn read_stats(nvml: &Nvml, uuid: &str, info: &mut GpuInfo) {
    let device = match nvml.device_by_uuid(uuid) {
        Ok(d) => d,
        Err(e) => {
            info.stats_missing.push(format!("all: NVML has no device {uuid}: {e}"));
            return;
        }
    };
    match device.memory_info() {
        Ok(m) => {
            info.memory_total_bytes = Some(m.total);
            info.memory_used_bytes = Some(m.used);
        }
        Err(e) => info.stats_missing.push(format!("memory_info: {e}")),
    }
    match device.encoder_utilization() {
        Ok(u) => info.encoder_utilization = Some(u.utilization),
        Err(e) => info.stats_missing.push(format!("encoder_utilization: {e}")),
    }
    match device.decoder_utilization() {
        Ok(u) => info.decoder_utilization = Some(u.utilization),
        Err(e) => info.stats_missing.push(format!("decoder_utilization: {e}")),
    }
    match device.encoder_stats() {
        Ok(s) => info.encoder_sessions = Some(s.session_count),
        Err(e) => info.stats_missing.push(format!("encoder_stats: {e}")),
    }
}

impl Probe {
    /// What NVIDIA offers each stage on GPU `gpu`, or with `None` on the GPU that offers the
    /// most stages (the lowest index among equals).
    ///
    /// This version decodes on NVDEC (h264_cuvid, pictures downloaded to system memory), scales
    /// on the CPU and encodes on NVENC from system memory, so decode and encode follow what
    /// opened in the probe and scale is refused with [`SCALE_NOT_BUILT`].
    pub fn nvidia_offer(&self, gpu: Option<u32>) -> NvidiaOffer {
        let refuse_all =
            |why: String| NvidiaOffer { decode: Err(why.clone()), scale: Err(why.clone()), encode: Err(why) };
        if let Err(why) = &self.driver {
            return refuse_all(why.clone());
        }
        let chosen = match gpu {
            Some(index) => match self.gpus.iter().find(|g| g.index == index) {
                Some(g) => g,
                None => {
                    return refuse_all(format!(
                        "GPU {index} does not exist (the NVIDIA driver lists {} GPU{})",
                        self.gpus.len(),
                        if self.gpus.len() == 1 { "" } else { "s" }
                    ));
                }
            },
            None => match self.gpus.iter().min_by_key(|g| (std::cmp::Reverse(g.usable_stages()), g.index)) {
                Some(g) => g,
                None => return refuse_all("the NVIDIA driver lists no GPUs".to_string()),
            },
        };
        NvidiaOffer {
            decode: chosen.nvdec_h264.clone(),
            scale: Err(SCALE_NOT_BUILT.to_string()),
            encode: chosen.nvenc_h264.clone(),
        }
    }
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
mod tests {
    use super::*;
    use crate::config::Hardware;
    use crate::transcode::backend::{Backend, choose};

    const NO_NVENC: &str = "opening h264_nvenc on GPU 0 failed: Function not implemented (error -38)";

    fn gpu(index: u32, nvdec: bool, nvenc: bool) -> GpuInfo {
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
        }
    }

    fn with_gpus(gpus: Vec<GpuInfo>) -> Probe {
        let driver = DriverInfo { cuda_version: "12.4".into(), driver_version: Some("550.54.15".into()) };
        Probe { driver: Ok(driver), nvml: Ok(()), gpus }
    }

    #[test]
    fn nvdec_without_nvenc_decodes_on_the_gpu_and_encodes_on_the_cpu() {
        let probe = with_gpus(vec![gpu(0, true, false)]);
        let offer = probe.nvidia_offer(Some(0));
        assert_eq!(offer.decode, Ok(()));
        assert_eq!(offer.encode, Err(NO_NVENC.to_string()));
        assert_eq!(offer.scale, Err(SCALE_NOT_BUILT.to_string()));
        assert_eq!(probe.nvidia_offer(None), offer);

        let plan = choose(Hardware::Auto, &offer).expect("auto always plans");
        assert_eq!((plan.decode, plan.scale, plan.encode), (Backend::Nvidia, Backend::Cpu, Backend::Cpu));
        let refused: Vec<String> = plan.refused.iter().map(ToString::to_string).collect();
        assert_eq!(refused, [format!("scale on nvidia: {SCALE_NOT_BUILT}"), format!("encode on nvidia: {NO_NVENC}")]);
    }

    #[test]
    fn with_no_gpu_named_the_gpu_offering_most_is_used() {
        let probe = with_gpus(vec![gpu(0, true, false), gpu(1, true, true), gpu(2, true, true)]);
        let offer = probe.nvidia_offer(None);
        assert_eq!((offer.decode, offer.encode), (Ok(()), Ok(())));
        assert_eq!(probe.nvidia_offer(Some(0)).encode, Err(NO_NVENC.to_string()));
    }

    #[test]
    fn a_gpu_that_is_not_there_is_refused_for_every_stage() {
        let offer = with_gpus(vec![gpu(0, true, true)]).nvidia_offer(Some(3));
        let why = "GPU 3 does not exist (the NVIDIA driver lists 1 GPU)".to_string();
        assert_eq!(offer, NvidiaOffer { decode: Err(why.clone()), scale: Err(why.clone()), encode: Err(why) });
        let offer = with_gpus(Vec::new()).nvidia_offer(None);
        assert_eq!(offer.encode, Err("the NVIDIA driver lists no GPUs".to_string()));
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
  NVENC h264    no: opening h264_nvenc on GPU 0 failed: Function not implemented (error -38)
  NVENC hevc    no: opening hevc_nvenc on GPU 0 failed: Function not implemented (error -38)
  NVML missing  encoder_stats: Not supported
"
        );
    }

    #[test]
    fn this_machine_is_probed_without_panicking_and_every_no_has_a_reason() {
        let probe = probe();
        if !crate::ffi::cuda_driver_present() {
            assert!(probe.gpus.is_empty());
            let why = probe.driver.as_ref().expect_err("no driver here");
            assert!(why.contains("libcuda"), "{why}");
            assert!(probe.nvml.is_err(), "NVML cannot start without the driver");
            let text = probe.to_string();
            assert!(
                text.starts_with("NVIDIA driver   not available: no NVIDIA driver (cannot load libcuda.so.1)\n"),
                "{text}"
            );
            assert!(text.ends_with("GPUs            none\n"), "{text}");
        }
        let offer = probe.nvidia_offer(None);
        for stage in [&offer.decode, &offer.scale, &offer.encode] {
            if let Err(why) = stage {
                assert!(!why.is_empty());
            }
        }
        if probe.gpus.is_empty() {
            let why = probe.driver.as_ref().err().cloned().unwrap_or_else(|| "the NVIDIA driver lists no GPUs".into());
            assert_eq!(offer, NvidiaOffer { decode: Err(why.clone()), scale: Err(why.clone()), encode: Err(why) });
        }
    }
}
