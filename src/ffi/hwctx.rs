//! Hardware contexts and hardware frames as libavutil/hwcontext.h defines them, each owned by a
//! Rust value: a CUDA device context ([`HwDevice`]), a frames context ([`HwFrames`]), a decoder
//! that asks for hardware frames through `get_format` ([`HwDecoder`]), and the frame operations
//! the GPU path needs (download, upload, a new reference to a frame).
//!
//! Reference counting is FFmpeg's: an `AVBufferRef` is one reference, `av_buffer_ref` makes another
//! and `av_buffer_unref` drops one. Each value here owns exactly one reference and drops it exactly
//! once, in `Drop`; frames are `ffmpeg_next::frame::Video`, whose `Drop` calls `av_frame_free`.
#![deny(clippy::undocumented_unsafe_blocks, clippy::multiple_unsafe_ops_per_block)]

use std::ffi::{CString, c_int, c_void};
use std::ops::{Deref, DerefMut};
use std::ptr::{self, NonNull};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use ffmpeg_next as ffmpeg;
use ffmpeg_next::ffi as sys;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::util::error::EINVAL;
use ffmpeg_next::{Dictionary, codec, frame};

use super::averror::{error_text, nvidia_hint};
use super::{codec_ptr, frame_mut_ptr, frame_ptr};

/// A hardware operation that failed, as one sentence: what was tried, FFmpeg's error, and a hint
/// where FFmpeg's NVIDIA code only logs the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HwError(pub String);

impl HwError {
    fn code(what: &str, code: c_int) -> Self {
        Self(format!("{what} failed: {}", error_text(code)))
    }
}

/// A CUDA device context (`AVHWDeviceContext` of type `AV_HWDEVICE_TYPE_CUDA`), as the decoder,
/// `scale_cuda` and `h264_nvenc` share it. Dropping it releases this reference; the context lives
/// on while a codec, filter or frame still holds one.
pub struct HwDevice {
    buf: NonNull<sys::AVBufferRef>,
}

// SAFETY: an AVBufferRef reference count is atomic (libavutil/buffer.h), and an
// AVHWDeviceContext is not modified after av_hwdevice_ctx_create returns it initialised
// (libavutil/hwcontext.h); hwcontext_cuda pushes its CUDA context around each use, and CUDA
// contexts may be used from any thread. So the reference may move to, and be read from, any thread.
unsafe impl Send for HwDevice {}
// SAFETY: see `Send`; `&HwDevice` only reads the context or takes a new reference to it.
unsafe impl Sync for HwDevice {}

impl HwDevice {
    /// The process's CUDA device context on GPU `gpu` (the CUDA device ordinal, which is also what
    /// the `gpu` option of h264_nvenc and h264_cuvid means), shared by every decoder, scaling graph
    /// and encoder there: one CUDA context per GPU instead of one per channel and rung (each
    /// context costs GPU memory and a context switch). It is the device's primary context
    /// (`primary_ctx=1`, libavutil/hwcontext_cuda.c), the one the CUDA runtime and other
    /// libraries in the process use too. Made on first use; a failure is not kept, so a GPU
    /// that comes back is used again.
    pub fn cuda_shared(gpu: u32) -> Result<Self, HwError> {
        static DEVICES: Mutex<Vec<(u32, HwDevice)>> = Mutex::new(Vec::new());
        let mut devices = crate::sync::lock(&DEVICES);
        if let Some((_, d)) = devices.iter().find(|(g, _)| *g == gpu) {
            return d.new_ref();
        }
        // hwcontext_cuda.c reads the device string with strtol: the ordinal in decimal.
        let device = Self::create_with(
            sys::AVHWDeviceType::AV_HWDEVICE_TYPE_CUDA,
            Some(&gpu.to_string()),
            &[("primary_ctx", "1")],
        )
        .map_err(|code| {
            HwError(format!("creating a CUDA device on GPU {gpu} failed: {}{}", error_text(code), nvidia_hint(None)))
        })?;
        let shared = device.new_ref()?;
        devices.push((gpu, device));
        Ok(shared)
    }

    /// Another reference to the same device context.
    pub fn new_ref(&self) -> Result<Self, HwError> {
        // SAFETY: `self.buf` is a live reference; av_buffer_ref returns a new one (or null on
        // allocation failure), which the new value owns.
        let raw = unsafe { sys::av_buffer_ref(self.buf.as_ptr()) };
        NonNull::new(raw)
            .map(|buf| HwDevice { buf })
            .ok_or_else(|| HwError("referencing a device: out of memory".into()))
    }

    /// A Vulkan device on the first Vulkan implementation found (Mesa's software one, lavapipe,
    /// on machines without a GPU): a real hardware device for testing the hardware-frames code
    /// (contexts, transfers, graphs with hardware input) where there is no CUDA.
    #[cfg(test)]
    pub(crate) fn vulkan() -> Result<Self, HwError> {
        Self::create_with(sys::AVHWDeviceType::AV_HWDEVICE_TYPE_VULKAN, None, &[])
            .map_err(|code| HwError(format!("creating a Vulkan device failed: {}", error_text(code))))
    }

    /// av_hwdevice_ctx_create with device-type options (e.g. CUDA's `primary_ctx`); the FFmpeg
    /// error code on failure.
    fn create_with(kind: sys::AVHWDeviceType, device: Option<&str>, options: &[(&str, &str)]) -> Result<Self, c_int> {
        super::init();
        let device = device.map(CString::new).transpose().map_err(|_| sys::AVERROR(EINVAL))?;
        let mut opts = ffmpeg::Dictionary::new();
        for (k, v) in options {
            opts.set(k, v);
        }
        // SAFETY: disown hands over the AVDictionary (null when empty); it is ours to free after
        // the call, which only reads it (libavutil/hwcontext.h).
        let mut opts = unsafe { opts.disown() };
        let mut raw: *mut sys::AVBufferRef = ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; `device` is null or a NUL-terminated string that
        // lives across the call; `opts` is null or a dictionary we own; flags 0
        // (libavutil/hwcontext.h). On success `raw` holds a new reference that we own; on failure
        // it is left null.
        let ret = unsafe {
            sys::av_hwdevice_ctx_create(&mut raw, kind, device.as_ref().map_or(ptr::null(), |d| d.as_ptr()), opts, 0)
        };
        // SAFETY: `opts` came from Dictionary::disown (null when empty), freed once here.
        unsafe { sys::av_dict_free(&mut opts) };
        if ret < 0 {
            return Err(ret);
        }
        NonNull::new(raw).map(|buf| HwDevice { buf }).ok_or(sys::AVERROR_BUG)
    }

    pub(super) fn raw(&self) -> *mut sys::AVBufferRef {
        self.buf.as_ptr()
    }

    /// The pixel format of this device's frames (`AV_PIX_FMT_CUDA` for CUDA).
    fn frame_format(&self) -> Result<sys::AVPixelFormat, HwError> {
        // SAFETY: the reference is live; reading its data pointer.
        let ctx = unsafe { (*self.buf.as_ptr()).data.cast::<sys::AVHWDeviceContext>() };
        // SAFETY: a device reference's data is the initialised AVHWDeviceContext
        // (libavutil/hwcontext.h); reading its type.
        let kind = unsafe { (*ctx).type_ };
        match kind {
            sys::AVHWDeviceType::AV_HWDEVICE_TYPE_CUDA => Ok(sys::AVPixelFormat::AV_PIX_FMT_CUDA),
            sys::AVHWDeviceType::AV_HWDEVICE_TYPE_VULKAN => Ok(sys::AVPixelFormat::AV_PIX_FMT_VULKAN),
            other => Err(HwError(format!("frames of a {other:?} device are not supported"))),
        }
    }
}

impl Drop for HwDevice {
    fn drop(&mut self) {
        let mut raw = self.buf.as_ptr();
        // SAFETY: `raw` is the one reference this value owns, released exactly once here (the
        // value is being dropped); av_buffer_unref frees the context when it was the last
        // reference and nulls our local copy of the pointer.
        unsafe { sys::av_buffer_unref(&mut raw) };
    }
}

/// A hardware frames context (`AVHWFramesContext`): a pool of frames of one size and one
/// software layout (`sw_format`, e.g. NV12) on one device. Decoders, `scale_cuda` and the
/// encoders fed by it each hold a reference; so does every frame from the pool.
pub struct HwFrames {
    buf: NonNull<sys::AVBufferRef>,
}

// SAFETY: as for `HwDevice`: the reference count is atomic, and libavutil/hwcontext.h forbids
// changing a frames context after av_hwframe_ctx_init, so sharing it between threads only ever
// reads it. Its frame pool (av_buffer_pool) is thread-safe.
unsafe impl Send for HwFrames {}
// SAFETY: see `Send`; `&HwFrames` only reads the context or takes a new reference to it.
unsafe impl Sync for HwFrames {}

impl HwFrames {
    /// Allocates and initialises a frames context of `sw_format` pictures of `width`×`height` on
    /// `device` (av_hwframe_ctx_alloc, then av_hwframe_ctx_init). The pool grows on demand.
    pub fn alloc(device: &HwDevice, sw_format: Pixel, width: u32, height: u32) -> Result<Self, HwError> {
        let (w, h) = dimensions(width, height)?;
        let format = device.frame_format()?;
        // SAFETY: `device` holds a live reference to an initialised device context, which is all
        // av_hwframe_ctx_alloc needs; it returns a new reference, or null on failure.
        let raw = unsafe { sys::av_hwframe_ctx_alloc(device.raw()) };
        // From here `frames` owns the reference, so every early return below releases it.
        let frames = NonNull::new(raw)
            .map(|buf| HwFrames { buf })
            .ok_or_else(|| HwError("allocating a frames context failed: out of memory".into()))?;
        let ctx = frames.context_mut();
        // SAFETY: `ctx` points at the AVHWFramesContext the new reference owns; it is not yet
        // initialised and nobody else holds it, so its public fields may be written
        // (libavutil/hwcontext.h: set them between alloc and init).
        unsafe { (*ctx).format = format };
        // SAFETY: as above.
        unsafe { (*ctx).sw_format = sw_format.into() };
        // SAFETY: as above.
        unsafe { (*ctx).width = w };
        // SAFETY: as above.
        unsafe { (*ctx).height = h };
        // SAFETY: the reference is live and the fields above are set, as av_hwframe_ctx_init requires.
        let ret = unsafe { sys::av_hwframe_ctx_init(frames.raw()) };
        if ret < 0 {
            return Err(HwError::code("initialising a frames context", ret));
        }
        Ok(frames)
    }

    /// A new reference to the frames context `raw` refers to, or `None` for null.
    ///
    /// # Safety
    /// `raw` is null or a live `AVBufferRef` to an `AVHWFramesContext`, not freed during the call.
    pub(crate) unsafe fn from_borrowed(raw: *const sys::AVBufferRef) -> Option<Self> {
        if raw.is_null() {
            return None;
        }
        // SAFETY: the caller guarantees `raw` is a live reference; av_buffer_ref only reads it and
        // returns a new reference (null on allocation failure), which we then own.
        NonNull::new(unsafe { sys::av_buffer_ref(raw) }).map(|buf| HwFrames { buf })
    }

    /// The frames context a hardware frame belongs to (`AVFrame.hw_frames_ctx`), or `None` for a
    /// frame in system memory.
    pub fn of_frame(frame: &frame::Video) -> Option<Self> {
        // SAFETY: `frame` owns a valid AVFrame for its lifetime; reading one pointer field.
        let raw = unsafe { (*frame_ptr(frame)).hw_frames_ctx };
        // SAFETY: a frame's hw_frames_ctx is null or a reference the frame holds while we borrow it.
        unsafe { Self::from_borrowed(raw) }
    }

    pub(super) fn raw(&self) -> *mut sys::AVBufferRef {
        self.buf.as_ptr()
    }

    fn context(&self) -> *const sys::AVHWFramesContext {
        self.context_mut()
    }

    fn context_mut(&self) -> *mut sys::AVHWFramesContext {
        // SAFETY: `buf` is a live reference; its `data` is the AVHWFramesContext
        // (libavutil/hwcontext.h: "the AVBufferRef data points to an AVHWFramesContext").
        unsafe { (*self.buf.as_ptr()).data.cast() }
    }

    /// The layout of the pictures in GPU memory (NV12 for 8-bit 4:2:0 from NVDEC).
    pub fn sw_format(&self) -> Pixel {
        // SAFETY: the context is initialised and not modified after init; reading a plain field.
        Pixel::from(unsafe { (*self.context()).sw_format })
    }

    /// The allocated size of the pool's frames (which may exceed the pictures' display size).
    pub fn size(&self) -> (u32, u32) {
        let ctx = self.context();
        // SAFETY: as in `sw_format`.
        let w = unsafe { (*ctx).width };
        // SAFETY: as in `sw_format`.
        let h = unsafe { (*ctx).height };
        (w.unsigned_abs(), h.unsigned_abs())
    }

    /// Whether both are references to the same frames context.
    pub fn same_context(&self, other: &HwFrames) -> bool {
        std::ptr::eq(self.context(), other.context())
    }
}

impl Drop for HwFrames {
    fn drop(&mut self) {
        let mut raw = self.buf.as_ptr();
        // SAFETY: the one reference this value owns, released exactly once, here.
        unsafe { sys::av_buffer_unref(&mut raw) };
    }
}

impl std::fmt::Debug for HwFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (w, h) = self.size();
        write!(f, "HwFrames({:?} {w}x{h})", self.sw_format())
    }
}

fn dimensions(width: u32, height: u32) -> Result<(c_int, c_int), HwError> {
    match (c_int::try_from(width), c_int::try_from(height)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(HwError(format!("{width}x{height} is not a picture size"))),
    }
}

/// Whether `frame` is in GPU memory (it has a hardware frames context).
pub fn is_hw_frame(frame: &frame::Video) -> bool {
    // SAFETY: `frame` owns a valid AVFrame; reading one pointer field.
    !unsafe { (*frame_ptr(frame)).hw_frames_ctx }.is_null()
}

/// A new frame referring to the same picture buffers as `src`, with its own properties (pts,
/// picture type), for a picture that others share read-only.
///
/// The source's side data is left out: encoders act on some of it (libx264 and NVENC write A53
/// captions and unregistered SEI from it), and a picture scaled on the CPU carries none, so a
/// rung's output does not depend on where it was scaled.
pub fn frame_ref(src: &frame::Video) -> Result<frame::Video, HwError> {
    let mut dst = frame::Video::empty();
    // SAFETY: `dst` is a freshly allocated, blank AVFrame and `src` a valid one; av_frame_ref
    // adds references to `src`'s buffers (and hw_frames_ctx) into `dst`, leaving `src` unchanged,
    // and leaves `dst` blank on failure. `dst` frees what it holds when dropped.
    let ret = unsafe { sys::av_frame_ref(frame_mut_ptr(&mut dst), frame_ptr(src)) };
    if ret < 0 {
        return Err(HwError::code("referencing a picture", ret));
    }
    strip_side_data(&mut dst);
    Ok(dst)
}

/// Removes every side data entry of a frame this code owns.
fn strip_side_data(frame: &mut frame::Video) {
    // SAFETY: `frame` owns a valid AVFrame for as long as it lives, and we hold it mutably.
    let raw = frame_mut_ptr(frame);
    loop {
        // SAFETY: `raw` is the frame's valid AVFrame; reading its side data count.
        if unsafe { (*raw).nb_side_data } <= 0 {
            break;
        }
        // SAFETY: as above; the array has at least one entry, so reading its first is in bounds.
        let entries = unsafe { (*raw).side_data };
        // SAFETY: `entries` is the frame's non-empty side data array (FFmpeg allocates it with
        // the count above); reading its first element.
        let first = unsafe { *entries };
        if first.is_null() {
            break;
        }
        // SAFETY: `first` is an entry of the frame's own side data array; reading its type.
        let kind = unsafe { (*first).type_ };
        // SAFETY: `raw` is the frame's AVFrame; av_frame_remove_side_data frees every entry of
        // `kind`, so the count falls each turn.
        unsafe { sys::av_frame_remove_side_data(raw, kind) };
    }
}

/// Copies a hardware frame into a new frame from `frames`' pool, on the device: for an encoder
/// opened on one frames context that is handed pictures of another of the same device, layout
/// and size (the decoder re-initialised and the scaling graph was rebuilt on new pools). The
/// picture's properties follow (colours, timestamps), its side data does not, as in
/// [`frame_ref`]. libavutil tries the source's device-to-device transfer, then the
/// destination's; CUDA's copies device memory to device memory on the device's stream (in order
/// with the encoder's work on the same device), others may refuse (`ENOSYS`).
pub fn copy_on_device(frames: &HwFrames, src: &frame::Video) -> Result<frame::Video, HwError> {
    let from = HwFrames::of_frame(src)
        .ok_or_else(|| HwError("copying a picture on the GPU failed: it is not in GPU memory".into()))?;
    // Pools are often larger than their pictures (scale_cuda and scale_npp align the pool to 32
    // lines and columns and give their frames the picture's size): the picture has to fit.
    let (pool_width, pool_height) = frames.size();
    if from.sw_format() != frames.sw_format() || src.width() > pool_width || src.height() > pool_height {
        return Err(HwError(format!(
            "copying a {:?} {}x{} picture into {frames:?} is not possible",
            from.sw_format(),
            src.width(),
            src.height()
        )));
    }
    let mut dst = pool_frame(frames)?;
    // The pool's frame comes at the pool's size; the copy is of the picture's (the transfer
    // copies the source's rows, each as wide as the narrower of the two pitches), and the encoder
    // reads the frame's size, which av_frame_copy_props does not carry.
    let raw = frame_mut_ptr(&mut dst);
    // SAFETY: `dst` owns a valid AVFrame; setting a plain field within the buffer's size.
    unsafe { (*raw).width = src.width() as i32 };
    // SAFETY: as above.
    unsafe { (*raw).height = src.height() as i32 };
    // SAFETY: both frames are hardware frames with buffers (checked and allocated above), of one
    // sw_format, the source no larger than the destination: av_hwframe_transfer_data's
    // hardware-to-hardware case.
    let ret = unsafe { sys::av_hwframe_transfer_data(frame_mut_ptr(&mut dst), frame_ptr(src), 0) };
    if ret < 0 {
        return Err(HwError(format!(
            "copying a picture between two GPU frame pools failed: {}{}",
            error_text(ret),
            nvidia_hint(None)
        )));
    }
    copy_props(&mut dst, src)?;
    strip_side_data(&mut dst);
    Ok(dst)
}

/// A frame from `frames`' pool (at the pool's size), holding a reference to the context.
fn pool_frame(frames: &HwFrames) -> Result<frame::Video, HwError> {
    let mut dst = frame::Video::empty();
    // SAFETY: `frames` is an initialised frames context and `dst` a blank frame; on success
    // av_hwframe_get_buffer gives `dst` a pool buffer and a reference to the context.
    let ret = unsafe { sys::av_hwframe_get_buffer(frames.raw(), frame_mut_ptr(&mut dst), 0) };
    if ret < 0 {
        return Err(HwError::code("taking a frame from the GPU frame pool", ret));
    }
    Ok(dst)
}

/// Copies `src`'s properties (timestamps, picture type, colours, side data) to `dst`: transfers
/// copy pixels only (libavutil/hwcontext.h).
fn copy_props(dst: &mut frame::Video, src: &frame::Video) -> Result<(), HwError> {
    // SAFETY: both are valid frames; av_frame_copy_props copies metadata fields and side data
    // into `dst`, which owns what it receives.
    let ret = unsafe { sys::av_frame_copy_props(frame_mut_ptr(dst), frame_ptr(src)) };
    if ret < 0 {
        return Err(HwError::code("copying a picture's properties", ret));
    }
    Ok(())
}

/// Copies a hardware frame into a new frame in system memory, in the frames context's
/// `sw_format` (av_hwframe_transfer_data into a blank frame picks the first format the device
/// can download to, which for CUDA is `sw_format`), at the frame's display size.
pub fn download(src: &frame::Video) -> Result<frame::Video, HwError> {
    if !is_hw_frame(src) {
        return Err(HwError("downloading a picture failed: it is not in GPU memory".into()));
    }
    let mut dst = frame::Video::empty();
    // SAFETY: `src` is a valid hardware frame (checked above) and `dst` a blank frame whose format
    // is AV_PIX_FMT_NONE, which libavutil/hwcontext.h allows: the function allocates `dst`'s
    // buffers itself. On failure `dst` is untouched and freed when dropped.
    let ret = unsafe { sys::av_hwframe_transfer_data(frame_mut_ptr(&mut dst), frame_ptr(src), 0) };
    if ret < 0 {
        return Err(HwError(format!(
            "downloading a picture from the GPU failed: {}{}",
            error_text(ret),
            nvidia_hint(None)
        )));
    }
    // The transfer copies pixels only (libavutil/hwcontext.h); timestamps, picture type and
    // colour properties follow with av_frame_copy_props, so that libx264 on the hybrid path
    // signals the source's colours as the CPU path does.
    copy_props(&mut dst, src)?;
    Ok(dst)
}

/// Copies a picture in system memory (in `frames`' `sw_format`, of its size) into a new frame
/// from `frames`' pool.
///
/// The copy may still be reading `src` when this returns (CUDA stages pageable memory before it
/// returns, but FFmpeg 5.1's Vulkan uploads from `src`'s memory later), so the new frame keeps a
/// reference to `src`'s buffer (`AVFrame.opaque_ref`, which FFmpeg releases with the frame):
/// `src` may be dropped at once.
pub fn upload(frames: &HwFrames, src: &frame::Video) -> Result<frame::Video, HwError> {
    if is_hw_frame(src) || src.format() != frames.sw_format() || (src.width(), src.height()) != frames.size() {
        return Err(HwError(format!(
            "uploading a {:?} {}x{} picture into {frames:?} is not possible",
            src.format(),
            src.width(),
            src.height()
        )));
    }
    let raw = frame_ptr(src);
    // SAFETY: `src` owns a valid AVFrame; reading a buffer pointer.
    let buf = unsafe { (*raw).buf[0] };
    // SAFETY: as above.
    let more = !unsafe { (*raw).buf[1] }.is_null();
    if buf.is_null() || more {
        // av_frame_get_buffer (frame::Video::new) makes one buffer for all planes; anything else
        // could not be kept alive by one reference.
        return Err(HwError("uploading needs a picture in one reference-counted buffer".into()));
    }
    let mut dst = pool_frame(frames)?;
    // SAFETY: `buf` is `src`'s live buffer; av_buffer_ref returns a new reference or null.
    let keep = unsafe { sys::av_buffer_ref(buf) };
    if keep.is_null() {
        return Err(HwError("referencing the picture to upload failed: out of memory".into()));
    }
    // SAFETY: `dst` is valid and its opaque_ref is null (a frame fresh from the pool); the frame
    // now owns `keep`, and av_frame_unref/av_frame_free release it (libavutil/frame.h).
    unsafe { (*frame_mut_ptr(&mut dst)).opaque_ref = keep };
    // SAFETY: `dst` has the frames context attached and `src` is a system-memory frame of its
    // sw_format and allocated size, as av_hwframe_transfer_data requires for an upload.
    let ret = unsafe { sys::av_hwframe_transfer_data(frame_mut_ptr(&mut dst), frame_ptr(src), 0) };
    if ret < 0 {
        return Err(HwError::code("uploading a picture to the GPU", ret));
    }
    Ok(dst)
}

/// Gives an encoder its input frames context: the encoder then takes frames from that pool
/// (`pix_fmt` must be the hardware format, e.g. `AV_PIX_FMT_CUDA`, which the caller sets).
/// Must be called before the encoder is opened (libavcodec/avcodec.h, `hw_frames_ctx`).
pub fn set_hw_frames(ctx: &mut codec::Context, frames: &HwFrames) -> Result<(), HwError> {
    // SAFETY: `ctx` owns a valid AVCodecContext; we hold it mutably.
    let raw = unsafe { ctx.as_mut_ptr() };
    // SAFETY: `frames` is a live reference; av_buffer_ref returns a new one (or null), which the
    // codec context will own and free in avcodec_free_context.
    let new = unsafe { sys::av_buffer_ref(frames.raw()) };
    if new.is_null() {
        return Err(HwError("referencing the encoder's frames context failed: out of memory".into()));
    }
    // SAFETY: `raw` is valid; taking the address of one field, not reading it.
    let old = unsafe { &raw mut (*raw).hw_frames_ctx };
    // SAFETY: any previous hw_frames_ctx is a reference the context owns, which av_buffer_unref
    // releases (and nulls) before we store ours.
    unsafe { sys::av_buffer_unref(old) };
    // SAFETY: `raw` is valid and not yet opened; a plain field write. The context now owns `new`.
    unsafe { (*raw).hw_frames_ctx = new };
    // SAFETY: as above.
    unsafe { (*raw).sw_pix_fmt = frames.sw_format().into() };
    Ok(())
}

/// Gives a codec the device context to work in (an NVENC encoder fed system memory, h264_cuvid):
/// it then uses that device's CUDA context instead of making its own (libavcodec/nvenc.c,
/// cuviddec.c, `hw_device_ctx`). Must be called before the codec is opened.
pub fn set_hw_device(ctx: &mut codec::Context, device: &HwDevice) -> Result<(), HwError> {
    // SAFETY: `ctx` owns a valid AVCodecContext; we hold it mutably.
    let raw = unsafe { ctx.as_mut_ptr() };
    let new = device.new_ref()?;
    // SAFETY: `raw` is valid; taking the address of one field, not reading it.
    let old = unsafe { &raw mut (*raw).hw_device_ctx };
    // SAFETY: a previous hw_device_ctx is a reference the context owns, released (and nulled)
    // before ours is stored.
    unsafe { sys::av_buffer_unref(old) };
    // SAFETY: `raw` is valid and not yet opened. The codec context takes over the reference and
    // frees it in avcodec_free_context, so `new` must not release it: forget it.
    unsafe { (*raw).hw_device_ctx = new.raw() };
    std::mem::forget(new);
    Ok(())
}

/// How the `get_format` callback of one decoder went.
struct FormatState {
    want: Pixel,
    /// The callback returned `want` once (so a later call without it means the hwaccel failed).
    chose_hw: AtomicBool,
    /// Why the decoder decodes into system memory instead, when it does.
    fallback: Mutex<Option<String>>,
}

/// A decoder, and for one opened with [`HwDecoder::open`] the state its `get_format` callback
/// uses. Derefs to the decoder.
pub struct HwDecoder {
    // Declared first so that it is dropped first: the codec context may call `get_format`, which
    // reads `format`, until avcodec_free_context has run.
    decoder: ffmpeg::decoder::Video,
    format: Option<Box<FormatState>>,
}

impl HwDecoder {
    /// A decoder without hardware frames.
    pub fn plain(decoder: ffmpeg::decoder::Video) -> Self {
        Self { decoder, format: None }
    }

    /// Opens `codec` on `ctx` (already given its extradata and settings) with `device` as its
    /// hardware device and a `get_format` callback that picks `want` (e.g. `Pixel::CUDA`) when
    /// the decoder offers it and a software format otherwise, keeping the reason
    /// ([`HwDecoder::fallback`]). With `hw_device_ctx` set, libavcodec creates the frames context
    /// itself when the callback picks the hardware format (libavcodec/avcodec.h, `hw_device_ctx`).
    pub fn open(
        mut ctx: ffmpeg::decoder::Decoder,
        codec: ffmpeg::Codec,
        opts: Dictionary,
        device: &HwDevice,
        want: Pixel,
    ) -> Result<Self, HwError> {
        let state = Box::new(FormatState { want, chose_hw: AtomicBool::new(false), fallback: Mutex::new(None) });
        // SAFETY: `ctx` owns a valid AVCodecContext that is not opened yet; we hold it mutably.
        let raw = unsafe { ctx.as_mut_ptr() };
        // SAFETY: `device` is a live reference; the new reference (or null) will be owned by the
        // codec context, which unrefs hw_device_ctx in avcodec_free_context.
        let device_ref = unsafe { sys::av_buffer_ref(device.raw()) };
        if device_ref.is_null() {
            return Err(HwError("referencing the CUDA device failed: out of memory".into()));
        }
        // SAFETY: `raw` is valid and unopened; hw_device_ctx must be set before avcodec_open2, and
        // the context owns `device_ref` from here. `opaque` is the user's field
        // (libavcodec/avcodec.h); it points at `state`, a heap allocation that outlives the codec
        // context: on success it moves into the returned HwDecoder, whose decoder field is dropped
        // (avcodec_free_context) before it; on failure open_as_with frees the context before
        // returning, and `state` is dropped only after that, when this function returns.
        unsafe { (*raw).hw_device_ctx = device_ref };
        // SAFETY: as above.
        unsafe { (*raw).opaque = (&*state as *const FormatState).cast_mut().cast::<c_void>() };
        // SAFETY: as above.
        unsafe { (*raw).get_format = Some(get_format) };
        let decoder = ctx
            .open_as_with(codec, opts)
            .and_then(|o| o.video())
            .map_err(|e| HwError::code("opening the decoder with a CUDA device", c_int::from(e)))?;
        Ok(Self { decoder, format: Some(state) })
    }

    /// Why a decoder opened for hardware frames decodes into system memory, once it has decided to.
    pub fn fallback(&self) -> Option<String> {
        let state = self.format.as_ref()?;
        crate::sync::lock(&state.fallback).clone()
    }

    /// Whether this decoder was opened to decode into hardware frames.
    pub fn wants_hw(&self) -> bool {
        self.format.is_some()
    }
}

impl Deref for HwDecoder {
    type Target = ffmpeg::decoder::Video;
    fn deref(&self) -> &Self::Target {
        &self.decoder
    }
}

impl DerefMut for HwDecoder {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.decoder
    }
}

/// The format `get_format` returns, and why when it is not `want`.
///
/// `offered` is the decoder's list in its order, each with whether it is a hardware format;
/// libavcodec lists hardware formats first and the software format it would decode to after
/// them. `chose_hw_before`: the callback already returned `want`, and libavcodec calls it again
/// without `want` because the hwaccel could not be initialised for the stream.
pub fn choose_format(offered: &[(Pixel, bool)], want: Pixel, chose_hw_before: bool) -> (Pixel, Option<String>) {
    if offered.iter().any(|(f, _)| *f == want) {
        return (want, None);
    }
    let names: Vec<&str> = offered.iter().map(|(f, _)| pixel_name(*f)).collect();
    let why = if chose_hw_before {
        format!("the {} hwaccel could not be set up for this stream (FFmpeg's log says why)", pixel_name(want))
    } else {
        format!("the decoder offered no {} format for this stream (offered: {})", pixel_name(want), names.join(", "))
    };
    match offered.iter().find(|(_, hw)| !hw) {
        Some((software, _)) => {
            (*software, Some(format!("{why}; decoding to {} in system memory", pixel_name(*software))))
        }
        None => (Pixel::None, Some(format!("{why}, and no software format"))),
    }
}

fn pixel_name(p: Pixel) -> &'static str {
    p.descriptor().map_or("unknown", |d| d.name())
}

/// The `get_format` callback of [`HwDecoder::open`].
unsafe extern "C" fn get_format(
    ctx: *mut sys::AVCodecContext,
    offered: *const sys::AVPixelFormat,
) -> sys::AVPixelFormat {
    // No unwinding into libavcodec: a panic becomes "no format", which fails decoding cleanly.
    std::panic::catch_unwind(|| {
        // SAFETY: libavcodec calls get_format with its own, valid codec context.
        let opaque = unsafe { (*ctx).opaque };
        if opaque.is_null() || offered.is_null() {
            return sys::AVPixelFormat::AV_PIX_FMT_NONE;
        }
        // SAFETY: `opaque` was set by HwDecoder::open to a FormatState that outlives the codec
        // context (see there), and is only read here (its mutable parts are atomic or locked).
        let state = unsafe { &*opaque.cast::<FormatState>() };
        let mut list = Vec::new();
        // libavcodec's lists are a handful of entries; the bound only guards against a list
        // without its terminator.
        for i in 0..64 {
            // SAFETY: `offered` is an AV_PIX_FMT_NONE-terminated array (libavcodec/avcodec.h,
            // get_format); we stop at the terminator, so every index read is inside it.
            let f = unsafe { offered.wrapping_add(i).read() };
            if f == sys::AVPixelFormat::AV_PIX_FMT_NONE {
                break;
            }
            list.push((Pixel::from(f), is_hw_format(f)));
        }
        let (chosen, why) = choose_format(&list, state.want, state.chose_hw.load(Ordering::Acquire));
        if chosen == state.want {
            state.chose_hw.store(true, Ordering::Release);
            // A fallback earlier in the stream no longer holds.
            *crate::sync::lock(&state.fallback) = None;
        }
        if let Some(why) = why {
            *crate::sync::lock(&state.fallback) = Some(why);
        }
        chosen.into()
    })
    .unwrap_or(sys::AVPixelFormat::AV_PIX_FMT_NONE)
}

/// Whether `p` is a hardware format (pictures in device memory, `AV_PIX_FMT_FLAG_HWACCEL`).
pub fn is_hw_pixel(p: Pixel) -> bool {
    is_hw_format(p.into())
}

fn is_hw_format(f: sys::AVPixelFormat) -> bool {
    // SAFETY: av_pix_fmt_desc_get accepts any value and returns null or a static descriptor.
    let desc = unsafe { sys::av_pix_fmt_desc_get(f) };
    // SAFETY: `desc` is null or points at a static AVPixFmtDescriptor; reading its flags.
    !desc.is_null() && unsafe { (*desc).flags } & u64::from(sys::AV_PIX_FMT_FLAG_HWACCEL.unsigned_abs()) != 0
}

/// Whether `codec` (a decoder) can decode into frames of `device_type` given only a device
/// context (`AV_CODEC_HW_CONFIG_METHOD_HW_DEVICE_CTX`), according to avcodec_get_hw_config.
pub fn decoder_supports(codec: ffmpeg::Codec, device_type: sys::AVHWDeviceType) -> bool {
    for i in 0..32 {
        // SAFETY: `codec` wraps a static AVCodec; avcodec_get_hw_config returns null past the
        // last configuration, and a static AVCodecHWConfig otherwise.
        let config = unsafe { sys::avcodec_get_hw_config(codec_ptr(&codec), i) };
        if config.is_null() {
            return false;
        }
        // SAFETY: non-null, static; reading a plain field.
        let methods = unsafe { (*config).methods };
        // SAFETY: as above.
        let kind = unsafe { (*config).device_type };
        if kind == device_type && methods & sys::AV_CODEC_HW_CONFIG_METHOD_HW_DEVICE_CTX as c_int != 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const CUDA: (Pixel, bool) = (Pixel::CUDA, true);
    const VAAPI: (Pixel, bool) = (Pixel::VAAPI, true);
    const YUV420P: (Pixel, bool) = (Pixel::YUV420P, false);

    #[test]
    fn get_format_picks_cuda_when_offered() {
        assert_eq!(choose_format(&[VAAPI, CUDA, YUV420P], Pixel::CUDA, false), (Pixel::CUDA, None));
        assert_eq!(choose_format(&[CUDA], Pixel::CUDA, true), (Pixel::CUDA, None));
    }

    #[test]
    fn get_format_without_cuda_decodes_in_software_and_says_why() {
        let (f, why) = choose_format(&[VAAPI, YUV420P], Pixel::CUDA, false);
        assert_eq!(f, Pixel::YUV420P);
        assert_eq!(
            why.as_deref(),
            Some(
                "the decoder offered no cuda format for this stream (offered: vaapi, yuv420p); \
                 decoding to yuv420p in system memory"
            )
        );
        // Called again after CUDA was chosen: libavcodec dropped it because the hwaccel failed.
        let (f, why) = choose_format(&[Pixel::YUV420P10LE].map(|p| (p, false)), Pixel::CUDA, true);
        assert_eq!(f, Pixel::YUV420P10LE);
        assert_eq!(
            why.as_deref(),
            Some(
                "the cuda hwaccel could not be set up for this stream (FFmpeg's log says why); \
                 decoding to yuv420p10le in system memory"
            )
        );
        let (f, why) = choose_format(&[VAAPI], Pixel::CUDA, false);
        assert_eq!(f, Pixel::None);
        assert!(why.expect("reason").ends_with("and no software format"));
    }

    #[test]
    fn the_callback_reads_libavcodecs_list_and_keeps_the_reason() {
        use sys::AVPixelFormat::*;
        super::super::init();
        let state = FormatState { want: Pixel::CUDA, chose_hw: AtomicBool::new(false), fallback: Mutex::new(None) };
        let mut ctx = codec::Context::new();
        // SAFETY: `ctx` owns a valid AVCodecContext; `state` outlives every call below.
        let raw = unsafe { ctx.as_mut_ptr() };
        // SAFETY: as above; setting the user's field, as HwDecoder::open does.
        unsafe { (*raw).opaque = (&state as *const FormatState).cast_mut().cast() };
        let call = |list: &[sys::AVPixelFormat]| {
            // SAFETY: `raw` is a live codec context whose opaque points at `state`, and `list` is
            // AV_PIX_FMT_NONE-terminated, as libavcodec calls get_format.
            unsafe { get_format(raw, list.as_ptr()) }
        };
        assert_eq!(call(&[AV_PIX_FMT_CUDA, AV_PIX_FMT_YUV420P, AV_PIX_FMT_NONE]), AV_PIX_FMT_CUDA);
        assert!(state.chose_hw.load(Ordering::Acquire));
        assert_eq!(*state.fallback.lock().expect("lock"), None);
        // libavcodec calls again without CUDA when its hwaccel did not initialise.
        assert_eq!(call(&[AV_PIX_FMT_YUV420P, AV_PIX_FMT_NONE]), AV_PIX_FMT_YUV420P);
        let why = state.fallback.lock().expect("lock").clone().expect("a reason");
        assert!(why.starts_with("the cuda hwaccel could not be set up for this stream"), "{why}");
        assert_eq!(call(&[AV_PIX_FMT_NONE]), AV_PIX_FMT_NONE, "nothing offered, nothing chosen");
        // A context without our state (opaque unset) gets no format rather than a crash.
        let mut bare = codec::Context::new();
        // SAFETY: a valid, blank codec context whose opaque is null.
        let bare = unsafe { bare.as_mut_ptr() };
        // SAFETY: as above, with a terminated list.
        let got = unsafe { get_format(bare, [AV_PIX_FMT_CUDA, AV_PIX_FMT_NONE].as_ptr()) };
        assert_eq!(got, AV_PIX_FMT_NONE);
    }

    #[test]
    fn the_shared_cuda_device_fails_with_the_reason_and_is_not_kept_failed() {
        for _ in 0..2 {
            let e = HwDevice::cuda_shared(0).err().expect("no driver here");
            assert!(e.0.starts_with("creating a CUDA device on GPU 0 failed"), "{}", e.0);
        }
    }

    #[test]
    fn a_codec_context_takes_its_own_reference_to_a_device() {
        let Some(device) = vulkan_or_skip() else { return };
        for _ in 0..3 {
            let mut ctx = codec::Context::new();
            set_hw_device(&mut ctx, &device).expect("set");
            // Replacing it releases the first reference, not the device.
            set_hw_device(&mut ctx, &device).expect("set again");
            // SAFETY: `ctx` owns a valid AVCodecContext; taking its pointer.
            let raw = unsafe { ctx.as_mut_ptr() };
            // SAFETY: reading a field of the live context.
            assert!(!unsafe { (*raw).hw_device_ctx }.is_null());
            // Dropping the context frees its reference (avcodec_free_context).
        }
        // Ours is intact: still usable for frames.
        let frames = HwFrames::alloc(&device, Pixel::NV12, 64, 64).expect("the device still works");
        assert_eq!(frames.size(), (64, 64));
        assert!(device.new_ref().is_ok());
    }

    #[test]
    fn hardware_formats_are_told_from_software_ones() {
        assert!(is_hw_format(sys::AVPixelFormat::AV_PIX_FMT_CUDA));
        assert!(!is_hw_format(sys::AVPixelFormat::AV_PIX_FMT_NV12));
    }

    #[test]
    fn the_h264_decoder_of_this_build_offers_cuda_frames() {
        super::super::init();
        let h264 = ffmpeg::decoder::find(codec::Id::H264).expect("h264");
        assert!(decoder_supports(h264, sys::AVHWDeviceType::AV_HWDEVICE_TYPE_CUDA));
        let rawvideo = ffmpeg::decoder::find(codec::Id::RAWVIDEO).expect("rawvideo");
        assert!(!decoder_supports(rawvideo, sys::AVHWDeviceType::AV_HWDEVICE_TYPE_CUDA));
    }

    #[test]
    fn no_cuda_device_here_is_an_error_with_the_reason_not_a_panic() {
        if super::super::cuda_driver_present() {
            return; // a GPU host: the device opens (or fails for its own reason)
        }
        let e = HwDevice::cuda_shared(0).err().expect("no driver here");
        assert!(e.0.starts_with("creating a CUDA device on GPU 0 failed: Operation not permitted"), "{e}");
        assert!(e.0.contains("libcuda.so.1"), "{e}");
    }

    #[test]
    fn system_frames_are_not_downloaded_and_are_shared_by_reference() {
        let mut f = frame::Video::new(Pixel::YUV420P, 64, 32);
        f.set_pts(Some(7));
        assert!(!is_hw_frame(&f));
        assert!(HwFrames::of_frame(&f).is_none());
        let e = download(&f).err().expect("not a GPU frame");
        assert_eq!(e.0, "downloading a picture failed: it is not in GPU memory");
        let mut r = frame_ref(&f).expect("ref");
        r.set_pts(Some(9));
        assert_eq!((f.pts(), r.pts()), (Some(7), Some(9)), "properties are the new frame's own");
        assert_eq!(f.data(0).as_ptr(), r.data(0).as_ptr(), "the picture is not copied");
    }

    /// A software Vulkan device (Mesa's lavapipe), or `None`, saying why, where there is none.
    pub(crate) fn vulkan_or_skip() -> Option<HwDevice> {
        match HwDevice::vulkan() {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("skipped: {e}; scripts/setup.sh installs mesa-vulkan-drivers for this test");
                None
            }
        }
    }

    /// A flat NV12 picture of `value`.
    pub(crate) fn flat_nv12(width: u32, height: u32, value: u8) -> frame::Video {
        let mut f = frame::Video::new(Pixel::NV12, width, height);
        f.data_mut(0).fill(value);
        f.data_mut(1).fill(128);
        f
    }

    #[test]
    fn pictures_go_to_a_device_and_back_unchanged() {
        let Some(device) = vulkan_or_skip() else { return };
        let frames = HwFrames::alloc(&device, Pixel::NV12, 256, 144).expect("frames context");
        assert_eq!((frames.sw_format(), frames.size()), (Pixel::NV12, (256, 144)));
        let picture = flat_nv12(256, 144, 77);
        let on_gpu = upload(&frames, &picture).expect("upload");
        assert!(is_hw_frame(&on_gpu));
        assert_eq!((on_gpu.format(), on_gpu.width(), on_gpu.height()), (Pixel::VULKAN, 256, 144));
        let of = HwFrames::of_frame(&on_gpu).expect("a frames context");
        assert!(of.same_context(&frames));
        let shared = frame_ref(&on_gpu).expect("ref");
        assert!(
            HwFrames::of_frame(&shared).is_some_and(|f| f.same_context(&frames)),
            "a reference stays on the device"
        );
        let back = download(&shared).expect("download");
        assert_eq!((back.format(), back.width(), back.height()), (Pixel::NV12, 256, 144));
        assert!(back.data(0)[..256].iter().all(|&v| v == 77), "the picture came back as it went");
        let e = upload(&frames, &flat_nv12(128, 72, 0)).err().expect("the wrong size");
        assert!(e.0.starts_with("uploading a NV12 128x72 picture into HwFrames(NV12 256x144)"), "{e}");
        let other = HwFrames::alloc(&device, Pixel::NV12, 128, 72).expect("frames context");
        assert!(!other.same_context(&frames));
    }

    #[test]
    fn a_copy_between_pools_takes_a_picture_that_fits_the_pool() {
        let Some(device) = vulkan_or_skip() else { return };
        // A pool aligned past its pictures' size, as scale_cuda makes them (720 lines in 736).
        let aligned = HwFrames::alloc(&device, Pixel::NV12, 64, 64).expect("frames context");
        let rung = HwFrames::alloc(&device, Pixel::NV12, 64, 36).expect("frames context");
        let picture = upload(&rung, &flat_nv12(64, 36, 50)).expect("upload");
        let too_big = upload(&frames_of(&device, 128, 72), &flat_nv12(128, 72, 50)).expect("upload");
        let e = copy_on_device(&aligned, &too_big).err().expect("does not fit");
        assert!(e.0.starts_with("copying a NV12 128x72 picture into HwFrames(NV12 64x64) is not possible"), "{e}");
        let e = copy_on_device(&aligned, &flat_nv12(64, 36, 50)).err().expect("system memory");
        assert!(e.0.ends_with("it is not in GPU memory"), "{e}");
        // A picture that fits goes on to the device's copy: CUDA's copies between pools, Mesa's
        // Vulkan cannot (FFmpeg 5.1 answers ENOSYS), and the refusal is the error.
        match copy_on_device(&aligned, &picture) {
            Ok(copy) => {
                assert!(HwFrames::of_frame(&copy).is_some_and(|f| f.same_context(&aligned)));
                assert_eq!((copy.width(), copy.height()), (64, 36), "the picture's size, not the pool's");
            }
            Err(e) => assert!(e.0.starts_with("copying a picture between two GPU frame pools failed"), "{e}"),
        }
    }

    fn frames_of(device: &HwDevice, width: u32, height: u32) -> HwFrames {
        HwFrames::alloc(device, Pixel::NV12, width, height).expect("frames context")
    }
}
