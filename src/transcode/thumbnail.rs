//! Channel thumbnails: every `hls.thumbnail_interval` of media time, one decoded source picture
//! becomes a small JPEG (`/live/{channel}/thumb.jpg`), for channel lists and dashboards.
//!
//! The decode thread only decides which picture and hands over a reference to it (the decoded
//! frame is shared, not copied). Scaling and JPEG encoding run on a thread of their own behind a
//! queue of one: when that thread is still busy with the previous thumbnail, the decode thread
//! does not wait, it offers the next picture instead, so a slow thumbnail never delays a rung.

use std::fmt;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use bytes::Bytes;
use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::software::scaling;
use ffmpeg_next::{Packet, Rational, codec, frame};

use crate::ffi::SharedFrame;
use crate::media::Ticks;

/// Thumbnail width in pixels (smaller sources keep their own width).
pub const WIDTH: u32 = 320;
/// JPEG quantiser scale (2 is best, 31 worst): 4 keeps text legible at a few kilobytes.
const QUALITY: i32 = 4;

/// Where finished thumbnails go (the channel's store).
pub type ThumbnailSink = Arc<dyn Fn(Bytes) + Send + Sync>;

/// What a transcode needs to make thumbnails.
#[derive(Clone)]
pub struct ThumbnailSpec {
    /// Media time between thumbnails.
    pub interval: Ticks,
    pub sink: ThumbnailSink,
}

impl fmt::Debug for ThumbnailSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThumbnailSpec").field("interval", &self.interval).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("{what}: {source}")]
    Ffmpeg { what: &'static str, source: ffmpeg::Error },
    #[error("cannot download the picture from the GPU: {0}")]
    Download(String),
}

fn ffmpeg_error(what: &'static str) -> impl FnOnce(ffmpeg::Error) -> ThumbnailError {
    move |source| ThumbnailError::Ffmpeg { what, source }
}

/// The size of a source's thumbnail: [`WIDTH`] wide (or the source's width if narrower), the
/// source's aspect ratio kept, both even (4:2:0 chroma halves each dimension).
pub fn thumbnail_size(width: u32, height: u32) -> (u32, u32) {
    let even = |v: u32| (v & !1).max(2);
    let w = even(width.min(WIDTH));
    let h = (u64::from(height) * u64::from(w) + u64::from(width.max(1)) / 2) / u64::from(width.max(1));
    (w, even(u32::try_from(h).unwrap_or(u32::MAX)))
}

/// Scales pictures to thumbnail size and encodes them as baseline JPEG with FFmpeg's `mjpeg`.
/// The scaler and the encoder are kept while the source's size and format stay the same.
pub struct JpegEncoder {
    scaler: Option<(scaling::Context, (Pixel, u32, u32))>,
    encoder: Option<(ffmpeg::encoder::Video, (u32, u32))>,
    pictures: i64,
}

impl Default for JpegEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl JpegEncoder {
    pub fn new() -> Self {
        crate::ffi::init();
        Self { scaler: None, encoder: None, pictures: 0 }
    }

    /// The JPEG file of one picture.
    pub fn encode(&mut self, picture: &frame::Video) -> Result<Bytes, ThumbnailError> {
        // On the zero-copy GPU path the picture is in GPU memory: bring this one down (once per
        // thumbnail interval, on this thread, never on the decode thread).
        let downloaded;
        let picture = if crate::ffi::hwctx::is_hw_frame(picture) {
            downloaded = crate::ffi::hwctx::download(picture).map_err(|e| ThumbnailError::Download(e.to_string()))?;
            &downloaded
        } else {
            picture
        };
        let input = (picture.format(), picture.width(), picture.height());
        let (w, h) = thumbnail_size(input.1, input.2);
        if self.scaler.as_ref().is_none_or(|(_, i)| *i != input) {
            // YUVJ420P is full-range 4:2:0, what JPEG (JFIF) expects; swscale expands the
            // source's video range into it.
            let ctx = scaling::Context::get(input.0, input.1, input.2, Pixel::YUVJ420P, w, h, scaling::Flags::BICUBIC)
                .map_err(ffmpeg_error("create the thumbnail scaler"))?;
            self.scaler = Some((ctx, input));
        }
        if self.encoder.as_ref().is_none_or(|(_, size)| *size != (w, h)) {
            self.encoder = Some((open_mjpeg(w, h)?, (w, h)));
        }
        let (Some((scaler, _)), Some((encoder, _))) = (self.scaler.as_mut(), self.encoder.as_mut()) else {
            unreachable!("both set above");
        };
        let mut small = frame::Video::empty();
        scaler.run(picture, &mut small).map_err(ffmpeg_error("scale the thumbnail"))?;
        small.set_pts(Some(self.pictures));
        self.pictures += 1;
        encoder.send_frame(&small).map_err(ffmpeg_error("send the thumbnail to the JPEG encoder"))?;
        // MJPEG has no delay: a picture in is a JPEG out, so EAGAIN here is an error too.
        let mut packet = Packet::empty();
        encoder.receive_packet(&mut packet).map_err(ffmpeg_error("receive the JPEG"))?;
        Ok(Bytes::copy_from_slice(packet.data().unwrap_or_default()))
    }
}

fn open_mjpeg(width: u32, height: u32) -> Result<ffmpeg::encoder::Video, ThumbnailError> {
    let codec = ffmpeg::encoder::find_by_name("mjpeg")
        .ok_or(ThumbnailError::Ffmpeg { what: "find the mjpeg encoder", source: ffmpeg::Error::EncoderNotFound })?;
    let mut enc =
        codec::Context::new_with_codec(codec).encoder().video().map_err(ffmpeg_error("allocate the mjpeg encoder"))?;
    enc.set_width(width);
    enc.set_height(height);
    enc.set_format(Pixel::YUVJ420P);
    enc.set_color_range(ffmpeg::util::color::Range::JPEG);
    // Square pixels. A sample aspect ratio is also what makes the encoder write the JFIF APP0
    // segment (JFIF 1.02 §4), which is how tools recognise the bytes as a JPEG file.
    enc.set_aspect_ratio(Rational(1, 1));
    // Pictures are independent; the time base only has to be valid.
    enc.set_time_base(Rational(1, 1));
    // A fixed quantiser: rate control has nothing to aim at with one picture every few seconds.
    enc.set_qmin(QUALITY);
    enc.set_qmax(QUALITY);
    enc.open_as(codec).map_err(ffmpeg_error("open the mjpeg encoder"))
}

/// The decode thread's side: picks a picture every interval and hands it to the thumbnail thread.
pub struct Thumbnailer {
    interval: Ticks,
    /// Pts from which the next thumbnail is due; `None` before the first one.
    next: Option<Ticks>,
    tx: Option<SyncSender<Arc<SharedFrame>>>,
    thread: Option<JoinHandle<()>>,
}

impl Thumbnailer {
    pub fn start(channel: &str, spec: ThumbnailSpec) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(1);
        let name = channel.to_owned();
        let thread =
            std::thread::Builder::new().name(format!("thumb-{channel}")).spawn(move || run(&name, rx, spec.sink))?;
        Ok(Self { interval: spec.interval.max(1), next: None, tx: Some(tx), thread: Some(thread) })
    }

    /// A decoded source picture at `pts`; whether it was taken. It is when a thumbnail is due and
    /// the thumbnail thread's queue has room; otherwise it is left alone at the cost of an integer
    /// comparison (or a failed `try_send`), never a wait.
    pub fn offer(&mut self, pts: Ticks, picture: &Arc<SharedFrame>) -> bool {
        if self.next.is_some_and(|next| pts < next) {
            return false;
        }
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(picture.clone()) {
            Ok(()) => {
                self.next = Some(pts.saturating_add(self.interval));
                true
            }
            // Still busy with earlier ones: a later picture is offered instead.
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => {
                self.tx = None;
                false
            }
        }
    }
}

impl Drop for Thumbnailer {
    fn drop(&mut self) {
        // Closing the queue ends the thread after at most the thumbnail it is encoding, so that
        // nothing is put in the store once the transcode is over.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(channel: &str, rx: Receiver<Arc<SharedFrame>>, sink: ThumbnailSink) {
    let mut encoder = JpegEncoder::new();
    let mut failures = 0u64;
    for picture in rx {
        match encoder.encode(picture.frame()) {
            Ok(jpeg) => sink(jpeg),
            Err(e) => {
                failures += 1;
                // A thumbnail that fails once will likely fail for every picture: say so at
                // first, then sparingly.
                if failures <= 3 || failures.is_multiple_of(100) {
                    tracing::warn!(channel, error = %e, failures, "thumbnail not made");
                }
                // A fresh encoder for the next picture, in case this one is in a bad state.
                encoder = JpegEncoder::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::testutil;

    #[test]
    fn thumbnails_are_320_wide_even_and_keep_the_aspect_ratio() {
        assert_eq!(thumbnail_size(1920, 1080), (320, 180));
        assert_eq!(thumbnail_size(1280, 720), (320, 180));
        assert_eq!(thumbnail_size(640, 480), (320, 240));
        // A phone held upright.
        assert_eq!(thumbnail_size(1080, 1920), (320, 568));
        // Narrower than a thumbnail: its own width, made even.
        assert_eq!(thumbnail_size(161, 91), (160, 90));
        assert_eq!(thumbnail_size(3, 1), (2, 2));
        // Nonsense sizes give a valid one rather than a division by zero.
        assert_eq!(thumbnail_size(0, 0), (2, 2));
    }

    /// A real decoded picture: FFmpeg's test pattern at `w`×`h`, in the decoder's own format.
    fn picture(w: u32, h: u32) -> frame::Video {
        crate::ffi::init();
        let mut f = frame::Video::new(Pixel::YUV420P, w, h);
        for plane in 0..3 {
            let stride = f.stride(plane);
            let data = f.data_mut(plane);
            for (i, b) in data.iter_mut().enumerate() {
                // Diagonal stripes, so that a wrong stride or scale shows as a different image.
                *b = (((i % stride) + i / stride) * 4 % 256) as u8;
            }
        }
        f
    }

    fn ffprobe(jpeg: &[u8]) -> String {
        // The demuxer is named: probing a pipe by content alone can take a few kilobytes of
        // compressed stripes for MPEG-TS. The JPEG decoder still has to read the picture.
        let args = ["-f", "jpeg_pipe", "-show_entries", "stream=codec_name,width,height,pix_fmt", "-of", "csv=p=0"];
        testutil::ffprobe(jpeg, &args).0.trim().to_string()
    }

    #[test]
    fn a_picture_becomes_a_jpeg_that_ffprobe_reads_at_thumbnail_size() {
        let mut enc = JpegEncoder::new();
        let jpeg = enc.encode(&picture(1280, 720)).expect("encode");
        assert_eq!(&jpeg[..4], [0xFF, 0xD8, 0xFF, 0xE0], "SOI, then the JFIF APP0 segment");
        assert_eq!(&jpeg[6..11], b"JFIF\0");
        assert!(jpeg.ends_with(&[0xFF, 0xD9]), "EOI");
        assert_eq!(ffprobe(&jpeg), "mjpeg,320,180,yuvj420p");
        assert!(jpeg.len() < 64 * 1024, "{} bytes", jpeg.len());
        // A source that changes size gets a thumbnail of its new shape.
        let portrait = enc.encode(&picture(720, 1280)).expect("encode");
        assert_eq!(ffprobe(&portrait), "mjpeg,320,568,yuvj420p");
    }

    #[test]
    fn a_picture_in_gpu_memory_is_downloaded_for_its_thumbnail() {
        use crate::ffi::hwctx::{HwFrames, tests::flat_nv12, tests::vulkan_or_skip, upload};
        // A hardware device this machine has (Mesa's software Vulkan) stands in for CUDA: the
        // download is the same libavutil call for both.
        let Some(device) = vulkan_or_skip() else { return };
        let frames = HwFrames::alloc(&device, Pixel::NV12, 640, 360).expect("frames context");
        let on_gpu = upload(&frames, &flat_nv12(640, 360, 90)).expect("upload");
        let jpeg = JpegEncoder::new().encode(&on_gpu).expect("a thumbnail of a GPU picture");
        assert_eq!(ffprobe(&jpeg), "mjpeg,320,180,yuvj420p");
    }

    #[test]
    fn one_picture_per_interval_of_media_time_becomes_a_thumbnail() {
        let (done_tx, done) = mpsc::channel::<Bytes>();
        let done_tx = Mutex::new(done_tx);
        let sink: ThumbnailSink = Arc::new(move |jpeg| {
            let _ = done_tx.lock().expect("lock").send(jpeg);
        });
        let mut t = Thumbnailer::start("test", ThumbnailSpec { interval: 90_000, sink }).expect("start");
        let frame = Arc::new(SharedFrame::new(picture(640, 360)));
        let mut taken = Vec::new();
        // 3.5 s of 30 fps media.
        for i in 0..105 {
            if t.offer(i * 3000, &frame) {
                taken.push(i * 3000);
                let jpeg = done.recv_timeout(Duration::from_secs(10)).expect("the thumbnail is made");
                assert!(jpeg.starts_with(&[0xFF, 0xD8]));
            }
        }
        assert_eq!(taken, vec![0, 90_000, 180_000, 270_000]);
    }

    #[test]
    fn a_busy_thumbnail_thread_never_holds_up_the_decode_thread() {
        let (started_tx, started) = mpsc::channel::<()>();
        let (gate_tx, gate) = mpsc::channel::<()>();
        let (started_tx, gate) = (Mutex::new(started_tx), Mutex::new(gate));
        let made = Arc::new(Mutex::new(0));
        let sink_made = made.clone();
        // A sink that waits for the test's word, as a very slow encoder would.
        let sink: ThumbnailSink = Arc::new(move |_| {
            let _ = started_tx.lock().expect("lock").send(());
            let _ = gate.lock().expect("lock").recv();
            *sink_made.lock().expect("lock") += 1;
        });
        let mut t = Thumbnailer::start("test", ThumbnailSpec { interval: 90_000, sink }).expect("start");
        let frame = Arc::new(SharedFrame::new(picture(640, 360)));
        assert!(t.offer(0, &frame));
        started.recv_timeout(Duration::from_secs(10)).expect("the first thumbnail is being made");
        // Due, and queued behind the one being made.
        assert!(t.offer(90_000, &frame));
        // Due, but the queue is full: refused at once, and offered again on the next picture.
        let before = Instant::now();
        assert!(!t.offer(180_000, &frame));
        assert!(!t.offer(183_000, &frame));
        // (An offer that waited would wait for ever: the gate stays shut until below.)
        assert!(before.elapsed() < Duration::from_secs(2));
        gate_tx.send(()).expect("open");
        started.recv_timeout(Duration::from_secs(10)).expect("the queued thumbnail is being made");
        // Room again: the next picture is taken, however late, and sets the next due time.
        assert!(t.offer(186_000, &frame));
        assert!(!t.offer(270_000, &frame), "due again only at 276 000");
        for _ in 0..2 {
            gate_tx.send(()).expect("open");
        }
        drop(t);
        assert_eq!(*made.lock().expect("lock"), 3, "everything taken was made before the drop returned");
    }
}
