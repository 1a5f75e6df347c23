//! Logging setup shared by every binary: tracing to stderr, `RUST_LOG`
//! filters, colour only on a terminal.

/// Initialise logging with `default` as the filter when `RUST_LOG` is unset.
pub fn init(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
