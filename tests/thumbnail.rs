//! Channel thumbnails end to end: the real `ffmpeg` publishes, the origin serves
//! `/live/{channel}/thumb.jpg` as a JPEG that `ffprobe` reads at thumbnail size, refreshed every
//! `hls.thumbnail_interval`, and gone once the publish ends.

mod support;

use std::time::{Duration, Instant};

use support::*;

const RUNGS: &[TestRung] = &[("180p", 320, 180, 300_000)];
const CHANNELS: &[&str] = &["cam", "idle"];

/// (codec, width, height) of a JPEG as ffprobe reads it.
fn probe(jpeg: &[u8]) -> String {
    // The demuxer is named: content probing of a small pipe is not reliable for still images.
    ffprobe_stdin(jpeg, &["-f", "jpeg_pipe", "-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0"])
        .trim()
        .to_string()
}

#[test]
fn thumb_jpg_is_a_small_jpeg_refreshed_every_interval_while_live() {
    init_tracing();
    let cfg = config(&ladder(RUNGS, CHANNELS), 1.0);
    assert_eq!(cfg.hls.thumbnail_interval, 2.0, "the default interval");
    let daemon = Running::start(cfg);
    let (rtmp, http) = (daemon.rtmp, daemon.http);
    let metrics = daemon.metrics.clone();

    // Before any publish: a configured channel is briefly cached, an unknown one not at all.
    let r = http_get(http, "/live/cam/thumb.jpg");
    assert_eq!((r.status, r.header("cache-control")), (404, Some("public, max-age=2")));
    let r = http_get(http, "/live/nope/thumb.jpg");
    assert_eq!((r.status, r.header("cache-control")), (404, Some("no-store")));

    let publisher = publish(rtmp, "cam-key", "640x360", 14, &[]);
    let first = eventually(Duration::from_secs(20), "the first thumbnail", || {
        let r = http_get(http, "/live/cam/thumb.jpg");
        (r.status == 200).then_some(r)
    });
    let seen_at = Instant::now();
    assert_eq!(first.header("content-type"), Some("image/jpeg"));
    assert_eq!(first.header("cache-control"), Some("public, max-age=2"));
    assert_eq!(first.header("access-control-allow-origin"), Some("*"));
    assert!(first.header("last-modified").is_some());
    let etag = first.header("etag").expect("an ETag").to_owned();
    assert_eq!(first.header("content-length"), Some(first.body.len().to_string().as_str()));
    assert_eq!(probe(&first.body), "mjpeg,320,180", "640x360 makes a 320x180 thumbnail");

    // Within the interval it stays the same object; after it, testsrc2's moving picture makes a
    // new one (a different entity tag).
    let soon = http_get(http, "/live/cam/thumb.jpg");
    if seen_at.elapsed() < Duration::from_millis(1500) {
        assert_eq!(soon.header("etag"), Some(etag.as_str()), "not replaced before the interval");
    }
    let next = eventually(Duration::from_secs(6), "a new thumbnail", || {
        let r = http_get(http, "/live/cam/thumb.jpg");
        (r.status == 200 && r.header("etag") != Some(etag.as_str())).then_some(r)
    });
    let refreshed_after = seen_at.elapsed();
    assert!(refreshed_after >= Duration::from_millis(500), "replaced after {refreshed_after:?}: too soon");
    assert_eq!(probe(&next.body), "mjpeg,320,180");
    assert_ne!(next.body, first.body);
    // A channel that is not live has none.
    assert_eq!(http_get(http, "/live/idle/thumb.jpg").status, 404);
    assert!(metrics.http_requests.with_label_values(&["origin", "thumbnail", "200"]).get() >= 3);

    let _ = wait_with_timeout(publisher, Duration::from_secs(30));
    eventually(Duration::from_secs(15), "the thumbnail gone after the publish", || {
        let r = http_get(http, "/live/cam/thumb.jpg");
        (r.status == 404).then_some(())
    });
    daemon.stop();
}
