//! A channel across a change of stream parameters: real H.264 in (made by the `ffmpeg` CLI), fed
//! through the same gate ingest uses, real transcoding and packaging out, checked with `ffprobe`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ladderd::channel::Channels;
use ladderd::ingest::{Publish, PublishGate};
use ladderd::media::{Arrival, MediaPacket, Sample};
use ladderd::metrics::Metrics;
use ladderd::store::{ObjectName, Store};
use support::*;

const RUNGS: &[TestRung] = &[("240p", 426, 240, 400_000), ("120p", 214, 120, 150_000)];
const CHANNELS: &[&str] = &["phone"];

fn text(store: &Store, name: &str) -> String {
    store
        .get_channel("phone")
        .and_then(|c| c.get(&ObjectName::from_key(name).expect("a stored name")))
        .map(|o| o.chunks.iter().flat_map(|c| c.iter().copied()).collect::<Vec<u8>>())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn bytes(store: &Store, name: &str) -> Vec<u8> {
    let o = store
        .get_channel("phone")
        .and_then(|c| c.get(&ObjectName::from_key(name).expect("a stored name")))
        .unwrap_or_else(|| panic!("{name} is stored"));
    o.chunks.iter().flat_map(|c| c.iter().copied()).collect()
}

/// Sends samples in real time, shifted by `offset` ticks, as ingest would.
fn feed(tx: &tokio::sync::mpsc::Sender<Arrival>, samples: &[Sample], offset: i64) {
    let start = Instant::now();
    for s in samples {
        let due = Duration::from_secs_f64(s.dts.max(0) as f64 / 90_000.0);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut s = s.clone();
        s.pts += offset;
        s.dts += offset;
        tx.blocking_send(Arrival { packet: MediaPacket::Video(s), at: SystemTime::now(), charge: None })
            .expect("channel is live");
    }
}

/// The phone channel of [`RUNGS`] with one publish begun: its store, its channels, the publish.
fn publish_phone() -> (Arc<Store>, Channels, Publish) {
    let store = Arc::new(Store::new());
    let channels =
        Channels::new(Arc::new(config(&ladder(RUNGS, CHANNELS), 1.0)), store.clone(), Arc::new(Metrics::new()));
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let publish = channels.begin("live", "phone-key", peer).unwrap_or_else(|r| panic!("refused: {r:?}"));
    (store, channels, publish)
}

/// Sends a video sequence header, as ingest does before the first picture.
fn send_params(publish: &Publish, params: ladderd::media::VideoParams) {
    publish
        .media
        .blocking_send(Arrival { packet: MediaPacket::VideoParams(params), at: SystemTime::now(), charge: None })
        .expect("live");
}

#[test]
fn a_phone_turning_sideways_restarts_the_ladder_behind_a_discontinuity() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let (landscape, a) = encoded_video(dir.path(), "320x240", 30, 3);
    let (portrait, b) = encoded_video(dir.path(), "240x320", 30, 3);
    let (store, channels, publish) = publish_phone();

    send_params(&publish, landscape);
    feed(&publish.media, &a, 0);
    send_params(&publish, portrait);
    feed(&publish.media, &b, 270_000);

    // While the publisher is still there, the playlists continue past the change and stay open.
    let live = eventually(Duration::from_secs(10), "a segment after the discontinuity", || {
        let t = text(&store, "240p/index.m3u8");
        t.split("#EXT-X-DISCONTINUITY\n").nth(1).is_some_and(|after| after.contains(".m4s")).then_some(t)
    });
    assert!(!live.contains("#EXT-X-ENDLIST"), "no ENDLIST while live:\n{live}");
    assert!(channels.is_live("phone"));

    end_publish(&channels, publish);

    for (rung, before, after) in [("240p", "320x240", "240x320"), ("120p", "160x120", "120x160")] {
        let playlist = text(&store, &format!("{rung}/index.m3u8"));
        let p = parse_media_playlist(&playlist);
        assert!(p.ended, "{rung}: ENDLIST at the end:\n{playlist}");
        assert_eq!(playlist.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{playlist}");
        let maps: Vec<&str> = playlist
            .lines()
            .filter_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\"").map(|v| v.trim_end_matches('"')))
            .collect();
        assert_eq!(maps.len(), 2, "a new init segment after the change:\n{playlist}");
        assert_ne!(maps[0], maps[1]);
        // The first segment decodes at the landscape size, the last at the portrait size.
        let (first, _) = p.segments.first().expect("segments");
        let (last, _) = p.segments.last().expect("segments");
        for (map, seg, size) in [(maps[0], first, before), (maps[1], last, after)] {
            let mut file = bytes(&store, &format!("{rung}/{map}"));
            file.extend(bytes(&store, &format!("{rung}/{seg}")));
            let dims = ffprobe_stdin(&file, &["-show_entries", "stream=width,height", "-of", "csv=s=x:p=0"]);
            assert_eq!(dims.trim(), size, "{rung}/{seg}");
        }
        assert!(p.segments.len() >= 5, "{rung}: about 6 one-second segments:\n{playlist}");
    }
    let master = text(&store, "master.m3u8");
    assert!(master.contains("RESOLUTION=240x320") && !master.contains("RESOLUTION=320x240"), "{master}");
}

/// At 24 fps a part of whole frames cannot last the configured 0.2 s: four frames make 1/6 s. The
/// playlist's PART-TARGET follows the parts, so each one but a segment's last reaches 85 % of it
/// (RFC 8216bis §4.4.4.9) and none exceeds it.
#[test]
fn parts_of_a_24_fps_source_keep_within_85_percent_of_part_target() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let (params, samples) = encoded_video(dir.path(), "320x240", 24, 3);
    // On RTMP's millisecond clock, as ingest hands them on: 41 and 42 ms apart.
    let ms = |t: i64| (t as f64 / 90.0).round() as i64 * 90;
    let samples: Vec<Sample> = samples.into_iter().map(|s| Sample { pts: ms(s.pts), dts: ms(s.dts), ..s }).collect();
    let (store, channels, publish) = publish_phone();
    send_params(&publish, params);
    feed(&publish.media, &samples, 0);
    end_publish(&channels, publish);

    for rung in ["240p", "120p"] {
        let playlist = text(&store, &format!("{rung}/index.m3u8"));
        let target: f64 = playlist
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-PART-INF:PART-TARGET="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("PART-TARGET:\n{playlist}"));
        assert!((0.166..=0.168).contains(&target), "four frames, not the configured 0.2 s:\n{playlist}");
        // (duration, independent, last part of its segment)
        let mut parts: Vec<(f64, bool, bool)> = Vec::new();
        for line in playlist.lines() {
            if let Some(attrs) = line.strip_prefix("#EXT-X-PART:") {
                let duration = attrs
                    .split(',')
                    .find_map(|a| a.strip_prefix("DURATION="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("DURATION in {line}"));
                parts.push((duration, attrs.contains("INDEPENDENT=YES"), false));
            } else if !line.starts_with('#')
                && !line.is_empty()
                && let Some(last) = parts.last_mut()
            {
                last.2 = true;
            }
        }
        assert!(parts.len() >= 10, "{rung}: parts are listed:\n{playlist}");
        for (duration, independent, last) in parts {
            assert!(duration <= target, "{rung}: a {duration} s part over PART-TARGET:\n{playlist}");
            if !independent && !last {
                assert!(duration >= 0.85 * target, "{rung}: a {duration} s part under 85 %:\n{playlist}");
            }
        }
    }
}

/// Log lines captured from every thread (nextest runs each test in its own process).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A publisher whose video never starts publishes nothing; after five seconds of audio alone the
/// log says why, once.
#[test]
fn audio_without_video_is_reported_once_and_publishes_nothing() {
    let logs = Captured::default();
    let writer = logs.clone();
    // The channel thread logs through the process-wide subscriber: this one, when the test has
    // its process to itself as under cargo-nextest (scripts/test.sh).
    if tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).try_init().is_err() {
        eprintln!("skipped: another test of this process set the log subscriber; run it with cargo nextest");
        return;
    }
    let (store, channels, publish) = publish_phone();
    let params = ladderd::media::AudioParams {
        // AAC-LC, 48 kHz, stereo.
        asc: bytes::Bytes::from_static(&[0x11, 0x90]),
        sample_rate: 48_000,
        channels: 2,
        codec: "mp4a.40.2".into(),
        frame_samples: 1024,
    };
    let t0 = SystemTime::now();
    publish
        .media
        .blocking_send(Arrival { packet: MediaPacket::AudioParams(params), at: t0, charge: None })
        .expect("live");
    // Eight seconds of AAC frames, stamped with their arrival as a real-time publisher's would be.
    for i in 0..375i64 {
        let ticks = i * 1024 * 90_000 / 48_000;
        let sample = Sample {
            pts: ticks,
            dts: ticks,
            keyframe: true,
            segment_start: false,
            data: bytes::Bytes::from_static(&[0x21, 0x10, 0x04]),
        };
        let at = t0 + Duration::from_micros(ticks as u64 * 100 / 9);
        publish.media.blocking_send(Arrival { packet: MediaPacket::Audio(sample), at, charge: None }).expect("live");
    }
    end_publish(&channels, publish);

    let text = String::from_utf8_lossy(&logs.0.lock().expect("lock")).into_owned();
    assert_eq!(text.matches("audio but no H.264 keyframe yet").count(), 1, "{text}");
    assert!(text.contains("channel=phone"), "{text}");
    let objects = store.get_channel("phone").expect("channel");
    assert!(
        objects.get(&ObjectName::Master).is_none()
            && objects.get(&ObjectName::MediaPlaylist { rendition: "audio" }).is_none(),
        "{:?}",
        objects.names()
    );
}

#[test]
fn a_publisher_flapping_its_parameters_is_ended_after_the_restart_limit() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let (landscape, a) = encoded_video(dir.path(), "320x240", 30, 1);
    let (portrait, b) = encoded_video(dir.path(), "240x320", 30, 1);
    let store = Arc::new(Store::new());
    let mut cfg = config(&ladder(RUNGS, CHANNELS), 1.0);
    cfg.transcode.max_restarts_per_minute = 2;
    let metrics = Arc::new(Metrics::new());
    let channels = Channels::new(Arc::new(cfg), store.clone(), metrics.clone());
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let publish = channels.begin("live", "phone-key", peer).unwrap_or_else(|r| panic!("refused: {r:?}"));
    let restarts = || metrics.pipeline_errors.with_label_values(&["phone", "restarts"]).get();

    // Two changes are within the limit; the third ends the publish.
    for (i, (params, frames)) in [(&landscape, &a), (&portrait, &b), (&landscape, &a)].into_iter().enumerate() {
        send_params(&publish, params.clone());
        feed(&publish.media, frames, i as i64 * 90_000);
    }
    assert!(channels.is_live("phone"), "two restarts are allowed");
    assert_eq!(restarts(), 0);
    send_params(&publish, portrait.clone());
    eventually(Duration::from_secs(10), "the publish to end", || (!channels.is_live("phone")).then_some(()));
    assert_eq!(restarts(), 1, "counted as the reason");
    assert!(publish.kick.is_cancelled(), "the publisher is sent away");
    // The channel thread ends the playlists just after it frees the channel.
    let playlist = eventually(Duration::from_secs(10), "its playlists to end", || {
        let t = text(&store, "240p/index.m3u8");
        t.contains("#EXT-X-ENDLIST").then_some(t)
    });
    assert_eq!(playlist.matches("#EXT-X-DISCONTINUITY\n").count(), 2, "two restarts:\n{playlist}");
    channels.drain();
}
