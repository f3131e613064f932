//! Packages one rendition and publishes it into the store: the [`RenditionSink`] behind a rung's
//! encoder, and the writer of the passthrough and audio renditions.
//!
//! It segments what it is given ([`Segmenter`]), records each part and segment in the channel's
//! [`ChannelWindow`], and applies what that changes to the store: objects first, then the
//! playlists that list them, then the progress that wakes blocked requests, so that a woken
//! request always finds what it was promised.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use crate::config::HlsConfig;
use crate::media::{Container, EncodedPacket, RenditionSink, VideoParams, secs_to_ticks, ticks_to_secs};
use crate::metrics::Metrics;
use crate::package::fmp4::TrackParams;
use crate::package::playlist;
use crate::package::segmenter::{Output, Part, Segment, Segmenter};
use crate::package::window::{ChannelWindow, CompleteSegment, Leaving, Rendering, wall_clock};
use crate::store::{Cacheability, ChannelObjects, ObjectName, Progress};
use crate::sync::lock;

/// What every rendition publisher of one channel's publish shares.
#[derive(Clone)]
pub struct Packaging {
    pub channel: String,
    pub window: Arc<Mutex<ChannelWindow>>,
    pub objects: Arc<ChannelObjects>,
    pub metrics: Arc<Metrics>,
    /// The `hls` settings the publish began with.
    pub hls: HlsConfig,
    pub container: Container,
    /// The id of the latest timed metadata on the window's board; publishers compare it with
    /// what they have taken, so that checking for news costs no lock.
    pub metadata_latest: Arc<AtomicU32>,
}

pub struct RenditionPublisher {
    shared: Packaging,
    rendition: String,
    segmenter: Option<Segmenter>,
    /// The parameters the current segmenter was made for.
    track: Option<TrackParams>,
    /// Wall-clock time of pts 0, for EXT-X-PROGRAM-DATE-TIME (one anchor for all renditions).
    anchor: SystemTime,
    /// The latest timed-metadata id this rendition has taken.
    metadata_seen: u32,
    /// `end` ran (or began): the drop guard below has nothing to do.
    finished: bool,
}

impl Drop for RenditionPublisher {
    /// A publisher dropped without `end` — the channel thread panicked — still ends its playlist,
    /// so that players and blocked requests are not left waiting for parts that never come. What
    /// the segmenter holds is dropped unflushed: flushing is what may have panicked.
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.segmenter = None;
            self.close_playlist();
        }
    }
}

impl RenditionPublisher {
    /// A publisher of `rendition`; `anchor` is the wall-clock time of pts 0.
    pub fn new(shared: &Packaging, rendition: &str, anchor: SystemTime) -> Self {
        Self {
            metadata_seen: shared.metadata_latest.load(Ordering::Acquire),
            shared: shared.clone(),
            rendition: rendition.to_string(),
            segmenter: None,
            track: None,
            anchor,
            finished: false,
        }
    }

    /// Starts (or restarts, on new parameters) the track: a new init segment, and a discontinuity
    /// if segments were already published with the old one.
    pub fn start_track(&mut self, track: TrackParams) {
        // Publishers repeat sequence headers (some every second); only a change starts a new track.
        if self.track.as_ref() == Some(&track) {
            return;
        }
        let had_track = self.track.replace(track.clone()).is_some();
        if let Some(mut old) = self.segmenter.take() {
            self.publish_output(old.finish_parts());
        }
        let part_target = secs_to_ticks(self.shared.hls.part_duration);
        let segmenter = Segmenter::with_parts(track.clone(), Some(part_target)).with_container(self.shared.container);
        // MPEG-TS has no init segment: every part carries its tables.
        let init = segmenter.init_segment();
        let mut w = lock(&self.shared.window);
        let log = w.rendition_mut(&self.rendition).expect("rendition log created at publish start");
        let init_msn = log.start_track(&track, had_track, init.is_some());
        drop(w);
        if let (Some(msn), Some(bytes)) = (init_msn, init) {
            let name = ObjectName::Init { rendition: &self.rendition, msn };
            self.shared.objects.put(&name, vec![bytes], Cacheability::Immutable);
        }
        self.segmenter = Some(segmenter);
    }

    fn publish_output(&mut self, out: Output) {
        // When a packet completes a segment, its last part and the segment appear in one playlist
        // update: a client woken by the part must not see a hint for a part that never comes.
        let completes = out.segment.is_some();
        let count = out.parts.len();
        for (i, part) in out.parts.into_iter().enumerate() {
            self.publish_part(part, !(completes && i + 1 == count));
        }
        if let Some(seg) = out.segment {
            self.publish_segment(seg);
        }
    }

    /// Publishes a part of the segment being built: its object, then (when `announce`) the
    /// playlists that list it and the progress that wakes blocked requests.
    fn publish_part(&mut self, part: Part, announce: bool) {
        let published_at = SystemTime::now();
        let (channel, rendition) = (&self.shared.channel, &self.rendition);
        let mut w = lock(&self.shared.window);
        let Some(log) = w.rendition_mut(rendition) else { return };
        let msn = log.next_msn();
        let name = ObjectName::Part { rendition, msn, part: u64::from(part.index), container: self.shared.container };
        self.shared.objects.put(&name, part.fragment.chunks, Cacheability::Immutable);
        let parts = log.add_part(
            name.file(),
            wall_clock(self.anchor, part.start_pts),
            ticks_to_secs(part.duration),
            part.independent,
        );
        let mut progress = Progress { msn, parts, ..Progress::default() };
        for posted in w.board.published(&part.metadata) {
            if let Ok(latency) = published_at.duration_since(posted) {
                self.shared.metrics.metadata_latency.with_label_values(&[channel]).observe(latency.as_secs_f64());
            }
        }
        if announce {
            progress.part_target_us = self.render_playlist(&w);
            self.shared.objects.set_progress(rendition, progress);
        }
        drop(w);
        let metrics = &self.shared.metrics;
        if let Ok(latency) = published_at.duration_since(part.ingest_time) {
            metrics.part_latency.with_label_values(&[channel, rendition]).observe(latency.as_secs_f64());
        }
        let package = metrics.stage_latency.with_label_values(&[channel, rendition, "package"]);
        for arrival in &part.arrivals {
            if let Ok(latency) = published_at.duration_since(*arrival) {
                package.observe(latency.as_secs_f64());
            }
        }
    }

    fn publish_segment(&mut self, seg: Segment) {
        let published_at = SystemTime::now();
        let (channel, rendition, container) = (&self.shared.channel, &self.rendition, self.shared.container);
        let objects = &self.shared.objects;
        let mut w = lock(&self.shared.window);
        let Some(log) = w.rendition_mut(rendition) else { return };
        let msn = log.next_msn();
        let name = ObjectName::Segment { rendition, msn, container };
        let bytes = seg.fragment.len() as u64;
        objects.put(&name, seg.fragment.chunks, Cacheability::Immutable);
        let complete = CompleteSegment {
            duration: ticks_to_secs(seg.duration),
            bytes,
            program_date_time: wall_clock(self.anchor, seg.start_pts),
            frames: seg.frames,
        };
        let added = log.add_segment(name.file(), complete, self.shared.hls.window, Instant::now());
        if let Some(raised) = added.raised_target {
            // Segments cut on the source's keyframes (a passthrough rung in the ladder) are as
            // long as the encoder's GOP: OBS's "auto" keyframe interval makes them 8 s or more.
            // Otherwise a gap in the source's timestamps (a stalled publisher) does it.
            tracing::warn!(
                channel = %channel,
                rendition = %rendition,
                segment_seconds = complete.duration,
                segment_duration = self.shared.hls.segment_duration,
                "segment longer than hls.segment_duration; EXT-X-TARGETDURATION raised to {raised}. With a \
                 passthrough rung, segments are cut on the source's keyframes: set the encoder's keyframe \
                 interval to hls.segment_duration or a divisor of it. Without one, the source's timestamps \
                 jumped"
            );
        }
        for Leaving { msn, init, parts } in added.expired {
            objects.remove(&ObjectName::Segment { rendition, msn, container });
            if let Some(msn) = init {
                objects.remove(&ObjectName::Init { rendition, msn });
            }
            for part in 0..parts {
                objects.remove(&ObjectName::Part { rendition, msn, part, container });
            }
        }
        let part_target_us = self.render_playlist(&w);
        objects.set_progress(rendition, Progress { msn: msn + 1, parts: 0, ended: false, part_target_us });
        if let Some(master) = w.master_update() {
            objects.put(&ObjectName::Master, vec![Bytes::from(master)], Cacheability::Live);
        }
        drop(w);

        let metrics = &self.shared.metrics;
        metrics.segments_published.with_label_values(&[channel, rendition]).inc();
        metrics
            .hls_target_duration
            .with_label_values(&[channel, rendition])
            .set(i64::try_from(added.target_duration).unwrap_or(i64::MAX));
        if let Ok(latency) = published_at.duration_since(seg.program_date_time) {
            metrics.segment_latency.with_label_values(&[channel, rendition]).observe(latency.as_secs_f64());
        }
    }

    /// Renders this rendition's playlist and its delta update into the store.
    /// Returns the PART-TARGET it advertises, in microseconds (0 when there is no playlist).
    fn render_playlist(&self, w: &ChannelWindow) -> u64 {
        let how = Rendering { part_duration: self.shared.hls.part_duration, container: self.shared.container };
        let Some(playlist) = w.media_playlist(&self.rendition, how) else { return 0 };
        let rendition = self.rendition.as_str();
        let objects = &self.shared.objects;
        let text = |text: String| vec![Bytes::from(text)];
        objects.put(
            &ObjectName::MediaPlaylist { rendition },
            text(playlist::render_media(&playlist)),
            Cacheability::Live,
        );
        objects.put(
            &ObjectName::Delta { rendition },
            text(playlist::render_media_delta(&playlist)),
            Cacheability::Live,
        );
        playlist::part_target(&playlist).map_or(0, |t| (t * 1e6).round() as u64)
    }

    /// Flushes what the segmenter holds and ends the playlist.
    pub fn end(&mut self) {
        self.finished = true;
        if let Some(mut s) = self.segmenter.take() {
            self.publish_output(s.finish_parts());
        }
        self.close_playlist();
    }

    /// Ends the playlist (ENDLIST, no preload hint) unless another session follows at once.
    fn close_playlist(&mut self) {
        let mut w = lock(&self.shared.window);
        if w.restarting {
            return;
        }
        let Some(msn) = w.end(&self.rendition) else { return };
        let part_target_us = self.render_playlist(&w);
        self.shared.objects.set_progress(&self.rendition, Progress { msn, parts: 0, ended: true, part_target_us });
    }
}

impl RenditionSink for RenditionPublisher {
    fn params(&mut self, params: VideoParams) {
        self.start_track(TrackParams::Video(params));
    }

    fn packet(&mut self, packet: EncodedPacket) {
        let Some(segmenter) = self.segmenter.as_mut() else {
            tracing::warn!(
                channel = %self.shared.channel,
                rendition = %self.rendition,
                "packet before stream parameters; dropped"
            );
            return;
        };
        if self.shared.metadata_latest.load(Ordering::Acquire) != self.metadata_seen {
            // The board, not the counter, says what there is: the counter is set after the entry
            // is on the board, so an entry may already be there while the counter lags.
            let w = lock(&self.shared.window);
            for m in w.board.after(self.metadata_seen) {
                segmenter.add_metadata(m.clone());
                self.metadata_seen = m.id;
            }
        }
        let out = segmenter.push_parts(packet);
        self.publish_output(out);
    }

    fn finish(mut self: Box<Self>) {
        self.end();
    }
}
