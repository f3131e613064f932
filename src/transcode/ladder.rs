//! Which rungs of a ladder a source gets, and at what size: never upscaled, aspect ratio kept,
//! portrait sources get portrait rungs.

use crate::config::RungConfig;

/// A rung to encode, sized for this source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rung {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Video bits per second.
    pub bitrate: u64,
}

/// The rungs of one publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Rungs to encode, in ladder order.
    pub encoded: Vec<Rung>,
    /// The passthrough rung's name, if the ladder has one.
    pub passthrough: Option<String>,
    /// Rungs left out, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Plans a ladder for a `width`×`height` source.
///
/// A rung's `width`×`height` is a box for a landscape picture; a portrait source uses the box
/// turned on its side, so a phone's 720×1280 gets 720p as 720×1280 rather than a squashed
/// 1280×720. The picture is fitted into the box keeping its aspect ratio (even dimensions, as
/// 4:2:0 needs). A rung whose box is larger than the source on its short side would upscale, so
/// it is left out.
pub fn plan(rungs: &[RungConfig], width: u32, height: u32) -> Plan {
    let mut out = Plan::default();
    let portrait = height > width;
    let (src_long, src_short) = if portrait { (height, width) } else { (width, height) };
    for r in rungs {
        if r.passthrough {
            out.passthrough = Some(r.name.clone());
            continue;
        }
        let (Some(bw), Some(bh), Some(bitrate)) = (r.width, r.height, r.video_bitrate) else {
            out.skipped.push((r.name.clone(), "incomplete rung (validated configurations never have one)".into()));
            continue;
        };
        let (box_long, box_short) = (bw.max(bh), bw.min(bh));
        if box_short > src_short {
            out.skipped.push((r.name.clone(), format!("{bw}x{bh} would upscale the {width}x{height} source")));
            continue;
        }
        let scale = (f64::from(box_long) / f64::from(src_long)).min(f64::from(box_short) / f64::from(src_short));
        let even = |v: f64, max: u32| (((v / 2.0).round() as u32) * 2).clamp(2, max.max(2) & !1);
        let long = even(f64::from(src_long) * scale, box_long);
        let short = even(f64::from(src_short) * scale, box_short);
        let (w, h) = if portrait { (short, long) } else { (long, short) };
        out.encoded.push(Rung { name: r.name.clone(), width: w, height: h, bitrate });
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A rung of the configuration at `w`x`h`, 1 Mbit/s (0x0 for the source's size).
    pub(crate) fn rung(name: &str, w: u32, h: u32) -> RungConfig {
        RungConfig {
            name: name.into(),
            width: Some(w),
            height: Some(h),
            video_bitrate: Some(1_000_000),
            passthrough: false,
        }
    }

    fn ladder() -> Vec<RungConfig> {
        vec![rung("1080p", 1920, 1080), rung("720p", 1280, 720), rung("480p", 854, 480), rung("360p", 640, 360)]
    }

    fn sizes(p: &Plan) -> Vec<(String, u32, u32)> {
        p.encoded.iter().map(|r| (r.name.clone(), r.width, r.height)).collect()
    }

    #[test]
    fn a_720p_source_gets_no_1080p() {
        let p = plan(&ladder(), 1280, 720);
        assert_eq!(sizes(&p), vec![("720p".into(), 1280, 720), ("480p".into(), 854, 480), ("360p".into(), 640, 360)]);
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].0, "1080p");
        assert!(p.passthrough.is_none());
    }

    #[test]
    fn portrait_sources_get_portrait_rungs() {
        let p = plan(&ladder(), 720, 1280);
        assert_eq!(sizes(&p), vec![("720p".into(), 720, 1280), ("480p".into(), 480, 854), ("360p".into(), 360, 640)]);
    }

    #[test]
    fn other_aspect_ratios_fit_inside_the_box_with_even_sizes() {
        // 4:3 source: the height limits, width follows the aspect ratio.
        let p = plan(&ladder(), 1440, 1080);
        assert_eq!(p.encoded[0], Rung { name: "1080p".into(), width: 1440, height: 1080, bitrate: 1_000_000 });
        assert_eq!((p.encoded[3].width, p.encoded[3].height), (480, 360));
        // An odd-sized source still yields even rung sizes.
        let p = plan(&ladder(), 1001, 563);
        assert!(p.encoded.iter().all(|r| r.width % 2 == 0 && r.height % 2 == 0), "{p:?}");
        assert_eq!(sizes(&p), vec![("480p".into(), 854, 480), ("360p".into(), 640, 360)]);
    }

    #[test]
    fn passthrough_is_reported_and_tiny_sources_get_nothing_to_encode() {
        let mut l = ladder();
        l.insert(
            0,
            RungConfig { name: "source".into(), width: None, height: None, video_bitrate: None, passthrough: true },
        );
        let p = plan(&l, 320, 180);
        assert_eq!(p.passthrough.as_deref(), Some("source"));
        assert!(p.encoded.is_empty());
        assert_eq!(p.skipped.len(), 4);
    }
}
