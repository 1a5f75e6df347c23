//! Progress for long operations, on a terminal only: a program whose
//! stderr is a file or a pipe (cron, systemd, tests) stays quiet.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count bar for `len` bytes, or None when stderr is no terminal
/// or the operation is small.
pub fn bytes(len: u64, what: &str) -> Option<ProgressBar> {
    if len < 1 << 20 || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    Some(pb)
}

/// A counting bar for `n` items, or None when stderr is no terminal or
/// there are few items.
pub fn items(n: u64, what: &str) -> Option<ProgressBar> {
    if n < 10 || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(n);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    Some(pb)
}
