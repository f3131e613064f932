//! The cadence of a publisher's video, measured from its timestamps: frames per second and the
//! interval between keyframes. Operators read both to tell a misconfigured encoder (a 10 s GOP,
//! a 60 fps phone) from a problem of ours; sans-IO, so it is tested on timestamps alone.

use prometheus::Gauge;

use crate::media::{TIMESCALE, Ticks, ticks_to_secs};

/// How much media time one frame-rate reading spans: long enough that RTMP's millisecond
/// timestamps (33 and 34 ms at 30 fps) average out, short enough to follow a change within a
/// second or two.
const WINDOW: Ticks = TIMESCALE as Ticks;

/// What one frame made measurable.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CadenceUpdate {
    /// Frames per second of media time over the window that just closed.
    pub frame_rate: Option<f64>,
    /// Seconds from the previous keyframe to this one.
    pub keyframe_interval: Option<f64>,
}

/// Frame rate and keyframe interval of one publish's video.
#[derive(Debug, Clone, Default)]
pub struct VideoCadence {
    /// Decode time of the window's first frame, and the frames since then (that one included).
    window: Option<(Ticks, u32)>,
    /// Presentation time of the latest keyframe.
    last_keyframe: Option<Ticks>,
}

impl VideoCadence {
    pub fn new() -> Self {
        Self::default()
    }

    /// One source video frame, in decode order.
    pub fn frame(&mut self, dts: Ticks, pts: Ticks, keyframe: bool) -> CadenceUpdate {
        let mut update = CadenceUpdate::default();
        self.window = match self.window {
            // Timestamps that go back (the timeline never does this by more than a muxer's
            // interleaving) start a new window rather than give a negative span.
            Some((start, frames)) if dts < start => {
                tracing::trace!(start, dts, frames, "video decode time went back; frame-rate window restarted");
                Some((dts, 1))
            }
            Some((start, frames)) if dts - start >= WINDOW => {
                update.frame_rate = Some(f64::from(frames) / ticks_to_secs(dts - start));
                Some((dts, 1))
            }
            Some((start, frames)) => Some((start, frames.saturating_add(1))),
            None => Some((dts, 1)),
        };
        if keyframe {
            if let Some(last) = self.last_keyframe
                && pts > last
            {
                update.keyframe_interval = Some(ticks_to_secs(pts - last));
            }
            self.last_keyframe = Some(pts);
        }
        update
    }
}

/// A publish's `ladderd_ingest_frame_rate` and `ladderd_ingest_keyframe_interval_seconds`, fed
/// by a [`VideoCadence`]; both read 0 again once the publish is over.
pub struct CadenceGauges {
    cadence: VideoCadence,
    frame_rate: Gauge,
    keyframe_interval: Gauge,
    /// What this publish last set, so that its end zeroes only values that are still its own (a
    /// publish that took the channel over may have set them since).
    last: (f64, f64),
}

impl CadenceGauges {
    pub fn new(frame_rate: Gauge, keyframe_interval: Gauge) -> Self {
        Self { cadence: VideoCadence::new(), frame_rate, keyframe_interval, last: (0.0, 0.0) }
    }

    pub fn frame(&mut self, dts: Ticks, pts: Ticks, keyframe: bool) {
        let update = self.cadence.frame(dts, pts, keyframe);
        if let Some(fps) = update.frame_rate {
            self.frame_rate.set(fps);
            self.last.0 = fps;
        }
        if let Some(interval) = update.keyframe_interval {
            self.keyframe_interval.set(interval);
            self.last.1 = interval;
        }
    }
}

impl Drop for CadenceGauges {
    fn drop(&mut self) {
        if self.frame_rate.get() == self.last.0 {
            self.frame_rate.set(0.0);
        }
        if self.keyframe_interval.get() == self.last.1 {
            self.keyframe_interval.set(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RTMP's millisecond timestamps of frame `i` at `fps`, on the 90 kHz clock.
    fn rtmp_time(i: i64, fps: i64) -> Ticks {
        (i * 1000 / fps) * 90
    }

    #[test]
    fn thirty_fps_with_millisecond_timestamps_reads_thirty() {
        let mut c = VideoCadence::new();
        let rates: Vec<f64> =
            (0..=90).filter_map(|i| c.frame(rtmp_time(i, 30), rtmp_time(i, 30), false).frame_rate).collect();
        assert_eq!(rates.len(), 3, "one reading per second of media: {rates:?}");
        assert!(rates.iter().all(|r| (r - 30.0).abs() < 0.05), "{rates:?}");
    }

    #[test]
    fn a_change_of_frame_rate_shows_within_two_windows() {
        let mut c = VideoCadence::new();
        let mut t = 0;
        for _ in 0..60 {
            c.frame(t, t, false);
            t += 3000;
        }
        let mut last = None;
        for _ in 0..60 {
            last = c.frame(t, t, false).frame_rate.or(last);
            t += 6000;
        }
        assert_eq!(last, Some(15.0));
    }

    #[test]
    fn keyframe_interval_is_measured_between_consecutive_keyframes() {
        let mut c = VideoCadence::new();
        let mut intervals = Vec::new();
        // A 2 s GOP, then a 4 s one; B-frames make pts run ahead of dts by two frames.
        for (i, key) in (0..=180).map(|i| (i, i == 0 || i == 60 || i == 180)) {
            let dts = i * 3000;
            intervals.extend(c.frame(dts, dts + 6000, key).keyframe_interval);
        }
        assert_eq!(intervals, vec![2.0, 4.0]);
    }

    #[test]
    fn time_going_back_restarts_the_window_without_a_reading() {
        let mut c = VideoCadence::new();
        c.frame(90_000, 90_000, false);
        assert_eq!(c.frame(0, 0, false), CadenceUpdate::default());
        assert_eq!(c.frame(45_000, 45_000, false).frame_rate, None);
        assert_eq!(c.frame(90_000, 90_000, false).frame_rate, Some(2.0));
    }

    #[test]
    fn the_gauges_follow_the_publish_and_read_zero_after_it() {
        let m = crate::metrics::Metrics::new();
        let fps = m.ingest_frame_rate.with_label_values(&["c"]);
        let gop = m.ingest_keyframe_interval.with_label_values(&["c"]);
        let mut g = CadenceGauges::new(fps.clone(), gop.clone());
        for i in 0..=60 {
            g.frame(i * 3000, i * 3000, i % 30 == 0);
        }
        assert_eq!((fps.get(), gop.get()), (30.0, 1.0));
        drop(g);
        assert_eq!((fps.get(), gop.get()), (0.0, 0.0));

        // A publish that took the channel over has set the gauges: the old one's end leaves them.
        let mut old = CadenceGauges::new(fps.clone(), gop.clone());
        let mut new = CadenceGauges::new(fps.clone(), gop.clone());
        for i in 0..=60 {
            old.frame(i * 3000, i * 3000, i % 30 == 0);
        }
        for i in 0..=100 {
            new.frame(i * 3600, i * 3600, i % 50 == 0);
        }
        drop(old);
        assert_eq!((fps.get(), gop.get()), (25.0, 2.0));
        drop(new);
        assert_eq!((fps.get(), gop.get()), (0.0, 0.0));
    }
}
