//! The NVIDIA backend on a machine without an NVIDIA GPU: the probe says so with the real reasons,
//! `hardware: nvidia` refuses to start a channel, and `hardware: auto` streams on the CPU and says
//! so in its metrics. (scripts/gpu-smoke.sh checks the GPU path on a GPU host.)

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::SystemTime;

use ladderd::channel::Channels;
use ladderd::ingest::PublishGate;
use ladderd::media::{Arrival, MediaPacket};
use ladderd::metrics::Metrics;
use ladderd::store::{ObjectName, Store};
use support::*;

const RUNGS: &[TestRung] = &[("240p", 320, 240, 400_000)];
const CHANNELS: &[&str] = &["cam"];

/// Publishes two seconds of real H.264 to a channel through the gate ingest uses, and waits for
/// the publish to end.
fn publish_to(hardware: &str) -> (Arc<Metrics>, Arc<Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (params, samples) = encoded_video(dir.path(), "320x240", 30, 2);
    // The support config sets `transcode:` already; the hardware is set on the parsed config.
    let mut cfg = config(&ladder(RUNGS, CHANNELS), 1.0);
    cfg.transcode.hardware = match hardware {
        "nvidia" => ladderd::config::Hardware::Nvidia,
        _ => ladderd::config::Hardware::Auto,
    };
    let (metrics, store) = (Arc::new(Metrics::new()), Arc::new(Store::new()));
    let channels = Channels::new(Arc::new(cfg), store.clone(), metrics.clone());
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let publish = channels.begin("live", "cam-key", peer).unwrap_or_else(|r| panic!("refused: {r:?}"));
    let send = |packet| publish.media.blocking_send(Arrival { packet, at: SystemTime::now(), charge: None });
    if send(MediaPacket::VideoParams(params)).is_ok() {
        // In real time, as a publisher sends it: faster, the rung would skip pictures as a rung
        // behind real time does.
        let start = std::time::Instant::now();
        for s in samples {
            let due = std::time::Duration::from_secs_f64(s.dts.max(0) as f64 / 90_000.0);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            if send(MediaPacket::Video(s)).is_err() {
                break; // the channel ended the publish
            }
        }
    }
    end_publish(&channels, publish);
    (metrics, store)
}

/// These tests describe a host without an NVIDIA driver; on a GPU host, scripts/gpu-smoke.sh is
/// the check instead.
fn gpu_host() -> bool {
    let present = ladderd::ffi::cuda_driver_present();
    if present {
        eprintln!("an NVIDIA driver is present: this test is for hosts without one (see scripts/gpu-smoke.sh)");
    }
    present
}

#[test]
fn probe_reports_no_usable_gpu_with_the_reasons_and_exits_0() {
    if gpu_host() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ladderd")).args(["probe", "--json"]).output().expect("ladderd probe");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let probe: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(probe["gpus"].as_array().map(Vec::len), Some(0), "{probe}");
    let why = probe["driver"]["Err"].as_str().expect("a reason for the driver");
    assert!(why.contains("libcuda"), "{why}");
    let human = Command::new(env!("CARGO_BIN_EXE_ladderd")).arg("probe").output().expect("ladderd probe");
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("encode") && text.contains("cpu") && text.contains("libcuda"), "{text}");
}

#[test]
fn hardware_nvidia_refuses_the_channel_with_the_reason() {
    if gpu_host() {
        return;
    }
    init_tracing();
    let (metrics, store) = publish_to("nvidia");
    assert_eq!(metrics.pipeline_errors.with_label_values(&["cam", "start"]).get(), 1);
    let objects = store.get_channel("cam").expect("channel");
    assert!(objects.get(&ObjectName::MediaPlaylist { rendition: "240p" }).is_none(), "nothing was published");
}

#[test]
fn hardware_auto_streams_on_the_cpu_and_the_metrics_say_why() {
    if gpu_host() {
        return;
    }
    init_tracing();
    let (metrics, store) = publish_to("auto");
    let objects = store.get_channel("cam").expect("channel");
    let playlist = objects.get(&ObjectName::MediaPlaylist { rendition: "240p" }).expect("published");
    let text: Vec<u8> = playlist.chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert!(String::from_utf8_lossy(&text).contains("#EXT-X-ENDLIST"));
    let exposition = String::from_utf8(metrics.render()).expect("utf-8");
    for stage in ["decode", "scale", "encode"] {
        let rung = if stage == "decode" { "" } else { "240p" };
        let line =
            format!("ladderd_backend_info{{backend=\"cpu\",channel=\"cam\",rung=\"{rung}\",stage=\"{stage}\"}} 1");
        assert!(exposition.contains(&line), "{line} in\n{exposition}");
    }
    let fallbacks = metrics.backend_fallbacks.with_label_values(&["no_driver"]).get();
    assert_eq!(fallbacks, 3, "each stage refused NVIDIA for want of a driver");
    // Every picture decoded, and each one encoded unless the rung fell behind real time (a burst
    // of queued packets after a slow start) and skipped it, counted as such.
    assert_eq!(metrics.frames_decoded.with_label_values(&["cam"]).get(), 60);
    let encoded = metrics.frames_encoded.with_label_values(&["cam", "240p"]).get();
    let mut skipped = 0;
    for reason in ladderd::metrics::DropReason::ALL {
        let dropped = metrics.frames_dropped.with_label_values(&["cam", "240p", reason.as_str()]).get();
        if reason == ladderd::metrics::DropReason::Lagging {
            skipped = dropped;
        } else {
            assert_eq!(dropped, 0, "{}", reason.as_str());
        }
    }
    assert_eq!(encoded + skipped, 60, "{encoded} encoded, {skipped} skipped");
    assert!(encoded >= 30, "the CPU encoder encoded the stream: {encoded}");
}
