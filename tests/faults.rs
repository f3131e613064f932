//! Faults on the way from the encoder to the viewer, with the real ffmpeg as the publisher: what a
//! CDN or a player was told about stays available for as long as RFC 8216 promises it.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::*;

const RUNGS: &[TestRung] = &[("180p", 320, 180, 300_000)];
const CHANNELS: &[&str] = &["shop"];

/// A media playlist's length in seconds: its segments and the parts of the one being built.
fn playlist_seconds(text: &str) -> f64 {
    let mut seconds = 0.0;
    let mut open_parts = 0.0;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXTINF:") {
            seconds += v.split(',').next().and_then(|d| d.parse::<f64>().ok()).unwrap_or(0.0);
            open_parts = 0.0;
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART:DURATION=") {
            open_parts += v.split(',').next().and_then(|d| d.parse::<f64>().ok()).unwrap_or(0.0);
        }
    }
    seconds + open_parts
}

/// RFC 8216 §6.2.2: a segment removed from the playlist stays available for its own duration
/// plus that of the longest playlist that contained it; and then it goes, so memory is bounded.
#[test]
fn a_segment_that_left_the_playlist_is_served_for_the_rfc_period_and_then_goes() {
    init_tracing();
    let mut cfg = config(&ladder(RUNGS, CHANNELS), 1.0);
    cfg.hls.window = 3;
    let daemon = Running::start(cfg);
    let (rtmp, http) = (daemon.rtmp, daemon.http);
    let publisher = publish(rtmp, "shop-key", "320x180", 60, &[]);

    // Watch the playlist until its first segment leaves, noting the longest playlist with it.
    let path = |uri: &str| format!("/live/shop/180p/{uri}");
    let mut longest: HashMap<String, f64> = HashMap::new();
    let mut first: Option<(String, f64)> = None;
    let started = Instant::now();
    let left = loop {
        assert!(started.elapsed() < Duration::from_secs(40), "the first segment never left the playlist");
        let r = http_get(http, "/live/shop/180p/index.m3u8");
        if r.status == 200 {
            let text = r.text();
            let p = parse_media_playlist(&text);
            let seconds = playlist_seconds(&text);
            for (uri, _) in &p.segments {
                let l = longest.entry(uri.clone()).or_default();
                *l = l.max(seconds);
            }
            if first.is_none() {
                first = p.segments.first().cloned();
            }
            if let Some((uri, _)) = &first
                && !p.segments.iter().any(|(u, _)| u == uri)
            {
                break Instant::now();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (uri, duration) = first.expect("a first segment");
    let owed = Duration::from_secs_f64(duration + longest[&uri]);
    // Seen gone from the playlist up to one poll after it went: stop checking that much early.
    let promised = left + owed - Duration::from_millis(300);
    let mut fetches = 0;
    while Instant::now() < promised {
        let r = http_get(http, &path(&uri));
        assert_eq!(r.status, 200, "{uri} gone {:?} after it left the playlist; owed {owed:?}", left.elapsed());
        assert!(!r.body.is_empty());
        fetches += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(fetches >= 10, "checked over the whole period ({fetches} fetches)");
    // It goes at the first segment published after its time is up (plus one segment of slack
    // for a loaded machine).
    let gone = eventually(Duration::from_secs(4), "the segment to leave the store", || {
        (http_get(http, &path(&uri)).status == 404).then(Instant::now)
    });
    println!("{uri}: owed {owed:?}, served until {:?} after it left the playlist", gone.duration_since(left));
    stop_publisher(publisher);
    daemon.stop();
}
