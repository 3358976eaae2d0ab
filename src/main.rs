//! The `respite` binary: command line, logging, signals. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use respite::config::{Cli, Config, LogFormat};
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
    init_logging(cfg.raw.log.format, &cfg.raw.log.level);
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
        match respite::run(cfg, listener, admin, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                ExitCode::from(EXIT_CANTCREAT)
            }
        }
    })
}

fn init_logging(format: LogFormat, level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only on a terminal: in a file or a container log they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
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
