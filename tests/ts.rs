//! `hls.container: ts` end to end: the real `ffmpeg` publishes, ladderd writes MPEG-TS segments
//! and parts with timed metadata as a timed-ID3 stream; `ffprobe` decodes them, mux.js (an
//! independent TS parser) finds the ID3 tags, and hls.js plays the stream and sees them.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const TOKEN: &str = "ts-test-token-0123";

const RUNGS: &[TestRung] = &[("360p", 640, 360, 700_000), ("180p", 320, 180, 250_000)];
const CHANNELS: &[&str] = &["legacy"];

fn mux_js(dir: &Path, ts: &[u8]) -> serde_json::Value {
    let mut child = Command::new("node")
        .arg(dir.join("ts-id3.mjs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node must be installed (scripts/setup.sh)");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = ts.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("mux.js");
    let _ = writer.join();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn ts_segments_decode_carry_timed_id3_and_play_in_hls_js() {
    init_tracing();
    let dir = browser_dir(&["mux.js", "hls.js", "playwright-core"]);
    let mut cfg = config(&ladder_with(RUNGS, CHANNELS, "container: ts"), 1.0);
    cfg.admin.token = Some(TOKEN.into());
    let daemon = Running::start(cfg);
    let (rtmp, http, admin) = (daemon.rtmp, daemon.http, daemon.admin);

    let publisher = publish(rtmp, "legacy-key", "640x360", 20, &["-g", "30", "-keyint_min", "30"]);
    wait_for_master(http, "legacy");
    let player = play(http, "legacy", 12, &["--low-latency", "--level", "1"]);
    std::thread::sleep(Duration::from_secs(5));
    let payloads = ["{\"type\":\"poll\",\"q\":\"TS?\"}", "plain text ✓"];
    for p in payloads {
        let r = http_post(admin, "/api/v1/channels/legacy/metadata", TOKEN, p.as_bytes());
        assert_eq!(r.status, 204, "{}", r.text());
        std::thread::sleep(Duration::from_millis(1500));
    }
    let report = player.report();
    let fatal =
        report["errors"].as_array().expect("errors").iter().any(|e| e.as_str().is_some_and(|s| s.starts_with("FATAL")));
    assert!(!fatal, "{report}");
    let samples = report["samples"].as_array().expect("samples");
    let t = |s: &serde_json::Value| s["t"].as_f64().unwrap_or(0.0);
    assert!(t(samples.last().expect("sample")) - t(&samples[0]) > 4.0, "hls.js plays TS: {report}");
    assert!(report["partsLoaded"].as_u64().unwrap_or(0) > 0, "LL parts in TS: {report}");
    let tags = report["metadata"].as_array().expect("metadata");
    assert!(
        tags.iter().filter(|m| m["type"] == "main").count() >= payloads.len(),
        "hls.js sees the ID3 tags: {report}"
    );

    let _ = wait_with_timeout(publisher, Duration::from_secs(40));
    let playlist = eventually(Duration::from_secs(20), "ENDLIST", || {
        let text = http_get(http, "/live/legacy/360p/index.m3u8").text();
        parse_media_playlist(&text).ended.then_some(text)
    });
    assert!(!playlist.contains("#EXT-X-MAP"), "TS needs no init section:\n{playlist}");
    assert!(playlist.contains(".ts\"") && playlist.contains(".ts\n"), "TS parts and segments:\n{playlist}");
    let p = parse_media_playlist(&playlist);
    let mut whole = Vec::new();
    for (seg, _) in &p.segments {
        let r = http_get(http, &format!("/live/legacy/360p/{seg}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("video/mp2t"));
        whole.extend_from_slice(&r.body);
    }
    // ffprobe decodes every frame at the rung's size, with no error.
    let probe = ffprobe_stdin(
        &whole,
        &[
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "csv=p=0",
        ],
    );
    // ffprobe lists a TS stream twice (once under its program); the first line is enough.
    let f: Vec<&str> = probe.lines().next().unwrap_or_default().trim().split(',').collect();
    assert_eq!(&f[..3], &["h264", "640", "360"], "{probe}");
    assert!(f[3].parse::<u32>().expect("frames") >= 500, "{probe}");

    // mux.js finds the PMT's timed-metadata stream and each posted payload exactly once.
    let parsed = mux_js(&dir, &whole);
    assert!(!parsed["pmt"]["timedMetadata"].as_array().expect("pmt").is_empty(), "{}", parsed["pmt"]);
    let values: Vec<String> = parsed["id3"]
        .as_array()
        .expect("id3")
        .iter()
        .flat_map(|t| t["frames"].as_array().cloned().unwrap_or_default())
        .filter(|f| f["id"] == "TXXX")
        .filter_map(|f| f["value"].as_str().map(String::from))
        .collect();
    for p in payloads {
        assert_eq!(values.iter().filter(|v| v.as_str() == p).count(), 1, "{p} once in {values:?}");
    }
    let audio = http_get(http, "/live/legacy/audio/index.m3u8").text();
    assert!(audio.contains(".ts\n"), "audio rendition in TS too:\n{audio}");

    daemon.stop();
}
