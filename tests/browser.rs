//! hls.js in headless Chromium plays what ladderd serves (tests/browser/play.mjs drives it).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;
use tokio_util::sync::CancellationToken;

const LADDER: &str = r#"
ladders:
  small:
    - { name: "360p", width: 640, height: 360, video_bitrate: 700000 }
    - { name: "180p", width: 320, height: 180, video_bitrate: 250000 }
channels:
  - { name: "shop", stream_key: "shop-key", ladder: "small" }
"#;

#[test]
fn hls_js_in_chromium_plays_the_ladder() {
    init_tracing();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/hls.js").exists() && dir.join("node_modules/playwright-core").exists(),
        "run scripts/setup.sh first (npm packages for the browser test are missing)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let shutdown = CancellationToken::new();
    let daemon = rt.block_on(ladderd::start(config(LADDER, 1.0), shutdown.clone())).expect("daemon starts");
    let (rtmp, http) = (daemon.rtmp_addr, daemon.http_addr);
    let waiter = rt.spawn(daemon.wait());

    let publisher = publish(rtmp, "shop-key", "640x360", 25, &["-g", "30", "-keyint_min", "30"]);
    eventually(Duration::from_secs(20), "the master playlist", || {
        (http_get(http, "/live/shop/master.m3u8").status == 200).then_some(())
    });
    let out = Command::new("node")
        .arg(dir.join("play.mjs"))
        .arg(format!("http://{http}/live/shop/master.m3u8"))
        .arg("10")
        .output()
        .expect("node must be installed (scripts/setup.sh)");
    assert!(out.status.success(), "play.mjs failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("play.mjs prints JSON");

    let levels = report["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 2, "{report}");
    // hls.js orders levels by bitrate, lowest first.
    let heights: Vec<u64> = levels.iter().filter_map(|l| l["height"].as_u64()).collect();
    assert_eq!(heights, vec![180, 360], "{report}");
    let fatal: Vec<&serde_json::Value> = report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter(|e| e.as_str().is_some_and(|s| s.starts_with("FATAL")))
        .collect();
    assert!(fatal.is_empty(), "hls.js fatal errors: {report}");
    let samples = report["samples"].as_array().expect("samples");
    let first = samples.first().and_then(|s| s["t"].as_f64()).expect("sample");
    let last = samples.last().and_then(|s| s["t"].as_f64()).expect("sample");
    assert!(last - first > 5.0, "currentTime must advance while playing: {first} → {last}: {report}");
    assert!(samples.last().is_some_and(|s| s["width"].as_u64().unwrap_or(0) > 0), "video has a picture: {report}");
    assert!(
        samples.last().is_some_and(|s| s["playingDate"].as_f64().is_some()),
        "PROGRAM-DATE-TIME reaches the player: {report}"
    );
    assert!(report["fragsLoaded"].as_u64().unwrap_or(0) >= 4, "{report}");

    let _ = wait_with_timeout(publisher, Duration::from_secs(40));
    shutdown.cancel();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), waiter).await })
        .expect("daemon stops")
        .expect("join");
}

const LOW_LATENCY_LADDER: &str = r#"
ladders:
  default:
    - { name: "720p", width: 1280, height: 720, video_bitrate: 3000000 }
    - { name: "480p", width: 854,  height: 480, video_bitrate: 1200000 }
    - { name: "360p", width: 640,  height: 360, video_bitrate: 700000 }
channels:
  - { name: "live", stream_key: "live-key", ladder: "default" }
"#;

/// hls.js in lowLatencyMode plays each rendition of a 720p source from LL-HLS parts. Latency
/// figures are printed, not judged: benches/latency.sh owns them; only a sanity bound applies.
#[test]
fn hls_js_low_latency_mode_plays_every_rendition_from_parts() {
    init_tracing();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/hls.js").exists() && dir.join("node_modules/playwright-core").exists(),
        "run scripts/setup.sh first (npm packages for the browser test are missing)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let shutdown = CancellationToken::new();
    let daemon = rt.block_on(ladderd::start(config(LOW_LATENCY_LADDER, 1.0), shutdown.clone())).expect("daemon starts");
    let (rtmp, http) = (daemon.rtmp_addr, daemon.http_addr);
    let waiter = rt.spawn(daemon.wait());

    let publisher = publish(rtmp, "live-key", "1280x720", 40, &["-g", "30", "-keyint_min", "30"]);
    eventually(Duration::from_secs(20), "the master playlist", || {
        (http_get(http, "/live/live/master.m3u8").status == 200).then_some(())
    });
    // hls.js orders levels by bitrate, lowest first.
    for (level, height) in [(2u64, 720u64), (1, 480), (0, 360)] {
        let out = Command::new("node")
            .arg(dir.join("play.mjs"))
            .arg(format!("http://{http}/live/live/master.m3u8"))
            .args(["8", "--low-latency", "--level", &level.to_string(), "--settle", "3"])
            .output()
            .expect("node must be installed (scripts/setup.sh)");
        assert!(out.status.success(), "play.mjs failed: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("play.mjs prints JSON");
        let heights: Vec<u64> =
            report["levels"].as_array().expect("levels").iter().filter_map(|l| l["height"].as_u64()).collect();
        assert_eq!(heights, vec![360, 480, 720], "{report}");
        let fatal: Vec<&serde_json::Value> = report["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter(|e| e.as_str().is_some_and(|s| s.starts_with("FATAL")))
            .collect();
        assert!(fatal.is_empty(), "{height}p: hls.js fatal errors: {report}");
        let samples = report["samples"].as_array().expect("samples");
        let playing: Vec<&serde_json::Value> =
            samples.iter().filter(|s| s["t"].as_f64().unwrap_or(0.0) > 0.0).collect();
        let first = playing.first().and_then(|s| s["t"].as_f64()).unwrap_or(0.0);
        let last = playing.last().and_then(|s| s["t"].as_f64()).unwrap_or(0.0);
        assert!(last - first > 4.0, "{height}p: currentTime must advance while playing: {first} → {last}: {report}");
        assert_eq!(
            samples.last().and_then(|s| s["height"].as_u64()),
            Some(height),
            "{height}p is what plays: {report}"
        );
        let parts = report["partsLoaded"].as_u64().unwrap_or(0);
        assert!(parts > 0, "{height}p: lowLatencyMode loads LL-HLS parts: {report}");
        let latency = &report["latencyMs"];
        eprintln!(
            "{height}p: glass-to-glass ms {latency}, {} stalls ({} ms), {parts} parts ({:.1}/s, {}), {} whole segments",
            report["stalls"],
            report["stalledMs"],
            report["partsPerSecond"].as_f64().unwrap_or(0.0),
            report["partsByType"],
            report["fragsLoaded"]
        );
        // A sanity bound only: hls.js sits near PART-HOLD-BACK (0.6 s) behind a live edge that is
        // itself behind the publisher by the transcode; seconds more means it fell back to segments.
        let p50 = latency["p50"].as_f64().unwrap_or_else(|| panic!("{height}p: no latency samples: {report}"));
        assert!(p50 < 5000.0, "{height}p: glass-to-glass p50 {p50} ms: {report}");
    }

    let _ = wait_with_timeout(publisher, Duration::from_secs(40));
    shutdown.cancel();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), waiter).await })
        .expect("daemon stops")
        .expect("join");
}
