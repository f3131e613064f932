//! The RTMP chunk guard over a client's chunk stream (after the handshake), read as a socket
//! would deliver it: in pieces. The guard must never panic, and its verdict and the timed text
//! it picks out must not depend on how the bytes were split. The split byte's top bit says
//! whether the publish was accepted (large media allowed) or not (every message small).
#![no_main]

use ladderd::ingest::chunk_guard::ChunkGuard;
use libfuzzer_sys::fuzz_target;

/// Feeds `data` in pieces of the given sizes (cycled; 0 means the rest); the verdict and the
/// timed text.
fn run(data: &[u8], pieces: &[u8], publishing: bool) -> (Result<(), String>, Vec<Vec<u8>>) {
    let mut guard = ChunkGuard::new();
    if publishing {
        guard.publishing();
    }
    let mut texts = Vec::new();
    let mut rest = data;
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let n = match sizes.next().copied().unwrap_or(0) {
            0 => rest.len(),
            n => usize::from(n).min(rest.len()),
        };
        let (now, later) = rest.split_at(n);
        rest = later;
        if let Err(e) = guard.check(now) {
            return (Err(e.to_string()), texts);
        }
        texts.extend(guard.take_timed_text());
    }
    (Ok(()), texts)
}

fuzz_target!(|input: &[u8]| {
    // The first bytes say how a socket splits the rest.
    let Some((&count, rest)) = input.split_first() else { return };
    let publishing = count & 0x80 != 0;
    let count = usize::from(count % 8).min(rest.len());
    let (pieces, data) = rest.split_at(count);
    let whole = run(data, &[], publishing);
    let split = run(data, pieces, publishing);
    assert_eq!(whole, split, "the verdict depends on how the stream was split ({pieces:?})");
});
