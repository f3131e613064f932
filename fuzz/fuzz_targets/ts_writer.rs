//! The MPEG-TS writer, part after part, read back by a transport stream reader of this target's
//! own (ISO/IEC 13818-1). Whatever the samples and timestamps: the output is whole 188-byte
//! packets; every part opens with a PAT and a PMT; continuity counters count on per PID across
//! parts; every sample is one PES on the ES PID, with its PTS and DTS (33 bits) and a PCR equal to
//! its DTS, a random-access flag on keyframes, a PES_packet_length that matches (or 0, for video
//! only); its payload is the access unit delimiter, the parameter sets on keyframes and each NAL
//! unit after a start code (H.264), or an ADTS header whose fields match the AudioSpecificConfig
//! and the frame (AAC); every tag is one PES on the ID3 PID at its PTS, ahead of the first sample
//! presented at or after it.
//!
//! The first byte picks the track (bit 0: audio). Then each sample is 6 bytes: a signed 16-bit
//! pts step, a signed composition offset (pts - dts, video), flags (bit 0 keyframe, bit 1 a tag
//! with it, bit 2 the part ends after it, bit 3 the data is the raw bytes that follow instead of
//! NAL units built from them), a length and a seed byte.
#![no_main]

use bytes::Bytes;
use ladderd::media::avc::parse_avcc;
use ladderd::media::{AudioParams, VideoParams};
use ladderd::package::fmp4::TrackParams;
use ladderd::package::ts::{ES_PID, ID3_PID, PACKET_SIZE, PMT_PID, TsSample, TsWriter};
use libfuzzer_sys::fuzz_target;

/// x264's avcC for a 320x180 High-profile stream (SPS and PPS, 4-byte NAL lengths).
const AVCC: &[u8] = &[
    0x01, 0x64, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x1a, 0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0x9f, 0x9f, 0x01,
    0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60, 0x01, 0x00, 0x05, 0x68,
    0xef, 0x83, 0x1c, 0xb0, 0xfd, 0xf8, 0xf8, 0x00,
];
const MODULUS: i64 = 1 << 33;

/// A PES as read back: its PID and stream, times, adaptation-field flags and payload.
struct Pes {
    pid: u16,
    stream_id: u8,
    pts: u64,
    dts: Option<u64>,
    random_access: bool,
    pcr: Option<u64>,
    payload: Vec<u8>,
}

/// Reads one part: checks packet framing, PAT/PMT first and continuity, returns its PES.
fn read_part(bytes: &[u8], cc: &mut [Option<u8>; 0x2000]) -> Vec<Pes> {
    assert_eq!(bytes.len() % PACKET_SIZE, 0, "whole transport packets");
    let mut out: Vec<Pes> = Vec::new();
    let mut open: Option<Pes> = None;
    for (n, p) in bytes.chunks(PACKET_SIZE).enumerate() {
        assert_eq!(p[0], 0x47, "sync byte");
        let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
        let start = p[1] & 0x40 != 0;
        let control = (p[3] >> 4) & 3;
        assert!(control == 1 || control == 3, "every packet carries payload");
        let counter = p[3] & 0x0F;
        if let Some(last) = cc[usize::from(pid)] {
            assert_eq!(counter, (last + 1) & 0x0F, "continuity counter of PID {pid:#x}");
        }
        cc[usize::from(pid)] = Some(counter);
        match n {
            0 => assert_eq!(pid, 0, "a part starts with the PAT"),
            1 => assert_eq!(pid, PMT_PID, "then the PMT"),
            _ => assert!(pid == ES_PID || pid == ID3_PID, "PID {pid:#x}"),
        }
        let (mut at, mut random_access, mut pcr) = (4, false, None);
        if control == 3 {
            let len = usize::from(p[4]);
            assert!(5 + len <= PACKET_SIZE, "adaptation field inside the packet");
            if len > 0 {
                random_access = p[5] & 0x40 != 0;
                if p[5] & 0x10 != 0 {
                    let b = &p[6..12];
                    pcr = Some((u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])) << 1) | u64::from(b[4] >> 7));
                }
                let fields = 6 + if pcr.is_some() { 6 } else { 0 };
                assert!(fields <= 5 + len, "the flags and PCR inside the adaptation field");
                assert!(p[fields..5 + len].iter().all(|&b| b == 0xFF), "stuffing");
            }
            at = 5 + len;
        }
        if n < 2 {
            continue;
        }
        let payload = &p[at..];
        if start {
            out.extend(open.take());
            open = Some(Pes { pid, stream_id: 0, pts: 0, dts: None, random_access, pcr, payload: payload.to_vec() });
        } else {
            let pes = open.as_mut().expect("a PES continues only after it started");
            assert_eq!(pes.pid, pid, "one PES at a time");
            pes.payload.extend_from_slice(payload);
        }
    }
    out.extend(open);
    // Parse each PES header (§2.4.3.6, §2.4.3.7).
    for pes in &mut out {
        let b = std::mem::take(&mut pes.payload);
        assert_eq!(&b[..3], &[0, 0, 1], "PES start code");
        pes.stream_id = b[3];
        let length = usize::from(u16::from_be_bytes([b[4], b[5]]));
        if length == 0 {
            assert_eq!(pes.stream_id, 0xE0, "an unbounded PES is video");
        } else {
            assert_eq!(length, b.len() - 6, "PES_packet_length");
        }
        let flags = b[7] >> 6;
        let header_len = usize::from(b[8]);
        let ts = |f: &[u8]| {
            (u64::from(f[0] >> 1 & 7) << 30)
                | (u64::from(u16::from_be_bytes([f[1], f[2]]) >> 1) << 15)
                | u64::from(u16::from_be_bytes([f[3], f[4]]) >> 1)
        };
        assert!(flags == 2 || flags == 3, "a PTS");
        pes.pts = ts(&b[9..14]);
        pes.dts = (flags == 3).then(|| ts(&b[14..19]));
        pes.payload = b[9 + header_len..].to_vec();
    }
    out
}

/// The Annex B access unit the writer makes of length-prefixed `data`.
fn annex_b(data: &[u8], keyframe: bool, parameter_sets: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 1, 0x09, 0xF0];
    if keyframe {
        out.extend_from_slice(parameter_sets);
    }
    let mut rest = data;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(nal) = rest.get(4..4 + len) else { break };
        if nal.first().is_some_and(|h| h & 0x1F != 9) {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
        rest = &rest[4 + len..];
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, mut rest)) = input.split_first() else { return };
    let audio = mode & 1 != 0;
    let track = if audio {
        TrackParams::Audio(AudioParams {
            asc: Bytes::from_static(&[0x11, 0x90]),
            sample_rate: 48_000,
            channels: 2,
            codec: "mp4a.40.2".into(),
            frame_samples: 1024,
        })
    } else {
        TrackParams::Video(VideoParams {
            avcc: Bytes::from_static(AVCC),
            width: 320,
            height: 180,
            codec: "avc1.64000d".into(),
        })
    };
    let record = parse_avcc(AVCC).expect("the avcC");
    let parameter_sets: Vec<u8> =
        record.sps.iter().chain(&record.pps).flat_map(|n| [&[0u8, 0, 0, 1][..], n].concat()).collect();
    let mut writer = TsWriter::new(&track);
    let mut cc = [None; 0x2000];
    let mut pts: i64 = 0;
    let (mut samples, mut tags) = (Vec::new(), Vec::new());
    while rest.len() >= 6 {
        let (r, later) = rest.split_at(6);
        rest = later;
        pts = pts.wrapping_add(i64::from(i16::from_le_bytes([r[0], r[1]])) * 300);
        let dts = pts.wrapping_sub(i64::from(r[2] as i8) * 300);
        let (flags, len, seed) = (r[3], usize::from(r[4]) * 8, r[5]);
        let data: Vec<u8> = if flags & 8 != 0 {
            let (raw, later) = rest.split_at(len.min(rest.len()));
            rest = later;
            raw.to_vec()
        } else if audio {
            vec![seed; len]
        } else {
            // One or two NAL units; content bytes kept off 0 so that no start code appears inside.
            let mut d = Vec::new();
            for (i, l) in [len / 2 + 1, len / 3].into_iter().enumerate() {
                d.extend_from_slice(&(l as u32).to_be_bytes());
                d.extend(
                    (0..l).map(|k| if k == 0 { seed ^ (i as u8) } else { (seed.wrapping_add(k as u8) | 1).max(1) }),
                );
            }
            d
        };
        let keyframe = audio || flags & 1 != 0;
        samples.push(TsSample { pts, dts: if audio { pts } else { dts }, keyframe, data: Bytes::from(data) });
        if flags & 2 != 0 {
            tags.push((pts.wrapping_add(i64::from(seed) * 100), Bytes::from(vec![seed; usize::from(seed)])));
        }
        if flags & 4 == 0 && !rest.is_empty() {
            continue;
        }
        let part: Vec<u8> = writer.write(&samples, &tags).iter().flat_map(|c| c.iter().copied()).collect();
        let pes = read_part(&part, &mut cc);
        let (es, id3): (Vec<&Pes>, Vec<&Pes>) = pes.iter().partition(|p| p.pid == ES_PID);
        // (No frame here is too long for an ADTS header, which would be dropped.)
        assert_eq!(es.len(), samples.len(), "one PES per sample");
        for (p, s) in es.iter().zip(&samples) {
            let wrap = |t: i64| t.rem_euclid(MODULUS) as u64;
            assert_eq!(p.pts, wrap(s.pts), "PTS");
            assert_eq!(p.dts.unwrap_or(p.pts), wrap(s.dts), "DTS");
            assert_eq!(p.pcr, Some(wrap(s.dts)), "PCR = DTS");
            assert_eq!(p.random_access, s.keyframe, "random_access_indicator");
            if audio {
                assert_eq!(p.stream_id, 0xC0);
                let h = &p.payload;
                assert_eq!((h[0], h[1] & 0xF6), (0xFF, 0xF0), "ADTS sync, MPEG-4, layer 0");
                assert_eq!(h[1] & 1, 1, "no CRC");
                assert_eq!((h[2] >> 6, (h[2] >> 2) & 0xF), (1, 3), "AAC LC at 48 kHz");
                assert_eq!(((h[2] & 1) << 2) | (h[3] >> 6), 2, "two channels");
                let frame_length = (usize::from(h[3] & 3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
                assert_eq!(frame_length, 7 + s.data.len(), "ADTS frame_length");
                assert_eq!(&h[7..], &s.data[..], "the AAC frame");
            } else {
                assert_eq!(p.stream_id, 0xE0);
                assert_eq!(p.payload, annex_b(&s.data, s.keyframe, &parameter_sets), "the access unit");
            }
        }
        // Tags: one PES each at its PTS, ahead of the first sample presented at or after it.
        let mut placed: Vec<(usize, &(i64, Bytes))> =
            tags.iter().map(|t| (samples.iter().position(|s| s.pts >= t.0).unwrap_or(samples.len()), t)).collect();
        placed.sort_by_key(|p| p.0);
        assert_eq!(id3.len(), placed.len(), "one PES per tag");
        for (p, (_, (at, tag))) in id3.iter().zip(&placed) {
            assert_eq!((p.stream_id, p.pts, p.dts), (0xBD, at.rem_euclid(MODULUS) as u64, None), "ID3 PES header");
            assert_eq!(&p.payload[..], &tag[..], "the ID3 tag");
        }
        let order: Vec<usize> = {
            let mut before = 0;
            pes.iter()
                .filter_map(|p| {
                    if p.pid == ES_PID {
                        before += 1;
                        None
                    } else {
                        Some(before)
                    }
                })
                .collect()
        };
        assert_eq!(order, placed.iter().map(|p| p.0).collect::<Vec<_>>(), "each tag ahead of its sample");
        samples.clear();
        tags.clear();
    }
});
