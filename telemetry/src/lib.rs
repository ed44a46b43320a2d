//! How Palisade's long-running binaries (the controller, the node agent) log: flags in, a
//! `tracing` subscriber out; the lab and the load test take the same flags and pass them to
//! the controllers and agents they run. `--log-level` (or `PALISADE_LOG_LEVEL`; else `RUST_LOG`; else
//! `info`) takes a level or `tracing` directives (`info,palisade_controller::sync=debug`);
//! `--log-format text|json` (or `PALISADE_LOG_FORMAT`). Logs go to stderr, coloured only on a
//! terminal. Fields are values as people read them: the binaries log with `%` (Display),
//! never Rust's `Debug`. [`security`] decides, from the flags given, whether a binary speaks
//! mTLS or (asked for explicitly, on loopback) plaintext.

pub mod security;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event (for log collectors).
    Json,
}

/// The logging flags, flattened into a binary's command line.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// What to log: error, warn, info, debug or trace, or tracing directives such as
    /// `info,palisade_controller::sync=debug` [default: RUST_LOG, else info].
    #[arg(long, env = "PALISADE_LOG_LEVEL", value_name = "LEVEL", value_parser = parse_level)]
    pub log_level: Option<String>,

    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "PALISADE_LOG_FORMAT")]
    pub log_format: LogFormat,
}

fn parse_level(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("'{s}' is not a level or tracing directive: {e}"))
}

impl LogArgs {
    fn filter(&self) -> EnvFilter {
        match &self.log_level {
            Some(l) => EnvFilter::new(l),
            None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        }
    }

    /// For a binary that logs nothing itself but runs controllers and agents (the lab, the
    /// load test): the same flags, passed to every process it starts, through
    /// `PALISADE_LOG_LEVEL` and `PALISADE_LOG_FORMAT`. Call before any thread starts.
    pub fn pass_to_children(&self) {
        if let Some(level) = &self.log_level {
            std::env::set_var("PALISADE_LOG_LEVEL", level);
        }
        let format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        std::env::set_var("PALISADE_LOG_FORMAT", format);
    }

    /// Install the subscriber for this process.
    pub fn init(&self) {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(self.filter())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_are_checked() {
        assert!(parse_level("debug").is_ok());
        assert!(parse_level("info,palisade_controller::sync=debug").is_ok());
        assert!(parse_level("=[").is_err());
    }
}
