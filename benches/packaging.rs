//! Packaging cost per frame: the segmenter and fMP4 writer over a 30 fps rendition, and the
//! playlist renderer. Run with `cargo bench --bench packaging`.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ladderd::media::{EncodedPacket, Sample, avc};
use ladderd::package::fmp4::TrackParams;
use ladderd::package::playlist::{MediaPlaylist, PlaylistSegment, render_media};
use ladderd::package::segmenter::Segmenter;

/// One minute of a 30 fps, 3 Mbit/s rendition with a 2 s GOP: IDRs of 60 KB, other frames of 11 KB.
fn packets() -> Vec<EncodedPacket> {
    let idr = Bytes::from(vec![0x65u8; 60_000]);
    let p = Bytes::from(vec![0x41u8; 11_000]);
    (0..1800i64)
        .map(|i| {
            let key = i % 60 == 0;
            EncodedPacket {
                sample: Sample {
                    pts: i * 3000,
                    dts: i * 3000,
                    keyframe: key,
                    segment_start: key,
                    data: if key { idr.clone() } else { p.clone() },
                },
                ingest_time: UNIX_EPOCH + Duration::from_millis(i as u64 * 33),
            }
        })
        .collect()
}

fn segmenter(c: &mut Criterion) {
    let headers = include_bytes!("../src/media/testdata/x264_headers_1280x720_high.h264");
    let params = avc::params_from_annexb(headers).expect("x264 headers");
    let packets = packets();
    let mut g = c.benchmark_group("segmenter");
    g.throughput(Throughput::Elements(packets.len() as u64));
    g.bench_function("video_1800_frames", |b| {
        b.iter(|| {
            let mut s = Segmenter::new(TrackParams::Video(params.clone()));
            let mut bytes = 0;
            for p in &packets {
                if let Some(seg) = s.push(p.clone()) {
                    bytes += seg.fragment.len();
                }
            }
            black_box(bytes)
        })
    });
    g.finish();
}

fn playlist(c: &mut Criterion) {
    let now = SystemTime::now();
    let p = MediaPlaylist {
        target_duration: 2,
        media_sequence: 17_000_000_000,
        discontinuity_sequence: 0,
        segments: (0..6)
            .map(|i| PlaylistSegment {
                uri: format!("{}.m4s", 17_000_000_000u64 + i),
                map_uri: "init-17000000000.mp4".into(),
                duration: 2.0,
                program_date_time: now + Duration::from_secs(2 * i),
                discontinuity: false,
                parts: Vec::new(),
            })
            .collect(),
        ended: false,
        low_latency: None,
    };
    c.bench_function("render_media_6_segments", |b| b.iter(|| black_box(render_media(black_box(&p)))));
}

criterion_group!(benches, segmenter, playlist);
criterion_main!(benches);
