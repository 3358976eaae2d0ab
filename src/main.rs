//! The `respite` binary: command line, logging, signals (SIGTERM/SIGINT: drain and stop;
//! SIGHUP: reload the configuration). Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use respite::config::{Cli, Config, Flags, LogFormat};
use respite::reload::{Reloads, SetLogLevel};
use tokio::net::TcpListener;

/// `EX_USAGE`: a configuration error, reported before anything binds.
const EXIT_CONFIG: u8 = 64;
/// `EX_CANTCREAT`: the durable journal cannot be opened (e.g. its directory is not writable).
const EXIT_CANTCREAT: u8 = 73;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let validated = Config::load(&cli.flags).and_then(|c| c.validate());
    if cli.is_check() {
        return match validated {
            Ok(v) => {
                print!("{}", v.raw.to_redacted_toml());
                eprintln!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("respite: configuration error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    let cfg = match validated {
        Ok(v) => v,
        Err(e) => {
            eprintln!("respite: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let set_log_level = init_logging(cfg.raw.log.format, &cfg.raw.log.level);
    let flags = cli.flags;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if cfg.raw.runtime.worker_threads > 0 {
        rt.worker_threads(cfg.raw.runtime.worker_threads);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Before binding: once the listeners answer, SIGHUP reloads instead of killing.
        let reloads = reload_on_sighup(flags, set_log_level);
        let listener = match TcpListener::bind(cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(client.listen = %cfg.listen, error = %e, "cannot bind the client listener");
                return ExitCode::FAILURE;
            }
        };
        let admin = match TcpListener::bind(cfg.admin_listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(admin.listen = %cfg.admin_listen, error = %e, "cannot bind the admin listener");
                return ExitCode::FAILURE;
            }
        };
        match respite::run_with_reloads(cfg, listener, admin, shutdown_signal(), reloads).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                ExitCode::from(EXIT_CANTCREAT)
            }
        }
    })
}

/// Installs the logger; returns what changes its filter (`log.level`) at run time.
fn init_logging(format: LogFormat, level: &str) -> SetLogLevel {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only on a terminal: in a file or a container log they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // The two formats are different types, and so are their reload handles.
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |level: &str| {
                let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            })
        }};
    }
    match format {
        LogFormat::Json => install!(builder.json().flatten_event(true)),
        LogFormat::Text => install!(builder),
    }
}

/// On SIGHUP, loads the configuration again exactly as at start (the same `flags`, hence
/// the same file, and the same environment) and hands it to the running respite, which
/// applies what can change live. The forwarding task ends with the runtime.
#[cfg(unix)]
fn reload_on_sighup(flags: Flags, set_log_level: SetLogLevel) -> Reloads {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, requests) = tokio::sync::mpsc::channel(1);
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let file = flags.config.as_deref().map_or("(none)".into(), |p| p.display().to_string());
                    tracing::info!(config = %file, "SIGHUP: reloading the configuration");
                    if tx.send(Config::load(&flags)).await.is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP; configuration reload is off"),
    }
    Reloads { requests, set_log_level: Some(set_log_level) }
}

#[cfg(not(unix))]
fn reload_on_sighup(_flags: Flags, _set_log_level: SetLogLevel) -> Reloads {
    Reloads::none()
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
