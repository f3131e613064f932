//! H.264 parameter parsing: an SPS, an avcC record, Annex B. Nothing panics; what parses agrees
//! with itself (a record built from parsed parameter sets parses back; Annex B converted to
//! length-prefixed NAL units walks to its end).
#![no_main]

use bytes::Bytes;
use ladderd::media::avc::{self, LengthPrefixedNals};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sps) = avc::parse_sps(data) {
        assert!(sps.width > 0 && sps.height > 0, "{sps:?}");
        let codec = avc::codec_string(&sps);
        assert!(codec.starts_with("avc1.") && codec.len() == 11, "{codec}");
    }
    if let Ok(record) = avc::parse_avcc(data) {
        assert!(matches!(record.length_size, 1 | 2 | 4), "{}", record.length_size);
        if let Ok(params) = avc::params_from_avcc(Bytes::copy_from_slice(data)) {
            let again = avc::parse_avcc(&params.avcc).expect("the canonical record parses");
            assert_eq!(again.length_size, 4);
        }
    }
    let _ = avc::params_from_annexb(data);
    let converted = avc::annexb_to_length_prefixed(data);
    for nal in LengthPrefixedNals::new(&converted, 4) {
        nal.expect("converted Annex B walks to its end");
    }
    for _ in LengthPrefixedNals::new(data, 1 + usize::from(data.first().copied().unwrap_or(0) % 4)) {}
});
