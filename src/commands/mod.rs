//! Execution of `stubmail` subcommands.

mod block;
mod demo;
mod device;
mod doctor;
pub(crate) mod identity;
mod init;
mod intro;
mod keys;
mod list;
mod report;
mod status;
mod up;

use crate::cli::{Cli, Command, DeviceCommand, IdentityCommand};
use stubmail::Home;

/// A state as the wire and the spool spell it (serde's lower-case name).
pub(crate) fn wire_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::resolve(cli.home.as_deref())?;
    match cli.command {
        Command::Init { email, key: Some(key), outbox, name: _, notify } => init::adopt(&home, &key, email.as_deref(), &outbox, notify.as_deref()),
        Command::Init { email, key: None, outbox, name, notify } => {
            init::run(&home, &email.unwrap_or_default(), &outbox, name.as_deref(), notify.as_deref(), true)
        }
        Command::Intro { command } => intro::run(&home, command),
        Command::List { command } => list::run(&home, command),
        Command::Device { command: DeviceCommand::Add { dir, notify } } => device::add(&home, &dir, notify.as_deref()),
        Command::Identity { command: IdentityCommand::Show } => identity::show(&home),
        Command::Identity { command: IdentityCommand::AddAddress { address } } => identity::add_address(&home, &address),
        Command::Identity { command: IdentityCommand::SetOutbox { url, here } } => identity::set_outbox(&home, &url, here),
        Command::Keys { command } => keys::run(&home, command),
        Command::Block { what, at, note } => block::block(&home, &what, at.as_deref(), note),
        Command::Unblock { what, at } => block::unblock(&home, &what, at.as_deref()),
        Command::Blocks { json } => block::list(&home, json),
        Command::Blocklist { command } => block::blocklist(&home, command),
        Command::Report { id, reason, include_message } => report::run(&home, &id, reason, include_message),
        Command::Status { json } => status::run(&home, json),
        Command::Unsend { id } => status::unsend(&home, &id),
        Command::Demo { dir } => demo::run(dir),
        Command::Doctor => {
            if !doctor::run(&home)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Up { email, name, smtp, pop3, imap, outbox_listen, outbox_url } => {
            up::run(&home, up::Args { email, name, smtp, pop3, imap, outbox_listen, outbox_url })
        }
    }
}
