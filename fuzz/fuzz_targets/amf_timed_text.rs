//! A publisher's AMF0 data message (`onTextData`, `onCuePoint`) as the daemon meets it: through
//! the chunk guard (which refuses AMF0 nested too deep for rml_amf0's recursion), then read as
//! timed text. Never panics, and what it makes of one is JSON.
#![no_main]

use ladderd::ingest::chunk_guard::{ChunkGuard, timed_text_payload};
use libfuzzer_sys::fuzz_target;

/// An AMF0 data message (type 18) on chunk stream 3, in chunks of the default 128 bytes.
fn data_message(payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![3, 0, 0, 0, (len >> 16) as u8, (len >> 8) as u8, len as u8, 18, 1, 0, 0, 0];
    for (i, chunk) in payload.chunks(128).enumerate() {
        if i > 0 {
            out.push(0xC3);
        }
        out.extend_from_slice(chunk);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 1 << 16 {
        return;
    }
    let mut guard = ChunkGuard::new();
    if guard.check(&data_message(data)).is_err() {
        return;
    }
    for message in guard.take_timed_text() {
        if let Some(payload) = timed_text_payload(&message) {
            serde_json::from_slice::<serde_json::Value>(&payload).expect("timed text is JSON");
        }
    }
});
