//! Differential: the same client chunk stream (after the handshake) goes to the chunk guard and,
//! wherever the guard lets it through, to rml_rtmp's server session, as a connection does. The
//! guard exists to stop what rml_rtmp cannot take, so this fails when rml_rtmp panics on bytes the
//! guard passed, or makes one allocation larger than the message the guard allowed could need
//! (rml_rtmp reserves a message's announced length on its first chunk).
//!
//! `connect` and `publish` are accepted as the daemon accepts them, so that the guard's limits
//! after a publish are tried too. The first byte is the count of split sizes that follow (how a
//! socket delivers the rest, as in `chunk_guard`); each piece reaches the session in the slices a
//! connection hands it.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ladderd::ingest::chunk_guard::ChunkGuard;
use ladderd::ingest::rtmp::SESSION_INPUT_SLICE;
use libfuzzer_sys::fuzz_target;
use rml_rtmp::sessions::{ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult};

/// Records the largest single allocation since it was last reset.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a size is recorded.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above, for `dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above, for `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// The guard's largest message before a publish (rtmp.max_message_before_publish's default) and
/// after it (media).
const BEFORE_PUBLISH: usize = 16 * 1024;
const MEDIA: usize = 8 * 1024 * 1024;

fuzz_target!(|input: &[u8]| {
    let Some((&count, rest)) = input.split_first() else { return };
    let count = usize::from(count % 8).min(rest.len());
    let (pieces, mut data) = rest.split_at(count);

    let mut guard = ChunkGuard::new();
    let config = ServerSessionConfig::new();
    let Ok((mut session, _)) = ServerSession::new(config) else { return };
    let mut published = false;
    let mut sizes = pieces.iter().cycle();
    while !data.is_empty() {
        let n = match sizes.next().copied().unwrap_or(0) {
            0 => data.len(),
            n => usize::from(n).min(data.len()),
        };
        let (piece, later) = data.split_at(n);
        data = later;
        if guard.check(piece).is_err() {
            return;
        }
        let _ = guard.take_timed_text();
        let limit = if published { MEDIA } else { BEFORE_PUBLISH };
        // As a connection hands a read to the session: in slices.
        for slice in piece.chunks(SESSION_INPUT_SLICE) {
            LARGEST.store(0, Ordering::Relaxed);
            let Ok(results) = session.handle_input(slice) else { return };
            let largest = LARGEST.load(Ordering::Relaxed);
            // On top of the message: the input buffer (grown by doubling), the results of one
            // slice (a message per byte at most, grown by doubling), what a message decodes to,
            // the session's own buffers. 16 MiB, what a chunk header can announce, stays out of
            // reach either way.
            let results_bound = 2 * SESSION_INPUT_SLICE * std::mem::size_of::<ServerSessionResult>();
            let bound = limit + 2 * input.len() + results_bound + 96 * 1024;
            assert!(
                largest <= bound,
                "rml_rtmp allocated {largest} bytes at once on input the guard passed (bound {bound})"
            );
            for result in results {
                let ServerSessionResult::RaisedEvent(event) = result else { continue };
                let accept = match event {
                    ServerSessionEvent::ConnectionRequested { request_id, .. } => Some(request_id),
                    ServerSessionEvent::PublishStreamRequested { request_id, .. } => {
                        published = true;
                        guard.publishing();
                        Some(request_id)
                    }
                    _ => None,
                };
                if let Some(id) = accept
                    && session.accept_request(id).is_err()
                {
                    return;
                }
            }
        }
    }
});
