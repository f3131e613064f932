//! The transcoding threads of one publish: a decode thread and one scale+encode thread per rung.

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Hardware;
use crate::media::{Alignment, RenditionSink, Sample, Ticks, VideoParams};
use crate::metrics::Metrics;
use crate::transcode::ladder::Rung;

/// What to transcode.
#[derive(Debug, Clone)]
pub struct TranscodeSpec {
    pub channel: String,
    pub source: VideoParams,
    pub rungs: Vec<Rung>,
    pub alignment: Alignment,
    pub segment_target: Ticks,
    pub x264_preset: String,
    pub max_frame_rate: f64,
    pub encoder_threads: usize,
    pub hardware: Hardware,
}

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("{0}")]
    Todo(String),
}

pub struct Transcoder {}

impl Transcoder {
    pub fn start(
        _spec: TranscodeSpec,
        _sinks: Vec<Box<dyn RenditionSink>>,
        _metrics: Arc<Metrics>,
    ) -> Result<Self, TranscodeError> {
        todo!()
    }
    pub fn new_params(&mut self, _params: VideoParams) -> Result<(), TranscodeError> {
        todo!()
    }
    pub fn push(&mut self, _sample: Sample, _at: SystemTime) -> Result<(), TranscodeError> {
        todo!()
    }
    pub fn finish(self) -> Result<(), TranscodeError> {
        todo!()
    }
}
