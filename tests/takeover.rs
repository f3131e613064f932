//! An encoder that lost its network reconnects while its old connection still looks open: the
//! new connection takes the channel over once the old one has been silent for two seconds, and
//! the playlists go on behind a discontinuity. A second encoder that is sending is still refused.

mod support;

use std::time::Duration;

use support::*;

const RUNGS: &[TestRung] = &[("180p", 320, 180, 300_000)];
const CHANNELS: &[&str] = &["shop"];

fn playlist(http: std::net::SocketAddr) -> Option<(MediaPlaylist, String)> {
    let r = http_get(http, "/live/shop/180p/index.m3u8");
    (r.status == 200).then(|| (parse_media_playlist(&r.text()), r.text()))
}

#[test]
fn a_silent_publisher_gives_way_to_a_reconnecting_one_and_a_sending_one_does_not() {
    init_tracing();
    // An idle timeout far beyond the test, so that only the takeover can free the channel.
    let mut cfg = config(&ladder(RUNGS, CHANNELS), 1.0);
    cfg.rtmp.idle_timeout = 60.0;
    let daemon = Running::start(cfg);
    let (rtmp, http, metrics) = (daemon.rtmp, daemon.http, daemon.metrics.clone());
    let takeovers = || metrics.publisher_takeovers.with_label_values(&["shop"]).get();

    let mut first = publish(rtmp, "shop-key", "320x180", 60, &[]);
    let (before, _) =
        eventually(Duration::from_secs(20), "two segments", || playlist(http).filter(|(p, _)| p.segments.len() >= 2));

    // While the first encoder is sending, a second one on the same key is refused.
    let intruder = wait_with_timeout(publish(rtmp, "shop-key", "320x180", 3, &[]), Duration::from_secs(20));
    assert!(!intruder.status.success(), "a second encoder that is sending is refused");
    assert_eq!(takeovers(), 0);

    // The first encoder's network goes away: its process stops, its connection stays open.
    signal(first.id(), "STOP");
    // What it sent before stopping may still be on its way through a busy ladderd: silence counts
    // from the last byte read, so wait until nothing has come for longer than TAKEOVER_SILENCE.
    let received = || metrics.ingest_bytes.with_label_values(&["shop"]).get();
    let (mut last, mut since, stopped) = (received(), std::time::Instant::now(), std::time::Instant::now());
    while since.elapsed() < Duration::from_millis(2300) {
        assert!(stopped.elapsed() < Duration::from_secs(30), "ingest still counts bytes from a stopped encoder");
        std::thread::sleep(Duration::from_millis(100));
        if received() != last {
            (last, since) = (received(), std::time::Instant::now());
        }
        assert!(takeovers() == 0, "no takeover before a new encoder comes");
    }
    let second = publish(rtmp, "shop-key", "320x180", 5, &[]);
    // Players never see the playlist end between the two encoders: it goes straight on to the
    // second one's segments.
    eventually(Duration::from_secs(20), "the second encoder's first segment", || {
        let (p, text) = playlist(http)?;
        assert!(!p.ended, "no ENDLIST across a takeover: {text}");
        text.split("#EXT-X-DISCONTINUITY\n").nth(1).is_some_and(|t| t.contains(".m4s\n")).then_some(())
    });
    let out = wait_with_timeout(second, Duration::from_secs(30));
    assert!(out.status.success(), "the reconnecting encoder is taken: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(takeovers(), 1);

    let (after, text) =
        eventually(Duration::from_secs(20), "the second publish ended", || playlist(http).filter(|(p, _)| p.ended));
    // One playlist across both: the first publish's segments, then the second's after a
    // discontinuity, with no gap in the media sequence.
    assert_eq!(after.media_sequence, before.media_sequence);
    assert_eq!(&after.segments[..before.segments.len()], &before.segments[..]);
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
    let second_part: f64 = text
        .split("#EXT-X-DISCONTINUITY\n")
        .nth(1)
        .map(|t| parse_media_playlist(t).segments.iter().map(|(_, d)| d).sum())
        .unwrap_or(0.0);
    assert!((4.0..=6.0).contains(&second_part), "about 5 s from the second encoder, got {second_part:.2} s");

    signal(first.id(), "KILL");
    let _ = first.wait();
    daemon.stop();
}
