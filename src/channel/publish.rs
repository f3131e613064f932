//! One publish through the stages, on its own thread: the ladder plan and where each stage runs,
//! the transcoder and the rendition publishers of each session (a stretch of the publish with
//! unchanged stream parameters), segment cuts for passthrough and audio, timed metadata stamped
//! on the next video frame, and the flush when the publisher leaves.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BackendStatus, ChannelState, SourceStatus};
use crate::config::{ChannelConfig, Config, Hardware};
use crate::media::{
    Alignment, Arrival, AudioParams, EncodedPacket, MediaPacket, RenditionSink, Sample, SegmentClock, Ticks,
    VideoParams, secs_to_ticks, ticks_to_secs,
};
use crate::metrics::{DropReason, FallbackReason, Metrics};
use crate::package::fmp4::TrackParams;
use crate::package::id3;
use crate::package::publisher::{Packaging, RenditionPublisher};
use crate::package::window::ChannelWindow;
use crate::store::{Cacheability, ChannelObjects, ObjectName};
use crate::sync::lock;
use crate::transcode::backend::{self, Backend, NoHardware, NvidiaOffer, StagePlan};
use crate::transcode::ladder;
use crate::transcode::placement::{GpuState, Placement, Placer, Rejected, SessionGuard, Unavailable};
use crate::transcode::probe;
use crate::transcode::spec::{DecoderChoice, EncoderChoice, RUNG_QUEUE, TranscodeSpec};
use crate::transcode::thumbnail::ThumbnailSpec;
use crate::transcode::{StageMove, StageMoves, TranscodeError, Transcoder};

/// Name of the audio rendition (rung names may not use it).
const AUDIO: &str = "audio";

/// What the thread of one publish is handed when the publish begins.
pub(super) struct PublishContext {
    pub(super) placer: Placer,
    pub(super) state: Arc<ChannelState>,
    /// The channel's configuration when the publish began; a reload applies to the next one.
    pub(super) channel: ChannelConfig,
    /// The whole configuration when the publish began.
    pub(super) config: Arc<Config>,
    pub(super) objects: Arc<ChannelObjects>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) kick: CancellationToken,
    /// Set by ingest when the publisher ended the publish itself ([`crate::ingest::Publish::finished`]).
    pub(super) finished: Arc<AtomicBool>,
    /// The daemon is draining: a reconnect grace ends at once.
    pub(super) draining: Arc<AtomicBool>,
    /// This publish's id in the channel's `live` slot.
    pub(super) id: u64,
}

/// How long a publish may send audio with no video to start the ladder before a warning says so.
const AUDIO_ALONE_WARNING: Duration = Duration::from_secs(5);

/// The channel thread of one publish: runs until the publisher leaves, then flushes.
pub(super) fn run(ctx: PublishContext, rx: mpsc::Receiver<Arrival>) {
    let name = ctx.channel.name.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| publish_loop(&ctx, rx)));
    if outcome.is_err() {
        ctx.metrics.pipeline_errors.with_label_values(&[&name, "panic"]).inc();
        tracing::error!(channel = %name, "channel pipeline panicked; publish ended");
        ctx.kick.cancel();
        // The loop did not get to free the channel: do it, unless a new publish already has it.
        release_live(&ctx);
        ctx.objects.remove(&ObjectName::Thumbnail);
    }
    tracing::info!(channel = %name, "publish ended");
}

/// Frees the channel's `live` slot if it still holds this publish, with the posts waiting to be
/// stamped and the live gauge; whether another publish holds it (took the channel over).
fn release_live(ctx: &PublishContext) -> bool {
    let mut live = lock(&ctx.state.live);
    match live.as_ref() {
        Some(l) if l.id == ctx.id => {
            *live = None;
            // Posts not yet stamped belong to this publish, not to the next one.
            lock(&ctx.state.posted_metadata).clear();
            ctx.metrics.channel_live.with_label_values(&[&ctx.channel.name]).set(0);
            false
        }
        Some(_) => true,
        None => false,
    }
}

fn publish_loop(ctx: &PublishContext, mut rx: mpsc::Receiver<Arrival>) {
    let name = &ctx.channel.name;
    let mut video_params: Option<VideoParams> = None;
    let mut audio_params: Option<AudioParams> = None;
    let mut session: Option<Session> = None;
    // When the ladder was restarted in the last minute (`transcode.max_restarts_per_minute`).
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    let mut dropped_before_start = 0u64;
    let (mut audio_alone_since, mut warned_audio_alone) = (None::<SystemTime>, false);
    // Before the first keyframe there is no ladder yet, so these drops belong to no rung.
    let awaiting_keyframe =
        ctx.metrics.frames_dropped.with_label_values(&[name, "", DropReason::AwaitingKeyframe.as_str()]);

    // Whether the publish ended for a reason of the daemon's (a kick, a pipeline failure) rather
    // than because its connection went away.
    let mut sent_away = false;
    while let Some(arrival) = rx.blocking_recv() {
        // Sent away (disconnect, drain, or a new connection took over): what is still queued is
        // not this publish's to package any more, and must not touch what is now the successor's
        // (posted metadata, the source in the status).
        if ctx.kick.is_cancelled() {
            sent_away = true;
            break;
        }
        let result = match arrival.packet {
            MediaPacket::VideoParams(p) => {
                if session.as_ref().is_some_and(|s| s.source != p)
                    && !restart(ctx, &mut session, &mut restarts, "video parameters changed")
                {
                    sent_away = true;
                    break;
                }
                video_params = Some(p);
                Ok(())
            }
            MediaPacket::AudioParams(p) => {
                if session.as_ref().is_some_and(|s| s.audio_params.as_ref() != Some(&p))
                    && !restart(ctx, &mut session, &mut restarts, "audio parameters changed")
                {
                    sent_away = true;
                    break;
                }
                audio_params = Some(p);
                Ok(())
            }
            MediaPacket::Video(sample) => {
                if session.is_none() {
                    match (&video_params, sample.keyframe) {
                        (Some(vp), true) => {
                            match Session::start(ctx, vp.clone(), audio_params.clone(), sample.pts, arrival.at) {
                                Ok(s) => {
                                    session = Some(s);
                                    // Audio before this keyframe was not alone for long; a later
                                    // restart counts afresh.
                                    (audio_alone_since, warned_audio_alone) = (None, false);
                                }
                                Err(e) => {
                                    tracing::error!(channel = %name, error = %e, "cannot start the pipeline; ending the publish");
                                    ctx.metrics.pipeline_errors.with_label_values(&[name, "start"]).inc();
                                    sent_away = true;
                                    break;
                                }
                            }
                        }
                        _ => {
                            dropped_before_start += 1;
                            awaiting_keyframe.inc();
                            continue;
                        }
                    }
                }
                if session.is_some() {
                    stamp_posted_metadata(ctx, sample.pts);
                }
                match session.as_mut() {
                    Some(s) => s.video(sample, arrival.at),
                    None => Ok(()),
                }
            }
            MediaPacket::Metadata { pts, payload } => {
                if session.is_some() {
                    put_on_board(ctx, pts, &payload, arrival.at);
                }
                Ok(())
            }
            MediaPacket::Audio(sample) => match session.as_mut() {
                Some(s) => s.audio(sample, arrival.at),
                None => {
                    // Audio is packaged beside the video ladder, never alone: a publisher that
                    // sends only audio (or whose video never starts) publishes nothing, so say so.
                    let first = *audio_alone_since.get_or_insert(arrival.at);
                    if !warned_audio_alone && arrival.at.duration_since(first).is_ok_and(|d| d >= AUDIO_ALONE_WARNING) {
                        warned_audio_alone = true;
                        tracing::warn!(
                            channel = %name,
                            seconds = AUDIO_ALONE_WARNING.as_secs(),
                            has_video_parameters = video_params.is_some(),
                            "audio but no H.264 keyframe yet: nothing is published until the video starts \
                             (audio-only channels are not served)"
                        );
                    }
                    Ok(())
                }
            },
        };
        if let Err(e) = result {
            tracing::error!(channel = %name, error = %e, "pipeline failed; ending the publish");
            ctx.metrics.pipeline_errors.with_label_values(&[name, e.stage()]).inc();
            sent_away = true;
            break;
        }
    }
    // The queue closed: the connection went away. Ingest says whether the publisher ended the
    // publish first; a kick may also have closed the connection before this thread saw it.
    let lost = !sent_away && !ctx.kick.is_cancelled() && !ctx.finished.load(Ordering::Acquire);
    // The publisher is gone (or is being sent away): the channel is free for the next one while
    // this thread flushes.
    ctx.kick.cancel();
    drop(rx);
    // Unless a new publish has taken the channel over already: then the slot, the posts waiting to
    // be stamped and the live gauge are the new publish's, and the playlists stay open for it (an
    // ENDLIST now would make players stop before the new publisher's first segment).
    let superseded = release_live(ctx);
    if dropped_before_start > 0 {
        tracing::debug!(channel = %name, packets = dropped_before_start, "dropped video before the first keyframe");
    }
    let grace = Duration::from_secs_f64(ctx.config.rtmp.reconnect_grace);
    let hold = lost && !grace.is_zero();
    if let Some(s) = session {
        // Held playlists stay open through the flush; whether they end is decided after it.
        s.finish(superseded || hold);
    }
    if !superseded {
        if hold {
            hold_for_reconnect(ctx, grace);
        } else {
            end_open_playlists(ctx);
        }
    }
    // The thumbnail shows the stream live; once it is over there is none (its thread has been
    // joined by the transcoder's finish, so no later one comes).
    ctx.objects.remove(&ObjectName::Thumbnail);
}

/// The publisher was lost: keeps the channel's playlists open for `grace`, so that an encoder
/// that reconnects continues them after a discontinuity (RFC 8216 §6.2.1 forbids taking back
/// an `EXT-X-ENDLIST` once served, and players that saw one have stopped). Ends them when the
/// grace passes without a new publish, or at once when the daemon drains.
fn hold_for_reconnect(ctx: &PublishContext, grace: Duration) {
    let name = &ctx.channel.name;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    {
        // Under `live`, where a new publish looks for the sender and the drain drops it.
        let live = lock(&ctx.state.live);
        if live.is_some() {
            // A new publish took the channel while this thread flushed: the playlists are its.
            return;
        }
        if ctx.draining.load(Ordering::SeqCst) {
            drop(live);
            end_open_playlists(ctx);
            return;
        }
        *lock(&ctx.state.reconnect) = Some(tx);
        *lock(&ctx.state.reconnect_until) = Some(SystemTime::now() + grace);
    }
    tracing::warn!(
        channel = %name,
        grace_seconds = grace.as_secs_f64(),
        config_key = "rtmp.reconnect_grace",
        "publisher lost without ending its publish; its playlists stay open for its return"
    );
    let signalled = rx.recv_timeout(grace).is_ok();
    let live = lock(&ctx.state.live);
    lock(&ctx.state.reconnect).take();
    *lock(&ctx.state.reconnect_until) = None;
    // The grace may have run out just as a new publish began: it is live, so the playlists are its.
    if signalled || live.is_some() {
        return;
    }
    drop(live);
    ctx.metrics.publishers_lost.with_label_values(&[name, "ended"]).inc();
    tracing::info!(channel = %name, "the lost publisher did not come back; its playlists end");
    end_open_playlists(ctx);
}

/// A publisher of one rendition of this publish; `anchor` is the wall-clock time of pts 0.
fn rendition_publisher(ctx: &PublishContext, rendition: &str, anchor: SystemTime) -> RenditionPublisher {
    let packaging = Packaging {
        channel: ctx.channel.name.clone(),
        window: ctx.state.window.clone(),
        objects: ctx.objects.clone(),
        metrics: ctx.metrics.clone(),
        hls: ctx.config.hls.clone(),
        container: ctx.config.container(&ctx.channel),
        metadata_latest: ctx.state.metadata_latest.clone(),
    };
    RenditionPublisher::new(&packaging, rendition, anchor)
}

/// Ends every playlist of the channel still open: after a publish that never started a session,
/// playlists a predecessor left open for it (it was taken over) would otherwise stay open.
fn end_open_playlists(ctx: &PublishContext) {
    let open = lock(&ctx.state.window).open();
    for rendition in open {
        rendition_publisher(ctx, &rendition, SystemTime::now()).end();
    }
}

/// Where a session's stages run: places the channel on a GPU (or not), applies `on_gpu_full`,
/// chooses each stage's backend, logs refusals, and exports `ladderd_backend_info`. Returns the
/// ladder plan without the rungs `drop_top_rung` left out.
fn place(
    ctx: &PublishContext,
    mut plan: ladder::Plan,
) -> Result<(ladder::Plan, StagePlan, Option<SessionGuard>), SessionError> {
    let name = &ctx.channel.name;
    let transcode = &ctx.config.transcode;
    let hardware = transcode.hardware_for(&ctx.channel.ladder);
    let mut placement = if hardware == Hardware::Cpu || plan.encoded.is_empty() {
        Placement::cpu(plan.encoded.len(), None)
    } else {
        let probe = probe::machine();
        // Engines from the probe, how busy each GPU is from NVML now (read at most every 2 s).
        let live = probe::live_stats();
        let gpus: Vec<GpuState> = probe
            .gpus
            .iter()
            .map(|g| GpuState::of(g, live.iter().find(|s| s.index == g.index), ctx.placer.held(g.index)))
            .collect();
        let mut placement =
            ctx.placer.place(name, plan.encoded.len(), &gpus, &transcode.gpus, transcode.on_gpu_full)?;
        if gpus.is_empty() && placement.reason.is_none() {
            placement.reason =
                probe.driver.as_ref().err().map(|e| Unavailable::new(FallbackReason::NoDriver, e.clone()));
        }
        placement
    };
    let offer = if hardware == Hardware::Cpu {
        // Not consulted: `cpu` puts every stage on the CPU without probing.
        let no = || Err("transcode.hardware is cpu".to_string());
        NvidiaOffer { decode: no(), scale: no(), encode: no() }
    } else {
        probe::nvidia_offer(probe::machine(), placement.gpu)
    };
    let stages = backend::choose_placed(hardware, &offer, &mut placement)?;
    if !stages.refused.is_empty() {
        let reasons: Vec<String> = stages.refused.iter().map(ToString::to_string).collect();
        tracing::warn!(channel = %name, refused = %reasons.join("; "), "hardware backends refused; those stages run on the CPU");
    }
    let dropped: Vec<String> =
        plan.encoded.iter().enumerate().filter(|(i, _)| !placement.keeps(*i)).map(|(_, r)| r.name.clone()).collect();
    if !dropped.is_empty() {
        tracing::warn!(channel = %name, rungs = %dropped.join(", "), "GPU full (on_gpu_full: drop_top_rung): rungs left out");
        let keep: Vec<bool> = (0..plan.encoded.len()).map(|i| placement.keeps(i)).collect();
        let mut k = keep.iter();
        plan.encoded.retain(|_| k.next().copied().unwrap_or(true));
        plan.skipped.extend(dropped.into_iter().map(|n| (n, "GPU full".to_string())));
    }
    tracing::info!(
        channel = %name,
        decode = stages.decode.name(),
        scale = stages.scale.name(),
        encode = stages.encode.name(),
        gpu = ?stages.gpu,
        "transcode backends chosen"
    );
    let mut previous = lock(&ctx.state.backend_series);
    let names = plan.encoded.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    *previous = stages.export(&ctx.metrics, name, &names, &previous);
    drop(previous);
    *lock(&ctx.state.backend) = Some(BackendStatus::of(&stages, &names));
    Ok((plan, stages, placement.sessions.take()))
}

/// Where a session's stages that move to the CPU while it runs are told: the channel's status
/// (`backend`) and its `ladderd_backend_info` series, so both always say where each stage runs.
///
/// A stage that moved off GPU `gpu` counts as an error of that GPU (its health, which
/// quarantines a GPU that keeps failing).
fn stage_moves(ctx: &PublishContext, gpu: Option<u32>) -> StageMoves {
    let (state, metrics, channel) = (ctx.state.clone(), ctx.metrics.clone(), ctx.channel.name.clone());
    let health = ctx.placer.health().cloned();
    StageMoves::new(move |m: StageMove| {
        let cpu = Backend::Cpu.name();
        let mut series = lock(&state.backend_series);
        let (mut was, mut now) = (Vec::new(), Vec::new());
        for s in series.iter_mut() {
            let hit = s.stage == m.stage && m.rung.as_deref().is_none_or(|r| r == s.rung);
            if hit && s.backend != cpu {
                was.push(s.clone());
                s.backend = cpu;
                now.push(s.clone());
            }
        }
        metrics.set_backend_info(&channel, &was, &now);
        drop(series);
        if let (false, Some(gpu), Some(health)) = (was.is_empty(), gpu, health.as_ref()) {
            health.error(gpu, &m.reason);
        }
        if let Some(b) = lock(&state.backend).as_mut() {
            b.moved(&m);
        }
        tracing::info!(channel = %channel, rung = m.rung.as_deref().unwrap_or(""), stage = m.stage, reason = %m.reason, "stage moved to the CPU");
    })
}

/// Where a session's thumbnails go: `thumb.jpg` in the channel's objects, cacheable until the
/// next one (`hls.thumbnail_interval`, 0: none).
fn thumbnails(ctx: &PublishContext) -> Option<ThumbnailSpec> {
    let every = ctx.config.hls.thumbnail_interval;
    if every <= 0.0 {
        return None;
    }
    let objects = ctx.objects.clone();
    let max_age = every.ceil().max(1.0) as u32;
    let sink = Arc::new(move |jpeg: Bytes| {
        objects.put(&ObjectName::Thumbnail, vec![jpeg], Cacheability::Refreshed(max_age));
    });
    Some(ThumbnailSpec { interval: secs_to_ticks(every), sink })
}

/// Stamps the metadata posted through the API with `pts`, the next video frame to be packaged.
fn stamp_posted_metadata(ctx: &PublishContext, pts: Ticks) {
    let posted: Vec<(Bytes, SystemTime)> = lock(&ctx.state.posted_metadata).drain(..).collect();
    for (payload, at) in posted {
        put_on_board(ctx, pts, &payload, at);
    }
}

/// Makes `payload` an ID3 tag at `pts` for every rendition of the channel.
fn put_on_board(ctx: &PublishContext, pts: Ticks, payload: &[u8], posted: SystemTime) {
    let tag = match id3::txxx_tag("", payload) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(channel = %ctx.channel.name, error = %e, "timed metadata dropped");
            return;
        }
    };
    let id = lock(&ctx.state.window).board.post(pts, tag, posted);
    ctx.state.metadata_latest.store(id, Ordering::Release);
    tracing::debug!(channel = %ctx.channel.name, id, pts, "timed metadata stamped");
}

/// Ends the session without ending its playlists; the next keyframe starts a new one with the
/// new parameters (a new ladder plan, new init segments, a discontinuity in every rendition).
/// False when this would be one restart too many in a minute: the publish is then to end.
fn restart(ctx: &PublishContext, session: &mut Option<Session>, restarts: &mut VecDeque<Instant>, why: &str) -> bool {
    let now = Instant::now();
    while restarts.front().is_some_and(|t| now.duration_since(*t) >= RESTART_WINDOW) {
        restarts.pop_front();
    }
    let limit = ctx.config.transcode.max_restarts_per_minute;
    if restarts.len() >= limit as usize {
        tracing::error!(
            channel = %ctx.channel.name,
            reason = why,
            config_key = "transcode.max_restarts_per_minute",
            limit,
            "the publisher changed its stream parameters too often (each change rebuilds the ladder); ending the publish"
        );
        ctx.metrics.pipeline_errors.with_label_values(&[&ctx.channel.name, "restarts"]).inc();
        ctx.kick.cancel();
        return false;
    }
    if let Some(s) = session.take() {
        restarts.push_back(now);
        tracing::info!(channel = %ctx.channel.name, reason = why, "restarting the ladder at the next keyframe");
        s.finish(true);
    }
    true
}

/// The window of `transcode.max_restarts_per_minute`.
const RESTART_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("transcode: {0}")]
    Transcode(#[from] crate::transcode::TranscodeError),
    #[error(
        "the source ({width}x{height}) is smaller than every rung of ladder {ladder:?} and the ladder has no passthrough rung"
    )]
    NothingToEncode { ladder: String, width: u32, height: u32 },
    #[error(
        "no source keyframe for {secs:.1} s: a ladder with a passthrough rung cuts segments on the source's keyframes, so the publisher's keyframe interval should be at most hls.segment_duration ({target} s)"
    )]
    KeyframesTooFarApart { secs: f64, target: f64 },
    #[error("audio went on for {secs:.1} s without video; segments cannot be cut")]
    NoVideo { secs: f64 },
    #[error("{0}")]
    NoHardware(#[from] NoHardware),
    #[error("{0}")]
    GpuFull(#[from] Rejected),
}

impl SessionError {
    /// The `stage` label of `ladderd_pipeline_errors_total`.
    fn stage(&self) -> &'static str {
        match self {
            SessionError::Transcode(_) => "transcode",
            SessionError::NothingToEncode { .. } | SessionError::NoHardware(_) | SessionError::GpuFull(_) => "start",
            SessionError::KeyframesTooFarApart { .. } | SessionError::NoVideo { .. } => "ingest",
        }
    }
}

/// With source-keyframe alignment, how many segment targets may pass without a cut before the
/// publish is ended: bounds the memory an open segment holds and says clearly what is wrong.
const MAX_SEGMENT_TARGETS: i64 = 5;

/// The stages of one publish (or of one stretch of it with unchanged stream parameters).
struct Session {
    /// The parameters this session was started with; a change restarts it.
    source: VideoParams,
    audio_params: Option<AudioParams>,
    window: Arc<Mutex<ChannelWindow>>,
    /// Longest a segment may grow with source-keyframe alignment.
    max_segment: Ticks,
    transcoder: Option<Transcoder>,
    passthrough: Option<(RenditionPublisher, SegmentClock)>,
    audio: Option<AudioTrack>,
    /// NVENC sessions held on a GPU while this session's encoders run; last, so that it is
    /// dropped after the transcoder.
    _sessions: Option<SessionGuard>,
}

struct AudioTrack {
    publisher: RenditionPublisher,
    /// With cadence alignment, audio cuts on the cadence by itself.
    clock: SegmentClock,
    /// The pts of the latest video cut not yet followed by audio. The session starts with the
    /// first video keyframe here, so audio's first segment starts with video's in both modes.
    pending_cut: Option<Ticks>,
    /// Whether audio has made its first cut.
    started: bool,
    /// Pts of audio's latest cut.
    last_cut: Ticks,
    alignment: Alignment,
}

impl Session {
    fn start(
        ctx: &PublishContext,
        source: VideoParams,
        audio: Option<AudioParams>,
        first_pts: Ticks,
        first_arrival: SystemTime,
    ) -> Result<Session, SessionError> {
        let name = &ctx.channel.name;
        let ladder_name = &ctx.channel.ladder;
        let rungs = ctx.config.ladders.get(ladder_name).map(Vec::as_slice).unwrap_or_default();
        let plan = ladder::plan(rungs, source.width, source.height);
        for (rung, why) in &plan.skipped {
            tracing::info!(channel = %name, rung = %rung, reason = %why, "rung left out");
        }
        if plan.encoded.is_empty() && plan.passthrough.is_none() {
            return Err(SessionError::NothingToEncode {
                ladder: ladder_name.clone(),
                width: source.width,
                height: source.height,
            });
        }
        *lock(&ctx.state.source) = Some(SourceStatus {
            width: source.width,
            height: source.height,
            codec: source.codec.clone(),
            audio_codec: audio.as_ref().map(|a| a.codec.clone()),
        });
        let (plan, stages, sessions) = place(ctx, plan)?;
        let alignment = if plan.passthrough.is_some() { Alignment::SourceKeyframes } else { Alignment::Cadence };
        let target = secs_to_ticks(ctx.config.hls.segment_duration);

        // Variants in the master playlist, highest first: passthrough, then the rungs as configured.
        let mut video: Vec<(String, Option<u64>)> = Vec::new();
        if let Some(p) = &plan.passthrough {
            video.push((p.clone(), None));
        }
        video.extend(plan.encoded.iter().map(|r| (r.name.clone(), Some(r.bitrate))));
        // Wall-clock time of pts 0, so that EXT-X-PROGRAM-DATE-TIME = anchor + pts.
        let anchor = first_arrival - Duration::from_secs_f64(ticks_to_secs(first_pts.max(0)));
        let audio_params = audio.clone();
        // Renditions of an earlier session that this one does not have (a source that got
        // smaller, a rung that failed) are ended, so that no player waits on them.
        let stale = lock(&ctx.state.window).begin_publish(
            video,
            audio.as_ref().map(|_| AUDIO.to_string()),
            ctx.config.hls.segment_duration.ceil() as u64,
            SystemTime::now(),
        );
        let publisher = |rendition: &str| rendition_publisher(ctx, rendition, anchor);

        for name in &stale {
            publisher(name).end();
        }
        let passthrough = plan.passthrough.as_ref().map(|p| {
            let mut publisher = publisher(p);
            publisher.start_track(TrackParams::Video(source.clone()));
            (publisher, SegmentClock::new(target, alignment))
        });
        let audio = audio.map(|a| {
            let mut publisher = publisher(AUDIO);
            publisher.start_track(TrackParams::Audio(a));
            AudioTrack {
                publisher,
                clock: SegmentClock::new(target, Alignment::Cadence),
                pending_cut: Some(first_pts),
                started: false,
                last_cut: first_pts,
                alignment,
            }
        });
        let transcoder = if plan.encoded.is_empty() {
            None
        } else {
            let sinks: Vec<Box<dyn RenditionSink>> =
                plan.encoded.iter().map(|r| Box::new(publisher(&r.name)) as Box<dyn RenditionSink>).collect();
            let spec = TranscodeSpec {
                channel: name.clone(),
                source: source.clone(),
                rungs: plan.encoded.clone(),
                alignment,
                segment_target: target,
                x264_preset: ctx.config.transcode.x264_preset.clone(),
                max_frame_rate: ctx.config.transcode.max_frame_rate,
                encoder_threads: ctx.config.transcode.encoder_threads,
                encoders: plan
                    .encoded
                    .iter()
                    .map(|_| match (stages.encode, stages.gpu) {
                        (Backend::Nvidia, Some(gpu)) => EncoderChoice::Nvenc { gpu },
                        _ => EncoderChoice::X264,
                    })
                    .collect(),
                decoder: match (stages.decode, stages.scale, stages.gpu) {
                    // Decode and scale on the GPU: the zero-copy path (pictures stay on the GPU).
                    (Backend::Nvidia, Backend::Nvidia, Some(gpu)) => DecoderChoice::NvdecCuda { gpu },
                    (Backend::Nvidia, _, Some(gpu)) => DecoderChoice::Nvdec { gpu },
                    _ => DecoderChoice::Cpu,
                },
                thumbnails: thumbnails(ctx),
                rung_queue: RUNG_QUEUE,
                moves: stage_moves(ctx, stages.gpu),
            };
            Some(Transcoder::start(spec, sinks, ctx.metrics.clone())?)
        };
        Ok(Session {
            _sessions: sessions,
            source,
            audio_params,
            window: ctx.state.window.clone(),
            max_segment: target * MAX_SEGMENT_TARGETS,
            transcoder,
            passthrough,
            audio,
        })
    }

    fn video(&mut self, sample: Sample, at: SystemTime) -> Result<(), SessionError> {
        if let Some((publisher, clock)) = self.passthrough.as_mut() {
            let mut s = sample.clone();
            s.segment_start = clock.is_cut(s.pts, s.keyframe);
            if s.segment_start {
                if let Some(a) = self.audio.as_mut() {
                    a.pending_cut = Some(s.pts);
                }
            } else if let Some(last) = clock.last_cut()
                && s.pts - last > self.max_segment
            {
                return Err(SessionError::KeyframesTooFarApart {
                    secs: ticks_to_secs(s.pts - last),
                    target: ticks_to_secs(self.max_segment / MAX_SEGMENT_TARGETS),
                });
            }
            publisher.packet(EncodedPacket { sample: s, ingest_time: at });
        }
        if let Some(t) = self.transcoder.as_mut() {
            match t.push(sample, at) {
                Err(e @ TranscodeError::DecoderStalled { .. }) => {
                    tracing::warn!(error = %e, "the decoder is stuck; rebuilding the transcode on the CPU");
                    if let Some(stuck) = self.transcoder.take() {
                        self.transcoder = Some(stuck.rebuild_on_cpu()?);
                    }
                }
                other => other?,
            }
        }
        Ok(())
    }

    fn audio(&mut self, mut sample: Sample, at: SystemTime) -> Result<(), SessionError> {
        let Some(a) = self.audio.as_mut() else { return Ok(()) };
        sample.segment_start = if !a.started || a.alignment == Alignment::SourceKeyframes {
            // Cut on the first frame at or after the pending video cut.
            match a.pending_cut {
                Some(cut) if sample.pts >= cut => {
                    a.pending_cut = None;
                    if !a.started && a.alignment == Alignment::Cadence {
                        // Starts audio's own cadence from the same bucket as video's first cut.
                        a.clock.is_audio_cut(sample.pts);
                    }
                    a.started = true;
                    true
                }
                _ => false,
            }
        } else {
            a.clock.is_audio_cut(sample.pts)
        };
        if sample.segment_start {
            a.last_cut = sample.pts;
        } else if a.started && a.alignment == Alignment::SourceKeyframes && sample.pts - a.last_cut > self.max_segment {
            return Err(SessionError::NoVideo { secs: ticks_to_secs(sample.pts - a.last_cut) });
        }
        a.publisher.packet(EncodedPacket { sample, ingest_time: at });
        Ok(())
    }

    /// Flushes every rendition. `restart`: another session follows at once, so the playlists
    /// stay open (no ENDLIST) and continue after a discontinuity.
    fn finish(self, restart: bool) {
        lock(&self.window).restarting = restart;
        if let Some(t) = self.transcoder
            && let Err(e) = t.finish()
        {
            tracing::warn!(error = %e, "transcoder did not flush cleanly");
        }
        if let Some((p, _)) = self.passthrough {
            Box::new(p).finish();
        }
        if let Some(a) = self.audio {
            Box::new(a.publisher).finish();
        }
        lock(&self.window).restarting = false;
    }
}
