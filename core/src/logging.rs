//! Logging setup shared by every binary: tracing to stderr, `RUST_LOG`
//! filters, colour only on a terminal.

/// Initialise logging with `default` as the filter when `RUST_LOG` is unset.
/// Call it first thing in `main`, before any thread starts.
pub fn init(default: &str) {
    use std::io::IsTerminal;
    // `RUST_BACKTRACE=1` also makes every error value capture a backtrace
    // (anyhow, and sequoia's errors, many of them made and dropped in the
    // normal course of parsing): about 4% of the CPU of the whole pipeline
    // in the end-to-end benchmark. Panics keep their backtraces; errors
    // get theirs back with `RUST_LIB_BACKTRACE=1`.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called at the start of `main`, before any other thread
        // exists that could read the environment.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
