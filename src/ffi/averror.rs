//! FFmpeg error codes as sentences, and what NVIDIA's FFmpeg code leaves out of them.
#![deny(clippy::undocumented_unsafe_blocks, clippy::multiple_unsafe_ops_per_block)]

use std::ffi::{CStr, c_int};

use ffmpeg_next::ffi as sys;

/// The text of an FFmpeg error code, from `av_strerror` (libavutil/error.h), with the code itself
/// so that an unfamiliar one can still be looked up.
pub fn error_text(code: c_int) -> String {
    let mut buf = [0u8; sys::AV_ERROR_MAX_STRING_SIZE];
    // SAFETY: `buf` is a writable buffer of exactly `buf.len()` bytes, which is the size passed;
    // av_strerror writes at most that many bytes. Its return value only says whether the code
    // was known (it writes a generic "Error number N occurred" otherwise), so it is not needed.
    let _ = unsafe { sys::av_strerror(code, buf.as_mut_ptr().cast(), buf.len()) };
    match CStr::from_bytes_until_nul(&buf) {
        Ok(text) if !text.is_empty() => format!("{} (error {code})", text.to_string_lossy()),
        _ => format!("FFmpeg error {code}"),
    }
}

/// What to add to an FFmpeg error code from its NVIDIA code, which returns a generic code and
/// says the cause only in its log ("Cannot load libcuda.so.1", "Cannot load libnvcuvid.so.1",
/// "OpenEncodeSessionEx failed: …"). With no driver that is the cause; with one, name the driver
/// library the codec loads by itself (ffnvcodec's dynlink loader), which container runtimes
/// only mount when asked for the `video` capability.
pub(super) fn nvidia_hint(needs: Option<&str>) -> String {
    match needs {
        _ if !super::cuda_driver_present() => "; libcuda.so.1 cannot be loaded (no NVIDIA driver)".to_string(),
        Some(library) => {
            format!("; it needs {library} and the engine on this GPU (FFmpeg's log line says which failed)")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ffmpeg_next as ffmpeg;

    #[test]
    fn error_codes_read_as_av_strerror_writes_them() {
        // AVERROR(EPERM): EPERM is 1 on every platform FFmpeg supports.
        let eperm = -1;
        assert_eq!(error_text(eperm), format!("Operation not permitted (error {eperm})"));
        assert_eq!(error_text(c_int::from(ffmpeg::Error::EncoderNotFound)), "Encoder not found (error -1129203192)");
    }
}
