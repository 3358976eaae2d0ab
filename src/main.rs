//! The `respite` binary: command line, logging, signals (SIGTERM/SIGINT: drain and stop;
//! SIGHUP: reload the configuration). Everything else is in the library.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use respite::config::{redact_url, Cli, Config, Flags, LogFormat};
use respite::reload::{Reloads, SetLogLevel};
use tokio::net::TcpListener;

/// `EX_USAGE`: a configuration error, reported before anything binds.
const EXIT_CONFIG: u8 = 64;
/// `EX_CANTCREAT`: the durable journal cannot be opened (e.g. its directory is not writable).
const EXIT_CANTCREAT: u8 = 73;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return command_line_error(e),
    };
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

/// A command line clap refused: `--help` and `--version` print and exit 0; anything else
/// is a configuration error (exit 64, as for every other), its message naming the
/// environment variable when the refused value came from there, and every argument it
/// quotes shown without a URL's password.
fn command_line_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let mut text = e.render().to_string();
    // "invalid value 'JSON' for '--log-format <LOG_FORMAT>'": from the flag or its variable?
    if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
        let long = arg.split_whitespace().next().unwrap_or_default().trim_start_matches('-');
        let command = Cli::command();
        let env = command.get_arguments().find(|a| a.get_long() == Some(long)).and_then(|a| a.get_env());
        let flag = format!("--{long}");
        let on_command_line = std::env::args_os()
            .skip(1)
            .any(|a| a.to_str().is_some_and(|a| a == flag || a.starts_with(&format!("{flag}="))));
        if let (Some(env), false) = (env, on_command_line) {
            let note = format!(" (from the environment variable {})", env.to_string_lossy());
            if let Some(eol) = text.find('\n') {
                text.insert_str(eol, &note);
            }
        }
    }
    eprint!("{}", redact_quoted_urls(&text));
    ExitCode::from(EXIT_CONFIG)
}

/// `text` with every '…'-quoted part passed through [`redact_url`] (clap quotes the
/// arguments it refuses, e.g. a stray `redis://user:password@host`).
fn redact_quoted_urls(text: &str) -> String {
    let mut parts = text.split('\'');
    let mut out = parts.next().unwrap_or_default().to_string();
    for (i, part) in parts.enumerate() {
        out.push('\'');
        // Odd parts (0-based here: even i) are inside quotes.
        if i % 2 == 0 {
            out.push_str(&redact_url(part));
        } else {
            out.push_str(part);
        }
    }
    out
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
