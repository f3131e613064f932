//! One publish's media timeline: RTMP's 32-bit millisecond timestamps unwrapped and rebased onto
//! the internal 90 kHz clock, so that the first media timestamp of the publish is 0, and kept
//! continuous when the publisher's clock jumps.

use crate::media::Ticks;

/// 90 kHz ticks per RTMP millisecond.
const TICKS_PER_MS: i64 = 90;

/// A timestamp more than this far ahead of the latest one of the publish is a jump of the source
/// clock, not media. A live encoder's timestamps follow its capture clock, so a network stall
/// delays packets without spacing their timestamps; only a publisher that stops sending both
/// tracks produces a real gap, and 10 s is several times the keyframe interval (2–4 s) of any
/// encoder configured for live ABR, so segment cutting sees such a gap as nothing but a stall.
const FORWARD_JUMP_MS: i64 = 10_000;
/// A timestamp more than this far behind the latest one of the publish is a jump of the source
/// clock. Within one track RTMP timestamps are decode times and never go back; the only normal
/// step back is one track interleaved behind the other, which muxers keep to tens of
/// milliseconds (and a few hundred at most when an encoder buffers audio).
const BACKWARD_JUMP_MS: i64 = 1_000;
/// Bounds of the step that separates a re-anchored timestamp from the latest one: at least 1 ms
/// so time moves forward, at most 100 ms (one frame at 10 fps) so a re-anchor leaves no gap
/// larger than a frame even when the step before the jump was a long one.
const MIN_STEP_MS: i64 = 1;
const MAX_STEP_MS: i64 = 100;

/// A jump of the publisher's clock that the timeline absorbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    /// The RTMP timestamp of the latest packet before the jump.
    pub from_ms: u32,
    /// The RTMP timestamp of the packet that jumped.
    pub to_ms: u32,
    /// Where that packet was placed, in milliseconds from the start of the publish.
    pub placed_ms: i64,
}

/// Maps the RTMP timestamps of one publish (audio and video together) onto [`Ticks`].
///
/// RTMP timestamps are 32-bit milliseconds that wrap after about 49.7 days, and two timestamps
/// are "adjacent" when they are within 2³¹ − 1 ms of each other (RTMP spec §5.3.1.1). So each
/// timestamp is placed nearest the previous one: a small step backwards (audio a few ms behind
/// the video just sent) stays a step backwards, and a jump from near 2³² to near 0 continues
/// forward. Values are relative to the first timestamp of the publish, so a track whose first
/// packet is a little older than the very first packet starts slightly below 0.
///
/// A timestamp that lands more than [`FORWARD_JUMP_MS`] ahead of or [`BACKWARD_JUMP_MS`] behind
/// the latest time of the publish means the publisher's clock jumped (an encoder or relay that
/// restarts its timestamps at 0, or skips ahead): that packet is placed one step after the latest
/// time instead, and later packets follow it. Both tracks share the one mapping, so when the
/// video jumps first, audio that jumped by the same amount lands next to it rather than being a
/// second jump, and the tracks stay in sync.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// The previous packet's RTMP timestamp and where it was placed, in milliseconds from the
    /// start of the publish.
    previous: Option<(u32, i64)>,
    /// The latest (largest) placed time and the RTMP timestamp that gave it.
    latest: (u32, i64),
    /// How far the latest time moved the last time it moved, within the step bounds.
    step: i64,
    /// The jump absorbed since [`Timeline::take_jump`] was last called.
    jump: Option<Jump>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self { previous: None, latest: (0, 0), step: MIN_STEP_MS, jump: None }
    }
}

impl Timeline {
    pub fn new() -> Self {
        Self::default()
    }

    /// The decode timestamp of a packet with this RTMP timestamp.
    pub fn dts(&mut self, rtmp_ms: u32) -> Ticks {
        let placed = match self.previous {
            None => {
                self.latest = (rtmp_ms, 0);
                0
            }
            Some((raw, at)) => {
                // The wrapping difference read as signed is the nearest step in either direction.
                let nearest = at.saturating_add(i64::from(rtmp_ms.wrapping_sub(raw) as i32));
                let (latest_ms, latest) = self.latest;
                let ahead = nearest.saturating_sub(latest);
                if (-BACKWARD_JUMP_MS..=FORWARD_JUMP_MS).contains(&ahead) {
                    nearest
                } else {
                    let placed = latest.saturating_add(self.step);
                    self.jump = Some(Jump { from_ms: latest_ms, to_ms: rtmp_ms, placed_ms: placed });
                    placed
                }
            }
        };
        let (_, latest) = self.latest;
        if placed > latest {
            self.step = placed.saturating_sub(latest).clamp(MIN_STEP_MS, MAX_STEP_MS);
            self.latest = (rtmp_ms, placed);
        }
        self.previous = Some((rtmp_ms, placed));
        placed.saturating_mul(TICKS_PER_MS)
    }

    /// Decode and presentation timestamps of a video frame: FLV carries the composition offset
    /// (pts − dts) in milliseconds next to the tag timestamp (FLV spec §E.4.3.1).
    pub fn video(&mut self, rtmp_ms: u32, composition_ms: i32) -> (Ticks, Ticks) {
        let dts = self.dts(rtmp_ms);
        (dts, dts.saturating_add(i64::from(composition_ms).saturating_mul(TICKS_PER_MS)))
    }

    /// The latest jump of the publisher's clock absorbed since the last call, if any.
    pub fn take_jump(&mut self) -> Option<Jump> {
        self.jump.take()
    }
}

/// A track whose timestamps have not advanced for this much media time (the frames it sent in
/// that time, at its measured frame duration) is reported as frozen.
pub const FROZEN_REPORT_MS: f64 = 3_000.0;

/// Keeps one track's RTMP timestamps advancing, before the [`Timeline`] places them.
///
/// A buggy encoder can keep sending a track with a timestamp that no longer moves (or that
/// wobbles in place) while its other track advances: placed as they come, those frames would pile
/// up at one instant, no part of that track would ever end, and the two tracks would read as two
/// clocks. A timestamp that does not advance on its own track (one up to [`BACKWARD_JUMP_MS`]
/// behind the track's previous one, equal included) is replaced by the previous one plus the
/// track's frame duration, measured from its advancing steps: the frames are timed by their
/// count, which is what their content says anyway. A step back further than that is a jump of
/// the publisher's clock, left to the timeline.
#[derive(Debug, Clone)]
pub struct TrackClock {
    /// The previous frame's timestamp as it arrived, and as it was handed on.
    previous: Option<(u32, u32)>,
    /// Milliseconds added to arriving timestamps since the track last froze (0 until then).
    offset: u32,
    /// The fraction of a millisecond by which the frame-counted time of the previous frame is
    /// later than the timestamp handed on for it.
    fraction: f64,
    /// Frame duration, milliseconds: the mean of the recent advancing steps.
    step_ms: f64,
    /// Those steps' sum and count (halved together now and then, so that the mean follows a
    /// change of frame rate).
    measured: (f64, f64),
    /// Media time timed by count in the current run of non-advancing timestamps.
    frozen_ms: f64,
    /// Whether the current run has been reported.
    reported: bool,
}

/// What [`TrackClock::place`] has to say about the track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Freeze {
    /// Nothing new.
    None,
    /// The track's timestamps have not advanced for [`FROZEN_REPORT_MS`] of its media; its frames
    /// are being timed by count. `at_ms` is the timestamp it is stuck at.
    Frozen { at_ms: u32 },
    /// A frozen track's timestamps advance again, after `frozen_ms` of media timed by count; they
    /// now run that much later than they arrive, so that the track stays where its frames put it.
    Resumed { frozen_ms: f64 },
}

impl TrackClock {
    /// A clock for a track whose frames last about `typical_step_ms` until measured.
    pub fn new(typical_step_ms: f64) -> Self {
        Self {
            previous: None,
            offset: 0,
            fraction: 0.0,
            step_ms: typical_step_ms,
            measured: (0.0, 0.0),
            frozen_ms: 0.0,
            reported: false,
        }
    }

    /// The timestamp to use for a frame that arrived with `rtmp_ms`, and what changed.
    pub fn place(&mut self, rtmp_ms: u32) -> (u32, Freeze) {
        let Some((arrived, handed_on)) = self.previous else {
            self.previous = Some((rtmp_ms, rtmp_ms));
            return (rtmp_ms, Freeze::None);
        };
        let delta = i64::from(rtmp_ms.wrapping_sub(arrived) as i32);
        let (placed, said) = if delta < -BACKWARD_JUMP_MS {
            // The publisher's clock jumped: the timeline re-anchors both tracks.
            self.offset = 0;
            self.fraction = 0.0;
            (rtmp_ms, self.advanced())
        } else if delta as f64 * 2.0 >= self.step_ms {
            // A step like a frame's (half of one at least: steps of a rounded clock vary).
            if self.frozen_ms == 0.0 && delta <= MAX_STEP_MS {
                // A mean, not the last step: AAC at 48 kHz alternates 21 and 22 ms steps.
                let (sum, count) = &mut self.measured;
                if *count >= 512.0 {
                    (*sum, *count) = (*sum / 2.0, *count / 2.0);
                }
                *sum += delta as f64;
                *count += 1.0;
                self.step_ms = *sum / *count;
            }
            let mut placed = rtmp_ms.wrapping_add(self.offset);
            if (placed.wrapping_sub(handed_on) as i32) <= 0 {
                // Resuming behind the frames counted meanwhile: continue after them.
                placed = handed_on.wrapping_add(self.step_ms.round().max(1.0) as u32);
                self.offset = placed.wrapping_sub(rtmp_ms);
            }
            self.fraction = 0.0;
            (placed, self.advanced())
        } else {
            // Not advancing: one frame duration on from the previous frame, at least 1 ms.
            let ahead = self.fraction + self.step_ms;
            let whole = ahead.floor().max(1.0);
            self.fraction = ahead - whole;
            self.frozen_ms += self.step_ms;
            let said = if !self.reported && self.frozen_ms >= FROZEN_REPORT_MS {
                self.reported = true;
                Freeze::Frozen { at_ms: rtmp_ms }
            } else {
                Freeze::None
            };
            (handed_on.wrapping_add(whole as u32), said)
        };
        self.previous = Some((rtmp_ms, placed));
        (placed, said)
    }

    /// Ends a run of non-advancing timestamps, if there was one.
    fn advanced(&mut self) -> Freeze {
        let said = if self.reported { Freeze::Resumed { frozen_ms: self.frozen_ms } } else { Freeze::None };
        self.frozen_ms = 0.0;
        self.reported = false;
        said
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_track_is_timed_by_its_frame_count_and_reported_once() {
        let mut c = TrackClock::new(20.0);
        // AAC at 48 kHz: 21.33 ms frames, as RTMP's milliseconds round them.
        let mut ms = 1_000.0f64;
        for _ in 0..100 {
            assert_eq!(c.place(ms.round() as u32), (ms.round() as u32, Freeze::None));
            ms += 1024.0 / 48.0;
        }
        let stuck = ms.round() as u32;
        let mut last = c.place(stuck).0;
        let mut frozen_at = None;
        for i in 1..=300 {
            let (placed, said) = c.place(if i % 2 == 0 { stuck } else { stuck - 1 });
            assert!(placed > last, "frame {i}: {placed} after {last}");
            last = placed;
            if let Freeze::Frozen { at_ms } = said {
                assert!(frozen_at.is_none(), "reported once");
                frozen_at = Some((i, at_ms));
            }
        }
        // Reported after 3 s of media (about 141 frames), stuck where it stuck.
        let (i, at) = frozen_at.expect("reported");
        assert!((135..=145).contains(&i) && (at == stuck || at == stuck - 1), "{i} {at}");
        // 300 frames later the counted time is 300 frame durations on: no drift from rounding.
        let expected = f64::from(stuck) + 300.0 * 1024.0 / 48.0;
        assert!((f64::from(last) - expected).abs() <= 2.0, "{last} vs {expected}");
        // The encoder's clock moves again from where it stuck: the track continues after the
        // frames counted meanwhile, and keeps that lead.
        let (placed, said) = c.place(stuck + 21);
        assert_eq!(placed, last + 21);
        assert!(matches!(said, Freeze::Resumed { frozen_ms } if frozen_ms > 6_000.0), "{said:?}");
        assert_eq!(c.place(stuck + 43), (last + 43, Freeze::None));
    }

    #[test]
    fn a_track_clock_leaves_advancing_wrapping_and_jumping_timestamps_alone() {
        let mut c = TrackClock::new(33.0);
        for ms in [u32::MAX - 40, u32::MAX - 7, 26, 59] {
            assert_eq!(c.place(ms), (ms, Freeze::None), "wraps forward");
        }
        // A small step back is timed by count; a step back of more than a second is the
        // publisher's clock jumping, which is the timeline's to absorb.
        assert_eq!(c.place(40), (59 + 33, Freeze::None));
        let mut c = TrackClock::new(33.0);
        c.place(50_000);
        assert_eq!(c.place(10), (10, Freeze::None));
    }

    #[test]
    fn first_timestamp_becomes_zero() {
        let mut t = Timeline::new();
        assert_eq!(t.dts(5_000), 0);
        assert_eq!(t.dts(5_033), 33 * 90);
        assert_eq!(t.dts(6_000), 1_000 * 90);
    }

    #[test]
    fn small_steps_backwards_stay_backwards() {
        let mut t = Timeline::new();
        assert_eq!(t.dts(1_000), 0);
        assert_eq!(t.dts(1_040), 40 * 90);
        // Audio interleaved a little behind the video.
        assert_eq!(t.dts(1_021), 21 * 90);
        // And a track that starts before the first packet of the publish goes slightly negative.
        assert_eq!(t.dts(990), -10 * 90);
        assert_eq!(t.take_jump(), None);
    }

    #[test]
    fn the_32_bit_wrap_continues_forward() {
        let mut t = Timeline::new();
        let start = u32::MAX - 99;
        assert_eq!(t.dts(start), 0);
        assert_eq!(t.dts(u32::MAX), 99 * 90);
        assert_eq!(t.dts(0), 100 * 90);
        assert_eq!(t.dts(400), 500 * 90);
        // A late packet from before the wrap still lands before it.
        assert_eq!(t.dts(u32::MAX - 9), 90 * 90);
        assert_eq!(t.take_jump(), None);
    }

    #[test]
    fn a_publish_can_span_several_wraps() {
        let mut t = Timeline::new();
        let mut expected: i64 = 0;
        let mut raw: u32 = 7;
        assert_eq!(t.dts(raw), 0);
        // Steps just short of a jump; go round three times.
        let step = FORWARD_JUMP_MS as u32;
        while expected < 3 << 32 {
            raw = raw.wrapping_add(step);
            expected += i64::from(step);
            assert_eq!(t.dts(raw), expected * 90);
        }
        assert_eq!(t.take_jump(), None);
    }

    #[test]
    fn a_reset_to_0_continues_the_timeline() {
        let mut t = Timeline::new();
        let hour = 3_600_000;
        assert_eq!(t.dts(hour), 0);
        assert_eq!(t.dts(hour + 20), 20 * 90);
        assert_eq!(t.dts(hour + 40), 40 * 90);
        assert_eq!(t.take_jump(), None);
        // The encoder restarts at 0: placed one step (the last 20 ms) after the latest time.
        assert_eq!(t.dts(0), 60 * 90);
        assert_eq!(t.take_jump(), Some(Jump { from_ms: hour + 40, to_ms: 0, placed_ms: 60 }));
        assert_eq!(t.take_jump(), None);
        assert_eq!(t.dts(20), 80 * 90);
        assert_eq!(t.dts(40), 100 * 90);
        assert_eq!(t.take_jump(), None);
    }

    #[test]
    fn a_forward_jump_of_minutes_continues_the_timeline() {
        let mut t = Timeline::new();
        assert_eq!(t.dts(1_000), 0);
        assert_eq!(t.dts(1_033), 33 * 90);
        assert_eq!(t.dts(1_033 + 5 * 60_000), 66 * 90);
        assert_eq!(t.take_jump(), Some(Jump { from_ms: 1_033, to_ms: 301_033, placed_ms: 66 }));
        assert_eq!(t.dts(301_066), 99 * 90);
    }

    #[test]
    fn the_jump_thresholds() {
        let mut t = Timeline::new();
        t.dts(100_000);
        // Up to 10 s ahead and 1 s behind the latest time is media.
        assert_eq!(t.dts(110_000), 10_000 * 90);
        assert_eq!(t.dts(109_000), 9_000 * 90);
        assert_eq!(t.take_jump(), None);
        // Beyond either is a jump.
        assert_eq!(t.dts(108_999), (10_000 + MAX_STEP_MS) * 90);
        assert_eq!(t.take_jump().map(|jump| jump.to_ms), Some(108_999));
        assert_eq!(t.dts(108_999 + 10_001), (10_000 + 2 * MAX_STEP_MS) * 90);
        assert_eq!(t.take_jump().map(|jump| jump.to_ms), Some(119_000));
    }

    #[test]
    fn the_re_anchor_step_is_bounded() {
        // Before any step, 1 ms.
        let mut t = Timeline::new();
        t.dts(500_000);
        assert_eq!(t.dts(0), 90);
        // After a long step (a sparse track), no more than 100 ms.
        let mut t = Timeline::new();
        t.dts(0);
        t.dts(5_000);
        assert_eq!(t.dts(900_000), (5_000 + MAX_STEP_MS) * 90);
    }

    #[test]
    fn audio_and_video_share_one_re_anchor() {
        let mut t = Timeline::new();
        let base = 7_200_000;
        // Video every 40 ms, audio every 20 ms, audio a little behind.
        assert_eq!(t.video(base, 80), (0, 80 * 90));
        assert_eq!(t.dts(base - 10), -10 * 90);
        assert_eq!(t.dts(base + 10), 10 * 90);
        assert_eq!(t.video(base + 40, 80), (40 * 90, 120 * 90));
        assert_eq!(t.dts(base + 30), 30 * 90);
        // The relay restarts both tracks at 0; the video comes through first.
        assert_eq!(t.video(0, 80), (70 * 90, 150 * 90));
        assert!(t.take_jump().is_some());
        // Audio that jumped the same way keeps its place next to the video: no second jump.
        assert_eq!(t.dts(-10i32 as u32), 60 * 90);
        assert_eq!(t.dts(10), 80 * 90);
        assert_eq!(t.video(40, 80), (110 * 90, 190 * 90));
        assert_eq!(t.dts(30), 100 * 90);
        assert_eq!(t.take_jump(), None);
    }

    #[test]
    fn video_pts_adds_the_composition_offset() {
        let mut t = Timeline::new();
        assert_eq!(t.video(200, 66), (0, 66 * 90));
        assert_eq!(t.video(233, 0), (33 * 90, 33 * 90));
        // A negative offset is legal in FLV (signed 24-bit) and is kept.
        assert_eq!(t.video(266, -33), (66 * 90, 33 * 90));
    }

    #[test]
    fn extreme_inputs_do_not_overflow() {
        let mut t = Timeline::new();
        t.dts(0);
        for i in 0..64u32 {
            // Alternate huge forward steps; saturation keeps it defined.
            t.dts(if i % 2 == 0 { 0x7FFF_FFFF } else { 0xFFFF_FFFE });
        }
        let _ = t.video(0, i32::MAX);
        let _ = t.video(0, i32::MIN);
    }
}
