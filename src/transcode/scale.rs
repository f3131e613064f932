//! The zero-copy GPU path of a channel: NVDEC through FFmpeg's `h264` decoder with the CUDA
//! hwaccel (pictures stay in GPU memory as `AV_PIX_FMT_CUDA` frames), one filter graph per channel
//! that scales each picture for every rung on the GPU (`split`, then `scale_cuda` per rung), and
//! per rung either NVENC fed those GPU frames or, for a rung encoded with libx264 (the hybrid
//! plan of GPUs without NVENC), a download to system memory first.
//!
//! ```text
//! decode thread:  h264 + CUDA hwaccel ──► [in] split=N ─► scale_cuda=w:h ─► [out0] ──► rung 0
//!                 (SourceDecoder)                       └► scale_cuda=w:h ─► [out1] ──► rung 1 …
//! rung thread:    GPU frame ──► h264_nvenc (hw_frames_ctx of the rung's output)
//!                 GPU frame ──► download (NV12) ──► swscale to yuv420p ──► libx264
//! ```
//!
//! Nothing here is GPU-only in shape: the same code runs a graph of software `scale` filters in
//! tests, which is how it is exercised on machines without a GPU. Every failure falls back, is
//! logged with its reason and counted: no CUDA format from the decoder → the decoder decodes on the
//! CPU; the graph fails → pictures are downloaded and scaled on the CPU; a download fails → the
//! decode thread moves to the CPU decoder at the next keyframe.

use std::ops::{Deref, DerefMut};

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::software::scaling;
use ffmpeg_next::{Dictionary, Packet, Rational, codec, frame, picture};
use prometheus::IntCounter;

use crate::ffi::hwctx::{self, HwDecoder, HwDevice, HwError, HwFrames};
use crate::ffi::scale_graph::{GraphInput, Pulled, ScaleGraph};
use crate::gpu::ZeroCopy;
use crate::media::{TIMESCALE, Ticks, VideoParams, avc};
use crate::transcode::ladder::Rung;

/// Why the scale stage cannot run on NVIDIA with this FFmpeg: neither CUDA scaling filter is in
/// it. `transcode::backend` counts a refusal with this reason as `not_built`.
pub const NO_SCALING_FILTER: &str = "neither scale_cuda nor scale_npp is in this FFmpeg build (ffmpeg -filters)";

/// The filter that scales each rung in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleFilter {
    /// `scale_cuda` (libavfilter/vf_scale_cuda.c), in Debian's FFmpeg.
    Cuda,
    /// `scale_npp` (NVIDIA Performance Primitives), in FFmpeg builds with `--enable-libnpp` only.
    Npp,
    /// libswscale's `scale`, on pictures in system memory: the same graph without a GPU, for tests.
    #[cfg(test)]
    Software,
    /// `scale_vulkan` on Vulkan frames: the same graph on hardware frames without CUDA, for tests
    /// (Mesa's software Vulkan runs it on any machine).
    #[cfg(test)]
    Vulkan,
}

impl ScaleFilter {
    /// The GPU scaling filter this FFmpeg has, `scale_cuda` first, or why none.
    pub fn available() -> Result<Self, String> {
        crate::ffi::init();
        [("scale_cuda", ScaleFilter::Cuda), ("scale_npp", ScaleFilter::Npp)]
            .into_iter()
            .find(|(name, _)| ffmpeg::filter::find(name).is_some())
            .map(|(_, f)| f)
            .ok_or_else(|| NO_SCALING_FILTER.to_string())
    }

    /// The filter for one rung, `width`×`height`.
    fn rung(self, width: u32, height: u32) -> String {
        match self {
            // Bicubic, like the CPU path's swscale. No passthrough: a rung the size of the source
            // gets its own copy, so that no rung holds on to the decoder's pictures.
            ScaleFilter::Cuda => format!("scale_cuda=w={width}:h={height}:interp_algo=bicubic:passthrough=0"),
            ScaleFilter::Npp => format!("scale_npp=w={width}:h={height}:interp_algo=cubic"),
            #[cfg(test)]
            ScaleFilter::Software => format!("scale=w={width}:h={height}:flags=bicubic"),
            #[cfg(test)]
            ScaleFilter::Vulkan => format!("scale_vulkan=w={width}:h={height}"),
        }
    }

    /// Whether this graph takes `picture`: GPU frames for the GPU filters.
    fn takes(self, picture: &frame::Video) -> bool {
        match self {
            ScaleFilter::Cuda | ScaleFilter::Npp => picture.format() == Pixel::CUDA,
            #[cfg(test)]
            ScaleFilter::Software => !hwctx::is_hw_frame(picture),
            #[cfg(test)]
            ScaleFilter::Vulkan => picture.format() == Pixel::VULKAN,
        }
    }
}

/// The filter graph description of a channel: the decoded picture (`[in]`) split once per rung
/// and scaled to each rung's size (`[out{i}]` for `rungs[i]`). `rungs` are the encoded rungs; a
/// passthrough rung is not one of them, as it is never decoded.
///
/// 4:2:0 pictures (NV12 from NVDEC) need even dimensions, which the ladder plan always gives;
/// anything else is refused here, so that the channel scales on the CPU instead of an encoder
/// failing later.
pub fn graph_description(filter: ScaleFilter, rungs: &[Rung]) -> Result<String, String> {
    if rungs.is_empty() {
        return Err("no rungs to scale".to_string());
    }
    if let Some(r) = rungs.iter().find(|r| r.width == 0 || r.height == 0 || r.width % 2 == 1 || r.height % 2 == 1) {
        return Err(format!(
            "rung {} is {}x{}: 4:2:0 pictures on the GPU need even, non-zero dimensions",
            r.name, r.width, r.height
        ));
    }
    if let [only] = rungs {
        return Ok(format!("[in]{}[out0]", filter.rung(only.width, only.height)));
    }
    let labels: String = (0..rungs.len()).map(|i| format!("[s{i}]")).collect();
    let mut description = format!("[in]split={}{labels}", rungs.len());
    for (i, r) in rungs.iter().enumerate() {
        description.push_str(&format!(";[s{i}]{}[out{i}]", filter.rung(r.width, r.height)));
    }
    Ok(description)
}

/// The fallback counters of a channel (`ladderd_pipeline_errors_total{stage}`).
#[derive(Clone)]
pub struct Fallbacks {
    /// `decoder_fallback`: NVDEC did not decode (no CUDA format for the stream, or it failed).
    pub decoder: IntCounter,
    /// `scaler_fallback`: the scaling graph could not be built or failed; scaling moved to the CPU.
    pub scaler: IntCounter,
}

impl Fallbacks {
    /// Counters that count for nobody (probes).
    fn unregistered() -> Self {
        let counter = || IntCounter::new("unregistered", "not exported").expect("a valid metric name");
        Self { decoder: counter(), scaler: counter() }
    }
}

/// What the decode thread hands the rungs for one decoded picture.
pub enum Routed {
    /// One picture in system memory for every rung, which each scales itself (the CPU path).
    Shared(frame::Video),
    /// Each rung's own picture, scaled already (`frames[i]` for rung `i`), in GPU memory on the
    /// GPU path.
    PerRung(Vec<frame::Video>),
}

/// The decode thread's scaling graph of one channel, built from the first picture it takes.
pub struct ChannelScaler {
    channel: String,
    filter: ScaleFilter,
    /// The graph description, or why this ladder cannot be scaled on the GPU.
    description: Result<String, String>,
    rungs: usize,
    /// Each rung's size, in the order of the graph's outputs.
    sizes: Vec<(u32, u32)>,
    /// The graph, and the size and frames context of the pictures it was built for.
    graph: Option<(ScaleGraph, (u32, u32), Option<HwFrames>)>,
    /// Set once the graph failed: scaling is on the CPU from then on.
    failed: bool,
    fallbacks: Fallbacks,
}

impl ChannelScaler {
    pub fn new(channel: &str, filter: ScaleFilter, rungs: &[Rung], fallbacks: Fallbacks) -> Self {
        let description = graph_description(filter, rungs);
        if let Err(why) = &description {
            tracing::warn!(channel, reason = %why, "the ladder cannot be scaled on the GPU; scaling on the CPU");
            fallbacks.scaler.inc();
        }
        Self {
            channel: channel.to_string(),
            filter,
            description,
            rungs: rungs.len(),
            sizes: rungs.iter().map(|r| (r.width, r.height)).collect(),
            graph: None,
            failed: false,
            fallbacks,
        }
    }

    /// The rungs' pictures for `picture` if the graph takes it and works; otherwise the picture
    /// for every rung, in system memory (downloaded if it was on the GPU). `Err` only when a GPU
    /// picture cannot be downloaded: the GPU is gone, and decoding must move to the CPU.
    pub fn route(&mut self, picture: frame::Video) -> Result<Routed, HwError> {
        if !self.failed && self.description.is_ok() && self.filter.takes(&picture) {
            match self.scale(&picture) {
                Ok(frames) => return Ok(Routed::PerRung(frames)),
                Err(e) => {
                    tracing::warn!(channel = %self.channel, error = %e, "scaling on the GPU failed; scaling on the CPU from now on");
                    self.fallbacks.scaler.inc();
                    self.failed = true;
                    self.graph = None;
                }
            }
        }
        shared(picture)
    }

    /// Scales `picture` for every rung: one push into the graph, one pull from each output.
    pub fn scale(&mut self, picture: &frame::Video) -> Result<Vec<frame::Video>, HwError> {
        let description = self.description.as_ref().map_err(|why| HwError(why.clone()))?;
        let size = (picture.width(), picture.height());
        if self.filter == ScaleFilter::Npp && self.sizes.contains(&size) {
            // scale_npp has no `passthrough` option: a rung of the source's size would get the
            // decoder's own surface and hold it in its queue until NVDEC runs out of surfaces.
            return Err(HwError(format!(
                "scale_npp would pass {}x{} pictures through to a rung of that size, holding the decoder's surfaces",
                size.0, size.1
            )));
        }
        let frames = HwFrames::of_frame(picture);
        let fits = |(_, s, f): &(ScaleGraph, (u32, u32), Option<HwFrames>)| {
            *s == size
                && match (f, &frames) {
                    (Some(a), Some(b)) => a.same_context(b),
                    (None, None) => true,
                    _ => false,
                }
        };
        if !self.graph.as_ref().is_some_and(fits) {
            // The first picture, or the decoder made a new frames context (new stream
            // parameters): the graph's source is described by the pictures it takes.
            self.graph = None;
            let input = GraphInput {
                width: size.0,
                height: size.1,
                format: picture.format(),
                time_base: Rational(1, TIMESCALE as i32),
                sample_aspect_ratio: picture.aspect_ratio(),
                hw_frames: frames.as_ref(),
            };
            let graph = ScaleGraph::new(&input, description, self.rungs)?;
            if hwctx::is_hw_frame(picture) {
                // What each rung's NVENC will be given (through its pictures, which reference it).
                for i in 0..self.rungs {
                    let out = graph.sink_frames(i).ok_or_else(|| HwError(format!("output {i} has no GPU frames")))?;
                    tracing::debug!(channel = %self.channel, output = i, frames = ?out, "CUDA scaling output");
                }
            }
            tracing::info!(channel = %self.channel, graph = %description, width = size.0, height = size.1, "scaling graph built; every rung is scaled on the decode thread");
            self.graph = Some((graph, size, frames));
        }
        let Some((graph, _, _)) = self.graph.as_mut() else {
            return Err(HwError("the scaling graph is missing".into()));
        };
        graph.push(picture)?;
        (0..self.rungs)
            .map(|i| match graph.pull(i)? {
                Pulled::Frame(f) => Ok(f),
                other => Err(HwError(format!("the scaling graph gave no picture for rung {i} ({other:?})"))),
            })
            .collect()
    }
}

/// `picture` for every rung, in system memory.
fn shared(picture: frame::Video) -> Result<Routed, HwError> {
    if hwctx::is_hw_frame(&picture) {
        hwctx::download(&picture).map(Routed::Shared)
    } else {
        Ok(Routed::Shared(picture))
    }
}

/// The source decoder of a channel, and on the GPU path its scaling graph. Derefs to the decoder.
pub struct SourceDecoder {
    channel: String,
    decoder: HwDecoder,
    scaler: Option<ChannelScaler>,
    /// The decoder was opened for CUDA frames but gives system memory ones; said once.
    software_reported: bool,
    fallbacks: Option<Fallbacks>,
}

impl SourceDecoder {
    /// A decoder whose pictures go to every rung as they are (the CPU path, and `h264_cuvid`).
    pub fn plain(channel: &str, decoder: ffmpeg::decoder::Video) -> Self {
        Self {
            channel: channel.to_string(),
            decoder: HwDecoder::plain(decoder),
            scaler: None,
            software_reported: false,
            fallbacks: None,
        }
    }

    /// FFmpeg's `h264` decoder with the CUDA hwaccel on GPU `gpu` (NVDEC), pictures kept in GPU
    /// memory, and a graph that scales them for `rungs` with `filter`.
    pub fn cuda(
        channel: &str,
        gpu: u32,
        source: &VideoParams,
        filter: ScaleFilter,
        rungs: &[Rung],
        fallbacks: Fallbacks,
    ) -> Result<Self, HwError> {
        let decoder = open_cuda_decoder(gpu, source)?;
        let scaler = ChannelScaler::new(channel, filter, rungs, fallbacks.clone());
        Ok(Self {
            channel: channel.to_string(),
            decoder,
            scaler: Some(scaler),
            software_reported: false,
            fallbacks: Some(fallbacks),
        })
    }

    /// A software decoder with a graph of `filter` (a software one): the GPU path's plumbing
    /// without a GPU.
    #[cfg(test)]
    pub fn with_graph(
        channel: &str,
        decoder: ffmpeg::decoder::Video,
        filter: ScaleFilter,
        rungs: &[Rung],
        fallbacks: Fallbacks,
    ) -> Self {
        let mut d = Self::plain(channel, decoder);
        d.scaler = Some(ChannelScaler::new(channel, filter, rungs, fallbacks.clone()));
        d.fallbacks = Some(fallbacks);
        d
    }

    /// What the rungs get for a decoded picture. `Err`: a GPU picture that cannot be downloaded,
    /// so the GPU is unusable and decoding has to move to the CPU.
    pub fn route(&mut self, picture: frame::Video) -> Result<Routed, HwError> {
        if self.decoder.wants_hw() && !hwctx::is_hw_frame(&picture) && !self.software_reported {
            self.software_reported = true;
            let why = self.decoder.fallback().unwrap_or_else(|| "it returned a picture in system memory".to_string());
            tracing::warn!(channel = %self.channel, reason = %why, "NVDEC is not decoding this stream; the CPU decodes it");
            if let Some(f) = &self.fallbacks {
                f.decoder.inc();
            }
        }
        match self.scaler.as_mut() {
            Some(scaler) => scaler.route(picture),
            None => shared(picture),
        }
    }
}

impl Deref for SourceDecoder {
    type Target = ffmpeg::decoder::Video;
    fn deref(&self) -> &Self::Target {
        &self.decoder
    }
}

impl DerefMut for SourceDecoder {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.decoder
    }
}

fn open_cuda_decoder(gpu: u32, source: &VideoParams) -> Result<HwDecoder, HwError> {
    let device = HwDevice::cuda_shared(gpu)?;
    let codec =
        ffmpeg::decoder::find(codec::Id::H264).ok_or_else(|| HwError("no h264 decoder in this FFmpeg".into()))?;
    if !hwctx::decoder_supports(codec, ffmpeg::ffi::AVHWDeviceType::AV_HWDEVICE_TYPE_CUDA) {
        return Err(HwError("FFmpeg's h264 decoder in this build has no CUDA hwaccel (NVDEC)".into()));
    }
    let mut ctx = codec::Context::new_with_codec(codec);
    crate::ffi::set_extradata(&mut ctx, &source.avcc).map_err(|e| HwError(e.to_string()))?;
    // As the CPU decoder: slice threads, never frame threads (which hold back a picture per
    // thread). NVDEC ignores them (libavcodec hands it whole pictures); they serve the software
    // decoding this decoder falls back to when NVDEC cannot take the stream.
    ctx.set_threading(codec::threading::Config { kind: codec::threading::Type::Slice, ..Default::default() });
    let mut decoder = ctx.decoder();
    decoder.set_packet_time_base(Rational(1, TIMESCALE as i32));
    HwDecoder::open(decoder, codec, Dictionary::new(), &device, Pixel::CUDA)
}

/// What a rung's encoder takes, fixed when it is opened.
pub enum EncoderInput {
    /// Pictures in system memory, yuv420p at the rung's size.
    System,
    /// GPU pictures of this frames context (the rung's graph output), as they come.
    Gpu(HwFrames),
}

impl EncoderInput {
    /// The input of an encoder opened on `first`: an NVENC encoder takes GPU pictures as they are
    /// when they are CUDA frames; everything else gets system memory.
    pub fn for_picture(first: &frame::Video, nvenc: bool) -> Self {
        match HwFrames::of_frame(first) {
            Some(frames) if nvenc && first.format() == Pixel::CUDA => EncoderInput::Gpu(frames),
            _ => EncoderInput::System,
        }
    }
}

/// Why a picture could not be made ready for a rung's encoder.
#[derive(Debug)]
pub enum FrameError {
    /// swscale refused.
    Scale(ffmpeg::Error),
    /// A GPU picture could not be used or downloaded; the GPU work moves to the CPU.
    Gpu(HwError),
}

/// Makes each picture a rung receives what its encoder takes: scaled on the CPU, downloaded from
/// the GPU, or passed on as it is, and stamped with the rung's pts and picture type.
pub struct RungFrames {
    width: u32,
    height: u32,
    scaler: Option<(scaling::Context, (Pixel, u32, u32))>,
    /// GPU pictures copied into the encoder's frames context from another one.
    pub copied_between_pools: u64,
}

impl RungFrames {
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height, scaler: None, copied_between_pools: 0 }
    }

    /// The picture to encode for `src` (at `pts`; an IDR is forced when `cut`).
    pub fn prepare(
        &mut self,
        src: &frame::Video,
        input: &EncoderInput,
        pts: Ticks,
        cut: bool,
    ) -> Result<frame::Video, FrameError> {
        let mut out = match input {
            EncoderInput::Gpu(frames) => {
                let same = HwFrames::of_frame(src).is_some_and(|f| f.same_context(frames));
                if !hwctx::is_hw_frame(src) || (src.width(), src.height()) != (self.width, self.height) {
                    return Err(FrameError::Gpu(HwError(format!(
                        "NVENC was opened for {}x{} GPU pictures of {frames:?}; this picture is {:?} {}x{}{}",
                        self.width,
                        self.height,
                        src.format(),
                        src.width(),
                        src.height(),
                        if hwctx::is_hw_frame(src) { "" } else { " in system memory" }
                    ))));
                }
                if same {
                    hwctx::frame_ref(src).map_err(FrameError::Gpu)?
                } else {
                    // The decoder re-initialised and the graph was rebuilt on new pools: NVENC
                    // keeps the context it was opened with, so the picture is copied into it on
                    // the GPU, instead of the rung leaving the GPU for libx264.
                    self.copied_between_pools += 1;
                    hwctx::copy_on_device(frames, src).map_err(|e| {
                        FrameError::Gpu(HwError(format!(
                            "NVENC was opened for GPU pictures of {frames:?}; this picture is from another \
                             frames context, and {}",
                            e.0
                        )))
                    })?
                }
            }
            EncoderInput::System if hwctx::is_hw_frame(src) => {
                let down = hwctx::download(src).map_err(FrameError::Gpu)?;
                if (down.format(), down.width(), down.height()) == (Pixel::YUV420P, self.width, self.height) {
                    down
                } else {
                    self.scale(&down)?
                }
            }
            EncoderInput::System => self.scale(src)?,
        };
        out.set_pts(Some(pts));
        out.set_kind(if cut { picture::Type::I } else { picture::Type::None });
        Ok(out)
    }

    fn scale(&mut self, src: &frame::Video) -> Result<frame::Video, FrameError> {
        let input = (src.format(), src.width(), src.height());
        if self.scaler.as_ref().is_none_or(|(_, i)| *i != input) {
            let ctx = scaling::Context::get(
                input.0,
                input.1,
                input.2,
                Pixel::YUV420P,
                self.width,
                self.height,
                scaling::Flags::BICUBIC,
            )
            .map_err(FrameError::Scale)?;
            self.scaler = Some((ctx, input));
        }
        let Some((ctx, _)) = self.scaler.as_mut() else { return Err(FrameError::Scale(ffmpeg::Error::Bug)) };
        let mut out = frame::Video::empty();
        ctx.run(src, &mut out).map_err(FrameError::Scale)?;
        Ok(out)
    }
}

/// A real H.264 IDR picture (256x144, High profile, as libx264 writes it, SPS and PPS in front,
/// Annex B) that the probe decodes: only a real picture makes NVDEC decode.
const PROBE_IDR: &[u8] = include_bytes!("../media/testdata/x264_idr_256x144_high.h264");

/// Probes the zero-copy path on GPU `gpu` as the pipeline runs it.
pub fn probe_zero_copy(gpu: u32) -> ZeroCopy {
    let device = match HwDevice::cuda_shared(gpu) {
        Ok(d) => d,
        Err(e) => return ZeroCopy { decode: Err(e.0.clone()), scale: Err(e.0) },
    };
    let decode = probe_decode(|source| open_cuda_decoder(gpu, source).map(SourceDecoder::hw_only))
        .and_then(|picture| match picture.format() {
            Pixel::CUDA => Ok(()),
            other => Err(format!("NVDEC gave a {other:?} picture instead of a CUDA one")),
        })
        .map_err(|e| format!("decoding H.264 into CUDA frames on GPU {gpu} failed: {e}"));
    let scale = ScaleFilter::available().and_then(|filter| {
        probe_scale(&device, filter).map_err(|e| format!("scaling CUDA frames on GPU {gpu} failed: {e}"))
    });
    ZeroCopy { decode, scale }
}

impl SourceDecoder {
    fn hw_only(decoder: HwDecoder) -> Self {
        Self { channel: "probe".into(), decoder, scaler: None, software_reported: false, fallbacks: None }
    }
}

/// Decodes [`PROBE_IDR`] with the decoder `open` makes; the picture, or why not.
fn probe_decode(open: impl FnOnce(&VideoParams) -> Result<SourceDecoder, HwError>) -> Result<frame::Video, String> {
    let params = avc::params_from_annexb(PROBE_IDR).map_err(|e| format!("the probe picture does not parse: {e}"))?;
    let mut decoder = open(&params).map_err(|e| e.0)?;
    let mut packet = Packet::copy(&avc::annexb_to_length_prefixed(PROBE_IDR));
    packet.set_pts(Some(0));
    packet.set_dts(Some(0));
    packet.set_flags(codec::packet::Flags::KEY);
    decoder.send_packet(&packet).map_err(|e| format!("the decoder refused the picture: {e}"))?;
    decoder.send_eof().map_err(|e| format!("the decoder refused end of stream: {e}"))?;
    let mut picture = frame::Video::empty();
    decoder.receive_frame(&mut picture).map_err(|e| match decoder.decoder.fallback() {
        Some(why) => format!("no picture ({e}): {why}"),
        None => format!("no picture: {e}"),
    })?;
    if let Some(why) = decoder.decoder.fallback() {
        return Err(why);
    }
    Ok(picture)
}

/// Uploads a grey NV12 picture, scales it to half size through a channel graph and downloads it.
fn probe_scale(device: &HwDevice, filter: ScaleFilter) -> Result<(), String> {
    let frames = HwFrames::alloc(device, Pixel::NV12, 256, 144).map_err(|e| e.0)?;
    let mut grey = frame::Video::new(Pixel::NV12, 256, 144);
    grey.data_mut(0).fill(128);
    grey.data_mut(1).fill(128);
    let on_gpu = hwctx::upload(&frames, &grey).map_err(|e| e.0)?;
    check_scaled(filter, &on_gpu, Some(&frames))
}

/// Runs `picture` through a one-rung graph of `filter` to 128x72 and checks what comes out (in
/// system memory, downloaded if need be): the size, and that a flat grey picture stayed grey.
fn check_scaled(filter: ScaleFilter, picture: &frame::Video, frames: Option<&HwFrames>) -> Result<(), String> {
    let rung = Rung { name: "probe".into(), width: 128, height: 72, bitrate: 0 };
    let mut scaler = ChannelScaler::new("probe", filter, &[rung], Fallbacks::unregistered());
    let mut out = scaler.scale(picture).map_err(|e| e.0)?;
    let scaled = out.pop().ok_or("no picture came out")?;
    if let Some(frames) = frames {
        let from = HwFrames::of_frame(&scaled).ok_or("the scaled picture is not in GPU memory")?;
        if from.same_context(frames) {
            return Err("the scaled picture is the input's (passthrough)".into());
        }
    }
    let scaled = if hwctx::is_hw_frame(&scaled) { hwctx::download(&scaled).map_err(|e| e.0)? } else { scaled };
    if (scaled.width(), scaled.height()) != (128, 72) {
        return Err(format!("the scaled picture is {}x{}, not 128x72", scaled.width(), scaled.height()));
    }
    let luma = scaled.data(0)[..128].iter().map(|&v| i32::from(v)).collect::<Vec<_>>();
    if luma.iter().any(|v| (v - 128).abs() > 2) {
        return Err(format!("a grey picture came out with luma {:?}…", &luma[..8]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RungConfig;
    use crate::transcode::ladder;

    fn rung(name: &str, width: u32, height: u32) -> Rung {
        Rung { name: name.into(), width, height, bitrate: 1_000_000 }
    }

    use crate::transcode::ladder::tests::rung as config;

    #[test]
    fn scale_npp_is_not_used_for_a_rung_of_the_sources_size() {
        let mut scaler = ChannelScaler::new(
            "t",
            ScaleFilter::Npp,
            &[rung("360p", 640, 360), rung("180p", 320, 180)],
            Fallbacks::unregistered(),
        );
        let same = frame::Video::new(Pixel::NV12, 640, 360);
        let e = scaler.scale(&same).err().expect("refused");
        assert!(e.0.starts_with("scale_npp would pass 640x360 pictures through"), "{}", e.0);
        // A larger source passes this check (and fails here only for want of CUDA frames).
        let larger = frame::Video::new(Pixel::NV12, 1280, 720);
        let e = scaler.scale(&larger).err().expect("no CUDA here");
        assert!(!e.0.starts_with("scale_npp would pass"), "{}", e.0);
    }

    #[test]
    fn one_graph_scales_every_rung_of_the_ladder() {
        let rungs = [rung("720p", 1280, 720), rung("480p", 854, 480), rung("360p", 640, 360)];
        assert_eq!(
            graph_description(ScaleFilter::Cuda, &rungs).as_deref(),
            Ok("[in]split=3[s0][s1][s2];\
                [s0]scale_cuda=w=1280:h=720:interp_algo=bicubic:passthrough=0[out0];\
                [s1]scale_cuda=w=854:h=480:interp_algo=bicubic:passthrough=0[out1];\
                [s2]scale_cuda=w=640:h=360:interp_algo=bicubic:passthrough=0[out2]")
        );
        assert_eq!(
            graph_description(ScaleFilter::Npp, &rungs[2..]).as_deref(),
            Ok("[in]scale_npp=w=640:h=360:interp_algo=cubic[out0]"),
            "one rung needs no split"
        );
    }

    #[test]
    fn the_graph_follows_the_ladder_plan_aspect_and_passthrough() {
        let mut ladder = vec![config("source", 0, 0), config("720p", 1280, 720), config("360p", 640, 360)];
        ladder[0] =
            RungConfig { passthrough: true, width: None, height: None, video_bitrate: None, ..ladder[0].clone() };
        // A phone held upright: portrait rungs, aspect kept.
        let plan = ladder::plan(&ladder, 720, 1280);
        assert_eq!(plan.passthrough.as_deref(), Some("source"));
        assert_eq!(
            graph_description(ScaleFilter::Cuda, &plan.encoded).as_deref(),
            Ok("[in]split=2[s0][s1];\
                [s0]scale_cuda=w=720:h=1280:interp_algo=bicubic:passthrough=0[out0];\
                [s1]scale_cuda=w=360:h=640:interp_algo=bicubic:passthrough=0[out1]")
        );
        // 4:3 into 16:9 boxes: the height decides; 480x360 for the 360p box.
        let plan = ladder::plan(&ladder, 640, 480);
        let desc = graph_description(ScaleFilter::Cuda, &plan.encoded).expect("even sizes");
        assert_eq!(desc, "[in]scale_cuda=w=480:h=360:interp_algo=bicubic:passthrough=0[out0]", "720p would upscale");
    }

    #[test]
    fn odd_sizes_are_refused_with_the_rung() {
        let e = graph_description(ScaleFilter::Cuda, &[rung("720p", 1280, 720), rung("odd", 853, 480)]);
        assert_eq!(e, Err("rung odd is 853x480: 4:2:0 pictures on the GPU need even, non-zero dimensions".into()));
        assert!(graph_description(ScaleFilter::Cuda, &[rung("odd", 640, 361)]).is_err());
        assert!(graph_description(ScaleFilter::Cuda, &[rung("zero", 0, 0)]).is_err());
        assert!(graph_description(ScaleFilter::Cuda, &[]).is_err());
    }

    #[test]
    fn debians_ffmpeg_has_scale_cuda() {
        assert_eq!(ScaleFilter::available(), Ok(ScaleFilter::Cuda));
    }

    #[test]
    fn the_probe_picture_decodes_and_scales_through_the_same_code_on_the_cpu() {
        crate::ffi::init();
        let picture = probe_decode(|params| {
            let codec = ffmpeg::decoder::find(codec::Id::H264).expect("h264");
            let mut ctx = codec::Context::new_with_codec(codec);
            crate::ffi::set_extradata(&mut ctx, &params.avcc).expect("avcC");
            let d = ctx.decoder().open_as(codec).and_then(|o| o.video());
            Ok(SourceDecoder::plain("probe", d.map_err(|e| HwError(e.to_string()))?))
        })
        .expect("decodes");
        assert_eq!((picture.format(), picture.width(), picture.height()), (Pixel::YUV420P, 256, 144));
        assert_eq!(check_scaled(ScaleFilter::Software, &picture, None), Ok(()));
        // A picture that is not grey is told apart.
        let mut dark = frame::Video::new(Pixel::YUV420P, 256, 144);
        for plane in 0..3 {
            dark.data_mut(plane).fill(16);
        }
        let e = check_scaled(ScaleFilter::Software, &dark, None).expect_err("not grey");
        assert!(e.starts_with("a grey picture came out with luma [16, 16"), "{e}");
    }

    #[test]
    fn without_a_gpu_the_zero_copy_probe_and_decoder_fail_with_the_reason() {
        if crate::ffi::cuda_driver_present() {
            return;
        }
        let probe = probe_zero_copy(0);
        let why = probe.decode.clone().expect_err("no GPU");
        assert!(why.starts_with("creating a CUDA device on GPU 0 failed") && why.contains("libcuda.so.1"), "{why}");
        assert_eq!(probe.scale, Err(why));
        let params = avc::params_from_annexb(PROBE_IDR).expect("params");
        let e =
            SourceDecoder::cuda("c", 0, &params, ScaleFilter::Cuda, &[rung("r", 128, 72)], Fallbacks::unregistered())
                .err()
                .expect("no GPU");
        assert!(e.0.contains("libcuda.so.1"), "{e}");
    }

    /// A mid-grey yuv420p picture.
    fn flat(width: u32, height: u32) -> frame::Video {
        let mut f = frame::Video::new(Pixel::YUV420P, width, height);
        for plane in 0..3 {
            f.data_mut(plane).fill(128);
        }
        f
    }

    fn software_decoder(rungs: &[Rung], fallbacks: Fallbacks) -> SourceDecoder {
        crate::ffi::init();
        let codec = ffmpeg::decoder::find(codec::Id::H264).expect("h264");
        let d = codec::Context::new_with_codec(codec).decoder().open_as(codec).and_then(|o| o.video()).expect("open");
        SourceDecoder::with_graph("test", d, ScaleFilter::Software, rungs, fallbacks)
    }

    #[test]
    fn the_graph_gives_each_rung_its_own_picture() {
        let fallbacks = Fallbacks::unregistered();
        let mut d = software_decoder(&[rung("a", 128, 72), rung("b", 64, 36)], fallbacks.clone());
        let mut src = flat(256, 144);
        src.set_pts(Some(3000));
        let Ok(Routed::PerRung(frames)) = d.route(src) else { panic!("per rung") };
        let sizes: Vec<_> = frames.iter().map(|f| (f.width(), f.height(), f.pts())).collect();
        assert_eq!(sizes, [(128, 72, Some(3000)), (64, 36, Some(3000))]);
        assert_eq!((fallbacks.scaler.get(), fallbacks.decoder.get()), (0, 0));
        // A picture of another size gets a new graph.
        let Ok(Routed::PerRung(frames)) = d.route(flat(320, 240)) else { panic!() };
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn a_ladder_the_gpu_cannot_scale_is_shared_and_counted() {
        let fallbacks = Fallbacks::unregistered();
        let mut d = software_decoder(&[rung("odd", 127, 72)], fallbacks.clone());
        assert_eq!(fallbacks.scaler.get(), 1);
        let Ok(Routed::Shared(f)) = d.route(flat(256, 144)) else { panic!("shared") };
        assert_eq!(f.width(), 256);
    }

    #[test]
    fn a_graph_that_fails_moves_scaling_to_the_cpu_for_good() {
        let fallbacks = Fallbacks::unregistered();
        let mut d = software_decoder(&[rung("a", 128, 72)], fallbacks.clone());
        // A picture the graph's source cannot take (no buffers): building or pushing fails.
        let broken = frame::Video::empty();
        let Ok(Routed::Shared(_)) = d.route(broken) else { panic!("shared") };
        assert_eq!(fallbacks.scaler.get(), 1);
        let Ok(Routed::Shared(f)) = d.route(flat(256, 144)) else { panic!("shared") };
        assert_eq!((f.width(), fallbacks.scaler.get()), (256, 1), "no retry, counted once");
    }

    #[test]
    fn rung_frames_are_scaled_stamped_and_typed() {
        let mut rf = RungFrames::new(64, 36);
        let mut src = flat(256, 144);
        src.set_kind(picture::Type::I);
        let out = rf.prepare(&src, &EncoderInput::System, 9000, false).expect("scaled");
        assert_eq!((out.width(), out.height(), out.format(), out.pts()), (64, 36, Pixel::YUV420P, Some(9000)));
        assert_eq!(out.kind(), picture::Type::None, "only cuts are forced to IDR");
        let cut = rf.prepare(&src, &EncoderInput::System, 12_000, true).expect("scaled");
        assert_eq!(cut.kind(), picture::Type::I);
        assert!(matches!(EncoderInput::for_picture(&src, true), EncoderInput::System), "system memory for NVENC too");
    }

    #[test]
    fn hardware_frames_are_scaled_per_rung_on_the_device_and_downloaded_for_libx264() {
        use crate::ffi::hwctx::tests::{flat_nv12, vulkan_or_skip};
        let Some(device) = vulkan_or_skip() else { return };
        let frames = HwFrames::alloc(&device, Pixel::NV12, 256, 144).expect("frames context");
        let picture = hwctx::upload(&frames, &flat_nv12(256, 144, 128)).expect("upload");
        // The probe's check, on a real device: a grey picture scaled on it comes back grey.
        assert_eq!(check_scaled(ScaleFilter::Vulkan, &picture, Some(&frames)), Ok(()));

        let fallbacks = Fallbacks::unregistered();
        let rungs = [rung("a", 128, 72), rung("b", 64, 36)];
        let mut scaler = ChannelScaler::new("test", ScaleFilter::Vulkan, &rungs, fallbacks.clone());
        let Ok(Routed::PerRung(out)) = scaler.route(hwctx::frame_ref(&picture).expect("ref")) else {
            panic!("per rung")
        };
        assert_eq!(fallbacks.scaler.get(), 0);
        for (f, r) in out.iter().zip(&rungs) {
            assert!(hwctx::is_hw_frame(f), "scaled on the device, left there");
            assert_eq!((f.width(), f.height()), (r.width, r.height));
            assert!(!HwFrames::of_frame(f).expect("frames").same_context(&frames), "the rung's own frames");
        }
        // libx264's rung: the GPU picture is downloaded and made yuv420p, stamped.
        let mut rf = RungFrames::new(64, 36);
        let input = EncoderInput::for_picture(&out[1], true);
        assert!(matches!(input, EncoderInput::System), "only CUDA frames go to NVENC as they are");
        let x264 = rf.prepare(&out[1], &input, 3000, true).expect("downloaded");
        assert_eq!((x264.format(), x264.width(), x264.height(), x264.pts()), (Pixel::YUV420P, 64, 36, Some(3000)));
        assert_eq!(x264.kind(), picture::Type::I);
        assert!(!hwctx::is_hw_frame(&x264));
        // An encoder fed GPU frames of one context takes its rung's pictures as they are…
        let rung_frames = HwFrames::of_frame(&out[1]).expect("frames");
        let gpu = EncoderInput::Gpu(rung_frames);
        let same = rf.prepare(&out[1], &gpu, 6000, false).expect("as it is");
        assert!(hwctx::is_hw_frame(&same) && same.pts() == Some(6000) && same.kind() == picture::Type::None);
        // …and refuses any other, which moves the rung to libx264.
        let Err(FrameError::Gpu(e)) = rf.prepare(&out[0], &gpu, 9000, false) else { panic!("another size") };
        assert!(e.0.contains("for 64x36 GPU pictures") && e.0.ends_with("128x72"), "{e}");
        // A picture of the rung's size from another context (a graph rebuilt after the decoder
        // re-initialised) is copied into the encoder's on the device where the device can copy
        // between pools (CUDA); Mesa's Vulkan here cannot, and says so.
        let mut rebuilt = ChannelScaler::new("test", ScaleFilter::Vulkan, &rungs, fallbacks.clone());
        let Ok(Routed::PerRung(again)) = rebuilt.route(hwctx::frame_ref(&picture).expect("ref")) else {
            panic!("per rung")
        };
        assert!(!HwFrames::of_frame(&again[1]).expect("frames").same_context(&HwFrames::of_frame(&out[1]).expect("f")));
        match rf.prepare(&again[1], &gpu, 9000, false) {
            Ok(copy) => {
                let into = HwFrames::of_frame(&copy).expect("a GPU picture");
                assert!(into.same_context(&HwFrames::of_frame(&out[1]).expect("frames")), "in NVENC's pool");
                assert_eq!((copy.width(), copy.height(), copy.pts()), (64, 36, Some(9000)));
            }
            Err(FrameError::Gpu(e)) => {
                assert!(e.0.contains("copying a picture between two GPU frame pools failed"), "{e}")
            }
            Err(e) => panic!("{e:?}"),
        }
        assert_eq!(rf.copied_between_pools, 1);
        let Err(FrameError::Gpu(e)) = rf.prepare(&flat(64, 36), &gpu, 9000, false) else { panic!("system memory") };
        assert!(e.0.ends_with("in system memory"), "{e}");

        // A ladder the device cannot scale: the picture is downloaded once, for every rung.
        let mut odd = ChannelScaler::new("test", ScaleFilter::Vulkan, &[rung("odd", 63, 36)], fallbacks.clone());
        let Ok(Routed::Shared(f)) = odd.route(picture) else { panic!("shared") };
        assert!(!hwctx::is_hw_frame(&f));
        assert_eq!((f.format(), f.width(), f.height(), fallbacks.scaler.get()), (Pixel::NV12, 256, 144, 1));
    }
}
