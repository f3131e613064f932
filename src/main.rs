//! The `ladderd` command.

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
            match run(cfg) {
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
    let probe = ladderd::gpu::probe();
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
    match backend::choose(Hardware::Auto, &probe.nvidia_offer(None)) {
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

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("ladderd-io").build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = watch_signals();
        let daemon = ladderd::start(config, shutdown.clone()).await?;
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
    })
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
