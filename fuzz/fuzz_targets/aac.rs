//! AudioSpecificConfig parsing. Nothing panics; what parses states a usable stream, and its core
//! config (what ADTS headers repeat) reads too.
#![no_main]

use bytes::Bytes;
use ladderd::media::aac;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let core = aac::core_config(data);
    if let Ok(params) = aac::parse_asc(Bytes::copy_from_slice(data)) {
        assert!(params.sample_rate > 0 && params.channels > 0, "{params:?}");
        assert!(matches!(params.frame_samples, 960 | 1024 | 1920 | 2048), "{params:?}");
        assert!(params.codec.starts_with("mp4a.40."), "{}", params.codec);
        let core = core.expect("a config that parses has a core");
        assert!(core.sampling_frequency > 0);
    }
});
