//! Cuts one rendition's packets into segments, sans-IO: packets in, finished segments out. The
//! segmenter cuts exactly where a packet says `segment_start`, never elsewhere.

use std::time::SystemTime;

use bytes::Bytes;

use crate::media::{EncodedPacket, Ticks};
use crate::package::fmp4::{Fragment, TrackParams};

/// A finished segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Presentation time of the segment's first sample (90 kHz).
    pub start_pts: Ticks,
    /// Duration (90 kHz).
    pub duration: Ticks,
    pub fragment: Fragment,
    /// Samples in the segment.
    pub frames: u32,
    /// When the segment's first sample arrived at ingest.
    pub program_date_time: SystemTime,
}

pub struct Segmenter {
    track: TrackParams,
}

impl Segmenter {
    pub fn new(track: TrackParams) -> Self {
        Self { track }
    }

    pub fn init_segment(&self) -> Bytes {
        crate::package::fmp4::init_segment(&self.track)
    }

    /// Adds a packet (decode order); returns the segment it closed, if it opened a new one.
    pub fn push(&mut self, _packet: EncodedPacket) -> Option<Segment> {
        todo!("Segmenter::push")
    }

    /// Closes the open segment, if it holds any sample.
    pub fn finish(&mut self) -> Option<Segment> {
        todo!("Segmenter::finish")
    }
}
