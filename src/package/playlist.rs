//! Playlist text, as pure functions of a snapshot (RFC 8216bis §4).

use std::time::SystemTime;

/// One segment line of a media playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistSegment {
    pub uri: String,
    /// The `EXT-X-MAP` URI this segment needs.
    pub map_uri: String,
    /// Seconds.
    pub duration: f64,
    pub program_date_time: SystemTime,
    /// An `EXT-X-DISCONTINUITY` precedes this segment.
    pub discontinuity: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaPlaylist {
    pub target_duration: u64,
    pub media_sequence: u64,
    pub discontinuity_sequence: u64,
    pub segments: Vec<PlaylistSegment>,
    pub ended: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub uri: String,
    pub bandwidth: u64,
    pub average_bandwidth: u64,
    pub width: u32,
    pub height: u32,
    pub frame_rate: f64,
    pub codecs: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudioRendition {
    pub group_id: String,
    pub name: String,
    pub uri: String,
    pub channels: u8,
    pub language: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MasterPlaylist {
    pub variants: Vec<Variant>,
    pub audio: Option<AudioRendition>,
}

pub fn render_media(_p: &MediaPlaylist) -> String {
    todo!("render_media")
}

pub fn render_master(_p: &MasterPlaylist) -> String {
    todo!("render_master")
}

/// (peak, average) bits per second of segments given as (bytes, seconds).
pub fn measured_bandwidth(_segments: &[(u64, f64)]) -> (u64, u64) {
    todo!("measured_bandwidth")
}
