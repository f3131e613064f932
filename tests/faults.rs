//! Faults on the way from the encoder to the viewer, with the real ffmpeg as the publisher: what a
//! CDN or a player was told about stays available for as long as RFC 8216 promises it, and a
//! publisher that is lost (killed, or silent behind an open connection) may come back to the same
//! playlists within `rtmp.reconnect_grace`, which end only when it has passed.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "test-token-0123456789";

/// The 180p playlist's text, when there is one.
fn playlist_text(http: SocketAddr) -> Option<String> {
    let r = http_get(http, "/live/shop/180p/index.m3u8");
    (r.status == 200).then(|| r.text())
}

/// Starts a 60 s publish of `shop` and waits for its 180p playlist to list three segments.
fn publish_three_segments(rtmp: SocketAddr, http: SocketAddr) -> std::process::Child {
    let publisher = publish(rtmp, "shop-key", "320x180", 60, &[]);
    eventually(Duration::from_secs(20), "three segments", || {
        playlist_text(http).filter(|t| parse_media_playlist(t).segments.len() >= 3)
    });
    publisher
}

/// `ladderd_publishers_lost_total{channel="shop"}` by outcome: (resumed, ended).
fn lost(daemon: &Running) -> (u64, u64) {
    let outcome = |o: &str| daemon.metrics.publishers_lost.with_label_values(&["shop", o]).get();
    (outcome("resumed"), outcome("ended"))
}

/// Every segment of `playlist` in `rendition` of `shop` is served.
fn all_served(http: SocketAddr, rendition: &str, playlist: &MediaPlaylist) {
    for (uri, _) in &playlist.segments {
        assert_eq!(http_get(http, &format!("/live/shop/{rendition}/{uri}")).status, 200, "{rendition}/{uri}");
    }
}

/// Watches the playlist for `how_long`, failing if it ever ends; returns its last text.
fn never_ends_for(http: SocketAddr, how_long: Duration, why: &str) -> String {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < how_long {
        if let Some(text) = playlist_text(http) {
            assert!(!text.contains("#EXT-X-ENDLIST"), "{why}: the playlist ended after {:?}:\n{text}", start.elapsed());
            last = text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

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

/// An encoder killed mid-segment (SIGKILL: no `deleteStream`, the connection just drops) that
/// comes back within the grace continues the same playlists after a discontinuity: nothing was
/// ended in between, nothing already listed is lost, and the numbers go on without a gap. A
/// publisher that then ends its publish (SIGINT: ffmpeg sends `deleteStream`) ends them at once.
#[test]
fn a_publisher_killed_mid_segment_and_back_within_the_grace_continues_the_same_playlists() {
    init_tracing();
    let mut cfg = config(&ladder(RUNGS, CHANNELS), 1.0);
    cfg.rtmp.reconnect_grace = 8.0;
    cfg.admin.token = Some(TOKEN.into());
    let daemon = Running::start(cfg);
    let (rtmp, http, admin) = (daemon.rtmp, daemon.http, daemon.admin);

    let first = publish_three_segments(rtmp, http);
    // Into the next segment, then the encoder dies.
    std::thread::sleep(Duration::from_millis(400));
    let mut first = first;
    first.kill().expect("kill");
    first.wait().expect("reap");
    let before = never_ends_for(http, Duration::from_secs(3), "a lost publisher within its grace");
    let status = http_get_auth(admin, "/api/v1/channels/shop", TOKEN).text();
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["live"], false, "{status}");
    assert!(status["reconnect_until"].as_str().is_some_and(|t| t.ends_with('Z')), "the hold is shown: {status}");
    let before = parse_media_playlist(&before);
    assert!(before.segments.len() >= 3, "what was listed stays listed");

    // The encoder reconnects.
    let second = publish(rtmp, "shop-key", "320x180", 60, &[]);
    let after = eventually(Duration::from_secs(20), "the returning publisher's segments", || {
        let text = playlist_text(http)?;
        assert!(!text.contains("#EXT-X-ENDLIST"), "ended while the publisher came back:\n{text}");
        (parse_media_playlist(&text).segments.len() >= before.segments.len() + 2).then_some(text)
    });
    let p = parse_media_playlist(&after);
    assert_eq!(p.media_sequence, before.media_sequence, "the window holds both publishes");
    assert_eq!(&p.segments[..before.segments.len()], &before.segments[..], "nothing listed was lost:\n{after}");
    let disc = after.find("#EXT-X-DISCONTINUITY\n").expect("a discontinuity before the new segments");
    let last_old = after.find(&before.segments.last().expect("a segment").0).expect("the old last segment");
    assert!(disc > last_old, "the discontinuity follows the old segments:\n{after}");
    all_served(http, "180p", &p);
    assert_eq!(lost(&daemon), (1, 0));

    // The publisher ends its publish: no grace for that.
    let stopped = Instant::now();
    stop_publisher(second);
    eventually(Duration::from_secs(6), "ENDLIST at once after deleteStream", || {
        playlist_text(http).filter(|t| t.contains("#EXT-X-ENDLIST"))
    });
    assert!(stopped.elapsed() < Duration::from_secs(7), "well inside the 8 s grace");
    assert_eq!(lost(&daemon), (1, 0));
    daemon.stop();
}

/// An encoder whose process stops while its TCP connection stays open sends nothing: it is
/// dropped after `rtmp.idle_timeout` with the window intact, and its playlists end only when the
/// grace has passed without it.
#[test]
fn a_silent_publisher_is_dropped_at_the_idle_timeout_and_its_playlists_end_after_the_grace() {
    init_tracing();
    let mut cfg = config(&ladder(RUNGS, CHANNELS), 1.0);
    cfg.rtmp.idle_timeout = 3.0;
    cfg.rtmp.reconnect_grace = 3.0;
    let daemon = Running::start(cfg);
    let (rtmp, http) = (daemon.rtmp, daemon.http);

    let publisher = publish_three_segments(rtmp, http);
    signal(publisher.id(), "STOP");
    let stopped = Instant::now();
    // Idle timeout and grace, less a margin for the last bytes still on their way.
    let before = never_ends_for(http, Duration::from_millis(5_000), "a silent publisher before timeout + grace");
    let ended = eventually(Duration::from_secs(12), "ENDLIST after the grace", || {
        playlist_text(http).filter(|t| t.contains("#EXT-X-ENDLIST"))
    });
    println!("ended {:?} after the publisher went silent", stopped.elapsed());
    let (before, ended) = (parse_media_playlist(&before), parse_media_playlist(&ended));
    assert_eq!(ended.media_sequence, before.media_sequence);
    assert_eq!(&ended.segments[..before.segments.len()], &before.segments[..], "the window is intact");
    all_served(http, "180p", &ended);
    assert_eq!(lost(&daemon), (0, 1));
    signal(publisher.id(), "CONT");
    let _ = wait_with_timeout(publisher, Duration::from_secs(10));
    daemon.stop();
}

/// Faults injected into the encoders of a live channel (`LADDERD_FAULTS` syntax): 180p's encoder
/// fails 1.5 s in, 360p's hangs 3 s in. Each rung is rebuilt on libx264 from the next segment
/// start and its playlist goes on after a discontinuity, decodable; the other rung never stops;
/// the API says what moved and why, and the metrics count both.
#[test]
fn an_encoder_that_fails_or_hangs_mid_stream_rebuilds_that_rung_only() {
    init_tracing();
    const TWO: &[TestRung] = &[("360p", 640, 360, 700_000), ("180p", 320, 180, 300_000)];
    let mut cfg = config(&ladder(TWO, CHANNELS), 1.0);
    cfg.admin.token = Some(TOKEN.into());
    cfg.transcode.x264_preset = "ultrafast".into();
    ladderd::transcode::faults::set(
        ladderd::transcode::faults::parse("encode:fail@shop/180p:after=45,encode:hang@shop/360p:after=90")
            .expect("faults"),
    );
    let daemon = Running::start(cfg);
    let (rtmp, http, admin) = (daemon.rtmp, daemon.http, daemon.admin);
    let errors = |stage: &str| daemon.metrics.pipeline_errors.with_label_values(&["shop", stage]).get();
    let publisher = publish(rtmp, "shop-key", "640x360", 60, &["-preset", "ultrafast"]);

    // Both faults have happened (by 3 s, and the stall is seen 2 s later at a cut) and each rung
    // has segments well after them.
    eventually(Duration::from_secs(30), "both faults handled", || {
        (errors("encoder_restart") == 1 && errors("encoder_stalled") == 1).then_some(())
    });
    for rendition in ["180p", "360p"] {
        let path = format!("/live/shop/{rendition}/index.m3u8");
        let text = eventually(Duration::from_secs(30), "segments after the rebuild", || {
            let r = http_get(http, &path);
            let text = (r.status == 200).then(|| r.text())?;
            assert!(!text.contains("#EXT-X-ENDLIST"), "{rendition} ended:\n{text}");
            (parse_media_playlist(&text).segments.len() >= 9).then_some(text)
        });
        // The new encoder's segments decode (libx264 again: the same parameter sets, so the same
        // init segment serves them; a GPU encoder's replacement gets a new one and a discontinuity).
        let p = parse_media_playlist(&text);
        let map = p.map.clone().expect("an init segment");
        let mut bytes = http_get(http, &format!("/live/shop/{rendition}/{map}")).body;
        bytes.extend(http_get(http, &format!("/live/shop/{rendition}/{}", p.segments.last().expect("segment").0)).body);
        let frames =
            ffprobe_stdin(&bytes, &["-count_frames", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"]);
        assert!(frames.trim().parse::<u32>().is_ok_and(|n| n >= 20), "{rendition}: {frames}");
        all_served(http, rendition, &p);
    }
    assert_eq!((errors("encoder_restart"), errors("encoder_stalled"), errors("encode")), (1, 1, 0));
    let status: serde_json::Value =
        serde_json::from_str(&http_get_auth(admin, "/api/v1/channels/shop", TOKEN).text()).expect("status JSON");
    let moves = status["backend"]["moves"].as_array().expect("moves");
    assert!(
        moves.iter().any(|m| m["rung"] == "360p"
            && m["stage"] == "encode"
            && m["reason"].as_str().is_some_and(|r| r.contains("stopped taking pictures"))),
        "the stall is shown: {status}"
    );
    let live = |r: &str| http_get(http, &format!("/live/shop/{r}/index.m3u8")).text();
    assert!(!live("180p").contains("#EXT-X-ENDLIST") && !live("360p").contains("#EXT-X-ENDLIST"));
    stop_publisher(publisher);
    daemon.stop();
}
