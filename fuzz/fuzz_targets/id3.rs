//! The timed-metadata writers: any payload is a well-formed ID3v2.4 tag (its size field, a
//! syncsafe integer, counts every byte after the header) or a clear error, and the `emsg` box
//! that carries it in fMP4 reads back (version 1, the ID3 scheme, its time, id and the tag).
#![no_main]

use ladderd::package::fmp4::{ID3_SCHEME, id3_emsg};
use ladderd::package::id3::txxx_tag;
use libfuzzer_sys::fuzz_target;
use mp4_atom::{Any, Decode, EmsgTimestamp};

fuzz_target!(|data: &[u8]| {
    let split = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
    let (description, value) = data.split_at(split);
    let Ok(description) = std::str::from_utf8(description) else { return };
    let Ok(tag) = txxx_tag(description, value) else { return };
    assert!(tag.len() >= 10 && &tag[..3] == b"ID3" && tag[3] == 4, "{:?}", &tag[..tag.len().min(10)]);
    let size = tag[6..10].iter().fold(0usize, |n, &b| {
        assert!(b < 0x80, "size is not syncsafe");
        (n << 7) | usize::from(b)
    });
    assert_eq!(size, tag.len() - 10);

    // A time and an id from the value's bytes, a timescale that is never 0.
    let word = |at: usize| value.iter().skip(at).take(8).fold(0u64, |n, &b| (n << 8) | u64::from(b));
    let (time, id, timescale) = (word(0), word(8) as u32, (word(12) as u32).max(1));
    let emsg = id3_emsg(timescale, time, id, &tag).expect("an emsg for any tag the writer made");
    let mut buf: &[u8] = &emsg;
    let Any::Emsg(read) = Any::decode(&mut buf).expect("the emsg reads back") else { panic!("an emsg box") };
    assert!(buf.is_empty(), "one box");
    assert_eq!(read.presentation_time, EmsgTimestamp::Absolute(time));
    assert_eq!((read.timescale, read.id, read.event_duration), (timescale, id, 0));
    assert_eq!((read.scheme_id_uri.as_str(), read.value.as_str()), (ID3_SCHEME, ""));
    assert_eq!(read.message_data, tag.to_vec());
});
