//! The `stubmail` command line, as data (clap). Execution is in `commands`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "stubmail", version, about = "Pull-based email: your outbox holds your mail until your contacts fetch it")]
pub struct Cli {
    /// Keep all of this user's files under DIR (default: XDG config and data dirs).
    #[arg(long, global = true, env = stubmail::config::HOME_ENV)]
    pub home: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create your identity: an OpenPGP key bound to your outbox, and a config.
    #[command(after_help = "Example:\n  stubmail init --email alice@example.org --outbox https://mail.example.org/stubmail/")]
    Init {
        /// Your email address.
        #[arg(long)]
        email: String,
        /// URL of your outbox (post_manager); bound into your key.
        #[arg(long)]
        outbox: String,
        /// Your name, for the User ID.
        #[arg(long)]
        name: Option<String>,
    },
    /// Your own identity.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Your keyring: the address book and the whitelist.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Delivery status of the mail you sent (there are no bounces).
    #[command(after_help = "Example:\n  stubmail status --json")]
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print your own certificate (armored), to give to contacts.
    #[command(after_help = "Example:\n  stubmail keys export > alice.asc")]
    Export,
    /// Add contacts' certificates (armored or binary, e.g. from `gpg --export`).
    #[command(after_help = "Examples:\n  stubmail keys import bob.asc\n  gpg --export bob@example.net | stubmail keys import -")]
    Import {
        /// A file, or - for standard input.
        file: PathBuf,
    },
    /// List your contacts.
    List,
    /// Remove a contact by address or full fingerprint.
    #[command(after_help = "Example:\n  stubmail keys remove bob@example.net")]
    Remove { contact: String },
}

#[derive(Subcommand)]
pub enum IdentityCommand {
    /// Print your fingerprint, address and outbox.
    #[command(after_help = "Example:\n  stubmail identity show")]
    Show,
}
