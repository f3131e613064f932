//! One publish's media timeline: RTMP's 32-bit millisecond timestamps unwrapped and rebased onto
//! the internal 90 kHz clock, so that the first media timestamp of the publish is 0.

use crate::media::Ticks;

/// 90 kHz ticks per RTMP millisecond.
const TICKS_PER_MS: i64 = 90;

/// Maps the RTMP timestamps of one publish (audio and video together) onto [`Ticks`].
///
/// RTMP timestamps are 32-bit milliseconds that wrap after about 49.7 days, and two timestamps
/// are "adjacent" when they are within 2³¹ − 1 ms of each other (RTMP spec §5.3.1.1). So each
/// timestamp is placed nearest the previous one: a small step backwards (audio a few ms behind
/// the video just sent) stays a step backwards, and a jump from near 2³² to near 0 continues
/// forward. Values are relative to the first timestamp of the publish, so a track whose first
/// packet is a little older than the very first packet starts slightly below 0.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// The last raw timestamp seen and its unwrapped value in milliseconds.
    last: Option<(u32, i64)>,
    /// The unwrapped value of the first timestamp.
    origin: i64,
}

impl Timeline {
    pub fn new() -> Self {
        Self::default()
    }

    /// The decode timestamp of a packet with this RTMP timestamp.
    pub fn dts(&mut self, rtmp_ms: u32) -> Ticks {
        let unwrapped = match self.last {
            None => {
                self.origin = i64::from(rtmp_ms);
                i64::from(rtmp_ms)
            }
            // The wrapping difference read as signed is the nearest step in either direction.
            Some((raw, at)) => at.saturating_add(i64::from(rtmp_ms.wrapping_sub(raw) as i32)),
        };
        self.last = Some((rtmp_ms, unwrapped));
        unwrapped.saturating_sub(self.origin).saturating_mul(TICKS_PER_MS)
    }

    /// Decode and presentation timestamps of a video frame: FLV carries the composition offset
    /// (pts − dts) in milliseconds next to the tag timestamp (FLV spec §E.4.3.1).
    pub fn video(&mut self, rtmp_ms: u32, composition_ms: i32) -> (Ticks, Ticks) {
        let dts = self.dts(rtmp_ms);
        (dts, dts.saturating_add(i64::from(composition_ms).saturating_mul(TICKS_PER_MS)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn a_publish_can_span_several_wraps() {
        let mut t = Timeline::new();
        let mut expected: i64 = 0;
        let mut raw: u32 = 7;
        assert_eq!(t.dts(raw), 0);
        // Steps of 2^30 ms: four of them make one wrap; go round three times.
        for _ in 0..12 {
            raw = raw.wrapping_add(1 << 30);
            expected += 1 << 30;
            assert_eq!(t.dts(raw), expected * 90);
        }
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
