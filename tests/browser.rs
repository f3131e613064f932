//! hls.js in headless Chromium plays what ladderd serves (tests/browser/play.mjs drives it).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

const RUNGS: &[TestRung] = &[("360p", 640, 360, 700_000), ("180p", 320, 180, 250_000)];
const CHANNELS: &[&str] = &["shop"];

#[test]
fn hls_js_in_chromium_plays_the_ladder() {
    init_tracing();
    let daemon = Running::start(config(&ladder(RUNGS, CHANNELS), 1.0));
    let (rtmp, http) = (daemon.rtmp, daemon.http);

    let publisher = publish(rtmp, "shop-key", "640x360", 120, &["-g", "30", "-keyint_min", "30"]);
    wait_for_master(http, "shop");
    let report = play(http, "shop", 10, &[]).report();

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

    // Live until here, however slowly the players ran: long publishes, stopped when done.
    stop_publisher(publisher);
    daemon.stop();
}

const LOW_LATENCY_RUNGS: &[TestRung] =
    &[("360p", 640, 360, 700_000), ("240p", 426, 240, 400_000), ("180p", 320, 180, 250_000)];
const LOW_LATENCY_CHANNELS: &[&str] = &["live"];

/// hls.js in lowLatencyMode plays each rendition of a three-rung ladder from LL-HLS parts. Latency
/// figures are printed, not judged: benches/latency.sh owns them; only a sanity bound applies.
#[test]
fn hls_js_low_latency_mode_plays_every_rendition_from_parts() {
    init_tracing();
    // The publisher, three rungs and Chromium share two cores here, beside other tests: a small
    // source and the fastest x264 preset (for ladderd and the publisher) keep every rung well
    // inside real time, so that what is tested is the player, not whether this machine keeps up.
    // Latency at 720p is benches/latency.sh's.
    let mut cfg = config(&ladder(LOW_LATENCY_RUNGS, LOW_LATENCY_CHANNELS), 1.0);
    cfg.transcode.x264_preset = "ultrafast".into();
    let daemon = Running::start(cfg);
    let (rtmp, http) = (daemon.rtmp, daemon.http);

    let publisher =
        publish(rtmp, "live-key", "640x360", 120, &["-g", "30", "-keyint_min", "30", "-preset", "ultrafast"]);
    wait_for_master(http, "live");
    // hls.js orders levels by bitrate, lowest first.
    for (level, height) in [(2u64, 360u64), (1, 240), (0, 180)] {
        let play_once =
            || play(http, "live", 8, &["--low-latency", "--level", &level.to_string(), "--settle", "3"]).report();
        // A player on a loaded two-core machine may stall once for reasons of its own (Chromium's
        // media pipeline starved of CPU): one more play of the same rendition tells that apart from
        // an origin that cannot be played. The first report is printed, with its requests.
        let summary = match low_latency_playback(&play_once(), height) {
            Ok(summary) => summary,
            Err(first) => {
                eprintln!("{height}p: first play failed, playing again: {first}");
                low_latency_playback(&play_once(), height).unwrap_or_else(|e| panic!("{e}"))
            }
        };
        eprintln!("{height}p: {summary}");
    }

    // Live until here, however slowly the players ran: long publishes, stopped when done.
    stop_publisher(publisher);
    daemon.stop();
}

/// An encoder killed mid-stream (SIGKILL, no `deleteStream`) reconnects three seconds later:
/// the playlists were held open for it (`rtmp.reconnect_grace`) and go on after a discontinuity,
/// and hls.js in lowLatencyMode plays on into the new publish without a fatal error.
#[test]
fn hls_js_plays_on_through_a_publisher_killed_and_back() {
    init_tracing();
    let mut cfg = config(&ladder(&RUNGS[1..], CHANNELS), 1.0);
    cfg.transcode.x264_preset = "ultrafast".into();
    cfg.rtmp.reconnect_grace = 10.0;
    let daemon = Running::start(cfg);
    let (rtmp, http) = (daemon.rtmp, daemon.http);
    let encoder =
        || publish(rtmp, "shop-key", "320x180", 120, &["-g", "30", "-keyint_min", "30", "-preset", "ultrafast"]);
    let epoch_ms =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as f64;

    let mut first = encoder();
    wait_for_master(http, "shop");
    let player = play(http, "shop", 24, &["--low-latency"]);
    // Chromium starts and hls.js plays for a few seconds; then the encoder dies.
    std::thread::sleep(Duration::from_secs(8));
    first.kill().expect("kill");
    first.wait().expect("reap");
    let killed = epoch_ms();
    std::thread::sleep(Duration::from_secs(3));
    let second = encoder();
    let back = epoch_ms();
    let report = player.report();

    let errors: Vec<&str> = report["errors"].as_array().into_iter().flatten().filter_map(|e| e.as_str()).collect();
    assert!(!errors.iter().any(|e| e.starts_with("FATAL")), "hls.js fatal errors: {report}");
    let samples: Vec<(f64, f64)> = report["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["now"].as_f64()?, s["t"].as_f64()?)))
        .collect();
    let played_before = samples.iter().filter(|(now, _)| *now <= killed).map(|(_, t)| *t).fold(0.0, f64::max);
    assert!(played_before > 1.0, "hls.js played before the encoder died: {report}");
    let (_, t_end) = *samples.last().expect("samples");
    // What plays after the reconnect is the new publish's media, after the old one's tail.
    assert!(t_end > played_before + 3.0, "played {played_before} s before the kill, {t_end} s at the end: {report}");
    let late: Vec<f64> = samples.iter().filter(|(now, _)| *now > back + 6000.0).map(|(_, t)| *t).collect();
    assert!(late.len() >= 4 && late.windows(2).all(|w| w[1] > w[0]), "playing at the end: {late:?}: {report}");
    eprintln!(
        "played {played_before:.1} s before the kill, {t_end:.1} s at the end; {} stalls ({} ms); errors {errors:?}",
        report["stalls"], report["stalledMs"]
    );
    stop_publisher(second);
    daemon.stop();
}

/// What one low-latency play of the `height` rendition must show: hls.js knows the ladder, has
/// no fatal error, plays that rendition for more than 4 s from LL-HLS parts, and sits within a
/// sanity bound of the live edge. `Ok` is the line of figures to print.
fn low_latency_playback(report: &serde_json::Value, height: u64) -> Result<String, String> {
    let heights: Vec<u64> =
        report["levels"].as_array().into_iter().flatten().filter_map(|l| l["height"].as_u64()).collect();
    if heights != [180, 240, 360] {
        return Err(format!("{height}p: levels {heights:?}: {report}"));
    }
    let errors = report["errors"].as_array().into_iter().flatten();
    if errors.filter_map(|e| e.as_str()).any(|e| e.starts_with("FATAL")) {
        return Err(format!("{height}p: hls.js fatal errors: {report}"));
    }
    let samples: Vec<&serde_json::Value> = report["samples"].as_array().into_iter().flatten().collect();
    let playing: Vec<f64> = samples.iter().filter_map(|s| s["t"].as_f64()).filter(|t| *t > 0.0).collect();
    let (first, last) = (playing.first().copied().unwrap_or(0.0), playing.last().copied().unwrap_or(0.0));
    if last - first <= 4.0 {
        return Err(format!("{height}p: currentTime must advance while playing: {first} → {last}: {report}"));
    }
    if samples.last().and_then(|s| s["height"].as_u64()) != Some(height) {
        return Err(format!("{height}p is not what plays: {report}"));
    }
    let parts = report["partsLoaded"].as_u64().unwrap_or(0);
    if parts == 0 {
        return Err(format!("{height}p: lowLatencyMode loads no LL-HLS parts: {report}"));
    }
    let latency = &report["latencyMs"];
    // A sanity bound only: hls.js sits near PART-HOLD-BACK (0.6 s) behind a live edge that is
    // itself behind the publisher by the transcode; seconds more means it fell back to segments.
    let Some(p50) = latency["p50"].as_f64() else {
        return Err(format!("{height}p: no latency samples: {report}"));
    };
    if p50 >= 5000.0 {
        return Err(format!("{height}p: glass-to-glass p50 {p50} ms: {report}"));
    }
    Ok(format!(
        "glass-to-glass ms {latency}, {} stalls ({} ms), {parts} parts ({:.1}/s, {}), {} whole segments",
        report["stalls"],
        report["stalledMs"],
        report["partsPerSecond"].as_f64().unwrap_or(0.0),
        report["partsByType"],
        report["fragsLoaded"]
    ))
}

/// The preview page (`/preview/{channel}`) plays the channel with hls.js from this origin and
/// turns a coupon posted to the metadata API into a card over the video. The screenshot stays in
/// target/preview-coupon.png for a person to look at.
#[test]
fn the_preview_page_plays_and_shows_a_posted_coupon_over_the_video() {
    init_tracing();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/browser");
    let player_js = root.join("web/node_modules/hls.js/dist/hls.min.js");
    assert!(
        player_js.exists() && dir.join("node_modules/playwright-core").exists(),
        "run scripts/setup.sh first (npm packages for the preview page or the browser test are missing)"
    );
    let screenshot = root.join("target/preview-coupon.png");
    let _ = std::fs::remove_file(&screenshot);
    std::fs::create_dir_all(root.join("target")).expect("target/");

    const TOKEN: &str = "preview-test-token";
    let mut config = config(&ladder(RUNGS, CHANNELS), 1.0);
    config.admin.token = Some(TOKEN.into());
    config.http.player_js = player_js;
    let daemon = Running::start(config);
    let (rtmp, http, admin) = (daemon.rtmp, daemon.http, daemon.admin);

    let page = http_get(http, "/preview/shop");
    assert_eq!((page.status, page.header("cache-control")), (200, Some("no-cache")), "{}", page.text());
    let js = http_get(http, "/preview/hls.min.js");
    assert_eq!(js.status, 200, "the daemon serves hls.js from http.player_js: {}", js.text());
    assert_eq!(js.header("cache-control"), Some("public, max-age=86400"));
    assert_eq!(http_get(http, "/preview/nope").status, 404);

    let publisher = publish(rtmp, "shop-key", "640x360", 120, &["-g", "30", "-keyint_min", "30"]);
    wait_for_master(http, "shop");
    let mut page = Command::new("node")
        .arg(dir.join("preview.mjs"))
        .arg(format!("http://{http}/preview/shop"))
        .arg(&screenshot)
        .arg("15")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node must be installed (scripts/setup.sh)");

    // The page reports once a card is on screen (or gives up); until then, post the coupon once
    // a second, so one lands after the player has started whenever that is.
    let coupon = br#"{"type":"coupon","code":"SAVE20","discount":"20%"}"#;
    let mut posted = 0;
    for _ in 0..30 {
        if page.try_wait().expect("preview.mjs").is_some() {
            break;
        }
        let r = http_post(admin, "/api/v1/channels/shop/metadata", TOKEN, coupon);
        assert_eq!(r.status, 204, "the metadata API accepts the coupon: {}", r.text());
        posted += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    let out = wait_with_timeout(page, Duration::from_secs(60));
    assert!(out.status.success(), "preview.mjs failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("preview.mjs prints JSON");
    eprintln!("preview after {posted} posts: {report}");

    assert_eq!(report["played"], true, "the preview page plays the channel: {report}");
    assert!(
        report["metadata"].as_u64().unwrap_or(0) > 0,
        "hls.js reported no timed metadata (FRAG_PARSING_METADATA) after {posted} posts: {report}"
    );
    let cards = report["cards"].as_array().expect("cards");
    let coupon = cards.iter().find(|c| c["type"] == "coupon").unwrap_or_else(|| panic!("a coupon card: {report}"));
    let text = coupon["text"].as_str().unwrap_or("");
    assert!(text.contains("SAVE20") && text.contains("20%"), "the card shows code and discount: {report}");

    let png = std::fs::read(&screenshot).expect("preview.mjs writes the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "the screenshot is a PNG");
    assert!(png.len() > 20_000, "a screenshot of a page with video is more than {} bytes", png.len());

    // Live until here, however slowly the players ran: long publishes, stopped when done.
    stop_publisher(publisher);
    daemon.stop();
}
