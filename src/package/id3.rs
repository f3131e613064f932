//! ID3v2.4 tags for timed metadata (ID3 tag version 2.4.0, "Main Structure" and "Native Frames"):
//! one `TXXX` (user-defined text) frame carrying the payload, which is what HLS players expect in
//! timed-ID3 streams and `emsg` boxes (Apple, "Timed Metadata for HTTP Live Streaming").

use bytes::{BufMut, Bytes, BytesMut};

/// Largest value a 28-bit syncsafe integer holds (ID3v2.4 §6.2).
const SYNCSAFE_MAX: usize = (1 << 28) - 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Id3Error {
    #[error("ID3 frame of {0} bytes is larger than a syncsafe size can say")]
    TooLarge(usize),
    #[error("a TXXX description cannot contain a NUL character")]
    NulInDescription,
}

/// A tag with one `TXXX` frame: UTF-8 encoding, `description`, then `value` as it is.
pub fn txxx_tag(description: &str, value: &[u8]) -> Result<Bytes, Id3Error> {
    if description.as_bytes().contains(&0) {
        return Err(Id3Error::NulInDescription);
    }
    // §4.2.6: text encoding byte, description, its terminator, then the value.
    let body_len = 1 + description.len() + 1 + value.len();
    if body_len > SYNCSAFE_MAX {
        return Err(Id3Error::TooLarge(body_len));
    }
    let frames_len = 10 + body_len;
    if frames_len > SYNCSAFE_MAX {
        return Err(Id3Error::TooLarge(frames_len));
    }
    let mut out = BytesMut::with_capacity(10 + frames_len);
    // §3.1 header: "ID3", version 4.0, no flags, syncsafe size of everything after the header.
    out.put_slice(b"ID3");
    out.put_slice(&[4, 0, 0]);
    out.put_slice(&syncsafe(frames_len));
    // §4.1 frame header: id, syncsafe size of the body (v2.4 frame sizes are syncsafe), no flags.
    out.put_slice(b"TXXX");
    out.put_slice(&syncsafe(body_len));
    out.put_slice(&[0, 0]);
    // §4.2: encoding $03 is UTF-8.
    out.put_u8(3);
    out.put_slice(description.as_bytes());
    out.put_u8(0);
    out.put_slice(value);
    Ok(out.freeze())
}

/// A 28-bit value as four bytes of seven bits each (§6.2).
fn syncsafe(v: usize) -> [u8; 4] {
    [((v >> 21) & 0x7f) as u8, ((v >> 14) & 0x7f) as u8, ((v >> 7) & 0x7f) as u8, (v & 0x7f) as u8]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_tag_byte_for_byte() {
        let tag = txxx_tag("", b"{\"type\":\"coupon\"}").expect("tag");
        let mut want = b"ID3\x04\x00\x00".to_vec();
        // 10-byte frame header + 1 + 0 + 1 + 17 = 29 = 0x1d.
        want.extend_from_slice(&[0, 0, 0, 29]);
        want.extend_from_slice(b"TXXX");
        want.extend_from_slice(&[0, 0, 0, 19, 0, 0, 3, 0]);
        want.extend_from_slice(b"{\"type\":\"coupon\"}");
        assert_eq!(&tag[..], &want[..]);
    }

    #[test]
    fn sizes_over_127_are_syncsafe() {
        // A 1 KB payload (the API's limit) with a description: body 1 + 7 + 1 + 1024 = 1033.
        let tag = txxx_tag("ladderd", &[b'x'; 1024]).expect("tag");
        assert_eq!(syncsafe(1033), [0, 0, 8, 9]);
        assert_eq!(&tag[6..10], &syncsafe(1043));
        assert_eq!(&tag[14..18], &[0, 0, 8, 9]);
        assert_eq!(tag.len(), 10 + 10 + 1033);
        assert!(tag[6..10].iter().chain(&tag[14..18]).all(|b| b & 0x80 == 0), "no byte has its top bit set");
    }

    #[test]
    fn descriptions_with_nul_are_refused() {
        assert_eq!(txxx_tag("a\0b", b"x"), Err(Id3Error::NulInDescription));
    }
}
