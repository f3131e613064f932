//! NVIDIA hardware, as far as FFmpeg and the CUDA driver API see it: probes that open NVENC and
//! NVDEC exactly as the pipeline would, and the GPUs the CUDA driver API lists. (The CUDA device
//! and frames contexts themselves are in `hwctx`.)
//!
//! Nothing here may take the process down on a machine without a GPU. Every failure comes back
//! as a sentence that names what was tried and why it did not work, because these sentences end
//! up in `ladderd probe`, in the backend choice's WARN line and in the placement decision.
#![deny(clippy::undocumented_unsafe_blocks, clippy::multiple_unsafe_ops_per_block)]

use std::ffi::c_int;

use cudarc::driver::result as cu;
use cudarc::driver::sys as cusys;
use ffmpeg_next as ffmpeg;
use ffmpeg_next::{Dictionary, Rational, codec, format};

use super::averror::{error_text, nvidia_hint};

/// The reason every NVIDIA stage is refused on a machine whose driver library cannot be loaded.
/// FFmpeg's NVIDIA code loads `libcuda.so.1` by that name at run time (ffnvcodec's dynlink loader).
pub const NO_DRIVER: &str = "no NVIDIA driver (cannot load libcuda.so.1)";

/// Real H.264 parameter sets (High profile, 1280x720, as libx264 writes them) from which the
/// decoder probe builds its avcC: `h264_cuvid` feeds the extradata to the NVDEC parser while it
/// opens, so a real sequence header makes the probe create a real decoder session.
const PROBE_H264_HEADERS: &[u8] = include_bytes!("../media/testdata/x264_headers_1280x720_high.h264");

/// A small picture, the size of the lowest usual ladder rung: cheap to open, and what NVENC
/// would really be asked for.
const PROBE_WIDTH: u32 = 256;
const PROBE_HEIGHT: u32 = 144;

fn ffmpeg_error_text(e: ffmpeg::Error) -> String {
    error_text(c_int::from(e))
}

/// Whether FFmpeg can create a CUDA device on GPU `gpu`.
pub fn probe_cuda_device(gpu: u32) -> Result<(), String> {
    // The shared device the pipeline uses, so the probe also makes it ready.
    super::hwctx::HwDevice::cuda_shared(gpu).map(drop).map_err(|e| e.to_string())
}

/// Whether the named encoder (`h264_nvenc`, `hevc_nvenc`) opens on GPU `gpu` for a small
/// yuv420p stream fed from system memory, as on the pipeline's non-zero-copy paths (the zero-copy
/// probe, `scale::probe_zero_copy`, covers NVDEC and scaling on CUDA frames). Opening
/// creates a real encode session, so this fails wherever encoding would: no driver, a GPU
/// without NVENC (A100, H100, H200), or a consumer card already at its session limit.
pub fn probe_encoder(name: &str, gpu: u32) -> Result<(), String> {
    super::init();
    let codec = ffmpeg::encoder::find_by_name(name).ok_or_else(|| format!("{name} is not in this FFmpeg build"))?;
    let mut enc = codec::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| format!("allocating {name} failed: {}", ffmpeg_error_text(e)))?;
    enc.set_width(PROBE_WIDTH);
    enc.set_height(PROBE_HEIGHT);
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base(Rational(1, 30));
    enc.set_frame_rate(Some(Rational(30, 1)));
    let mut opts = Dictionary::new();
    opts.set("gpu", &gpu.to_string());
    let hint = if name.ends_with("_nvenc") { nvidia_hint(Some("libnvidia-encode.so.1")) } else { String::new() };
    enc.open_as_with(codec, opts)
        .map(drop)
        .map_err(|e| format!("opening {name} on GPU {gpu} failed: {}{hint}", ffmpeg_error_text(e)))
}

/// Whether the named decoder (`h264_cuvid`) opens on GPU `gpu` with a real avcC as extradata,
/// as the pipeline opens it: cuviddec.c creates its CUDA device, loads libnvcuvid and parses the
/// sequence header, which creates an NVDEC decoder for it.
pub fn probe_decoder(name: &str, gpu: u32) -> Result<(), String> {
    super::init();
    let codec = ffmpeg::decoder::find_by_name(name).ok_or_else(|| format!("{name} is not in this FFmpeg build"))?;
    let params = crate::media::avc::params_from_annexb(PROBE_H264_HEADERS)
        .map_err(|e| format!("the probe's H.264 headers do not parse: {e}"))?;
    let mut ctx = codec::Context::new_with_codec(codec);
    super::set_extradata(&mut ctx, &params.avcc).map_err(|e| e.to_string())?;
    let mut opts = Dictionary::new();
    opts.set("gpu", &gpu.to_string());
    let hint = if name.ends_with("_cuvid") { nvidia_hint(Some("libnvcuvid.so.1")) } else { String::new() };
    ctx.decoder()
        .open_as_with(codec, opts)
        .map(drop)
        .map_err(|e| format!("opening {name} on GPU {gpu} failed: {}{hint}", ffmpeg_error_text(e)))
}

/// A GPU as the CUDA driver API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDevice {
    /// The CUDA device ordinal (cuDeviceGet), after `CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER`.
    pub ordinal: u32,
    pub name: String,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, the form nvidia-smi and NVML print, so the
    /// same GPU can be found in NVML whatever order each enumerates in.
    pub uuid: Result<String, String>,
    pub total_memory: Result<u64, String>,
}

/// What the CUDA driver API says about this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDriver {
    /// The CUDA version the driver implements (cuDriverGetVersion), as `major * 1000 + minor * 10`.
    pub version: i32,
    pub devices: Vec<CudaDevice>,
}

/// Lists the GPUs through the CUDA driver API, or says why it cannot.
///
/// cudarc loads libcuda lazily and panics when it cannot (or when a symbol is missing), so the
/// library is looked for first, and any panic that still happens becomes the reason.
pub fn cuda_driver() -> Result<CudaDriver, String> {
    if !super::cuda_driver_present() {
        return Err(NO_DRIVER.to_string());
    }
    std::panic::catch_unwind(cuda_driver_unguarded).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(format!("the CUDA driver API failed: {what}"))
    })
}

fn cuda_driver_unguarded() -> Result<CudaDriver, String> {
    // cuInit must precede every other driver call (CUDA Driver API, "Initialization").
    cu::init().map_err(|e| format!("cuInit failed: {}", cuda_error_text(e)))?;
    let mut version: c_int = 0;
    // SAFETY: cuDriverGetVersion writes one int through the pointer, which is valid and aligned.
    let ret = unsafe { cusys::cuDriverGetVersion(&mut version) };
    ret.result().map_err(|e| format!("cuDriverGetVersion failed: {}", cuda_error_text(e)))?;
    let count = cu::device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {}", cuda_error_text(e)))?;
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let dev =
            cu::device::get(ordinal).map_err(|e| format!("cuDeviceGet({ordinal}) failed: {}", cuda_error_text(e)))?;
        let name = cu::device::get_name(dev).unwrap_or_else(|e| format!("unnamed GPU ({})", cuda_error_text(e)));
        let uuid = cu::device::get_uuid(dev).map(|u| format_uuid(&u.bytes)).map_err(cuda_error_text);
        // SAFETY: `dev` was returned by cuDeviceGet above, which is what cuDeviceTotalMem requires.
        let total = unsafe { cu::device::total_mem(dev) };
        let total_memory = total.map(|bytes| bytes as u64).map_err(cuda_error_text);
        devices.push(CudaDevice { ordinal: ordinal.unsigned_abs(), name, uuid, total_memory });
    }
    Ok(CudaDriver { version, devices })
}

/// `CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected`, from cuGetErrorName and
/// cuGetErrorString.
fn cuda_error_text(e: cu::DriverError) -> String {
    match (e.error_name(), e.error_string()) {
        (Ok(name), Ok(text)) => format!("{}: {}", name.to_string_lossy(), text.to_string_lossy()),
        _ => format!("{:?}", e.0),
    }
}

/// A CUuuid in the textual form NVML and nvidia-smi use.
fn format_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
    let b: Vec<u8> = bytes.iter().map(|&c| c as u8).collect();
    let hex = |range: std::ops::Range<usize>| b[range].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("GPU-{}-{}-{}-{}-{}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_like_nvidia_smi() {
        let bytes: [std::ffi::c_char; 16] = std::array::from_fn(|i| (i as u8 * 17) as std::ffi::c_char);
        assert_eq!(format_uuid(&bytes), "GPU-00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn a_codec_missing_from_the_build_says_so() {
        assert_eq!(probe_encoder("no_such_encoder", 0), Err("no_such_encoder is not in this FFmpeg build".into()));
        assert_eq!(probe_decoder("no_such_decoder", 0), Err("no_such_decoder is not in this FFmpeg build".into()));
    }

    #[test]
    fn the_probes_open_codecs_that_work_here() {
        // The same path with software codecs (which ignore `gpu`) opens, so a failure of the
        // NVIDIA codecs below is theirs, not the probe's.
        assert_eq!(probe_encoder("libx264", 0), Ok(()));
        assert_eq!(probe_decoder("h264", 0), Ok(()));
    }

    #[test]
    fn without_a_driver_every_nvidia_probe_fails_with_a_reason() {
        if crate::ffi::cuda_driver_present() {
            // A GPU host: the outcome depends on the GPU model; `ladderd probe` shows it.
            return;
        }
        let cuda = probe_cuda_device(0).expect_err("no driver");
        assert!(cuda.starts_with("creating a CUDA device on GPU 0 failed: "), "{cuda}");
        assert!(cuda.contains("libcuda.so.1"), "{cuda}");
        for name in ["h264_nvenc", "hevc_nvenc"] {
            let why = probe_encoder(name, 0).expect_err("no driver");
            assert!(why.contains(name) && why.contains("libcuda.so.1"), "{why}");
        }
        let why = probe_decoder("h264_cuvid", 0).expect_err("no driver");
        assert!(why.contains("h264_cuvid") && why.contains("libcuda.so.1"), "{why}");
        assert_eq!(cuda_driver(), Err(NO_DRIVER.to_string()));
    }
}
