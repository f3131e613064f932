//! The YAML configuration: schema and defaults (here), the rules beyond types ([`validate`]),
//! where a violation is in the file ([`locate`]), and which settings a reload cannot change.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere), so a typo is an error with a line and
//! column rather than a silently ignored key.

mod locate;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::media::Container;
use crate::secret::constant_time_eq;
use locate::locate;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub rtmp: RtmpConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub hls: HlsConfig,
    #[serde(default)]
    pub transcode: TranscodeConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Certificate and key for `http.tls_listen` and `rtmp.tls_listen`; read again on reload.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    pub ladders: BTreeMap<String, Vec<RungConfig>>,
    pub channels: Vec<ChannelConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtmpConfig {
    pub listen: SocketAddr,
    /// RTMPS (RTMP over TLS, `rtmps://host:port/APP/KEY`) ingest, with the `tls` certificate.
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// Connections open at once (publishers and half-open handshakes together).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections whose publish has not been accepted yet, at once (within
    /// `max_connections`). A new connection beyond it closes the least advanced of them.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Such pending connections from one address (IPv6: one /64) at once; a new one beyond it
    /// closes that address's least advanced pending connection.
    #[serde(default = "default_max_pending_per_address")]
    pub max_pending_per_address: usize,
    /// Publishes with an unknown stream key that one address may attempt per minute (in bursts
    /// of as many); beyond it its publishes are refused, whatever the key, until it slows down.
    #[serde(default = "default_key_failures_per_minute")]
    pub key_failures_per_minute: u32,
    /// Bytes any one RTMP message may have until the publish is accepted (media may be up to
    /// 8 MiB after it): an unauthenticated client has no use for more.
    #[serde(default = "default_max_message_before_publish")]
    pub max_message_before_publish: usize,
    /// Bytes of media one publish may have queued for its channel; beyond it the connection stops
    /// reading until the channel catches up (TCP then slows the publisher).
    #[serde(default = "default_max_queued_bytes")]
    pub max_queued_bytes: usize,
    /// Bits per second a publisher may send, audio and video together, per channel; one that
    /// sends more than twice this over 5 s is disconnected with the reason. 0: no cap.
    #[serde(default = "default_max_bitrate")]
    pub max_bitrate: u64,
    /// Seconds a client has to complete the RTMP handshake and `publish`.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: f64,
    /// Seconds without a byte from a publisher before it is dropped.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: f64,
    /// Seconds a channel's playlists stay open after its publisher was lost (the connection
    /// dropped, or went idle, without the publisher ending its publish), so that an encoder that
    /// reconnects continues them after a discontinuity; only when it passes do they end
    /// (`EXT-X-ENDLIST`, which may not be taken back). A publish the publisher ended, or that
    /// the daemon sent away, ends them at once. 0: at once, always.
    #[serde(default = "default_reconnect_grace")]
    pub reconnect_grace: f64,
    /// The RTMP application name in the publish URL (`rtmp://host/APP/KEY`).
    #[serde(default = "default_app")]
    pub app: String,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:1935".parse().expect("literal address"),
            tls_listen: None,
            max_connections: default_max_connections(),
            max_pending: default_max_pending(),
            max_pending_per_address: default_max_pending_per_address(),
            key_failures_per_minute: default_key_failures_per_minute(),
            max_message_before_publish: default_max_message_before_publish(),
            max_queued_bytes: default_max_queued_bytes(),
            max_bitrate: default_max_bitrate(),
            handshake_timeout: default_handshake_timeout(),
            idle_timeout: default_idle_timeout(),
            reconnect_grace: default_reconnect_grace(),
            app: default_app(),
        }
    }
}

fn default_max_connections() -> usize {
    256
}
fn default_max_pending() -> usize {
    128
}
fn default_max_pending_per_address() -> usize {
    8
}
fn default_key_failures_per_minute() -> u32 {
    10
}
/// What `rtmp.max_message_before_publish` defaults to: far above any real `connect` or
/// `publish` command, far below a media message.
pub const DEFAULT_MAX_MESSAGE_BEFORE_PUBLISH: usize = 16 * 1024;

/// Several seconds of a high-bitrate source (64 MiB is 20 s at 25 Mbit/s), well over one 8 MiB
/// media message.
fn default_max_queued_bytes() -> usize {
    64 << 20
}
/// Above any contribution encode a live ladder takes (4K HEVC from a studio encoder is 20-40
/// Mbit/s); ended only at twice this.
fn default_max_bitrate() -> u64 {
    50_000_000
}
fn default_max_message_before_publish() -> usize {
    DEFAULT_MAX_MESSAGE_BEFORE_PUBLISH
}
fn default_handshake_timeout() -> f64 {
    5.0
}
fn default_idle_timeout() -> f64 {
    10.0
}
fn default_reconnect_grace() -> f64 {
    10.0
}
fn default_app() -> String {
    "live".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// HTTPS for the origin (HTTP/1.1 and HTTP/2 by ALPN), with the `tls` certificate. The
    /// plain `listen` keeps serving.
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// Origin connections open at once, plain and TLS together; beyond it, new connections wait
    /// in the listen backlog until one closes. Keep it under the process's file limit
    /// (`LimitNOFILE=65536` in the systemd unit).
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Seconds an origin or admin connection may stay without a request in flight before it is
    /// closed (a request head has 10 s from its first byte, whatever this is). Longer than
    /// the keep-alive of the CDN in front, so that it is the CDN that closes an idle connection:
    /// a request sent just as the origin closes one fails at the CDN.
    #[serde(default = "default_http_idle_timeout")]
    pub idle_timeout: f64,
    /// LL-HLS requests (blocking playlist reloads, preload-hinted parts) held at once; one more is
    /// answered 503 with `Retry-After` at once.
    #[serde(default = "default_max_held_requests")]
    pub max_held_requests: usize,
    /// Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// beyond it a stream is refused (REFUSED_STREAM) and the client retries it.
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: u32,
    /// hls.js for the `/preview/` player page, read once at startup; relative paths are from the
    /// working directory. A missing file only disables the player (with a warning).
    #[serde(default = "default_player_js")]
    pub player_js: PathBuf,
    /// `Cache-Control` and `CDN-Cache-Control` of origin responses.
    #[serde(default)]
    pub cache: CacheConfig,
}

/// Caching headers of the origin's responses, per kind of response: a preset, then overrides.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub preset: CachePreset,
    /// `Cache-Control` values replacing the preset's, for every cache (browsers and CDNs).
    #[serde(default)]
    pub cache_control: CacheValues,
    /// `CDN-Cache-Control` values (RFC 9213): what CDNs that honour it use instead of
    /// `Cache-Control`; browsers ignore it.
    #[serde(default)]
    pub cdn_cache_control: CacheValues,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CachePreset {
    /// `Cache-Control` only, the same for browsers and CDNs.
    #[default]
    Origin,
    /// As `origin`, plus `CDN-Cache-Control` for a shield in front: failed blocking requests
    /// cached a second (retries collapse during a stall), and media kept only as long as the origin
    /// keeps it.
    Cdn,
}

/// One header value per kind of response; `None` keeps the preset's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheValues {
    /// Master and media playlists, plain and delta.
    pub playlist: Option<String>,
    /// Media playlists answering `_HLS_msn` (blocking reloads).
    pub blocking_playlist: Option<String>,
    /// Init segments, segments and parts.
    pub media: Option<String>,
    /// 404 under a configured channel with nothing to serve yet.
    pub not_live: Option<String>,
    /// 400 (too far ahead) and 503 (hold timed out, shutting down) of LL-HLS requests.
    pub retry: Option<String>,
    /// Other 404s, 405, 416.
    pub miss: Option<String>,
}

impl CacheValues {
    pub fn entries(&self) -> [(&'static str, Option<&str>); 6] {
        [
            ("playlist", self.playlist.as_deref()),
            ("blocking_playlist", self.blocking_playlist.as_deref()),
            ("media", self.media.as_deref()),
            ("not_live", self.not_live.as_deref()),
            ("retry", self.retry.as_deref()),
            ("miss", self.miss.as_deref()),
        ]
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("literal address"),
            tls_listen: None,
            max_connections: default_http_max_connections(),
            idle_timeout: default_http_idle_timeout(),
            max_held_requests: default_max_held_requests(),
            max_streams_per_connection: default_max_streams_per_connection(),
            player_js: default_player_js(),
            cache: CacheConfig::default(),
        }
    }
}

/// Several per viewer at the live edge (a playlist reload and a part, per rendition played):
/// thousands of direct viewers, or a CDN shield collapsing far more.
fn default_max_held_requests() -> usize {
    16_384
}

/// A CDN multiplexes its viewers' requests onto few HTTP/2 connections, and with LL-HLS each viewer
/// keeps a blocking playlist reload and a preload-hinted part in flight per rendition it plays
/// (RFC 8216bis §6.2.5.2, §6.2.6): far more than hyper's default of 200. Each held stream costs
/// its request head and a small future; `http.max_held_requests` bounds them all together.
fn default_max_streams_per_connection() -> u32 {
    1024
}

/// A CDN shield holds few, long-lived HTTP/2 connections; direct viewers hold one or two each.
fn default_http_max_connections() -> usize {
    16_384
}

/// Above the origin keep-alive of the common CDNs (CloudFront allows at most 60 s), and what
/// nginx keeps idle connections for.
fn default_http_idle_timeout() -> f64 {
    75.0
}

/// Where scripts/setup.sh installs hls.js (`npm ci` in `web/`), for running from a checkout;
/// packaged deployments point this at their own copy.
fn default_player_js() -> PathBuf {
    "web/node_modules/hls.js/dist/hls.min.js".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for the admin API; `/metrics` and health endpoints need none. Without one the
    /// API answers 403 to everything.
    #[serde(default)]
    pub token: Option<String>,
    /// Timed-metadata posts per second a channel sustains (token-bucket refill rate).
    #[serde(default = "default_metadata_rate")]
    pub metadata_rate: f64,
    /// Timed-metadata posts a channel may make back to back before `metadata_rate` applies
    /// (token-bucket capacity).
    #[serde(default = "default_metadata_burst")]
    pub metadata_burst: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".parse().expect("literal address"),
            token: None,
            metadata_rate: default_metadata_rate(),
            metadata_burst: default_metadata_burst(),
        }
    }
}

/// Amazon IVS allows 5 PutMetadata calls per second per channel; players that poll ID3 cues
/// gain nothing from more.
fn default_metadata_rate() -> f64 {
    5.0
}

fn default_metadata_burst() -> u32 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HlsConfig {
    /// Target segment duration in seconds.
    #[serde(default = "default_segment_duration")]
    pub segment_duration: f64,
    /// Segments kept in each media playlist (and in memory).
    #[serde(default = "default_window")]
    pub window: usize,
    /// Target duration of an LL-HLS part in seconds (`EXT-X-PART-INF:PART-TARGET`).
    #[serde(default = "default_part_duration")]
    pub part_duration: f64,
    /// Segment format for every channel that does not say otherwise.
    #[serde(default)]
    pub container: Container,
    /// Seconds of media between refreshes of `/live/{channel}/thumb.jpg`; 0 makes no thumbnails.
    #[serde(default = "default_thumbnail_interval")]
    pub thumbnail_interval: f64,
}

impl HlsConfig {
    /// The segment format of `channel` under these settings.
    pub fn container_for(&self, channel: &ChannelConfig) -> Container {
        channel.container.unwrap_or(self.container)
    }
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            segment_duration: default_segment_duration(),
            window: default_window(),
            part_duration: default_part_duration(),
            container: Container::Fmp4,
            thumbnail_interval: default_thumbnail_interval(),
        }
    }
}

/// Part duration is the main lever on LL-HLS latency (hls.js holds back three parts); 0.2 s is a
/// whole number of frames at 25, 30, 50 and 60 fps, so parts come out exactly on target.
fn default_part_duration() -> f64 {
    0.2
}

fn default_segment_duration() -> f64 {
    2.0
}
fn default_window() -> usize {
    6
}
fn default_thumbnail_interval() -> f64 {
    2.0
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Hardware {
    /// GPU where it works, else CPU, and say so.
    #[default]
    Auto,
    /// GPU or refuse.
    Nvidia,
    /// CPU only.
    Cpu,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeConfig {
    #[serde(default)]
    pub hardware: Hardware,
    /// `hardware` for the channels of one ladder, by ladder name (e.g. keep a 4K ladder on NVIDIA
    /// and a small one on the CPU).
    #[serde(default)]
    pub ladder_hardware: BTreeMap<String, Hardware>,
    /// The GPUs ladderd may use: `all` or a list of CUDA device ordinals such as `[0, 2]` (what
    /// FFmpeg's `gpu` option takes; nvidia-smi's order only with `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
    #[serde(default)]
    pub gpus: GpuSelection,
    /// NVENC sessions (one per encoded rung) ladderd may hold on one GPU.
    #[serde(default = "default_max_sessions_per_gpu")]
    pub max_sessions_per_gpu: u32,
    /// What a channel gets when no allowed GPU has a session free for each of its rungs.
    #[serde(default)]
    pub on_gpu_full: OnGpuFull,
    /// libx264 preset for CPU-encoded rungs.
    #[serde(default = "default_x264_preset")]
    pub x264_preset: String,
    /// Frames per second above which rungs drop frames (the passthrough rung keeps the source's).
    #[serde(default = "default_max_frame_rate")]
    pub max_frame_rate: f64,
    /// Threads each libx264 encoder may use (0: let x264 decide).
    #[serde(default = "default_encoder_threads")]
    pub encoder_threads: usize,
    /// Ladder restarts (a changed sequence header: new resolution or codec settings) one publish
    /// may cause in any minute; one more ends the publish with the reason.
    #[serde(default = "default_max_restarts_per_minute")]
    pub max_restarts_per_minute: u32,
}

/// A phone turning, a scene switch to another resolution: a few a minute at most. Each restart
/// builds a new ladder (encoders, a GPU session), so a publisher flapping its parameters could
/// otherwise churn them without end.
fn default_max_restarts_per_minute() -> u32 {
    10
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        Self {
            hardware: Hardware::Auto,
            ladder_hardware: BTreeMap::new(),
            gpus: GpuSelection::All,
            max_sessions_per_gpu: default_max_sessions_per_gpu(),
            on_gpu_full: OnGpuFull::Cpu,
            x264_preset: default_x264_preset(),
            max_frame_rate: default_max_frame_rate(),
            encoder_threads: default_encoder_threads(),
            max_restarts_per_minute: default_max_restarts_per_minute(),
        }
    }
}

impl TranscodeConfig {
    /// `hardware` for the channels of `ladder`: its `ladder_hardware` entry, else `hardware`.
    pub fn hardware_for(&self, ladder: &str) -> Hardware {
        self.ladder_hardware.get(ladder).copied().unwrap_or(self.hardware)
    }
}

/// The GPUs ladderd may place channels on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GpuSelection {
    /// Every GPU NVML reports.
    #[default]
    All,
    /// Only these CUDA device ordinals (GPUs kept for other work are left out).
    Only(Vec<u32>),
}

impl GpuSelection {
    pub fn allows(&self, index: u32) -> bool {
        match self {
            GpuSelection::All => true,
            GpuSelection::Only(ids) => ids.contains(&index),
        }
    }
}

/// `gpus: all` or `gpus: [0, 1]`. Written by hand because an untagged enum would turn every
/// mistake into serde's "did not match any variant", losing what was expected.
impl<'de> Deserialize<'de> for GpuSelection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = GpuSelection;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"all\" or a list of GPU indices")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GpuSelection, E> {
                if v == "all" {
                    Ok(GpuSelection::All)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<GpuSelection, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<u32>()? {
                    ids.push(id);
                }
                Ok(GpuSelection::Only(ids))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// What a channel gets when every allowed GPU is short of NVENC sessions for its rungs.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnGpuFull {
    /// Decode and encode the whole channel on the CPU.
    #[default]
    Cpu,
    /// Leave out the largest rungs, one at a time, until the rest fit on a GPU; when not even one
    /// rung fits, as `cpu`.
    DropTopRung,
    /// Refuse the publish.
    Reject,
}

/// Datacenter GPUs have no driver limit on NVENC sessions: what runs out is encoder throughput,
/// which NVML's encoder utilization shows. 32 sessions is eight channels of a four-rung
/// 1080p/720p/480p/360p ladder (about 14 1080p streams' worth of pixels), so one GPU cannot take
/// every channel of a busy host before encoder utilization steers placement elsewhere. GeForce
/// drivers cap sessions per system far lower (5 or 8, by driver), so set it to that there.
fn default_max_sessions_per_gpu() -> u32 {
    32
}

fn default_x264_preset() -> String {
    "veryfast".into()
}
fn default_max_frame_rate() -> f64 {
    60.0
}
fn default_encoder_threads() -> usize {
    0
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `ladderd=debug,info`); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Human, level: default_log_level() }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// One rung of a ladder: a rendition encoded at a size and bitrate, or the source passed through.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RungConfig {
    pub name: String,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// Video bits per second.
    #[serde(default)]
    pub video_bitrate: Option<u64>,
    /// Package the source's H.264 as-is (no decode, no encode).
    #[serde(default)]
    pub passthrough: bool,
}

/// PEM files: the certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: String,
    pub stream_key: String,
    pub ladder: String,
    /// Overrides `hls.container` for this channel.
    #[serde(default)]
    pub container: Option<Container>,
}

/// Where an error was found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", fmt_at(.path, .location, .message))]
    Invalid { path: PathBuf, location: Option<Location>, message: String },
}

fn fmt_at(path: &Path, location: &Option<Location>, message: &str) -> String {
    match location {
        Some(l) => format!("{}:{}:{}: {}", path.display(), l.line, l.column, message),
        None => format!("{}: {}", path.display(), message),
    }
}

/// A rule the parsed file breaks, with the YAML path and value that locate it.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Dotted path to the offending key, e.g. `channels[1].ladder`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| vec![ConfigError::Read { path: path.to_owned(), source }])?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| {
            let location = e.location().map(|l| Location { line: l.line(), column: l.column() });
            vec![ConfigError::Invalid { path: path.to_owned(), location, message: e.to_string() }]
        })?;
        let violations = config.validate();
        if violations.is_empty() {
            Ok(config)
        } else {
            Err(violations
                .into_iter()
                .map(|v| ConfigError::Invalid {
                    path: path.to_owned(),
                    location: locate(text, &v.key),
                    message: v.to_string(),
                })
                .collect())
        }
    }

    /// The channel a stream key publishes to. Every channel's key is compared, each in time that
    /// depends only on its own length: how long the lookup takes says nothing about which key, or
    /// how much of one, a guess matched.
    pub fn channel_by_key(&self, key: &str) -> Option<&ChannelConfig> {
        let mut found = None;
        for c in &self.channels {
            let matches = constant_time_eq(key.as_bytes(), c.stream_key.as_bytes());
            if matches && found.is_none() {
                found = Some(c);
            }
        }
        found
    }

    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// The segment format of a channel.
    pub fn container(&self, channel: &ChannelConfig) -> Container {
        self.hls.container_for(channel)
    }

    /// Keeps in `self`, a configuration about to replace `running` (a reload), the running
    /// values of the settings that only a restart applies, so that what the daemon reports as its
    /// configuration is what it runs; returns their names. Those are all of `rtmp` and `http`,
    /// `admin.listen`, `hls` timing and containers, `log`, `transcode.max_sessions_per_gpu`, and
    /// TLS on or off (new certificate paths apply: the daemon reads them again).
    pub fn keep_restart_only(&mut self, running: &Config) -> Vec<String> {
        let mut kept = Vec::new();
        macro_rules! keep {
            ($($field:ident).+, $name:expr) => {
                if self.$($field).+ != running.$($field).+ {
                    kept.push($name.to_string());
                    self.$($field).+ = running.$($field).+.clone();
                }
            };
        }
        keep!(rtmp, "rtmp");
        keep!(http, "http");
        keep!(admin.listen, "admin.listen");
        keep!(hls.segment_duration, "hls.segment_duration");
        keep!(hls.part_duration, "hls.part_duration");
        keep!(hls.window, "hls.window");
        keep!(log, "log");
        // Turning TLS on or off takes listeners.
        if self.tls.is_some() != running.tls.is_some() {
            kept.push("tls".into());
            self.tls = running.tls.clone();
        }
        keep!(transcode.max_sessions_per_gpu, "transcode.max_sessions_per_gpu");
        // A channel's playlists continue across publishes, and fMP4 and TS segments cannot share
        // one (the TS ones would follow the fMP4 EXT-X-MAP): the container a channel has keeps.
        keep!(hls.container, "hls.container");
        for c in &mut self.channels {
            if let Some(before) = running.channel(&c.name)
                && running.container(before) != self.hls.container_for(c)
            {
                kept.push(format!("channels[{}].container", c.name));
                c.container = before.container;
            }
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
rtmp:  { listen: "0.0.0.0:1935" }
http:  { listen: "0.0.0.0:8080" }
admin: { listen: "127.0.0.1:9090" }
hls:   { segment_duration: 2.0, window: 6 }
ladders:
  default:
    - { name: "1080p", width: 1920, height: 1080, video_bitrate: 6000000 }
    - { name: "720p",  width: 1280, height: 720,  video_bitrate: 3000000 }
    - { name: "480p",  width: 854,  height: 480,  video_bitrate: 1200000 }
    - { name: "360p",  width: 640,  height: 360,  video_bitrate: 700000 }
channels:
  - { name: "demo", stream_key: "demo-key", ladder: "default" }
"#;

    fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::parse(text, Path::new("test.yaml"))
    }

    #[test]
    fn the_documented_example_parses_with_defaults() {
        let c = parse(EXAMPLE).expect("valid");
        assert_eq!(c.ladders["default"].len(), 4);
        assert_eq!(c.transcode.x264_preset, "veryfast");
        assert_eq!(c.rtmp.app, "live");
        assert_eq!(c.channel_by_key("demo-key").map(|c| c.name.as_str()), Some("demo"));
    }

    #[test]
    fn short_and_sample_stream_keys_are_warned_about() {
        let c = parse(EXAMPLE).expect("valid");
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "channels[0].stream_key");
        assert!(w[0].message.contains("sample key") && w[0].message.contains("\"demo\""), "{}", w[0]);
        // On loopback the sample key is only short.
        let local = parse(&EXAMPLE.replace("0.0.0.0:1935", "127.0.0.1:1935")).expect("valid");
        let w = local.warnings();
        assert!(w.len() == 1 && w[0].message.starts_with("is 8 characters long"), "{w:?}");
        // RTMPS on a public address exposes it as much.
        let tls = EXAMPLE.replace("\"0.0.0.0:1935\"", "\"127.0.0.1:1935\", tls_listen: \"[::]:1936\"");
        let tls = tls.replace("hls:", "tls: { cert_file: \"c.pem\", key_file: \"k.pem\" }\nhls:");
        let c = parse(&tls).expect("valid");
        assert!(c.warnings()[0].message.contains("sample key"), "{:?}", c.warnings());
        let good = parse(&EXAMPLE.replace("demo-key", "3f9c2a7e1b8d4c6f0a5e9b2d")).expect("valid");
        assert!(good.warnings().is_empty(), "{:?}", good.warnings());
        assert_eq!(good.channel_by_key("3f9c2a7e1b8d4c6f0a5e9b2d").map(|c| c.name.as_str()), Some("demo"));
        assert!(good.channel_by_key("3f9c2a7e1b8d4c6f0a5e9b2").is_none() && good.channel_by_key("").is_none());
    }

    #[test]
    fn unknown_keys_are_errors_with_line_and_column() {
        let text = EXAMPLE.replace("window: 6", "window: 6, windw: 3");
        let errs = parse(&text).unwrap_err();
        let msg = errs[0].to_string();
        assert!(msg.starts_with("test.yaml:5:"), "{msg}");
        assert!(msg.contains("windw"), "{msg}");
    }

    #[test]
    fn semantic_errors_point_at_the_offending_line() {
        let text = EXAMPLE.replace("ladder: \"default\"", "ladder: \"nope\"");
        let errs = parse(&text).unwrap_err();
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(msg.starts_with("test.yaml:13:"), "{msg}");
        assert!(msg.contains("channels[0].ladder") && msg.contains("nope"), "{msg}");
    }

    #[test]
    fn rung_rules() {
        let text = EXAMPLE
            .replace("width: 854,", "width: 855,")
            .replace("- { name: \"360p\"", "- { name: \"src\", passthrough: true, width: 10 }\n    - { name: \"360p\"");
        let errs: Vec<String> = parse(&text).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert!(
            errs.iter().any(|e| e.contains("ladders.default[2].width") && e.starts_with("test.yaml:10:")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("passthrough rung takes no width")), "{errs:?}");
    }

    #[test]
    fn duplicate_keys_and_names_are_refused() {
        let text = EXAMPLE.replace(
            "  - { name: \"demo\", stream_key: \"demo-key\", ladder: \"default\" }",
            "  - { name: \"demo\", stream_key: \"demo-key\", ladder: \"default\" }\n  - { name: \"demo\", stream_key: \"demo-key\", ladder: \"default\" }",
        );
        let errs: Vec<String> = parse(&text).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert!(errs.iter().any(|e| e.contains("defined twice") && e.starts_with("test.yaml:14:")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("used by another channel")), "{errs:?}");
    }

    #[test]
    fn block_style_yaml_is_located_too() {
        let text = "ladders:\n  l:\n    - name: a\n      width: 640\n      height: 360\n      video_bitrate: 10\nchannels: []\n";
        let errs: Vec<String> = parse(text).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errs,
            vec!["test.yaml:6:7: ladders.l[0].video_bitrate: must be between 50000 and 100000000 bits per second"]
        );
    }

    #[test]
    fn admin_metadata_limits_default_to_five_per_second_and_are_range_checked() {
        let c = parse(EXAMPLE).expect("valid");
        assert_eq!((c.admin.metadata_rate, c.admin.metadata_burst, c.admin.token.as_deref()), (5.0, 5, None));

        let text = EXAMPLE.replace(
            "admin: { listen: \"127.0.0.1:9090\" }",
            "admin: { listen: \"127.0.0.1:9090\", token: \"s3cret\", metadata_rate: 0.5, metadata_burst: 2 }",
        );
        let c = parse(&text).expect("valid");
        assert_eq!((c.admin.metadata_rate, c.admin.metadata_burst, c.admin.token.as_deref()), (0.5, 2, Some("s3cret")));

        for (bad, key) in [
            ("metadata_rate: 0", "admin.metadata_rate"),
            ("metadata_rate: -1", "admin.metadata_rate"),
            ("metadata_rate: .nan", "admin.metadata_rate"),
            ("metadata_rate: 1001", "admin.metadata_rate"),
            ("metadata_burst: 0", "admin.metadata_burst"),
            ("metadata_burst: 1001", "admin.metadata_burst"),
            ("token: \"\"", "admin.token"),
            ("token: \"has space\"", "admin.token"),
        ] {
            let text = EXAMPLE.replace(
                "admin: { listen: \"127.0.0.1:9090\" }",
                &format!("admin: {{ listen: \"127.0.0.1:9090\", {bad} }}"),
            );
            let errs: Vec<String> = parse(&text).unwrap_err().iter().map(|e| e.to_string()).collect();
            assert!(errs.len() == 1 && errs[0].contains(key) && errs[0].starts_with("test.yaml:4:"), "{bad}: {errs:?}");
        }
    }

    #[test]
    fn http_idle_timeout_defaults_to_75_seconds_and_is_range_checked() {
        assert_eq!(parse(EXAMPLE).expect("valid").http.idle_timeout, 75.0);
        let with = |v: &str| {
            EXAMPLE.replace(
                "http:  { listen: \"0.0.0.0:8080\" }",
                &format!("http:  {{ listen: \"0.0.0.0:8080\", idle_timeout: {v} }}"),
            )
        };
        assert_eq!(parse(&with("300")).expect("valid").http.idle_timeout, 300.0);
        for bad in ["4", "3601", ".inf", "-1"] {
            let errs: Vec<String> = parse(&with(bad)).unwrap_err().iter().map(|e| e.to_string()).collect();
            assert!(
                errs.len() == 1 && errs[0].contains("http.idle_timeout") && errs[0].starts_with("test.yaml:3:"),
                "{bad}: {errs:?}"
            );
        }
    }

    /// EXAMPLE with a `transcode:` line (line 6) holding `fields`.
    fn with_transcode(fields: &str) -> String {
        EXAMPLE.replace(
            "hls:   { segment_duration: 2.0, window: 6 }",
            &format!("hls:   {{ segment_duration: 2.0, window: 6 }}\ntranscode: {{ {fields} }}"),
        )
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text).unwrap_err().iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn gpu_placement_defaults() {
        let t = parse(EXAMPLE).expect("valid").transcode;
        assert_eq!(t.gpus, GpuSelection::All);
        assert_eq!(t.max_sessions_per_gpu, 32);
        assert_eq!(t.on_gpu_full, OnGpuFull::Cpu);
        assert!(t.ladder_hardware.is_empty());
        assert_eq!(t.hardware_for("default"), Hardware::Auto);
    }

    #[test]
    fn tls_listeners_need_a_certificate_and_a_certificate_needs_a_listener() {
        let base = "ladders: { l: [{ name: a, width: 640, height: 360, video_bitrate: 500000 }] }\nchannels: []\n";
        let errs = |text: &str| -> Vec<String> { parse(text).unwrap_err().iter().map(|e| e.to_string()).collect() };

        let e = errs(&format!("http: {{ listen: \"0.0.0.0:8080\", tls_listen: \"0.0.0.0:8443\" }}\n{base}"));
        assert!(e.iter().any(|e| e.contains("http.tls_listen") && e.contains("needs a tls section")), "{e:?}");

        let e = errs(&format!("tls: {{ cert_file: c.pem, key_file: k.pem }}\n{base}"));
        assert!(e.iter().any(|e| e.contains("tls: no listener uses it")), "{e:?}");

        let e = errs(&format!(
            "tls: {{ cert_file: c.pem, key_file: k.pem }}\nrtmp: {{ listen: \"0.0.0.0:1935\", tls_listen: \"0.0.0.0:8080\" }}\n{base}"
        ));
        assert!(e.iter().any(|e| e.contains("rtmp.tls_listen") && e.contains("already used")), "{e:?}");

        let ok = parse(&format!(
            "tls: {{ cert_file: /etc/ladderd/fullchain.pem, key_file: /etc/ladderd/privkey.pem }}\n\
             http: {{ listen: \"0.0.0.0:8080\", tls_listen: \"0.0.0.0:8443\" }}\n\
             rtmp: {{ listen: \"0.0.0.0:1935\", tls_listen: \"0.0.0.0:1936\" }}\n{base}"
        ))
        .expect("valid");
        assert_eq!(ok.rtmp.tls_listen, Some("0.0.0.0:1936".parse().unwrap()));
        assert_eq!(ok.tls.expect("tls").cert_file, PathBuf::from("/etc/ladderd/fullchain.pem"));
    }

    #[test]
    fn cache_headers_are_checked_as_cache_directives() {
        let base = "ladders: { l: [{ name: a, width: 640, height: 360, video_bitrate: 500000 }] }\nchannels: []\n";
        let with = |cache: &str| format!("http: {{ listen: \"0.0.0.0:8080\", cache: {cache} }}\n{base}");
        let ok = parse(&with(
            "{ preset: cdn, cache_control: { media: \"public, max-age=600\" }, cdn_cache_control: { retry: \"max-age=1, stale-if-error=\\\"5\\\"\" } }",
        ))
        .expect("valid");
        assert_eq!(ok.http.cache.preset, CachePreset::Cdn);
        assert_eq!(ok.http.cache.cache_control.media.as_deref(), Some("public, max-age=600"));

        let errs: Vec<String> = parse(&with("{ cdn_cache_control: { media: \"max-age=60; evil\" } }"))
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(errs.iter().any(|e| e.contains("http.cache.cdn_cache_control.media")), "{errs:?}");
        let errs: Vec<String> = parse(&with("{ cache_control: { segments: \"max-age=1\" } }"))
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(errs.iter().any(|e| e.contains("unknown field `segments`")), "{errs:?}");
    }

    #[test]
    fn gpu_placement_options_parse() {
        let text = with_transcode(
            "hardware: nvidia, gpus: [2, 0], max_sessions_per_gpu: 8, on_gpu_full: drop_top_rung, \
             ladder_hardware: { default: cpu }",
        );
        let t = parse(&text).expect("valid").transcode;
        assert_eq!(t.gpus, GpuSelection::Only(vec![2, 0]));
        assert!(t.gpus.allows(2) && t.gpus.allows(0) && !t.gpus.allows(1));
        assert_eq!(t.max_sessions_per_gpu, 8);
        assert_eq!(t.on_gpu_full, OnGpuFull::DropTopRung);
        assert_eq!(t.hardware_for("default"), Hardware::Cpu);
        assert_eq!(t.hardware_for("other"), Hardware::Nvidia);

        let t = parse(&with_transcode("gpus: all, on_gpu_full: reject")).expect("valid").transcode;
        assert_eq!((t.gpus, t.on_gpu_full), (GpuSelection::All, OnGpuFull::Reject));
        assert!(GpuSelection::All.allows(7));

        let text = "transcode:\n  gpus:\n    - 1\n    - 3\nladders: { l: [{ name: a, width: 640, height: 360, video_bitrate: 500000 }] }\nchannels: []\n";
        assert_eq!(parse(text).expect("valid").transcode.gpus, GpuSelection::Only(vec![1, 3]));
    }

    #[test]
    fn gpu_placement_type_errors_have_line_and_column() {
        for (fields, want) in [
            ("gpus: some", "expected \"all\" or a list of GPU indices"),
            ("gpus: [0, -1]", "gpus"),
            ("gpus: 1", "expected \"all\" or a list of GPU indices"),
            ("on_gpu_full: queue", "unknown variant `queue`"),
            ("max_sessions_per_gpu: -4", "max_sessions_per_gpu"),
            ("ladder_hardware: { default: gpu }", "unknown variant `gpu`"),
            ("max_session_per_gpu: 4", "unknown field `max_session_per_gpu`"),
        ] {
            let errs = errors(&with_transcode(fields));
            assert!(
                errs.len() == 1 && errs[0].starts_with("test.yaml:6:") && errs[0].contains(want),
                "{fields}: {errs:?}"
            );
        }
    }

    #[test]
    fn gpu_placement_rules() {
        for (fields, want) in [
            ("max_sessions_per_gpu: 0", "transcode.max_sessions_per_gpu: must be at least 1"),
            ("gpus: []", "transcode.gpus: an empty list allows no GPU"),
            ("gpus: [0, 1, 0]", "transcode.gpus: GPU 0 is listed twice"),
            (
                "ladder_hardware: { default: cpu, huge: nvidia }",
                "transcode.ladder_hardware.huge: no ladder named \"huge\"",
            ),
        ] {
            let errs = errors(&with_transcode(fields));
            assert!(
                errs.len() == 1 && errs[0].starts_with("test.yaml:6:") && errs[0].contains(want),
                "{fields}: {errs:?}"
            );
        }
        let text = format!("transcode:\n  ladder_hardware:\n    default: cpu\n    huge: nvidia\n{}", &EXAMPLE[1..]);
        assert_eq!(errors(&text), vec!["test.yaml:4:5: transcode.ladder_hardware.huge: no ladder named \"huge\""]);
    }

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ladderd.yaml");
        Config::load(&path).unwrap_or_else(|e| panic!("{e:?}"));
    }

    #[test]
    fn thumbnail_interval_defaults_to_two_seconds_and_zero_turns_thumbnails_off() {
        assert_eq!(parse(EXAMPLE).expect("valid").hls.thumbnail_interval, 2.0);
        let off = EXAMPLE.replace("window: 6", "window: 6, thumbnail_interval: 0");
        assert_eq!(parse(&off).expect("valid").hls.thumbnail_interval, 0.0);
        for bad in ["0.1", "61", "-1", ".nan"] {
            let text = EXAMPLE.replace("window: 6", &format!("window: 6, thumbnail_interval: {bad}"));
            let errs = parse(&text).unwrap_err();
            let msg = errs[0].to_string();
            assert!(msg.contains("hls.thumbnail_interval") && msg.starts_with("test.yaml:5:"), "{bad}: {msg}");
        }
    }
}
