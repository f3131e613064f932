//! The only `unsafe` of the crate: the few FFmpeg facts that `ffmpeg-next` does not wrap.
//!
//! Every unsafe block does one operation and says why it is sound (both lints below enforce it,
//! for every file of this module).
#![deny(clippy::undocumented_unsafe_blocks, clippy::multiple_unsafe_ops_per_block)]

pub mod averror;
pub mod hw;
pub mod hwctx;
pub mod log;
pub mod scale_graph;

use std::sync::Once;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::ffi as sys;
use ffmpeg_next::{codec, frame};

/// The AVFrame a frame owns, valid for as long as the frame lives and is not replaced.
/// ffmpeg-next marks the accessor `unsafe` for what may be done with the pointer; taking it is
/// safe, and each use says why it is sound.
pub(crate) fn frame_ptr(frame: &frame::Video) -> *const sys::AVFrame {
    // SAFETY: `as_ptr` only returns the pointer the frame owns.
    unsafe { frame.as_ptr() }
}

/// [`frame_ptr`], for writing through: the caller holds the frame mutably.
pub(crate) fn frame_mut_ptr(frame: &mut frame::Video) -> *mut sys::AVFrame {
    // SAFETY: `as_mut_ptr` only returns the pointer the frame owns.
    unsafe { frame.as_mut_ptr() }
}

/// The AVCodec a codec handle refers to (a static description of the codec).
pub(crate) fn codec_ptr(codec: &ffmpeg::Codec) -> *const sys::AVCodec {
    // SAFETY: `as_ptr` only returns the pointer of the static AVCodec.
    unsafe { codec.as_ptr() }
}

/// Why an FFmpeg call failed, with the operation it was.
#[derive(Debug, thiserror::Error)]
pub enum FfiError {
    #[error("out of memory allocating {0} bytes of codec extradata")]
    NoMemory(usize),
    #[error("codec extradata of {0} bytes is larger than FFmpeg accepts")]
    TooLarge(usize),
}

/// Initialises FFmpeg once per process and quiets its logging: libx264 and the decoders
/// print informational lines per stream on stderr, which a daemon must not do. Errors still pass.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if let Err(e) = ffmpeg::init() {
            tracing::warn!(error = %e, "FFmpeg initialisation reported an error");
        }
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    });
}

/// Sets a codec context's extradata (for H.264 decoders: the avcC record, which makes the decoder
/// expect length-prefixed NAL units). Must be called before the codec is opened.
pub fn set_extradata(ctx: &mut codec::Context, data: &[u8]) -> Result<(), FfiError> {
    let padded = data.len() + sys::AV_INPUT_BUFFER_PADDING_SIZE as usize;
    let size = i32::try_from(data.len()).map_err(|_| FfiError::TooLarge(data.len()))?;
    // SAFETY: av_mallocz has no preconditions; it returns null or a zeroed block of `padded` bytes.
    let buf = unsafe { sys::av_mallocz(padded) } as *mut u8;
    if buf.is_null() {
        return Err(FfiError::NoMemory(padded));
    }
    // SAFETY: `buf` holds `padded` ≥ `data.len()` bytes and cannot overlap `data`, a Rust slice.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len()) };
    // SAFETY: `ctx` owns a valid AVCodecContext for its lifetime; we hold it mutably.
    let raw = unsafe { ctx.as_mut_ptr() };
    // SAFETY: `raw` is valid (above); taking the address of one field, not reading it.
    let old = unsafe { &raw mut (*raw).extradata };
    // SAFETY: any previous extradata was allocated by FFmpeg with av_malloc (or is null);
    // av_freep frees it and nulls the field.
    unsafe { sys::av_freep(old.cast::<std::ffi::c_void>()) };
    // SAFETY: `raw` is valid; from here the context owns `buf` (avcodec_free_context frees it
    // with av_freep), as libavcodec requires for extradata.
    unsafe { (*raw).extradata = buf };
    // SAFETY: `raw` is valid; a plain field write, `size` is the length of the copy above.
    unsafe { (*raw).extradata_size = size };
    Ok(())
}

/// A copy of a codec context's extradata (for libx264 opened with the global-header flag: the
/// SPS and PPS in Annex B form).
pub fn extradata(ctx: &codec::Context) -> Vec<u8> {
    // SAFETY: `ctx` owns a valid AVCodecContext for its lifetime.
    let raw = unsafe { ctx.as_ptr() };
    // SAFETY: `raw` is valid; reading a plain field.
    let ptr = unsafe { (*raw).extradata };
    // SAFETY: as above.
    let size = unsafe { (*raw).extradata_size };
    if ptr.is_null() || size <= 0 {
        return Vec::new();
    }
    // SAFETY: libavcodec guarantees `extradata` points at `extradata_size` initialised bytes,
    // which live as long as the context and are not written while we hold `&ctx`.
    unsafe { std::slice::from_raw_parts(ptr, size as usize) }.to_vec()
}

/// A decoded picture shared read-only by the rung threads that scale it (or, on the GPU path, one
/// rung's own scaled picture).
pub struct SharedFrame(ffmpeg::frame::Video);

impl SharedFrame {
    pub fn new(frame: ffmpeg::frame::Video) -> Self {
        Self(frame)
    }

    pub fn frame(&self) -> &ffmpeg::frame::Video {
        &self.0
    }
}

// SAFETY: an AVFrame is plain memory (pointers to refcounted data buffers and scalar fields).
// `SharedFrame` gives out only `&frame::Video`, and everything reachable through `&` in
// ffmpeg-next's frame API reads; so do the uses in `hwctx` that take `&frame::Video`: swscale,
// av_frame_ref (reads the frame, and takes buffer references, whose counts are atomic) and
// av_hwframe_transfer_data (reads the source). So threads that share a `SharedFrame` only ever
// read it concurrently, and the frame is dropped (its buffers unreferenced) by whichever thread
// holds the last `Arc`, which `Send` (ffmpeg-next) allows.
unsafe impl Sync for SharedFrame {}

/// Whether the NVIDIA driver library (libcuda) can be loaded on this machine. Probed once.
pub fn cuda_driver_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: loading a shared library runs its initialisers; libcuda's are the NVIDIA
        // driver's own and expect exactly this (dlopen by a CUDA client). The library is unloaded
        // again when the probe's handle drops, and no symbol from it is called here.
        unsafe { cudarc::driver::sys::is_culib_present() }
    })
}
