//! The machine's NVIDIA GPUs as the transcoder sees them. Discovery is [`crate::gpu`]'s; this is
//! where the transcoder asks it, once per process, with the check of its own zero-copy path
//! ([`scale::probe_zero_copy`]), and turns the answers into what each stage is offered
//! ([`nvidia_offer`], for [`backend::choose`](crate::transcode::backend::choose)).

use std::sync::{Arc, OnceLock};

use crate::gpu::{self, GpuStats, Probe};
use crate::transcode::backend::NvidiaOffer;
use crate::transcode::scale;

/// Probes the machine now: `ladderd probe`, and the first use of [`machine`].
pub fn probe() -> Probe {
    gpu::probe(&scale::probe_zero_copy)
}

/// The probe of this process, made on first use.
pub fn machine() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(probe)
}

/// Probes GPU `gpu` of this process's probe again ([`gpu::recheck`]), for the quarantine's
/// cool-down ([`crate::transcode::health`]).
pub fn reprobe(gpu: u32) -> Result<(), String> {
    let info =
        machine().gpus.iter().find(|g| g.index == gpu).ok_or_else(|| format!("GPU {gpu} is not on this machine"))?;
    gpu::recheck(info)
}

/// How busy each of the machine's GPUs is now ([`gpu::live_stats`]). The first call waits for the
/// probe ([`machine`]), which takes seconds when it has not run yet.
pub fn live_stats() -> Arc<Vec<GpuStats>> {
    gpu::live_stats(machine())
}

/// What NVIDIA offers each stage on GPU `gpu`, or with `None` on the GPU that offers the
/// most stages (the lowest index among equals).
///
/// Decode is offered where NVDEC works (into CUDA frames, or through h264_cuvid); scale where
/// the CUDA scaling graph works and NVDEC gives it CUDA frames; encode where h264_nvenc opens.
pub fn nvidia_offer(probe: &Probe, gpu: Option<u32>) -> NvidiaOffer {
    let refuse_all = |why: String| NvidiaOffer { decode: Err(why.clone()), scale: Err(why.clone()), encode: Err(why) };
    if let Err(why) = &probe.driver {
        return refuse_all(why.clone());
    }
    let chosen = match gpu {
        Some(index) => match probe.gpus.iter().find(|g| g.index == index) {
            Some(g) => g,
            None => {
                return refuse_all(format!(
                    "GPU {index} does not exist (the NVIDIA driver lists {} GPU{})",
                    probe.gpus.len(),
                    if probe.gpus.len() == 1 { "" } else { "s" }
                ));
            }
        },
        None => match probe.gpus.iter().min_by_key(|g| (std::cmp::Reverse(g.usable_stages()), g.index)) {
            Some(g) => g,
            None => return refuse_all("the NVIDIA driver lists no GPUs".to_string()),
        },
    };
    NvidiaOffer {
        decode: chosen.nvdec_cuda.clone().or_else(|_| chosen.nvdec_h264.clone()),
        scale: chosen.scale_offer(),
        encode: chosen.nvenc_h264.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Hardware;
    use crate::gpu::DISABLE_VAR;
    use crate::gpu::tests::{NO_NVDEC_CUDA, NO_NVENC, gpu, with_gpus};
    use crate::transcode::backend::{Backend, choose};
    use crate::transcode::placement::GpuState;

    #[test]
    fn nvdec_without_nvenc_decodes_on_the_gpu_and_encodes_on_the_cpu() {
        let probe = with_gpus(vec![gpu(0, true, false)]);
        let offer = nvidia_offer(&probe, Some(0));
        assert_eq!(offer.decode, Ok(()));
        assert_eq!(offer.encode, Err(NO_NVENC.to_string()));
        assert_eq!(offer.scale, Ok(()));
        assert_eq!(nvidia_offer(&probe, None), offer);

        // The hybrid plan: NVDEC and CUDA scaling, then a download for libx264.
        let plan = choose(Hardware::Auto, &offer).expect("auto always plans");
        assert_eq!((plan.decode, plan.scale, plan.encode), (Backend::Nvidia, Backend::Nvidia, Backend::Cpu));
        let refused: Vec<String> = plan.refused.iter().map(ToString::to_string).collect();
        assert_eq!(refused, [format!("encode on nvidia: {NO_NVENC}")]);
    }

    #[test]
    fn scaling_is_offered_only_with_nvdec_cuda_frames_and_a_working_graph() {
        let mut g = gpu(0, true, true);
        g.cuda_scale = Err(scale::NO_SCALING_FILTER.into());
        let offer = nvidia_offer(&with_gpus(vec![g.clone()]), Some(0));
        assert_eq!(offer.scale, Err(scale::NO_SCALING_FILTER.to_string()));
        assert_eq!(offer.decode, Ok(()));

        // NVDEC only through h264_cuvid: decoding on the GPU, but no CUDA frames to scale.
        g.cuda_scale = Ok(());
        g.nvdec_cuda = Err(NO_NVDEC_CUDA.into());
        let offer = nvidia_offer(&with_gpus(vec![g]), Some(0));
        assert_eq!(offer.decode, Ok(()), "h264_cuvid still decodes");
        assert_eq!(
            offer.scale,
            Err(format!("CUDA scaling takes NVDEC's CUDA frames, which do not come: {NO_NVDEC_CUDA}"))
        );
    }

    #[test]
    fn placement_sees_live_figures_where_nvml_has_them() {
        let g = gpu(1, true, true);
        let probed = GpuState::of(&g, None, 2);
        assert_eq!(
            probed,
            GpuState {
                index: 1,
                nvenc_sessions_used: 0,
                nvenc_sessions_ours: 2,
                encoder_utilization: 0,
                memory_free: (80 << 30) - (1 << 29),
                has_nvenc: true,
                has_nvdec: true,
            }
        );
        let mut live = GpuStats::empty(1);
        live.encoder_utilization = Some(73);
        live.encoder_sessions = Some(5);
        live.memory_used_bytes = Some(60 << 30);
        let now = GpuState::of(&g, Some(&live), 2);
        assert_eq!((now.encoder_utilization, now.nvenc_sessions_used), (73, 5));
        assert_eq!(now.memory_free, 20 << 30, "live use, probed total (NVML gave no total this time)");
    }

    #[test]
    fn live_stats_without_gpus_are_empty_and_do_not_panic() {
        let live = live_stats();
        if !crate::ffi::cuda_driver_present() {
            assert!(live.is_empty());
        }
        assert_eq!(live.len(), machine().gpus.len());
    }

    #[test]
    fn with_no_gpu_named_the_gpu_offering_most_is_used() {
        let probe = with_gpus(vec![gpu(0, true, false), gpu(1, true, true), gpu(2, true, true)]);
        let offer = nvidia_offer(&probe, None);
        assert_eq!((offer.decode, offer.encode), (Ok(()), Ok(())));
        assert_eq!(nvidia_offer(&probe, Some(0)).encode, Err(NO_NVENC.to_string()));
    }

    #[test]
    fn a_gpu_that_is_not_there_is_refused_for_every_stage() {
        let offer = nvidia_offer(&with_gpus(vec![gpu(0, true, true)]), Some(3));
        let why = "GPU 3 does not exist (the NVIDIA driver lists 1 GPU)".to_string();
        assert_eq!(offer, NvidiaOffer { decode: Err(why.clone()), scale: Err(why.clone()), encode: Err(why) });
        let offer = nvidia_offer(&with_gpus(Vec::new()), None);
        assert_eq!(offer.encode, Err("the NVIDIA driver lists no GPUs".to_string()));
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
        let offer = nvidia_offer(&probe, None);
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

    #[test]
    fn an_engine_the_operator_switched_off_is_refused_with_the_variable_as_the_reason() {
        let mut g = gpu(0, true, true);
        g.disable("nvdec");
        let offer = nvidia_offer(&with_gpus(vec![g]), Some(0));
        assert_eq!(offer.decode, Err(format!("NVDEC is switched off by {DISABLE_VAR}=nvdec")));
        assert!(offer.scale.is_err() && offer.encode.is_ok());
    }
}
