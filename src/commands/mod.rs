//! Execution of `stubmail` subcommands.

mod init;
mod keys;
mod status;

use crate::cli::{Cli, Command};
use stubmail::Home;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::resolve(cli.home.as_deref())?;
    match cli.command {
        Command::Init { email, outbox, name } => init::run(&home, &email, &outbox, name.as_deref()),
        Command::Keys { command } => keys::run(&home, command),
        Command::Status { json } => status::run(&home, json),
    }
}
