//! Logging setup. Logs go to stderr (stdout is for data), as pretty text or JSON lines.

pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Who is logging: one-shot CLI commands print their results themselves, so their logs
/// default to errors only; the service logs at the configured level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A one-shot command (`run`, `playbooks check`, …).
    Command,
    /// The long-running service.
    Service,
}

/// Installs the global subscriber. `verbose` raises and `quiet` lowers the level.
pub fn init(cfg: &LogConfig, mode: Mode, verbose: u8, quiet: bool) {
    let level = match (quiet, verbose, mode) {
        (true, _, _) => "error".to_owned(),
        (false, 0, Mode::Command) => "error".to_owned(),
        (false, 0, Mode::Service) => cfg.level.clone(),
        (false, 1, Mode::Command) => "info".to_owned(),
        (false, 1, Mode::Service) | (false, 2, Mode::Command) => "debug".to_owned(),
        (false, _, _) => "trace".to_owned(),
    };
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests calling main twice) is harmless: keep the first subscriber.
    let _ = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.with_target(false).compact().try_init(),
    };
}
