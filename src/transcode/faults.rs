//! Fault injection: a stage made to fail, or to hang, on command, so that what the daemon does
//! when a GPU call errors or never returns can be exercised on any machine (the CPU path, the
//! Vulkan test device) and reproduced against the release binary.
//!
//! Off unless `LADDERD_FAULTS` is set when the first transcode starts (or a test calls [`set`]);
//! then each picture a stage handles costs one atomic load more. The variable holds faults
//! separated by `,`, each `STAGE:KIND[@CHANNEL[/RUNG]][:after=N][:times=M]`:
//!
//! - `STAGE`: `encode` (a rung's encoder, per picture sent) or `decode` (the source decoder, per
//!   packet sent);
//! - `KIND`: `fail` (the call returns an error, as a lost GPU's does) or `hang` (it does not
//!   return for ten minutes, as a wedged driver call);
//! - `after=N`: on the N+1th picture or packet of each stage instance (each rung thread, each
//!   decoder: a new publish starts counting again; default 0);
//! - `times=M`: in M stage instances in all (default 1).
//!
//! For example `encode:hang@shop/360p:after=90` wedges the 360p encoder of channel `shop` three
//! seconds in at 30 fps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::sync::lock;

/// The variable the faults are read from.
pub const VARIABLE: &str = "LADDERD_FAULTS";

/// How long an injected hang lasts: far beyond any watchdog, as a wedged call's would.
pub const HANG: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Encode,
    Decode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fail,
    Hang,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub stage: Stage,
    pub kind: Kind,
    pub channel: Option<String>,
    pub rung: Option<String>,
    pub after: u64,
    pub times: u32,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut fields = text.trim().split(':');
        let stage = match fields.next() {
            Some("encode") => Stage::Encode,
            Some("decode") => Stage::Decode,
            other => return Err(format!("{text:?}: stage {other:?} is not encode or decode")),
        };
        let kind_and_place = fields.next().ok_or_else(|| format!("{text:?}: no kind (fail or hang)"))?;
        let (kind, place) = kind_and_place.split_once('@').unwrap_or((kind_and_place, ""));
        let kind = match kind {
            "fail" => Kind::Fail,
            "hang" => Kind::Hang,
            other => return Err(format!("{text:?}: kind {other:?} is not fail or hang")),
        };
        let (channel, rung) = match place.split_once('/') {
            Some((c, r)) => (Some(c.to_string()), Some(r.to_string())),
            None => ((!place.is_empty()).then(|| place.to_string()), None),
        };
        let mut fault = Fault { stage, kind, channel, rung, after: 0, times: 1 };
        for option in fields {
            match option.split_once('=') {
                Some(("after", n)) => fault.after = n.parse().map_err(|_| format!("{text:?}: after={n:?}"))?,
                Some(("times", n)) => fault.times = n.parse().map_err(|_| format!("{text:?}: times={n:?}"))?,
                _ => return Err(format!("{text:?}: unknown option {option:?}")),
            }
        }
        Ok(fault)
    }
}

/// Parses `LADDERD_FAULTS`' syntax: faults separated by `,`.
pub fn parse(text: &str) -> Result<Vec<Fault>, String> {
    text.split(',').filter(|f| !f.trim().is_empty()).map(str::parse).collect()
}

struct Plan {
    armed: AtomicBool,
    faults: Mutex<Vec<Fault>>,
}

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let faults = match std::env::var(VARIABLE) {
            Ok(text) => parse(&text).unwrap_or_else(|e| {
                tracing::error!(variable = VARIABLE, error = %e, "fault injection not understood; none armed");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        if !faults.is_empty() {
            tracing::warn!(variable = VARIABLE, faults = ?faults, "fault injection armed: stages will fail or hang on purpose");
        }
        Plan { armed: AtomicBool::new(!faults.is_empty()), faults: Mutex::new(faults) }
    })
}

/// Replaces the faults in force (what `LADDERD_FAULTS` set, if anything).
pub fn set(faults: Vec<Fault>) {
    let plan = plan();
    let mut held = lock(&plan.faults);
    plan.armed.store(!faults.is_empty(), Ordering::Release);
    *held = faults;
}

/// Reads `LADDERD_FAULTS` now (the daemon calls it at start, so that a mistake is logged then).
pub fn arm_from_environment() {
    plan();
}

/// What `stage` of `channel` (and `rung`, for encoders) is to do on its `count`th picture or
/// packet (counted from 1 by each stage instance): nothing (`None`), fail, or hang.
pub fn check(stage: Stage, channel: &str, rung: &str, count: u64) -> Option<Kind> {
    let plan = plan();
    if !plan.armed.load(Ordering::Acquire) {
        return None;
    }
    let mut faults = lock(&plan.faults);
    let fault = faults.iter_mut().find(|f| {
        f.stage == stage
            && f.times > 0
            && count == f.after + 1
            && f.channel.as_deref().is_none_or(|c| c == channel)
            && f.rung.as_deref().is_none_or(|r| r == rung)
    })?;
    fault.times -= 1;
    let kind = fault.kind;
    tracing::warn!(channel, rung, stage = ?stage, kind = ?kind, count, "injected fault");
    Some(kind)
}

/// Does what an injected hang does: nothing, for [`HANG`].
pub fn hang() {
    std::thread::sleep(HANG);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_read_from_their_text_and_bad_text_is_refused_with_why() {
        let faults = parse("encode:hang@shop/360p:after=90, decode:fail:times=3,encode:fail@shop").expect("valid");
        assert_eq!(
            faults,
            [
                Fault {
                    stage: Stage::Encode,
                    kind: Kind::Hang,
                    channel: Some("shop".into()),
                    rung: Some("360p".into()),
                    after: 90,
                    times: 1
                },
                Fault { stage: Stage::Decode, kind: Kind::Fail, channel: None, rung: None, after: 0, times: 3 },
                Fault {
                    stage: Stage::Encode,
                    kind: Kind::Fail,
                    channel: Some("shop".into()),
                    rung: None,
                    after: 0,
                    times: 1
                },
            ]
        );
        for bad in ["scale:fail", "encode", "encode:explode", "encode:fail:after=x", "encode:fail:every=2"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_fault_fires_on_its_call_once_per_stage_instance_as_many_times_as_asked() {
        set(parse("decode:fail@shop:after=2:times=2,encode:hang@shop/720p").expect("valid"));
        // One decoder: calls 1, 2 pass, 3 fails, and no later call of the same decoder.
        let first: Vec<Option<Kind>> = (1..=5).map(|n| check(Stage::Decode, "shop", "", n)).collect();
        assert_eq!(first, [None, None, Some(Kind::Fail), None, None]);
        assert_eq!(check(Stage::Decode, "other", "", 3), None, "another channel");
        // The next publish's decoder counts again: the second and last time.
        assert_eq!(check(Stage::Decode, "shop", "", 3), Some(Kind::Fail));
        assert_eq!(check(Stage::Decode, "shop", "", 3), None, "times=2 used up");
        assert_eq!(check(Stage::Encode, "shop", "360p", 1), None, "another rung");
        assert_eq!(check(Stage::Encode, "shop", "720p", 1), Some(Kind::Hang));
        set(Vec::new());
        assert_eq!(check(Stage::Encode, "shop", "720p", 1), None, "disarmed");
    }
}
