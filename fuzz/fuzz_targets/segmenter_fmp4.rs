//! The timeline and the segmenter under arbitrary RTMP timestamps (steps back and forth, jumps,
//! wraps, frozen clocks), their fMP4 parts read back with mp4-atom. Whatever the timestamps,
//! every part parses as `moof`+`mdat`; `mfhd` sequence numbers count up by one; each `trun`
//! describes its samples (count, sizes, keyframes) and its `mdat` holds their bytes in order;
//! decode time never goes back and parts follow each other without a gap or an overlap; a
//! segment is its parts, their durations summed.
//!
//! The first byte picks the track (bit 0: audio) and the part target (bits 1-2); then each
//! sample is 5 bytes: a signed 16-bit timestamp step in ms (bit 7 of the flags scales it by
//! 1000), a composition offset in ms (video), flags (bit 0 keyframe, bit 1 segment start) and a
//! payload length.
#![no_main]

use std::time::SystemTime;

use bytes::Bytes;
use ladderd::ingest::timeline::{Timeline, TrackClock};
use ladderd::media::{AudioParams, EncodedPacket, Sample, VideoParams};
use ladderd::package::fmp4::TrackParams;
use ladderd::package::segmenter::{Output, Part, Segmenter};
use libfuzzer_sys::fuzz_target;
use mp4_atom::{Any, Decode};

/// What a part must hold: its samples' sizes, keyframe flags and bytes, in decode order.
struct Expected {
    sizes: Vec<u32>,
    keyframes: Vec<bool>,
    bytes: Vec<u8>,
}

/// Reads one part back and checks it against what went in; returns (tfdt, duration summed).
fn check_part(part: &Part, sequence: u32, expected: &Expected, audio: bool) -> (u64, u64) {
    let bytes: Vec<u8> = part.fragment.chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let mut buf: &[u8] = &bytes;
    let Any::Moof(moof) = Any::decode(&mut buf).expect("a part starts with a moof") else {
        panic!("a part starts with a moof");
    };
    let Any::Mdat(mdat) = Any::decode(&mut buf).expect("then an mdat") else { panic!("then an mdat") };
    assert!(buf.is_empty(), "nothing after the mdat");
    assert_eq!(moof.mfhd.sequence_number, sequence, "mfhd sequence numbers count up by one");
    assert_eq!(moof.traf.len(), 1, "one track");
    let traf = &moof.traf[0];
    let tfdt = traf.tfdt.as_ref().expect("tfdt").base_media_decode_time;
    let entries: Vec<_> = traf.trun.iter().flat_map(|t| t.samples.iter()).collect();
    let sizes: Vec<u32> = entries.iter().map(|e| e.size.or(traf.tfhd.default_sample_size).unwrap_or(0)).collect();
    assert_eq!(sizes, expected.sizes, "trun sizes");
    let duration: u64 =
        entries.iter().map(|e| u64::from(e.duration.or(traf.tfhd.default_sample_duration).unwrap_or(0))).sum();
    if !audio {
        let flags = |e: &mp4_atom::TrunEntry| e.flags.or(traf.tfhd.default_sample_flags).unwrap_or(0);
        let keyframes: Vec<bool> = entries.iter().map(|e| flags(e) & 0x1_0000 == 0).collect();
        assert_eq!(keyframes, expected.keyframes, "sync sample flags");
        assert_eq!(part.independent, expected.keyframes.first().copied().unwrap_or(false), "INDEPENDENT");
    }
    assert_eq!(mdat.data, expected.bytes, "the mdat holds the samples' bytes in order");
    (tfdt, duration)
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, records)) = input.split_first() else { return };
    let audio = mode & 1 != 0;
    let part_target = [None, Some(18_000), Some(45_000), Some(90_000)][usize::from(mode >> 1 & 3)];
    let track = if audio {
        TrackParams::Audio(AudioParams {
            asc: Bytes::from_static(&[0x11, 0x90]),
            sample_rate: 48_000,
            channels: 2,
            codec: "mp4a.40.2".into(),
            frame_samples: 1024,
        })
    } else {
        TrackParams::Video(VideoParams { avcc: Bytes::new(), width: 320, height: 180, codec: "avc1.64000d".into() })
    };
    let mut segmenter = Segmenter::with_parts(track, part_target);
    let mut clock = TrackClock::new(if audio { 1024_000.0 / 48_000.0 } else { 1000.0 / 30.0 });
    let mut timeline = Timeline::new();

    let (mut raw, mut cut) = (0u32, false);
    // Samples from the first cut on, not yet in a part: what the next parts must hold.
    let mut pending: Vec<(u32, bool, Vec<u8>)> = Vec::new();
    let mut outputs: Vec<(Output, usize)> = Vec::new();
    let mut pushed = 0usize;
    for r in records.chunks_exact(5) {
        let step = i16::from_le_bytes([r[0], r[1]]);
        let flags = r[3];
        let step = if flags & 0x80 != 0 { i32::from(step) * 1000 } else { i32::from(step) };
        raw = raw.wrapping_add_signed(step);
        let (placed, _) = clock.place(raw);
        let (dts, pts) = if audio {
            let dts = timeline.dts(placed);
            (dts, dts)
        } else {
            timeline.video(placed, i32::from(r[2] as i8))
        };
        let keyframe = audio || flags & 1 != 0;
        let segment_start = flags & 2 != 0;
        cut |= segment_start;
        let data = vec![r[4]; usize::from(r[4])];
        if cut {
            pending.push((data.len() as u32, keyframe, data.clone()));
            pushed += 1;
        }
        let sample = Sample { pts, dts, keyframe, segment_start, data: Bytes::from(data) };
        let out = segmenter.push_parts(EncodedPacket { sample, ingest_time: SystemTime::UNIX_EPOCH });
        outputs.push((out, pushed));
    }
    outputs.push((segmenter.finish_parts(), usize::MAX));

    let (mut sequence, mut taken) = (1u32, 0usize);
    let mut next_tfdt: Option<u64> = None;
    let mut segment_parts: Vec<&Part> = Vec::new();
    for (out, pushed_so_far) in &outputs {
        for part in &out.parts {
            // A part holds the oldest samples not yet in one, as many as its trun lists; the
            // sample just pushed is never in a part it finished (unless the stream ended).
            let count = part.arrivals.len();
            let upto = if *pushed_so_far == usize::MAX { pending.len() } else { pushed_so_far.saturating_sub(1) };
            assert!(taken + count <= upto, "a part holds only samples that came before it");
            let samples = &pending[taken..taken + count];
            let expected = Expected {
                sizes: samples.iter().map(|s| s.0).collect(),
                keyframes: samples.iter().map(|s| s.1).collect(),
                bytes: samples.iter().flat_map(|s| s.2.iter().copied()).collect(),
            };
            taken += count;
            let (tfdt, duration) = check_part(part, sequence, &expected, audio);
            sequence += 1;
            if let Some(expected_tfdt) = next_tfdt {
                assert_eq!(tfdt, expected_tfdt, "each part starts where the one before ended");
            }
            next_tfdt = Some(tfdt + duration);
            segment_parts.push(part);
        }
        if let Some(segment) = &out.segment {
            let whole: Vec<u8> = segment.fragment.chunks.iter().flat_map(|c| c.iter().copied()).collect();
            let parts: Vec<u8> =
                segment_parts.iter().flat_map(|p| p.fragment.chunks.iter().flat_map(|c| c.iter().copied())).collect();
            assert_eq!(whole, parts, "a segment is its parts");
            let frames: usize = segment_parts.iter().map(|p| p.arrivals.len()).sum();
            assert_eq!(segment.frames as usize, frames, "a segment counts its parts' samples");
            let duration: i64 = segment_parts.iter().map(|p| p.duration).sum();
            assert_eq!(segment.duration, duration, "a segment lasts as long as its parts");
            segment_parts.clear();
        }
    }
    assert_eq!(taken, pending.len(), "every sample from the first cut on is in a part");
    assert!(segment_parts.is_empty(), "the end of the stream closes the last segment");
});
