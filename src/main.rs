//! The `ladderd` command.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ladderd::Config;
use ladderd::config::LogFormat;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "ladderd", version, about = "RTMP in, ABR ladder, low-latency HLS out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// The YAML configuration file.
        #[arg(long, short, default_value = "/etc/ladderd/ladderd.yaml")]
        config: PathBuf,
        /// Log format, overriding the file's `log.format`.
        #[arg(long, value_parser = ["human", "json"])]
        log_format: Option<String>,
    },
    /// Validate a configuration file and print every error with its line and column.
    CheckConfig {
        /// The YAML configuration file.
        file: PathBuf,
    },
    /// Show the NVIDIA GPUs, driver and engines (NVDEC, NVENC) this machine offers, and where each
    /// transcode stage would run under `transcode.hardware: auto`. Exits 0 with or without a GPU.
    Probe {
        /// Print the probe as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe { json } => probe(json),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                // What the daemon would refuse at start or reload: certificates that do not load.
                if let Some(tls) = &c.tls
                    && let Err(e) = ladderd::tls::Certificates::load(tls)
                {
                    eprintln!("{}: {e}", file.display());
                    return ExitCode::from(2);
                }
                for w in c.warnings() {
                    eprintln!("{}: warning: {w}", file.display());
                }
                println!(
                    "{}: ok ({} channel{}, {} ladder{})",
                    file.display(),
                    c.channels.len(),
                    if c.channels.len() == 1 { "" } else { "s" },
                    c.ladders.len(),
                    if c.ladders.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                ExitCode::from(2)
            }
        },
        Command::Run { config, log_format } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    for e in errors {
                        eprintln!("{e}");
                    }
                    return ExitCode::from(2);
                }
            };
            let format = match log_format.as_deref() {
                Some("json") => LogFormat::Json,
                Some(_) => LogFormat::Human,
                None => cfg.log.format,
            };
            init_logging(format, &cfg.log.level);
            // FFmpeg's own messages ("Cannot load libcuda.so.1", encoder errors) into this log.
            ladderd::ffi::log::install();
            match run(cfg, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `ladderd probe`: what this machine offers and what `auto` would make of it. A machine without
/// a GPU is a valid answer, not a failure, so only an output error gives a non-zero status.
fn probe(json: bool) -> ExitCode {
    use ladderd::config::Hardware;
    use ladderd::transcode::backend::{self, Stage};

    // FFmpeg explains its NVIDIA failures only in its log: show them (on stderr, beside the
    // reasons the probe prints) through the same path as the daemon's log.
    init_logging(LogFormat::Human, "warn");
    ladderd::ffi::log::install();
    let probe = ladderd::transcode::probe::probe();
    if json {
        return match serde_json::to_string_pretty(&probe) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot write the probe as JSON: {e}");
                ExitCode::FAILURE
            }
        };
    }
    print!("{probe}");
    println!();
    println!("transcode.hardware: auto");
    match backend::choose(Hardware::Auto, &ladderd::transcode::probe::nvidia_offer(&probe, None)) {
        Ok(plan) => {
            for stage in Stage::ALL {
                let why =
                    plan.refused.iter().find(|r| r.stage == stage).map(|r| format!("nvidia refused: {}", r.reason));
                let line = format!("  {:<8}{:<8}{}", stage.name(), plan.backend(stage).name(), why.unwrap_or_default());
                println!("{}", line.trim_end());
            }
        }
        Err(e) => println!("  no plan: {e}"),
    }
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.init(),
    }
}

fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("ladderd-io").build()?;
    let outcome = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = watch_signals();
        let hangups = watch_hangups();
        let daemon = ladderd::start(config, shutdown.clone()).await?;
        if let Some(hangups) = hangups {
            tokio::spawn(reload_on_hangup(hangups, daemon.reloader(), path));
        }
        // Every listener is bound: tell systemd (Type=notify), and keep its watchdog fed while
        // the runtime is alive.
        if let Err(e) = ladderd::systemd::notify("READY=1") {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
        if let Some(every) = ladderd::systemd::watchdog_interval() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let _ = ladderd::systemd::notify("WATCHDOG=1");
                }
            });
        }
        tokio::spawn(async move {
            signals.await;
            tracing::info!("shutting down: ending publishes and flushing playlists");
            let _ = ladderd::systemd::notify("STOPPING=1");
            shutdown.cancel();
        });
        daemon.wait().await;
        Ok(())
    });
    // A blocking call that never returns (a hung GPU driver in an NVML read) must not keep the
    // process from exiting once the drain is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    outcome
}

/// SIGHUP, watched from before READY=1 so that an early `systemctl reload` reloads instead of
/// killing the daemon (SIGHUP's default disposition).
fn watch_hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; configuration reload is unavailable");
            None
        }
    }
}

/// Reloads the configuration file on every SIGHUP. A file that does not load changes nothing.
async fn reload_on_hangup(mut hangups: tokio::signal::unix::Signal, reloader: ladderd::Reloader, path: PathBuf) {
    while hangups.recv().await.is_some() {
        tracing::info!(file = %path.display(), "SIGHUP: reloading the configuration");
        let _ = ladderd::systemd::notify(&ladderd::systemd::reloading_message());
        // Reading files and joining nothing, but keep the file I/O off the async workers.
        let (r, p) = (reloader.clone(), path.clone());
        match tokio::task::spawn_blocking(move || r.reload(&p)).await {
            Ok(Ok(summary)) => {
                tracing::info!(
                    added = ?summary.added, changed = ?summary.changed, removed = ?summary.removed,
                    "configuration reloaded"
                );
                if !summary.still_live.is_empty() {
                    tracing::info!(
                        channels = ?summary.still_live,
                        "removed channels stay live until their publisher leaves"
                    );
                }
                if !summary.restart_only.is_empty() {
                    tracing::warn!(
                        settings = ?summary.restart_only,
                        "these changed settings take effect only after a restart; their running values are kept"
                    );
                }
            }
            Ok(Err(e)) => {
                for line in e.to_string().lines() {
                    tracing::error!("configuration reload refused, the running configuration stays: {line}");
                }
            }
            Err(e) => tracing::error!(error = %e, "configuration reload failed"),
        }
        let _ = ladderd::systemd::notify("READY=1");
    }
}

/// Watches SIGTERM and Ctrl-C. Registered before READY=1 is sent, so that a stop systemd sends
/// right after it is a drain, not the default disposition's immediate death.
fn watch_signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM/SIGINT; only Ctrl-C stops the daemon");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
