//! The timed-metadata ID3 writer: any payload is a well-formed ID3v2.4 tag (its size field, a
//! syncsafe integer, counts every byte after the header) or a clear error.
#![no_main]

use ladderd::package::id3::txxx_tag;
use libfuzzer_sys::fuzz_target;

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
});
