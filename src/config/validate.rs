//! The rules a configuration must follow beyond its YAML types, each violation naming the key
//! it is about (so that [`locate`](super::locate) can point at its line).

use super::*;

impl Config {
    /// Every rule the configuration breaks (empty when it is valid).
    pub fn validate(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut bad = |key: String, message: String| out.push(Violation { key, message });

        let hls = &self.hls;
        if !(hls.segment_duration.is_finite() && (0.5..=20.0).contains(&hls.segment_duration)) {
            bad("hls.segment_duration".into(), "must be between 0.5 and 20 seconds".into());
        }
        if !(hls.part_duration.is_finite()
            && hls.part_duration >= 0.1
            && hls.part_duration <= hls.segment_duration / 2.0)
        {
            bad(
                "hls.part_duration".into(),
                "must be at least 0.1 seconds and at most half of hls.segment_duration".into(),
            );
        }
        let thumbs = hls.thumbnail_interval;
        if !(thumbs.is_finite() && (thumbs == 0.0 || (0.5..=60.0).contains(&thumbs))) {
            bad("hls.thumbnail_interval".into(), "must be 0 (no thumbnails) or between 0.5 and 60 seconds".into());
        }
        // RFC 8216 §6.2.2: a live playlist lasts at least three target durations.
        if !(3..=100).contains(&hls.window) {
            bad("hls.window".into(), "must be between 3 and 100 segments".into());
        }
        for (header, values) in [
            ("cache_control", &self.http.cache.cache_control),
            ("cdn_cache_control", &self.http.cache.cdn_cache_control),
        ] {
            for (kind, value) in values.entries() {
                if let Some(v) = value
                    && !valid_cache_directives(v)
                {
                    bad(
                        format!("http.cache.{header}.{kind}"),
                        format!("{v:?} is not a list of cache directives (e.g. \"public, max-age=2\")"),
                    );
                }
            }
        }
        if !(1..=1_000_000).contains(&self.http.max_connections) {
            bad("http.max_connections".into(), "must be between 1 and 1000000".into());
        } else if self.http.tls_listen.is_some() && self.http.max_connections < 2 {
            // Each origin listener waits for a free slot before it accepts; with one slot, one
            // listener would keep the other from ever accepting.
            bad(
                "http.max_connections".into(),
                "must be at least 2 with http.tls_listen (two listeners share it)".into(),
            );
        }
        if !(self.http.idle_timeout.is_finite() && (5.0..=3600.0).contains(&self.http.idle_timeout)) {
            bad("http.idle_timeout".into(), "must be between 5 and 3600 seconds".into());
        }
        if !(1024..=64 * 1024).contains(&self.rtmp.max_message_before_publish) {
            bad("rtmp.max_message_before_publish".into(), "must be between 1024 and 65536 bytes".into());
        }
        if !((8 << 20)..=(1 << 30)).contains(&self.rtmp.max_queued_bytes) {
            bad("rtmp.max_queued_bytes".into(), "must be between 8 MiB (one media message) and 1 GiB".into());
        }
        if self.rtmp.max_bitrate != 0 && self.rtmp.max_bitrate < 64_000 {
            bad("rtmp.max_bitrate".into(), "must be 0 (no cap) or at least 64000 bits per second".into());
        }
        if self.transcode.max_restarts_per_minute == 0 {
            bad("transcode.max_restarts_per_minute".into(), "must be at least 1".into());
        }
        if self.http.max_held_requests == 0 {
            bad("http.max_held_requests".into(), "must be at least 1".into());
        }
        if self.http.max_streams_per_connection == 0 {
            bad("http.max_streams_per_connection".into(), "must be at least 1".into());
        }
        if self.rtmp.key_failures_per_minute == 0 {
            bad("rtmp.key_failures_per_minute".into(), "must be at least 1".into());
        }
        for (key, v) in [
            ("rtmp.max_connections", self.rtmp.max_connections),
            ("rtmp.max_pending", self.rtmp.max_pending),
            ("rtmp.max_pending_per_address", self.rtmp.max_pending_per_address),
        ] {
            if v == 0 {
                bad(key.into(), "must be at least 1".into());
            }
        }
        for (key, v) in
            [("rtmp.handshake_timeout", self.rtmp.handshake_timeout), ("rtmp.idle_timeout", self.rtmp.idle_timeout)]
        {
            if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
                bad(key.into(), "must be a number of seconds between 0 and 3600".into());
            }
        }
        let grace = self.rtmp.reconnect_grace;
        if !(grace.is_finite() && (0.0..=600.0).contains(&grace)) {
            bad("rtmp.reconnect_grace".into(), "must be a number of seconds from 0 to 600".into());
        }
        if !valid_name(&self.rtmp.app) {
            bad("rtmp.app".into(), "must be 1-64 characters of a-z, A-Z, 0-9, '-', '_'".into());
        }
        const PRESETS: [&str; 10] =
            ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"];
        if !PRESETS.contains(&self.transcode.x264_preset.as_str()) {
            bad("transcode.x264_preset".into(), format!("must be one of {}", PRESETS.join(", ")));
        }
        if !(self.transcode.max_frame_rate.is_finite() && (1.0..=240.0).contains(&self.transcode.max_frame_rate)) {
            bad("transcode.max_frame_rate".into(), "must be between 1 and 240".into());
        }
        if self.transcode.max_sessions_per_gpu == 0 {
            bad("transcode.max_sessions_per_gpu".into(), "must be at least 1 (use hardware: cpu for no NVENC)".into());
        }
        if let GpuSelection::Only(ids) = &self.transcode.gpus {
            if ids.is_empty() {
                bad(
                    "transcode.gpus".into(),
                    "an empty list allows no GPU; write all, a list of indices, or hardware: cpu".into(),
                );
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = ids.iter().find(|id| !seen.insert(**id)) {
                bad("transcode.gpus".into(), format!("GPU {dup} is listed twice"));
            }
        }
        for lname in self.transcode.ladder_hardware.keys().filter(|l| !self.ladders.contains_key(*l)) {
            bad(format!("transcode.ladder_hardware.{lname}"), format!("no ladder named {lname:?}"));
        }
        if self.log.level.parse::<tracing_subscriber::EnvFilter>().is_err() {
            bad("log.level".into(), format!("{:?} is not a tracing filter", self.log.level));
        }
        if self.http.player_js.as_os_str().is_empty() {
            bad("http.player_js".into(), "must be the path of hls.min.js".into());
        }
        if self.http.listen == self.admin.listen && self.http.listen.port() != 0 {
            bad("admin.listen".into(), "must differ from http.listen".into());
        }
        for (key, listen) in [("http.tls_listen", self.http.tls_listen), ("rtmp.tls_listen", self.rtmp.tls_listen)] {
            let Some(listen) = listen else { continue };
            if self.tls.is_none() {
                bad(key.into(), "needs a tls section with cert_file and key_file".into());
            }
            let taken = [self.http.listen, self.admin.listen, self.rtmp.listen];
            if listen.port() != 0 && taken.contains(&listen) {
                bad(key.into(), format!("{listen} is already used by another listener"));
            }
        }
        if self.http.tls_listen.is_some()
            && self.http.tls_listen == self.rtmp.tls_listen
            && self.http.tls_listen.is_some_and(|l| l.port() != 0)
        {
            bad("rtmp.tls_listen".into(), "must differ from http.tls_listen".into());
        }
        if let Some(tls) = &self.tls {
            if self.http.tls_listen.is_none() && self.rtmp.tls_listen.is_none() {
                bad("tls".into(), "no listener uses it; set http.tls_listen or rtmp.tls_listen".into());
            }
            for (key, path) in [("tls.cert_file", &tls.cert_file), ("tls.key_file", &tls.key_file)] {
                if path.as_os_str().is_empty() {
                    bad(key.into(), "must be the path of a PEM file".into());
                }
            }
        }
        if let Some(token) = &self.admin.token
            && (token.is_empty() || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            // It travels in an `Authorization: Bearer` header (RFC 6750 §2.1).
            bad("admin.token".into(), "must be 1-4096 printable ASCII characters without spaces".into());
        }
        if !(self.admin.metadata_rate.is_finite()
            && self.admin.metadata_rate > 0.0
            && self.admin.metadata_rate <= 1000.0)
        {
            bad("admin.metadata_rate".into(), "must be more than 0 and at most 1000 posts per second".into());
        }
        if !(1..=1000).contains(&self.admin.metadata_burst) {
            bad("admin.metadata_burst".into(), "must be between 1 and 1000 posts".into());
        }

        if self.ladders.is_empty() {
            bad("ladders".into(), "at least one ladder is needed".into());
        }
        for (lname, rungs) in &self.ladders {
            let at = |i: usize| format!("ladders.{lname}[{i}]");
            if !valid_name(lname) {
                bad(format!("ladders.{lname}"), "ladder names are 1-64 characters of a-z, A-Z, 0-9, '-', '_'".into());
            }
            if rungs.is_empty() {
                bad(format!("ladders.{lname}"), "a ladder needs at least one rung".into());
            }
            let mut seen = std::collections::HashSet::new();
            let mut passthroughs = 0;
            for (i, r) in rungs.iter().enumerate() {
                if !valid_name(&r.name) || r.name == "audio" {
                    bad(
                        format!("{}.name", at(i)),
                        "rung names are 1-64 characters of a-z, A-Z, 0-9, '-', '_', and not \"audio\"".into(),
                    );
                }
                if !seen.insert(r.name.as_str()) {
                    bad(format!("{}.name", at(i)), format!("rung name {:?} is used twice in this ladder", r.name));
                }
                if r.passthrough {
                    passthroughs += 1;
                    if r.width.is_some() || r.height.is_some() || r.video_bitrate.is_some() {
                        bad(at(i), "a passthrough rung takes no width, height or video_bitrate".into());
                    }
                } else {
                    match (r.width, r.height) {
                        (Some(w), Some(h)) => {
                            if !(16..=7680).contains(&w) || w % 2 != 0 {
                                bad(format!("{}.width", at(i)), "must be even and between 16 and 7680".into());
                            }
                            if !(16..=4320).contains(&h) || h % 2 != 0 {
                                bad(format!("{}.height", at(i)), "must be even and between 16 and 4320".into());
                            }
                        }
                        _ => bad(at(i), "needs width and height (or passthrough: true)".into()),
                    }
                    match r.video_bitrate {
                        Some(b) if (50_000..=100_000_000).contains(&b) => {}
                        Some(_) => bad(
                            format!("{}.video_bitrate", at(i)),
                            "must be between 50000 and 100000000 bits per second".into(),
                        ),
                        None => bad(at(i), "needs video_bitrate".into()),
                    }
                }
            }
            if passthroughs > 1 {
                bad(format!("ladders.{lname}"), "at most one passthrough rung".into());
            }
        }

        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for (i, c) in self.channels.iter().enumerate() {
            if !valid_name(&c.name) {
                bad(
                    format!("channels[{i}].name"),
                    "channel names are 1-64 characters of a-z, A-Z, 0-9, '-', '_'".into(),
                );
            }
            if !names.insert(c.name.as_str()) {
                bad(format!("channels[{i}].name"), format!("channel {:?} is defined twice", c.name));
            }
            if c.stream_key.len() < 4
                || c.stream_key.len() > 256
                || !c.stream_key.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
            {
                bad(
                    format!("channels[{i}].stream_key"),
                    "stream keys are 4-256 printable ASCII characters without '/' or spaces".into(),
                );
            }
            if !keys.insert(c.stream_key.as_str()) {
                bad(format!("channels[{i}].stream_key"), "this stream key is used by another channel".into());
            }
            if !self.ladders.contains_key(&c.ladder) {
                bad(format!("channels[{i}].ladder"), format!("no ladder named {:?}", c.ladder));
            }
        }
        out
    }
}

/// Stream keys shorter than this are accepted, with a warning: RTMP has no other secret, and a
/// key of 16 random characters is out of reach of guessing even without the failure throttle.
pub const RECOMMENDED_KEY_LENGTH: usize = 16;
/// The stream keys of the shipped configuration and the documentation: fine on a loopback
/// address, published everywhere else.
const SAMPLE_KEYS: [&str; 1] = ["demo-key"];

impl Config {
    /// What is allowed but unwise, each naming its key: `check-config` prints these and the
    /// daemon logs them at start and on reload.
    pub fn warnings(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        let public = |a: &SocketAddr| !a.ip().is_loopback();
        let exposed = public(&self.rtmp.listen) || self.rtmp.tls_listen.as_ref().is_some_and(public);
        for (i, c) in self.channels.iter().enumerate() {
            let key = format!("channels[{i}].stream_key");
            if exposed && SAMPLE_KEYS.contains(&c.stream_key.as_str()) {
                out.push(Violation {
                    key,
                    message: format!(
                        "is the sample key of the documentation, and RTMP listens on a non-loopback address: anyone can publish to channel {:?}; set a key of {RECOMMENDED_KEY_LENGTH} or more random characters (e.g. `openssl rand -hex 16`)",
                        c.name
                    ),
                });
            } else if c.stream_key.len() < RECOMMENDED_KEY_LENGTH {
                out.push(Violation {
                    key,
                    message: format!(
                        "is {} characters long; use {RECOMMENDED_KEY_LENGTH} or more random characters (e.g. `openssl rand -hex 16`)",
                        c.stream_key.len()
                    ),
                });
            }
        }
        out
    }
}

/// Names that appear in URLs and metric labels.
pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `value` reads as a list of cache directives (RFC 9111 §5.2): `token` or
/// `token=token-or-quoted-string`, separated by commas.
fn valid_cache_directives(value: &str) -> bool {
    let token =
        |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    !value.is_empty()
        && value.len() <= 512
        && value.split(',').all(|d| {
            let d = d.trim();
            match d.split_once('=') {
                None => token(d),
                Some((name, arg)) => {
                    token(name)
                        && (token(arg)
                            || (arg.len() >= 2
                                && arg.starts_with('"')
                                && arg.ends_with('"')
                                && arg[1..arg.len() - 1]
                                    .bytes()
                                    .all(|b| b.is_ascii_graphic() && b != b'"' || b == b' ')))
                }
            }
        })
}
