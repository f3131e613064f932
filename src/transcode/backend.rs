//! The one place that decides where each stage of a channel's transcode runs (decode, scale,
//! encode), from the configured `transcode.hardware` and what this machine offers.
//!
//! Candidates are data: every hardware candidate that cannot run here keeps its reason, so the
//! choice is logged (and, later, exported) rather than made silently.

use std::fmt;

use crate::config::Hardware;

/// A transcoding stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Decode,
    Scale,
    Encode,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Decode, Stage::Scale, Stage::Encode];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Scale => "scale",
            Stage::Encode => "encode",
        }
    }
}

/// Where a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// FFmpeg's h264 decoder, swscale, libx264.
    Cpu,
    /// NVDEC, CUDA scaling, NVENC.
    Nvidia,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Nvidia => "nvidia",
        }
    }
}

/// A hardware backend that was not used for a stage, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub stage: Stage,
    pub backend: Backend,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}: {}", self.stage.name(), self.backend.name(), self.reason)
    }
}

/// The backend of every stage for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    pub decode: Backend,
    pub scale: Backend,
    pub encode: Backend,
    /// Hardware candidates that were passed over, with their reasons.
    pub refused: Vec<Refused>,
}

impl StagePlan {
    pub fn backend(&self, stage: Stage) -> Backend {
        match stage {
            Stage::Decode => self.decode,
            Stage::Scale => self.scale,
            Stage::Encode => self.encode,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("transcode.hardware is nvidia but {}", .refused.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct NoHardware {
    pub refused: Vec<Refused>,
}

/// What this machine offers each stage on NVIDIA hardware: `Ok` where it can run there, or the
/// reason it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvidiaOffer {
    pub decode: Result<(), String>,
    pub scale: Result<(), String>,
    pub encode: Result<(), String>,
}

impl NvidiaOffer {
    /// Probes this machine. The NVIDIA pipeline (NVDEC → CUDA scaling → NVENC) is not part of this
    /// build yet, so a present driver is reported as such rather than as usable.
    pub fn probe() -> Self {
        let why = if crate::ffi::cuda_driver_present() {
            "an NVIDIA driver is present, but this build has no NVIDIA pipeline yet".to_string()
        } else {
            "no NVIDIA driver (cannot load libcuda.so.1)".to_string()
        };
        Self { decode: Err(why.clone()), scale: Err(why.clone()), encode: Err(why) }
    }

    fn offer(&self, stage: Stage) -> &Result<(), String> {
        match stage {
            Stage::Decode => &self.decode,
            Stage::Scale => &self.scale,
            Stage::Encode => &self.encode,
        }
    }
}

/// Chooses the backend of each stage.
///
/// - `cpu`: every stage on the CPU; no hardware is considered.
/// - `auto`: each stage on NVIDIA where it is offered, else on the CPU, keeping the reason.
/// - `nvidia`: every stage on NVIDIA, or an error naming each stage that cannot be.
pub fn choose(hardware: Hardware, nvidia: &NvidiaOffer) -> Result<StagePlan, NoHardware> {
    let mut refused = Vec::new();
    let mut pick = |stage: Stage| -> Backend {
        if hardware == Hardware::Cpu {
            return Backend::Cpu;
        }
        match nvidia.offer(stage) {
            Ok(()) => Backend::Nvidia,
            Err(reason) => {
                refused.push(Refused { stage, backend: Backend::Nvidia, reason: reason.clone() });
                Backend::Cpu
            }
        }
    };
    let plan =
        StagePlan { decode: pick(Stage::Decode), scale: pick(Stage::Scale), encode: pick(Stage::Encode), refused };
    if hardware == Hardware::Nvidia && !plan.refused.is_empty() {
        return Err(NoHardware { refused: plan.refused });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(decode: bool, scale: bool, encode: bool) -> NvidiaOffer {
        let r = |ok: bool| if ok { Ok(()) } else { Err("no NVENC on this GPU model".to_string()) };
        NvidiaOffer { decode: r(decode), scale: r(scale), encode: r(encode) }
    }

    #[test]
    fn cpu_never_considers_hardware() {
        let p = choose(Hardware::Cpu, &offer(true, true, true)).expect("plan");
        assert_eq!((p.decode, p.scale, p.encode), (Backend::Cpu, Backend::Cpu, Backend::Cpu));
        assert!(p.refused.is_empty());
    }

    #[test]
    fn auto_mixes_per_stage_and_keeps_reasons() {
        // A GPU with NVDEC and CUDA but no NVENC (H100-like): hybrid plan.
        let p = choose(Hardware::Auto, &offer(true, true, false)).expect("plan");
        assert_eq!((p.decode, p.scale, p.encode), (Backend::Nvidia, Backend::Nvidia, Backend::Cpu));
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].to_string(), "encode on nvidia: no NVENC on this GPU model");
    }

    #[test]
    fn nvidia_refuses_with_every_reason() {
        let e = choose(Hardware::Nvidia, &offer(true, false, false)).unwrap_err();
        assert_eq!(e.refused.len(), 2);
        assert!(e.to_string().contains("scale on nvidia") && e.to_string().contains("encode on nvidia"), "{e}");
        let p = choose(Hardware::Nvidia, &offer(true, true, true)).expect("all offered");
        assert_eq!(p.encode, Backend::Nvidia);
    }

    #[test]
    fn the_probe_here_gives_reasons_for_every_stage() {
        let o = NvidiaOffer::probe();
        for s in Stage::ALL {
            let reason = o.offer(s).as_ref().expect_err("no NVIDIA pipeline in this build");
            assert!(!reason.is_empty());
        }
        let p = choose(Hardware::Auto, &o).expect("auto falls back");
        assert_eq!(p.encode, Backend::Cpu);
        assert_eq!(p.refused.len(), 3);
    }
}
