//! `stubmail`: thin binary; the command line is defined in `cli` and
//! executed in `commands`.

mod cli;
mod commands;

use clap::Parser;

fn main() {
    // Everything a user's home holds is theirs alone: keys, passwords, the
    // outbox `up` runs (its UDP cookie keys, who mails whom), the mailbox.
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let cli = cli::Cli::parse();
    // A running node says what it does (listening, polls, deliveries);
    // one-shot commands speak only of trouble.
    stubmail::logging::init(
        if matches!(cli.command, cli::Command::Up { .. } | cli::Command::List { command: cli::ListCommand::Run }) { "info" } else { "warn" },
    );
    // Like any Unix tool, a one-shot command printing into a closed pipe
    // (`stubmail … | head`) ends quietly instead of panicking on the failed
    // print. Not the servers (`up`, `demo`): they keep Rust's default,
    // where a peer hanging up is an error to handle, not a signal.
    if !matches!(cli.command, cli::Command::Up { .. } | cli::Command::Demo { .. } | cli::Command::List { command: cli::ListCommand::Run }) {
        // SAFETY: restores the default action of one signal, before any
        // thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Err(e) = commands::run(cli) {
        eprintln!("stubmail: {e:#}");
        std::process::exit(1);
    }
}
