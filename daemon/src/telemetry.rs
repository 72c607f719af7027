//! Logging: human-readable or JSON lines on stderr, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// The filter of a serving core4d when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,poem=warn";

/// `format` is a [`crate::settings::LogFormat`] as text (`text` or `json`).
pub fn init(format: &str) {
    init_with_default(format, DEFAULT_FILTER);
}

/// As [`init`], with `default_filter` when `RUST_LOG` is unset.
pub fn init_with_default(format: &str, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
