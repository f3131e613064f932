//! The one place that decides where each stage of a channel's transcode runs (decode, scale,
//! encode), from the configured `transcode.hardware` and what this machine offers.
//!
//! Candidates are data: every hardware candidate that cannot run here keeps its reason (a fixed
//! [`FallbackReason`] and a detail), so the choice is logged and exported rather than made
//! silently. [`choose`] looks at the machine only; [`choose_placed`] also follows the GPU a
//! [`Placement`] picked, and is what a running channel uses.

use std::fmt;

use crate::config::Hardware;
use crate::metrics::{BackendSeries, FallbackReason, Metrics};
use crate::transcode::placement::{Placement, Unavailable};
use crate::transcode::scale;

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
    pub cause: FallbackReason,
    pub reason: String,
}

impl Refused {
    fn nvidia(stage: Stage, why: &Unavailable) -> Self {
        Self { stage, backend: Backend::Nvidia, cause: why.cause, reason: why.detail.clone() }
    }
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
    /// NVIDIA when the kept rungs are encoded with NVENC (all of them are, or none).
    pub encode: Backend,
    /// The GPU the NVIDIA stages run on; `None` from [`choose`], which places nothing, and when
    /// every stage is on the CPU.
    pub gpu: Option<u32>,
    /// The encoder of each encoded rung, in ladder order; `None` for a rung the placement dropped
    /// (`on_gpu_full: drop_top_rung`), which is not encoded at all. Empty from [`choose`]: there
    /// every rung uses `encode`.
    pub rungs: Vec<Option<Backend>>,
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

    /// The encoder of encoded rung `rung` (ladder order), or `None` when that rung is dropped.
    pub fn rung_encode(&self, rung: usize) -> Option<Backend> {
        if self.rungs.is_empty() { Some(self.encode) } else { self.rungs.get(rung).copied().flatten() }
    }

    /// The plan as `ladderd_backend_info` series: decode once per channel (with an empty `rung`,
    /// as it feeds them all), then scale and encode for each rung that is encoded. `rung_names`
    /// are the encoded rungs' names in ladder order.
    pub fn backend_series<S: AsRef<str>>(&self, rung_names: impl IntoIterator<Item = S>) -> Vec<BackendSeries> {
        let series = |rung: &str, stage: Stage, backend: Backend| BackendSeries {
            rung: rung.to_string(),
            stage: stage.name(),
            backend: backend.name(),
        };
        let mut out = vec![series("", Stage::Decode, self.decode)];
        for (i, name) in rung_names.into_iter().enumerate() {
            if let Some(encode) = self.rung_encode(i) {
                out.push(series(name.as_ref(), Stage::Scale, self.scale));
                out.push(series(name.as_ref(), Stage::Encode, encode));
            }
        }
        out
    }

    /// Publishes the plan of `channel`: its `ladderd_backend_info` series (those of `previous`,
    /// the series the last export returned, go to 0) and one `ladderd_backend_fallbacks_total`
    /// per refused stage. Returns the series to pass as `previous` next time; when the channel
    /// stops, `metrics.set_backend_info(channel, &previous, &[])` zeroes them.
    pub fn export<S: AsRef<str>>(
        &self,
        metrics: &Metrics,
        channel: &str,
        rung_names: impl IntoIterator<Item = S>,
        previous: &[BackendSeries],
    ) -> Vec<BackendSeries> {
        let current = self.backend_series(rung_names);
        metrics.set_backend_info(channel, previous, &current);
        for r in &self.refused {
            metrics.backend_fallbacks.with_label_values(&[r.cause.as_str()]).inc();
        }
        current
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
    fn offer(&self, stage: Stage) -> &Result<(), String> {
        match stage {
            Stage::Decode => &self.decode,
            Stage::Scale => &self.scale,
            Stage::Encode => &self.encode,
        }
    }

    /// Why `stage` is not offered, with its cause, or `None` when it is.
    ///
    /// The offer carries text only, so the cause follows from its shape: one reason for every
    /// stage is about the machine (no driver, no GPU); otherwise a refused decode lacks NVDEC, a
    /// refused encode lacks NVENC, and a refused scale is not built when FFmpeg has no CUDA
    /// scaling filter ([`scale::NO_SCALING_FILTER`]) and a GPU error otherwise (CUDA is on every
    /// GPU, so a scaling graph that does not run there failed).
    pub fn unavailable(&self, stage: Stage) -> Option<Unavailable> {
        let detail = self.offer(stage).as_ref().err()?;
        let machine = Stage::ALL.iter().all(|s| self.offer(*s).as_ref().err() == Some(detail));
        let cause = match stage {
            _ if machine => FallbackReason::NoDriver,
            Stage::Decode => FallbackReason::NoNvdec,
            Stage::Scale if detail.starts_with(scale::NO_SCALING_FILTER) => FallbackReason::NotBuilt,
            Stage::Scale => FallbackReason::GpuError,
            Stage::Encode => FallbackReason::NoNvenc,
        };
        Some(Unavailable::new(cause, detail.clone()))
    }
}

/// Chooses the backend of each stage from what the machine offers, before any GPU is placed.
///
/// - `cpu`: every stage on the CPU; no hardware is considered.
/// - `auto`: each stage on NVIDIA where it is offered, else on the CPU, keeping the reason.
/// - `nvidia`: every stage on NVIDIA that this build has a GPU path for, or an error naming each
///   stage that cannot be.
///
/// Scaling is on NVIDIA only after an NVIDIA decode (see [`choose_placed`]).
pub fn choose(hardware: Hardware, nvidia: &NvidiaOffer) -> Result<StagePlan, NoHardware> {
    let mut refused = Vec::new();
    let mut pick = |stage: Stage, after: Option<Backend>| -> Backend {
        if hardware == Hardware::Cpu {
            return Backend::Cpu;
        }
        let why = nvidia.unavailable(stage).or_else(|| match after {
            Some(Backend::Cpu) => Some(scale_after_cpu_decode(nvidia.unavailable(Stage::Decode))),
            _ => None,
        });
        match why {
            None => Backend::Nvidia,
            Some(why) => {
                refused.push(Refused::nvidia(stage, &why));
                Backend::Cpu
            }
        }
    };
    let decode = pick(Stage::Decode, None);
    let plan = StagePlan {
        decode,
        scale: pick(Stage::Scale, Some(decode)),
        encode: pick(Stage::Encode, None),
        gpu: None,
        rungs: Vec::new(),
        refused,
    };
    if hardware == Hardware::Nvidia && plan.refused.iter().any(|r| r.cause != FallbackReason::NotBuilt) {
        return Err(NoHardware { refused: plan.refused });
    }
    Ok(plan)
}

/// Chooses the backend of each stage of a placed channel: a stage runs on NVIDIA where the
/// machine offers it *and* the placement put it on the GPU; otherwise it is on the CPU, refused
/// with the offer's reason (checked first: it says why no GPU could do it) or the placement's.
///
/// Scaling goes to the GPU only after an NVIDIA decode: the CUDA scaling graph takes NVDEC's
/// pictures where they already are. A picture decoded on the CPU is scaled on the CPU, also before
/// NVENC (which uploads the smaller, scaled picture itself).
///
/// `hardware` is the channel's (`TranscodeConfig::hardware_for`). Under `cpu` the placement is
/// ignored and every kept rung of it is on the CPU; under `nvidia` any refusal is an error. Where
/// the encoders end up on the CPU (including on error), the placement's NVENC sessions are
/// released, so the caller need not check.
pub fn choose_placed(
    hardware: Hardware,
    nvidia: &NvidiaOffer,
    placement: &mut Placement,
) -> Result<StagePlan, NoHardware> {
    let rungs = placement.rungs;
    if hardware == Hardware::Cpu {
        placement.release_sessions();
        return Ok(StagePlan {
            decode: Backend::Cpu,
            scale: Backend::Cpu,
            encode: Backend::Cpu,
            gpu: None,
            rungs: vec![Some(Backend::Cpu); rungs],
            refused: Vec::new(),
        });
    }
    // `placed`: the placement put the stage on its GPU. Not placed without a reason means there
    // is nothing to run there (no encoded rungs), which is no fallback.
    fn pick(
        refused: &mut Vec<Refused>,
        offer: Option<Unavailable>,
        stage: Stage,
        placed: bool,
        fallback: Option<&Unavailable>,
    ) -> Backend {
        match (offer.as_ref(), placed, fallback) {
            (Some(why), _, _) | (None, false, Some(why)) => {
                refused.push(Refused::nvidia(stage, why));
                Backend::Cpu
            }
            (None, true, _) => Backend::Nvidia,
            (None, false, None) => Backend::Cpu,
        }
    }
    let mut refused = Vec::new();
    let on_gpu = placement.gpu.is_some();
    let reason = placement.reason.clone();
    let offer = |stage| nvidia.unavailable(stage);
    let decode =
        pick(&mut refused, offer(Stage::Decode), Stage::Decode, on_gpu && placement.decode_on_gpu, reason.as_ref());
    let encode =
        pick(&mut refused, offer(Stage::Encode), Stage::Encode, on_gpu && placement.encode_on_gpu > 0, reason.as_ref());
    let beside_gpu = decode == Backend::Nvidia || encode == Backend::Nvidia;
    // Scaling follows the decoder, so when it stays on the CPU for that it is for its reason.
    let decoder_refused =
        refused.iter().find(|r| r.stage == Stage::Decode).map(|r| Unavailable::new(r.cause, r.reason.clone()));
    let after_cpu_decode = (decode == Backend::Cpu).then(|| scale_after_cpu_decode(decoder_refused));
    let scale = pick(
        &mut refused,
        offer(Stage::Scale),
        Stage::Scale,
        on_gpu && decode == Backend::Nvidia,
        after_cpu_decode.as_ref().or(reason.as_ref()),
    );
    refused.sort_by_key(|r| Stage::ALL.iter().position(|s| *s == r.stage));
    if encode == Backend::Cpu {
        placement.release_sessions();
    }
    let gpu = if beside_gpu { placement.gpu } else { None };
    let per_rung = (0..rungs).map(|i| placement.keeps(i).then_some(encode)).collect();
    let plan = StagePlan { decode, scale, encode, gpu, rungs: per_rung, refused };
    // `nvidia` means every stage this build can run on the GPU runs there, or the publish is
    // refused: a stage the build has no GPU path for (CUDA scaling, for now) is no refusal.
    if hardware == Hardware::Nvidia && plan.refused.iter().any(|r| r.cause != FallbackReason::NotBuilt) {
        placement.release_sessions();
        return Err(NoHardware { refused: plan.refused });
    }
    Ok(plan)
}

/// Why scaling is not on NVIDIA when decoding is on the CPU: the decoder's reason where it has
/// one (the GPU lacks NVDEC, is full, …).
fn scale_after_cpu_decode(decode_refused: Option<Unavailable>) -> Unavailable {
    match decode_refused {
        Some(why) => Unavailable::new(
            why.cause,
            format!("CUDA scaling takes NVDEC's pictures, and decoding is on the CPU: {why}"),
        ),
        None => {
            Unavailable::new(FallbackReason::NoNvdec, "CUDA scaling takes NVDEC's pictures, and decoding is on the CPU")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GpuSelection, OnGpuFull};
    use crate::transcode::placement::{GpuState, Placer};

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

    fn gpu(index: u32, has_nvenc: bool) -> GpuState {
        GpuState {
            index,
            nvenc_sessions_used: 0,
            nvenc_sessions_ours: 0,
            encoder_utilization: 0,
            memory_free: 1 << 30,
            has_nvenc,
            has_nvdec: true,
        }
    }

    fn placed(p: &Placer, rungs: usize, gpus: &[GpuState], policy: OnGpuFull) -> Placement {
        p.place("demo", rungs, gpus, &GpuSelection::All, policy).expect("placed")
    }

    #[test]
    fn offer_refusals_have_causes() {
        let not_built = scale::NO_SCALING_FILTER.to_string();
        let o = NvidiaOffer { decode: Err("no NVDEC".into()), scale: Err(not_built), encode: Ok(()) };
        assert_eq!(o.unavailable(Stage::Decode).map(|u| u.cause), Some(FallbackReason::NoNvdec));
        assert_eq!(o.unavailable(Stage::Scale).map(|u| u.cause), Some(FallbackReason::NotBuilt));
        assert_eq!(o.unavailable(Stage::Encode), None);
        let o = NvidiaOffer { decode: Ok(()), scale: Err("cuModuleLoadData failed".into()), encode: Ok(()) };
        assert_eq!(o.unavailable(Stage::Scale).map(|u| u.cause), Some(FallbackReason::GpuError));
        let o = offer(true, true, false);
        assert_eq!(o.unavailable(Stage::Encode).map(|u| u.cause), Some(FallbackReason::NoNvenc));
        let none = offer(false, false, false);
        assert!(Stage::ALL.iter().all(|s| none.unavailable(*s).map(|u| u.cause) == Some(FallbackReason::NoDriver)));
        let p = choose(Hardware::Auto, &none).expect("plan");
        assert!(p.refused.iter().all(|r| r.cause == FallbackReason::NoDriver));
        assert_eq!((p.gpu, p.rung_encode(5)), (None, Some(Backend::Cpu)), "choose places nothing");
    }

    #[test]
    fn a_placed_channel_runs_on_its_gpu() {
        let placer = Placer::new(8);
        let mut at = placed(&placer, 3, &[gpu(0, true), gpu(1, true)], OnGpuFull::Cpu);
        let p = choose_placed(Hardware::Nvidia, &offer(true, true, true), &mut at).expect("plan");
        assert_eq!((p.decode, p.scale, p.encode, p.gpu), (Backend::Nvidia, Backend::Nvidia, Backend::Nvidia, Some(0)));
        assert_eq!(p.rungs, vec![Some(Backend::Nvidia); 3]);
        assert!(p.refused.is_empty());
        assert_eq!(placer.held(0), 3, "the sessions stay with the placement");
    }

    #[test]
    fn a_full_gpu_puts_every_stage_on_the_cpu_with_gpu_full() {
        let placer = Placer::new(2);
        let mut at = placed(&placer, 3, &[gpu(0, true)], OnGpuFull::Cpu);
        let p = choose_placed(Hardware::Auto, &offer(true, true, true), &mut at).expect("plan");
        assert_eq!((p.decode, p.scale, p.encode, p.gpu), (Backend::Cpu, Backend::Cpu, Backend::Cpu, None));
        assert_eq!(p.rungs, vec![Some(Backend::Cpu); 3]);
        let causes: Vec<_> = p.refused.iter().map(|r| (r.stage, r.cause)).collect();
        assert_eq!(
            causes,
            [Stage::Decode, Stage::Scale, Stage::Encode].map(|s| (s, FallbackReason::GpuFull)).to_vec(),
            "{:?}",
            p.refused
        );
        let e = choose_placed(Hardware::Nvidia, &offer(true, true, true), &mut at).unwrap_err();
        assert!(e.to_string().contains("encode on nvidia: no allowed GPU has 3 NVENC sessions free"), "{e}");
    }

    #[test]
    fn dropped_rungs_are_left_out_of_the_plan() {
        let placer = Placer::new(2);
        let mut at = placed(&placer, 4, &[gpu(0, true)], OnGpuFull::DropTopRung);
        let p = choose_placed(Hardware::Auto, &offer(true, true, true), &mut at).expect("plan");
        assert_eq!(p.rungs, vec![None, None, Some(Backend::Nvidia), Some(Backend::Nvidia)]);
        assert_eq!((p.rung_encode(0), p.rung_encode(3), p.rung_encode(4)), (None, Some(Backend::Nvidia), None));
        let series = p.backend_series(["1080p", "720p", "480p", "360p"]);
        let names: Vec<String> = series.iter().map(|s| format!("{}/{}/{}", s.rung, s.stage, s.backend)).collect();
        assert_eq!(
            names,
            ["/decode/nvidia", "480p/scale/nvidia", "480p/encode/nvidia", "360p/scale/nvidia", "360p/encode/nvidia"]
        );
    }

    #[test]
    fn a_gpu_without_nvenc_gives_a_hybrid_plan() {
        let placer = Placer::new(8);
        let mut at = placed(&placer, 2, &[gpu(0, false)], OnGpuFull::Cpu);
        let p = choose_placed(Hardware::Auto, &offer(true, true, true), &mut at).expect("plan");
        assert_eq!((p.decode, p.scale, p.encode, p.gpu), (Backend::Nvidia, Backend::Nvidia, Backend::Cpu, Some(0)));
        assert_eq!(p.refused.len(), 1);
        assert_eq!((p.refused[0].stage, p.refused[0].cause), (Stage::Encode, FallbackReason::NoNvenc));
        assert!(choose_placed(Hardware::Nvidia, &offer(true, true, true), &mut at).is_err());
    }

    #[test]
    fn sessions_the_plan_does_not_use_are_released() {
        let placer = Placer::new(8);
        // The GPU has room, but this machine cannot encode there after all.
        let mut at = placed(&placer, 2, &[gpu(0, true)], OnGpuFull::Cpu);
        assert_eq!(placer.held(0), 2);
        let p = choose_placed(Hardware::Auto, &offer(true, true, false), &mut at).expect("plan");
        assert_eq!((p.decode, p.scale, p.encode), (Backend::Nvidia, Backend::Nvidia, Backend::Cpu));
        assert_eq!((p.refused.len(), p.refused[0].cause), (1, FallbackReason::NoNvenc));
        assert_eq!((placer.held(0), at.sessions.is_none()), (0, true));

        // Neither decode nor encode on the GPU: scaling stays on the CPU too, for their reason.
        let mut at = placed(&placer, 2, &[gpu(0, true)], OnGpuFull::Cpu);
        let p = choose_placed(Hardware::Auto, &offer(false, true, false), &mut at).expect("plan");
        assert_eq!((p.decode, p.scale, p.encode, p.gpu), (Backend::Cpu, Backend::Cpu, Backend::Cpu, None));
        assert_eq!(p.refused.iter().map(|r| r.stage).collect::<Vec<_>>(), Stage::ALL);
        assert_eq!(placer.held(0), 0);

        let mut at = placed(&placer, 2, &[gpu(0, true)], OnGpuFull::Cpu);
        let p = choose_placed(Hardware::Cpu, &offer(true, true, true), &mut at).expect("plan");
        assert_eq!((p.encode, p.refused.len(), placer.held(0)), (Backend::Cpu, 0, 0));
    }

    #[test]
    fn export_moves_backend_info_and_counts_fallbacks() {
        let metrics = Metrics::new();
        let placer = Placer::new(2);
        let names = ["720p", "360p"];
        let mut first = placed(&placer, 2, &[gpu(0, true)], OnGpuFull::Cpu);
        let on_gpu = choose_placed(Hardware::Auto, &offer(true, true, true), &mut first).expect("plan");
        let previous = on_gpu.export(&metrics, "demo", names, &[]);
        let mut second = placed(&placer, 2, &[gpu(0, true)], OnGpuFull::Cpu);
        let on_cpu = choose_placed(Hardware::Auto, &offer(true, true, true), &mut second).expect("plan");
        on_cpu.export(&metrics, "demo", names, &previous);
        let info = |rung, stage, backend| metrics.backend_info.with_label_values(&["demo", rung, stage, backend]).get();
        assert_eq!((info("720p", "encode", "nvidia"), info("720p", "encode", "cpu")), (0, 1));
        assert_eq!((info("", "decode", "nvidia"), info("", "decode", "cpu")), (0, 1));
        assert_eq!(metrics.backend_fallbacks.with_label_values(&["gpu_full"]).get(), 3);
    }

    #[test]
    fn scaling_is_on_the_gpu_only_after_nvdec() {
        // A GPU with NVENC but no NVDEC: CPU decoding, CPU scaling, NVENC encoding.
        let placer = Placer::new(8);
        let mut no_nvdec = gpu(0, true);
        no_nvdec.has_nvdec = false;
        let mut at = placed(&placer, 2, &[no_nvdec], OnGpuFull::Cpu);
        let p = choose_placed(Hardware::Auto, &offer(true, true, true), &mut at).expect("plan");
        assert_eq!((p.decode, p.scale, p.encode, p.gpu), (Backend::Cpu, Backend::Cpu, Backend::Nvidia, Some(0)));
        let refused: Vec<_> = p.refused.iter().map(|r| (r.stage, r.cause, r.reason.as_str())).collect();
        assert_eq!(
            refused,
            [
                (Stage::Decode, FallbackReason::NoNvdec, "GPU 0 has no NVDEC"),
                (
                    Stage::Scale,
                    FallbackReason::NoNvdec,
                    "CUDA scaling takes NVDEC's pictures, and decoding is on the CPU: GPU 0 has no NVDEC"
                ),
            ]
        );
        // The same from the offer alone.
        let p = choose(Hardware::Auto, &offer(false, true, true)).expect("plan");
        assert_eq!((p.decode, p.scale, p.encode), (Backend::Cpu, Backend::Cpu, Backend::Nvidia));
        assert_eq!(p.refused[1].stage, Stage::Scale);
        assert!(p.refused[1].reason.starts_with("CUDA scaling takes NVDEC's pictures"), "{:?}", p.refused);
    }

    #[test]
    fn a_scaling_filter_missing_from_ffmpeg_does_not_refuse_nvidia() {
        let o = NvidiaOffer { decode: Ok(()), scale: Err(scale::NO_SCALING_FILTER.into()), encode: Ok(()) };
        let p = choose(Hardware::Nvidia, &o).expect("not built is no refusal");
        assert_eq!((p.decode, p.scale, p.encode), (Backend::Nvidia, Backend::Cpu, Backend::Nvidia));
        let broken = NvidiaOffer { scale: Err("scaling CUDA frames on GPU 0 failed: …".into()), ..o };
        let e = choose(Hardware::Nvidia, &broken).expect_err("a GPU that cannot scale refuses nvidia");
        assert_eq!(e.refused[0].cause, FallbackReason::GpuError);
    }
}
