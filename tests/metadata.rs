//! Timed metadata end to end: posted through the admin API during a live publish, delivered
//! in-band in every rendition, and received by hls.js in Chromium exactly once per rendition it
//! plays, with the exact bytes, at the media time it was posted.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;

const TOKEN: &str = "test-token-0123456789";

const RUNGS: &[TestRung] = &[("360p", 640, 360, 700_000), ("180p", 320, 180, 250_000)];
const CHANNELS: &[&str] = &["shop", "idle"];

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64() * 1000.0
}

/// The value of the one TXXX frame of an ID3v2.4 tag.
fn txxx_value(tag: &[u8]) -> Vec<u8> {
    assert_eq!(&tag[..3], b"ID3", "an ID3 tag");
    assert_eq!(&tag[10..14], b"TXXX", "a TXXX frame first");
    let body = &tag[20..];
    assert_eq!(body[0], 3, "UTF-8");
    let desc_end = 1 + body[1..].iter().position(|&b| b == 0).expect("description terminator");
    body[desc_end + 1..].to_vec()
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn posted_metadata_reaches_hls_js_once_per_rendition_at_its_time() {
    init_tracing();
    let mut cfg = config(&ladder(RUNGS, CHANNELS), 1.0);
    cfg.admin.token = Some(TOKEN.into());
    let daemon = Running::start(cfg);
    let (rtmp, http, admin) = (daemon.rtmp, daemon.http, daemon.admin);
    let metrics = daemon.metrics.clone();
    let post =
        |channel: &str, body: &[u8]| http_post(admin, &format!("/api/v1/channels/{channel}/metadata"), TOKEN, body);

    // Not live yet: 409. Too big: 413.
    assert_eq!(post("idle", b"hello").status, 409);
    let publisher = publish(rtmp, "shop-key", "640x360", 120, &["-g", "30", "-keyint_min", "30"]);
    wait_for_master(http, "shop");
    assert_eq!(post("shop", &[b'x'; 1025]).status, 413);

    // hls.js plays the 360p rendition (pinned, so no level switch loads a moment twice).
    let player = play(http, "shop", 20, &["--low-latency", "--level", "1"]);
    std::thread::sleep(Duration::from_secs(7));
    let payloads: Vec<String> =
        (0..5).map(|i| format!(r#"{{"type":"quiz","n":{i},"q":"Which colour? — ünïcödé ✓"}}"#)).collect();
    let mut posted = Vec::new();
    for p in &payloads {
        let at = now_ms();
        let r = post("shop", p.as_bytes());
        assert_eq!(r.status, 204, "{}", r.text());
        posted.push(at);
        std::thread::sleep(Duration::from_millis(1000));
    }
    // Ten at once: the channel's bucket (5, refilled at 5 per second) takes at most five plus
    // what refilled while they were answered, and refuses the rest.
    let burst = Instant::now();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let posts: Vec<_> = (0..10).map(|_| s.spawn(|| post("shop", b"burst").status)).collect();
        posts.into_iter().map(|p| p.join().expect("post")).collect()
    });
    let took = burst.elapsed().as_secs_f64();
    let accepted = statuses.iter().filter(|s| **s == 204).count();
    assert_eq!(accepted + statuses.iter().filter(|s| **s == 429).count(), 10, "{statuses:?}");
    assert!(accepted as f64 <= 5.0 + (took * 5.0).ceil(), "{accepted} accepted in {took:.2} s: {statuses:?}");
    assert!(took >= 1.0 || statuses.contains(&429), "{statuses:?} in {took:.2} s");

    let report = player.report();
    let seen = report["metadata"].as_array().expect("metadata");
    let mut walls = vec![0.0; payloads.len()];
    for (i, p) in payloads.iter().enumerate() {
        for kind in ["main", "audio"] {
            let hits: Vec<&serde_json::Value> = seen
                .iter()
                .filter(|m| {
                    m["type"] == kind && txxx_value(&base64_decode(m["tag"].as_str().expect("tag"))) == p.as_bytes()
                })
                .collect();
            assert_eq!(hits.len(), 1, "payload {i} exactly once in the {kind} rendition: {report}");
            let wall = hits[0]["wall"].as_f64().expect("program date time");
            let off = wall - posted[i];
            // Stamped on the next frame to reach the packager: within a part (0.2 s) of the post,
            // plus the time the post took to arrive. Program date times run on the media clock
            // from the first frame's arrival, so a publisher whose frames arrive late (a loaded
            // machine) dates them before their arrival: the lower bound leaves room for that.
            assert!((-1000.0..=400.0).contains(&off), "payload {i} in {kind} at {off:.0} ms from its post");
            walls[i] = wall;
        }
    }
    // The publisher's lateness is the same for every post, so the spacing of the tags follows
    // the spacing of the posts closely: each lands on the frame of its moment.
    for i in 1..payloads.len() {
        let (tags, posts) = (walls[i] - walls[i - 1], posted[i] - posted[i - 1]);
        assert!(
            (tags - posts).abs() <= 250.0,
            "payloads {} and {i}: {tags:.0} ms apart, posted {posts:.0} ms apart",
            i - 1
        );
    }
    let text = http_get(admin, "/metrics").text();
    assert!(text.contains("ladderd_metadata_latency_seconds_count{channel=\"shop\"}"), "metric present");

    // The channel status says what is live and where each stage runs.
    assert_eq!(http_get(admin, "/readyz").status, 200);
    let status = http_get_auth(admin, "/api/v1/channels/shop", TOKEN);
    assert_eq!(status.status, 200, "{}", status.text());
    let status: serde_json::Value = serde_json::from_slice(&status.body).expect("JSON");
    assert_eq!(status["live"], true, "{status}");
    assert_eq!((status["source"]["width"].as_u64(), status["source"]["height"].as_u64()), (Some(640), Some(360)));
    assert_eq!(status["backend"]["encode"], "cpu", "{status}");
    // The publisher sends 30 fps with a keyframe every 30 frames.
    let fps = status["ingest"]["frame_rate"].as_f64().expect("an ingest frame rate");
    assert!((27.0..=33.0).contains(&fps), "{status}");
    let gop = status["ingest"]["keyframe_interval_seconds"].as_f64().expect("a keyframe interval");
    assert!((0.9..=1.1).contains(&gop), "{status}");
    assert!(
        status["origin"]["requests_total"].as_u64().is_some_and(|n| n > 0),
        "hls.js requests are counted: {status}"
    );
    let renditions: Vec<&str> =
        status["renditions"].as_array().expect("renditions").iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(renditions.contains(&"360p") && renditions.contains(&"audio"), "{status}");
    assert_eq!(http_get_auth(admin, "/api/v1/channels/nope", TOKEN).status, 404);
    assert_eq!(http_get_auth(admin, "/api/v1/channels/shop", "wrong").status, 403);
    assert!(metrics.metadata_latency.with_label_values(&["shop"]).get_sample_count() >= 5);

    stop_publisher(publisher);
    daemon.stop();
}
