//! End to end: the real `ffmpeg` publishes over RTMP; ladderd transcodes a CPU ladder and serves
//! fMP4 HLS; `ffprobe`/`ffmpeg` check what comes out.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;

const RUNGS: &[TestRung] = &[
    ("1080p", 1920, 1080, 6_000_000),
    ("720p", 1280, 720, 3_000_000),
    ("480p", 854, 480, 1_200_000),
    ("360p", 640, 360, 700_000),
];
const CHANNELS: &[&str] = &["demo", "other"];

/// Attributes of an `#EXT-X-STREAM-INF` line.
fn attrs(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = line.split_once(':').map(|(_, r)| r).unwrap_or("");
    while !rest.is_empty() {
        let Some((k, r)) = rest.split_once('=') else { break };
        let (v, r) = if let Some(r) = r.strip_prefix('"') {
            let end = r.find('"').expect("closing quote");
            (&r[..end], r[end + 1..].trim_start_matches(','))
        } else {
            match r.split_once(',') {
                Some((v, r)) => (v, r),
                None => (r, ""),
            }
        };
        out.insert(k.to_string(), v.to_string());
        rest = r;
    }
    out
}

#[test]
fn rtmp_to_cpu_ladder_to_fmp4_hls() {
    init_tracing();
    let daemon = Running::start(config(&ladder(RUNGS, CHANNELS), 2.0));
    let (rtmp, http, admin) = (daemon.rtmp, daemon.http, daemon.admin);
    let metrics = daemon.metrics.clone();

    let main = publish(rtmp, "demo-key", "1280x720", 12, &[]);
    // While it is live: a wrong key and a second publisher on the same key are both refused, and
    // the live channel carries on.
    eventually(Duration::from_secs(15), "the first segment", || {
        let r = http_get(http, "/live/demo/720p/index.m3u8");
        (r.status == 200).then_some(())
    });
    let wrong = wait_with_timeout(publish(rtmp, "wrong-key", "320x180", 2, &[]), Duration::from_secs(15));
    assert!(!wrong.status.success(), "a publish with an unknown key must fail");
    let busy = wait_with_timeout(publish(rtmp, "demo-key", "320x180", 2, &[]), Duration::from_secs(15));
    assert!(!busy.status.success(), "a second publisher on a live channel must fail");

    let out = wait_with_timeout(main, Duration::from_secs(60));
    assert!(out.status.success(), "publisher failed: {}", String::from_utf8_lossy(&out.stderr));

    // Master playlist: 720p, 480p, 360p, never an upscaled 1080p.
    let master = http_get(http, "/live/demo/master.m3u8");
    assert_eq!(master.status, 200);
    assert_eq!(master.header("content-type"), Some("application/vnd.apple.mpegurl"));
    assert_eq!(master.header("access-control-allow-origin"), Some("*"));
    let master = master.text();
    let lines: Vec<&str> = master.lines().collect();
    let mut variants = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("#EXT-X-STREAM-INF:") {
            variants.insert(lines[i + 1].to_string(), attrs(l));
        }
    }
    let expected = [("720p", "1280x720"), ("480p", "854x480"), ("360p", "640x360")];
    assert_eq!(variants.len(), 3, "variants: {master}");
    assert!(!master.contains("1080p"), "1080p must be left out of a 720p source: {master}");
    let audio_uri = lines
        .iter()
        .find(|l| l.starts_with("#EXT-X-MEDIA:TYPE=AUDIO"))
        .map(|l| attrs(l)["URI"].clone())
        .expect("an audio rendition");

    // The rendition playlists end, and every segment starts at the same time everywhere.
    let mut starts: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (name, size) in expected {
        let uri = format!("{name}/index.m3u8");
        let a = variants.get(&uri).unwrap_or_else(|| panic!("{uri} missing from {master}"));
        assert_eq!(a["RESOLUTION"], size);
        // x264's High profile at the level it picks for the size, and AAC-LC.
        assert!(a["CODECS"].starts_with("avc1.64") && a["CODECS"].ends_with(",mp4a.40.2"), "{a:?}");
        assert!(a["BANDWIDTH"].parse::<u64>().expect("BANDWIDTH") > 0);
        assert!(a["AVERAGE-BANDWIDTH"].parse::<u64>().expect("AVERAGE-BANDWIDTH") > 0);
        let fps: f64 = a["FRAME-RATE"].parse().expect("FRAME-RATE");
        assert!((fps - 30.0).abs() < 0.5, "{a:?}");

        let playlist = eventually(Duration::from_secs(20), "ENDLIST", || {
            let p = parse_media_playlist(&http_get(http, &format!("/live/demo/{uri}")).text());
            p.ended.then_some(p)
        });
        let init_uri = playlist.map.clone().expect("EXT-X-MAP");
        let init = http_get(http, &format!("/live/demo/{name}/{init_uri}"));
        assert_eq!(init.status, 200);
        assert_eq!(init.header("cache-control"), Some("public, max-age=31536000, immutable"));
        let mut whole = init.body.clone();
        for (seg, duration) in &playlist.segments {
            let r = http_get(http, &format!("/live/demo/{name}/{seg}"));
            assert_eq!(r.status, 200, "{name}/{seg}");
            // Each segment alone (after its init) starts with an IDR picture.
            let (key, pts, kind) = first_frame(&init.body, &r.body);
            assert!(key && kind == "I", "{name}/{seg} must start with an IDR");
            starts.entry(seg.clone()).or_default().push(pts);
            assert!(*duration > 0.5 && *duration < 4.5, "{name}/{seg} lasts {duration}");
            whole.extend_from_slice(&r.body);
        }
        // The whole rendition decodes without error and holds ~360 frames at the rung's size.
        let frames = ffprobe_stdin(
            &whole,
            &[
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=nb_read_frames,width,height",
                "-of",
                "csv=p=0",
            ],
        );
        let f: Vec<&str> = frames.trim().split(',').collect();
        assert_eq!(format!("{}x{}", f[0], f[1]), size);
        let n: f64 = f[2].parse().expect("frame count");
        // Every frame the rung encoded is in its playlist, and every decoded one was encoded
        // unless the rung fell behind real time and skipped it, counted by reason.
        let exposition = http_get(admin, "/metrics").text();
        let count = |metric_name: &str, labels: &str| metric(&exposition, metric_name, labels).unwrap_or(0.0);
        let encoded = count("ladderd_frames_encoded_total", &format!("channel=\"demo\",rung=\"{name}\""));
        assert_eq!(n, encoded, "{name}: {n} frames in the playlist, {encoded} encoded");
        let dropped: f64 = exposition
            .lines()
            .filter(|l| l.starts_with("ladderd_frames_dropped_total{channel=\"demo\",reason="))
            .filter(|l| l.contains(&format!("rung=\"{name}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let decoded = count("ladderd_frames_decoded_total", "channel=\"demo\"");
        assert_eq!(encoded + dropped, decoded, "{name}: {encoded} encoded, {dropped} dropped, {decoded} decoded");
        assert!(n >= 240.0, "{name}: {n} frames of 12 s at 30 fps");
        let mut child = std::process::Command::new(ffmpeg())
            .args(["-v", "error", "-i", "-", "-f", "null", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ffmpeg");
        {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(&whole).expect("write");
        }
        let out = child.wait_with_output().expect("ffmpeg decode");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{name} decode errors: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (seg, pts) in &starts {
        assert_eq!(pts.len(), 3, "segment {seg} must exist in every rendition");
        assert!(pts.iter().all(|p| (p - pts[0]).abs() < 0.001), "segment {seg} starts differ: {pts:?}");
    }
    assert!(starts.len() >= 5, "12 s in 2 s segments: {starts:?}");

    // Audio rendition ends too and decodes.
    let audio = eventually(Duration::from_secs(10), "audio ENDLIST", || {
        let p = parse_media_playlist(&http_get(http, &format!("/live/demo/{audio_uri}")).text());
        p.ended.then_some(p)
    });
    assert!(audio.segments.len() >= 5);

    // An independent client plays the master playlist.
    let probe = std::process::Command::new(ffprobe())
        .args(["-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0"])
        .arg(format!("http://{http}/live/demo/master.m3u8"))
        .output()
        .expect("ffprobe");
    let streams = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success() && streams.contains("h264") && streams.contains("aac"),
        "ffprobe: {streams} {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    // Metrics.
    let text = http_get(admin, "/metrics").text();
    let value = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{needle} missing from /metrics"))
    };
    assert!(value("ladderd_ingest_bytes_total{channel=\"demo\"}") > 1e6);
    assert_eq!(value("ladderd_publishes_total{channel=\"demo\"}"), 1.0);
    // 2 s segments cut by ladderd's own IDRs: the playlists keep the configured target.
    assert_eq!(value("ladderd_hls_target_duration_seconds{channel=\"demo\",rendition=\"720p\"}"), 2.0);
    assert_eq!(value("ladderd_publish_rejections_total{reason=\"unknown_key\"}"), 1.0);
    assert_eq!(value("ladderd_publish_rejections_total{reason=\"busy\"}"), 1.0);
    assert!(value("ladderd_frames_decoded_total{channel=\"demo\"}") >= 330.0);
    for rung in ["720p", "480p", "360p"] {
        assert!(value(&format!("ladderd_segments_published_total{{channel=\"demo\",rendition=\"{rung}\"}}")) >= 5.0);
    }
    let origin_ok: f64 = text
        .lines()
        .filter(|l| l.starts_with("ladderd_http_requests_total{code=\"200\",listener=\"origin\","))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(origin_ok > 10.0, "{origin_ok} origin responses with 200");
    assert_eq!(metrics.publishes.with_label_values(&["other"]).get(), 0);

    daemon.stop();
}

/// The first video frame of `init` + `segment`: (is key frame, pts in seconds, picture type).
fn first_frame(init: &[u8], segment: &[u8]) -> (bool, f64, String) {
    let mut one = init.to_vec();
    one.extend_from_slice(segment);
    let out = ffprobe_stdin(
        &one,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=key_frame,pict_type,pts_time",
            "-of",
            "csv=p=0",
            "-read_intervals",
            "%+#1",
        ],
    );
    let f: Vec<&str> = out.trim().trim_end_matches(',').split(',').collect();
    assert_eq!(f.len(), 3, "ffprobe: {out}");
    (f[0] == "1", f[1].parse().expect("pts_time"), f[2].to_string())
}

const PASSTHROUGH: &str = r#"
ladders:
  with_source:
    - { name: "source", passthrough: true }
    - { name: "240p", width: 426, height: 240, video_bitrate: 400000 }
channels:
  - { name: "shop", stream_key: "shop-key", ladder: "with_source" }
"#;

#[test]
fn passthrough_rung_aligns_with_transcoded_rungs_and_a_returning_publisher_continues_after_a_discontinuity() {
    init_tracing();
    let daemon = Running::start(config(PASSTHROUGH, 2.0));
    let (rtmp, http) = (daemon.rtmp, daemon.http);

    // A 1 s source GOP under a 2 s target: segments cut on every other source keyframe. Two
    // B-frames, as OBS's x264 sends by default: the passthrough rung keeps them (composition
    // offsets), the transcoded rung decodes them.
    let out = wait_with_timeout(
        publish(rtmp, "shop-key", "640x360", 7, &["-g", "30", "-keyint_min", "30", "-bf", "2"]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "publisher failed: {}", String::from_utf8_lossy(&out.stderr));

    let master = http_get(http, "/live/shop/master.m3u8").text();
    let lines: Vec<&str> = master.lines().collect();
    let mut sizes = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("#EXT-X-STREAM-INF:") {
            sizes.insert(lines[i + 1].to_string(), attrs(l)["RESOLUTION"].clone());
        }
    }
    assert_eq!(sizes.get("source/index.m3u8").map(String::as_str), Some("640x360"), "{master}");
    assert_eq!(sizes.get("240p/index.m3u8").map(String::as_str), Some("426x240"), "{master}");

    let ended = |name: &str| {
        eventually(Duration::from_secs(20), "ENDLIST", || {
            let p = parse_media_playlist(&http_get(http, &format!("/live/shop/{name}/index.m3u8")).text());
            p.ended.then_some(p)
        })
    };
    let mut first_publish = Vec::new();
    for name in ["source", "240p"] {
        let p = ended(name);
        let init = http_get(http, &format!("/live/shop/{name}/{}", p.map.clone().expect("EXT-X-MAP"))).body;
        let mut starts = Vec::new();
        let mut whole = init.clone();
        for (seg, duration) in &p.segments {
            let body = http_get(http, &format!("/live/shop/{name}/{seg}")).body;
            whole.extend_from_slice(&body);
            let (key, pts, kind) = first_frame(&init, &body);
            assert!(key && kind == "I", "{name}/{seg} must start with an IDR");
            // Every cut is on a source keyframe, so durations are whole seconds here.
            assert!((duration - duration.round()).abs() < 0.05 && *duration >= 0.95, "{name}/{seg}: {duration}");
            starts.push((seg.clone(), (pts * 1000.0).round() as i64));
        }
        assert!(starts.len() >= 3, "{name}: {starts:?}");
        first_publish.push(starts);
        // Every picture decodes, in presentation order (B-frames reordered by their offsets).
        let decoded =
            ffprobe_stdin(&whole, &["-select_streams", "v:0", "-show_entries", "frame=pts", "-of", "csv=p=0"]);
        let pts: Vec<i64> = decoded.lines().filter_map(|l| l.trim_end_matches(',').parse().ok()).collect();
        assert!(pts.len() >= 180, "{name}: {} pictures", pts.len());
        assert!(pts.windows(2).all(|w| w[1] > w[0]), "{name}: pictures in presentation order");
        let reorder = ffprobe_stdin(
            &whole,
            &["-select_streams", "v:0", "-show_entries", "stream=has_b_frames", "-of", "csv=p=0"],
        );
        let expected = if name == "source" { "2" } else { "0" };
        assert_eq!(reorder.trim(), expected, "{name}: B-frames kept by passthrough, none in ladderd's encodes");
    }
    assert_eq!(first_publish[0], first_publish[1], "source and 240p segments start together");

    // The publisher comes back: the same playlists continue after a discontinuity, with new
    // segment names, and are live (no ENDLIST) until it leaves again.
    let before = ended("240p");
    let second = publish(rtmp, "shop-key", "640x360", 5, &["-g", "30", "-keyint_min", "30"]);
    let live = eventually(Duration::from_secs(20), "a segment of the second publish", || {
        let text = http_get(http, "/live/shop/240p/index.m3u8").text();
        let p = parse_media_playlist(&text);
        (p.segments.len() > before.segments.len()).then_some((p, text))
    });
    assert!(!live.0.ended, "a live playlist has no ENDLIST: {}", live.1);
    assert!(live.1.contains("#EXT-X-DISCONTINUITY\n"), "{}", live.1);
    let out = wait_with_timeout(second, Duration::from_secs(60));
    assert!(out.status.success(), "second publisher failed: {}", String::from_utf8_lossy(&out.stderr));
    // Audio too: it may have ended the first publish with a segment fewer than the video.
    for name in ["source", "240p", "audio"] {
        let p = ended(name);
        let numbers: Vec<u64> =
            p.segments.iter().map(|(s, _)| s.trim_end_matches(".m4s").parse().expect("numbered segment")).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{name}: names continue: {numbers:?}");
        assert_eq!(numbers[0], p.media_sequence, "{name}: EXT-X-MEDIA-SEQUENCE names the first segment");
        assert!(p.segments.len() > before.segments.len() + 1, "{name}: the second publish added segments");
    }

    daemon.stop();
}
