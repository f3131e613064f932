//! A libavfilter graph with one `buffer` source and several `buffersink`s, owned by a Rust value:
//! what a channel's scaling graph is (one picture in, one picture per rung out). The filters
//! between them come from a description string (`transcode::scale` builds it).
//!
//! ffmpeg-next wraps filter graphs, but not hardware input (`av_buffersrc_parameters_set` with a
//! `hw_frames_ctx`), nor `av_buffersink_get_hw_frames_ctx`; and its graph API panics on an
//! allocation failure or a NUL in a string. So the whole graph is wrapped here.
#![deny(clippy::undocumented_unsafe_blocks, clippy::multiple_unsafe_ops_per_block)]

use std::ffi::{CString, c_int};
use std::ptr::{self, NonNull};

use ffmpeg_next::ffi as sys;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::util::error::EAGAIN;
use ffmpeg_next::{Rational, frame};

use super::averror::error_text;
use super::hwctx::{self, HwError, HwFrames};

/// What the graph's source is given.
#[derive(Debug)]
pub struct GraphInput<'a> {
    pub width: u32,
    pub height: u32,
    /// `Pixel::CUDA` for GPU frames, otherwise the software format.
    pub format: Pixel,
    /// Of the pts of the frames pushed.
    pub time_base: Rational,
    pub sample_aspect_ratio: Rational,
    /// The frames context of the input frames; required for a hardware `format`.
    pub hw_frames: Option<&'a HwFrames>,
}

/// What a sink had for us.
pub enum Pulled {
    Frame(frame::Video),
    /// Nothing yet: push another picture.
    Again,
    /// The graph has ended.
    Eof,
}

/// A configured filter graph: `buffer` source named `in`, `buffersink`s named `out0`…`outN-1`.
pub struct ScaleGraph {
    graph: NonNull<sys::AVFilterGraph>,
    /// Owned by `graph` (avfilter_graph_free frees every filter in it).
    source: *mut sys::AVFilterContext,
    /// Owned by `graph`.
    sinks: Vec<*mut sys::AVFilterContext>,
}

// SAFETY: a filter graph has no thread affinity; libavfilter runs it on whichever thread calls
// it, and ScaleGraph is used only through `&mut self` (one thread at a time). The filter
// contexts are owned by the graph and move with it. CUDA filters push their CUDA context around
// each use, and CUDA contexts may be used from any thread.
unsafe impl Send for ScaleGraph {}

/// An AVFilterInOut list, freed on drop (what avfilter_graph_parse_ptr leaves in it, or all of it
/// when parsing never happens).
struct InOut(*mut sys::AVFilterInOut);

impl InOut {
    /// Puts a new entry `name` → pad 0 of `ctx` in front of the list.
    fn push_front(&mut self, name: &str, ctx: *mut sys::AVFilterContext) -> Result<(), HwError> {
        let name = CString::new(name).map_err(|e| HwError(e.to_string()))?;
        // SAFETY: avfilter_inout_alloc has no preconditions; it returns a zeroed entry or null.
        let entry = unsafe { sys::avfilter_inout_alloc() };
        if entry.is_null() {
            return Err(HwError("allocating a filter graph link failed: out of memory".into()));
        }
        // SAFETY: `entry` is a fresh, zeroed AVFilterInOut that nothing else refers to; av_strdup
        // copies `name` (null on failure, which avfilter_graph_parse_ptr treats as an unnamed
        // link and fails on). `ctx` belongs to the graph being built. From here the list owns
        // `entry`, and avfilter_inout_free frees it with its name.
        let copy = unsafe { sys::av_strdup(name.as_ptr()) };
        // SAFETY: as above; plain field writes into the entry nothing else refers to.
        unsafe { (*entry).name = copy };
        // SAFETY: as above.
        unsafe { (*entry).filter_ctx = ctx };
        // SAFETY: as above.
        unsafe { (*entry).pad_idx = 0 };
        // SAFETY: as above.
        unsafe { (*entry).next = self.0 };
        self.0 = entry;
        Ok(())
    }
}

impl Drop for InOut {
    fn drop(&mut self) {
        // SAFETY: the list is null or entries from avfilter_inout_alloc that this value owns
        // (what avfilter_graph_parse_ptr left); avfilter_inout_free frees them and nulls the head.
        unsafe { sys::avfilter_inout_free(&mut self.0) };
    }
}

fn fail(what: &str, code: c_int) -> HwError {
    HwError(format!("{what} failed: {}", error_text(code)))
}

impl std::fmt::Debug for Pulled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pulled::Frame(v) => write!(f, "Frame({:?} {}x{} pts {:?})", v.format(), v.width(), v.height(), v.pts()),
            Pulled::Again => f.write_str("Again"),
            Pulled::Eof => f.write_str("Eof"),
        }
    }
}

impl ScaleGraph {
    /// Builds and configures the graph `description`, whose input is labelled `[in]` and whose
    /// outputs are labelled `[out0]`…`[out{outputs-1}]`. The graph runs on the caller's thread.
    pub fn new(input: &GraphInput<'_>, description: &str, outputs: usize) -> Result<Self, HwError> {
        if hwctx::is_hw_pixel(input.format) && input.hw_frames.is_none() {
            return Err(HwError("a graph of GPU frames needs their frames context".into()));
        }
        // SAFETY: avfilter_graph_alloc has no preconditions; it returns a new graph or null.
        let raw = unsafe { sys::avfilter_graph_alloc() };
        let graph =
            NonNull::new(raw).ok_or_else(|| HwError("allocating a filter graph failed: out of memory".into()))?;
        // From here `this` owns the graph, so an early return frees it with every filter in it.
        let mut this = ScaleGraph { graph, source: ptr::null_mut(), sinks: Vec::new() };
        // SAFETY: the graph is new and has no filters: nb_threads may be set now
        // (libavfilter/avfilter.h). One thread: the graph runs on the decode thread, and a CUDA
        // filter's work runs on the GPU anyway.
        unsafe { (*graph.as_ptr()).nb_threads = 1 };

        let (w, h) = (input.width, input.height);
        let sar = if input.sample_aspect_ratio.numerator() > 0 { input.sample_aspect_ratio } else { Rational(1, 1) };
        let args = format!(
            "video_size={w}x{h}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
            sys::AVPixelFormat::from(input.format) as c_int,
            input.time_base.numerator(),
            input.time_base.denominator(),
            sar.numerator(),
            sar.denominator()
        );
        this.source = this.create("buffer", "in", Some(&args))?;
        if let Some(frames) = input.hw_frames {
            this.set_source_frames(frames)?;
        }
        for i in 0..outputs {
            let sink = this.create("buffersink", &format!("out{i}"), None)?;
            this.sinks.push(sink);
        }

        // avfilter_graph_parse_ptr's `outputs` are the open outputs of the existing graph (our
        // source, `[in]`), its `inputs` the open inputs (our sinks, `[outN]`).
        let mut open_outputs = InOut(ptr::null_mut());
        open_outputs.push_front("in", this.source)?;
        let mut open_inputs = InOut(ptr::null_mut());
        for (i, sink) in this.sinks.iter().enumerate().rev() {
            open_inputs.push_front(&format!("out{i}"), *sink)?;
        }
        let description = CString::new(description).map_err(|e| HwError(e.to_string()))?;
        // SAFETY: the graph and the filters in both lists are live; the lists are valid (built
        // above) and are updated in place to what stays unlinked, which InOut frees on drop.
        let ret = unsafe {
            sys::avfilter_graph_parse_ptr(
                graph.as_ptr(),
                description.as_ptr(),
                &mut open_inputs.0,
                &mut open_outputs.0,
                ptr::null_mut(),
            )
        };
        if ret < 0 {
            return Err(fail("parsing the scaling graph", ret));
        }
        // SAFETY: the graph is live and fully linked; avfilter_graph_config checks it and
        // negotiates formats; the log context may be null.
        let ret = unsafe { sys::avfilter_graph_config(graph.as_ptr(), ptr::null_mut()) };
        if ret < 0 {
            return Err(fail("configuring the scaling graph", ret));
        }
        Ok(this)
    }

    fn create(&mut self, filter: &str, name: &str, args: Option<&str>) -> Result<*mut sys::AVFilterContext, HwError> {
        let filter_name = CString::new(filter).map_err(|e| HwError(e.to_string()))?;
        // SAFETY: a NUL-terminated name; avfilter_get_by_name returns a static filter or null.
        let definition = unsafe { sys::avfilter_get_by_name(filter_name.as_ptr()) };
        if definition.is_null() {
            return Err(HwError(format!("the {filter} filter is not in this FFmpeg build")));
        }
        let name_c = CString::new(name).map_err(|e| HwError(e.to_string()))?;
        let args_c = args.map(CString::new).transpose().map_err(|e| HwError(e.to_string()))?;
        let mut ctx: *mut sys::AVFilterContext = ptr::null_mut();
        // SAFETY: the graph is live; `definition` is a static filter; the strings live across
        // the call (args may be null); on success `ctx` is a filter owned by the graph.
        let ret = unsafe {
            sys::avfilter_graph_create_filter(
                &mut ctx,
                definition,
                name_c.as_ptr(),
                args_c.as_ref().map_or(ptr::null(), |a| a.as_ptr()),
                ptr::null_mut(),
                self.graph.as_ptr(),
            )
        };
        if ret < 0 || ctx.is_null() {
            return Err(fail(&format!("creating the {filter} filter"), ret));
        }
        Ok(ctx)
    }

    /// Tells the source which frames context its frames come from (libavfilter/buffersrc.h:
    /// `hw_frames_ctx` of AVBufferSrcParameters, for a hardware pixel format). It must be set
    /// before the graph is configured, when the source gives it to its output link.
    fn set_source_frames(&mut self, frames: &HwFrames) -> Result<(), HwError> {
        // SAFETY: no preconditions; returns a zeroed parameter block (format unset) or null.
        let params = unsafe { sys::av_buffersrc_parameters_alloc() };
        if params.is_null() {
            return Err(HwError("allocating the source's parameters failed: out of memory".into()));
        }
        // Only hw_frames_ctx is set: the rest came with the filter's arguments, and the fields
        // left at their "unset" values do not override them. The parameters stay ours
        // (buffersrc.h: "all the allocated fields remain owned by the caller"); buffersrc takes
        // its own reference to the frames context.
        // SAFETY: `params` is a fresh block we own; storing a borrowed pointer in it (ours stays
        // ours: nothing frees it through `params`).
        unsafe { (*params).hw_frames_ctx = frames.raw() };
        // SAFETY: `self.source` is this graph's live buffersrc, not yet configured; `params` is
        // valid, and `frames` holds a live reference while the call runs (the filter takes its
        // own reference, not ours).
        let ret = unsafe { sys::av_buffersrc_parameters_set(self.source, params) };
        // SAFETY: `params` came from av_buffersrc_parameters_alloc and is freed once, with av_free,
        // as buffersrc.h says; the frames context it points at is not freed with it.
        unsafe { sys::av_free(params.cast()) };
        if ret < 0 {
            return Err(fail("giving the scaling graph its frames context", ret));
        }
        Ok(())
    }

    /// The number of outputs.
    pub fn outputs(&self) -> usize {
        self.sinks.len()
    }

    /// Gives the graph a picture; the graph takes a new reference to it, `frame` stays the caller's.
    pub fn push(&mut self, frame: &frame::Video) -> Result<(), HwError> {
        // SAFETY: the source is a live buffersrc of this graph and `frame` a valid frame;
        // av_buffersrc_write_frame adds a reference (AV_BUFFERSRC_FLAG_KEEP_REF) and does not
        // modify `frame`.
        let ret = unsafe { sys::av_buffersrc_write_frame(self.source, super::frame_ptr(frame)) };
        if ret < 0 {
            return Err(fail("giving a picture to the scaling graph", ret));
        }
        Ok(())
    }

    /// Takes the next picture from output `sink`.
    pub fn pull(&mut self, sink: usize) -> Result<Pulled, HwError> {
        let Some(&ctx) = self.sinks.get(sink) else {
            return Err(HwError(format!("the scaling graph has no output {sink}")));
        };
        let mut frame = frame::Video::empty();
        // SAFETY: `ctx` is a live buffersink of this graph and `frame` a blank frame, which
        // av_buffersink_get_frame fills with a new reference (or leaves blank on failure).
        let ret = unsafe { sys::av_buffersink_get_frame(ctx, super::frame_mut_ptr(&mut frame)) };
        match ret {
            r if r >= 0 => Ok(Pulled::Frame(frame)),
            r if r == sys::AVERROR(EAGAIN) => Ok(Pulled::Again),
            sys::AVERROR_EOF => Ok(Pulled::Eof),
            r => Err(fail("taking a picture from the scaling graph", r)),
        }
    }

    /// The frames context of output `sink`'s pictures (av_buffersink_get_hw_frames_ctx), for
    /// GPU outputs once the graph is configured: what an encoder of those pictures is given.
    pub fn sink_frames(&self, sink: usize) -> Option<HwFrames> {
        let ctx = *self.sinks.get(sink)?;
        // SAFETY: `ctx` is a live, configured buffersink; the function returns its input link's
        // frames context, a borrowed reference that lives as long as the graph, or null.
        let raw = unsafe { sys::av_buffersink_get_hw_frames_ctx(ctx) };
        // SAFETY: `raw` is null or live for the duration of this call (the graph is borrowed).
        unsafe { HwFrames::from_borrowed(raw) }
    }
}

impl Drop for ScaleGraph {
    fn drop(&mut self) {
        let mut raw = self.graph.as_ptr();
        // SAFETY: the graph this value owns, freed exactly once here with every filter in it
        // (the source and sink pointers die with it and are not used after).
        unsafe { sys::avfilter_graph_free(&mut raw) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(w: u32, h: u32) -> GraphInput<'static> {
        GraphInput {
            width: w,
            height: h,
            format: Pixel::YUV420P,
            time_base: Rational(1, 90_000),
            sample_aspect_ratio: Rational(0, 1),
            hw_frames: None,
        }
    }

    fn picture(w: u32, h: u32, pts: i64) -> frame::Video {
        let mut f = frame::Video::new(Pixel::YUV420P, w, h);
        for plane in 0..3 {
            f.data_mut(plane).fill(128);
        }
        f.set_pts(Some(pts));
        f
    }

    #[test]
    fn one_picture_in_gives_one_picture_per_output() {
        super::super::init();
        let desc = "[in]split=2[s0][s1];[s0]scale=w=160:h=90[out0];[s1]scale=w=64:h=36[out1]";
        let mut g = ScaleGraph::new(&input(320, 180), desc, 2).expect("graph");
        assert_eq!(g.outputs(), 2);
        for pts in [0, 3000, 6000] {
            let f = picture(320, 180, pts);
            g.push(&f).expect("push");
            assert_eq!(f.width(), 320, "the caller's frame is left as it was");
            for (sink, size) in [(0, (160, 90)), (1, (64, 36))] {
                match g.pull(sink).expect("pull") {
                    Pulled::Frame(out) => {
                        assert_eq!((out.width(), out.height()), size);
                        assert_eq!(out.pts(), Some(pts));
                    }
                    other => panic!("{other:?}"),
                }
                assert!(matches!(g.pull(sink), Ok(Pulled::Again)));
            }
        }
        assert!(g.sink_frames(0).is_none(), "software outputs have no frames context");
        assert!(g.pull(2).is_err());
    }

    #[test]
    fn bad_graphs_are_errors_not_panics() {
        super::super::init();
        let e = ScaleGraph::new(&input(320, 180), "[in]no_such_filter[out0]", 1).err().expect("no such filter");
        assert!(e.0.starts_with("parsing the scaling graph failed: "), "{e}");
        let e = ScaleGraph::new(&input(320, 180), "[in]scale=w=2:h=2[out1]", 1).err().expect("unknown label");
        assert!(e.0.contains("scaling graph failed"), "{e}");
        let e = ScaleGraph::new(&input(320, 180), "[in]null[out0]", 2).err().expect("an output left open");
        assert!(e.0.starts_with("configuring the scaling graph failed: "), "{e}");
        let cuda = GraphInput { format: Pixel::CUDA, ..input(320, 180) };
        let e = ScaleGraph::new(&cuda, "[in]null[out0]", 1).err().expect("no frames context");
        assert_eq!(e.0, "a graph of GPU frames needs their frames context");
        assert!(ScaleGraph::new(&input(320, 180), "[in]null[out0]\0", 1).is_err());
    }
}
