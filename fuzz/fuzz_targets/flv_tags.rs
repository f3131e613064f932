//! FLV tag bodies of one publish, video and audio, in any order: each body is a byte of kind
//! (low bit: audio or video), two bytes of length, then the body. Parsing never panics, and every
//! forwarded video frame is NAL units with 4-byte lengths that run exactly to its end.
#![no_main]

use bytes::Bytes;
use ladderd::ingest::flv::{self, VideoDemuxer, VideoTag};
use ladderd::media::avc::LengthPrefixedNals;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut video = VideoDemuxer::new();
    let mut rest = input;
    while let [kind, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        let body = Bytes::copy_from_slice(body);
        if kind & 1 == 1 {
            let _ = flv::parse_audio(body);
            continue;
        }
        if let Ok(VideoTag::Frame { data, .. }) = video.parse(body) {
            assert!(!data.is_empty(), "an empty frame is forwarded");
            for nal in LengthPrefixedNals::new(&data, 4) {
                let nal = nal.expect("a forwarded frame walks to its end");
                assert!(!nal.is_empty(), "an empty NAL unit is forwarded");
            }
        }
    }
});
