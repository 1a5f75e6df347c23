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
    #[command(after_help = "Examples:\n  stubmail init --email alice@example.org --outbox https://mail.example.org/stubmail/\n  stubmail init --email alice@example.org --outbox https://mail.example.org/stubmail/ --notify udp://alice.example.org:2526\n  stubmail init --key alice-secret.asc --outbox https://mail.example.org/stubmail/")]
    Init {
        /// Your email address (with --key: one of its addresses; default
        /// its first).
        #[arg(long, required_unless_present = "key")]
        email: Option<String>,
        /// Adopt your existing OpenPGP secret key instead of making one
        /// (`gpg --export-secret-keys --armor YOU@EXAMPLE.ORG > key.asc`).
        /// A passphrase is asked once (or STUBMAIL_KEY_PASSPHRASE).
        #[arg(long)]
        key: Option<PathBuf>,
        /// URL of your outbox (post_manager); bound into your key.
        #[arg(long)]
        outbox: String,
        /// Your name, for the User ID.
        #[arg(long, conflicts_with = "key")]
        name: Option<String>,
        /// Where outboxes may send you "you have mail" stubs
        /// (udp://HOST:PORT); bound into your key. http2mbox listens there
        /// (config `notify.listen`) when HOST is an IP address.
        #[arg(long)]
        notify: Option<String>,
    },
    /// Your devices: each a home of its own with the same identity.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Mailing lists: a list is an identity of its own, run by a robot
    /// that publishes each member's post once, from the list's outbox. Its
    /// keyring is the member list. Use a home of its own (--home DIR).
    List {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Strangers who asked to write to you (first contact, `notify.first_contact`).
    Intro {
        #[command(subcommand)]
        command: IntroCommand,
    },
    /// Run your whole node in one process: your outbox, smtp2stub, and
    /// http2mbox with POP3, on loopback. Creates your identity on first run.
    #[command(after_help = "Examples:\n  stubmail up --email alice@example.org\n  stubmail up --outbox-listen 0.0.0.0:8080 --outbox-url https://alice.example.org/")]
    Up {
        /// Your address (asked on a terminal if missing on first run).
        #[arg(long)]
        email: Option<String>,
        /// Your name, for a new identity.
        #[arg(long)]
        name: Option<String>,
        /// SMTP listen address for your mail client (default: smtp.listen
        /// in config.toml, else 127.0.0.1:2525).
        #[arg(long)]
        smtp: Option<std::net::SocketAddr>,
        /// POP3 listen address for your mail client (default:
        /// poll.pop3.listen in config.toml, else 127.0.0.1:1110).
        #[arg(long)]
        pop3: Option<std::net::SocketAddr>,
        /// IMAP listen address for your mail client (default:
        /// poll.imap.listen in config.toml, else 127.0.0.1:1143).
        #[arg(long)]
        imap: Option<std::net::SocketAddr>,
        /// Where your own outbox listens, contacts fetch your mail there
        /// (default: outbox.listen in config.toml, else 127.0.0.1:8080).
        #[arg(long)]
        outbox_listen: Option<std::net::SocketAddr>,
        /// The public URL of your outbox, bound into a new identity
        /// (default: http://<outbox-listen>/).
        #[arg(long)]
        outbox_url: Option<String>,
    },
    /// Check your setup: config, key permissions, ports, your outbox, your
    /// published key and the clock; every problem comes with its fix.
    #[command(after_help = "Example:\n  stubmail doctor")]
    Doctor,
    /// See it work: two users, two nodes, one message, in a temporary directory.
    #[command(after_help = "Example:\n  stubmail demo")]
    Demo {
        /// Where to put the two users' homes (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Never poll a sender, an outbox, an address or a domain again, and
    /// act on none of their stubs: nothing is downloaded from them. A
    /// blocked contact stays in your keyring, marked blocked.
    #[command(after_help = "Examples:\n  stubmail block 0123456789ABCDEF0123456789ABCDEF01234567\n  stubmail block spammer@example.com\n  stubmail block spam.example\n  stubmail block https://outbox.spam.example/\n  stubmail block 0123456789ABCDEF0123456789ABCDEF01234567 --at https://outbox.example.org/")]
    Block {
        /// A fingerprint (40 hex digits), an address, a domain (and its
        /// subdomains) or an outbox URL (every sender there; with a port,
        /// that port only).
        what: String,
        /// With a fingerprint: that sender at this outbox only.
        #[arg(long, value_name = "OUTBOX-URL")]
        at: Option<String>,
        /// Why, shown by `stubmail blocks`.
        #[arg(long)]
        note: Option<String>,
    },
    /// Undo a block of yours, or make an exception to a shared blocklist.
    #[command(after_help = "Examples:\n  stubmail unblock spammer@example.com\n  stubmail unblock 0123456789ABCDEF0123456789ABCDEF01234567")]
    Unblock {
        /// As for `stubmail block`.
        what: String,
        /// As for `stubmail block`.
        #[arg(long, value_name = "OUTBOX-URL")]
        at: Option<String>,
    },
    /// List your blocks, your exceptions and the shared blocklists you
    /// subscribed to.
    #[command(after_help = "Example:\n  stubmail blocks")]
    Blocks {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Report a message you received as spam: a signed complaint to the
    /// outbox it came from (its id and sender, never its content), and its
    /// sender blocked here. Moving the message into your Maildir's Junk
    /// folder does the same.
    #[command(after_help = "Example (the id is in the message's Stubmail-Id header):\n  stubmail report 3f2ac9e1d0b4a7c2")]
    Report {
        /// The message's Stubmail-Id, or a unique prefix of it (at least 8 hex digits).
        id: String,
        /// A few words for the outbox's operator.
        #[arg(long)]
        reason: Option<String>,
        /// When the report goes by mail (an outbox without a complaint
        /// endpoint: ARF to abuse@ its host through your relay), attach the
        /// whole message; otherwise only its id and sender go.
        #[arg(long)]
        include_message: bool,
    },
    /// Shared blocklists: subscribe to a signed list someone you trust
    /// publishes (your own blocks and exceptions win), or publish yours.
    Blocklist {
        #[command(subcommand)]
        command: BlocklistCommand,
    },
    /// Your own identity.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Withdraw a sent message from every recipient who has not fetched it
    /// yet; one still queued in smtp2stub's spool is never uploaded.
    #[command(after_help = "Example (`stubmail status` shows the ids):\n  stubmail unsend 3f2ac9e1")]
    Unsend {
        /// The message id or the queue id, or a unique prefix of either
        /// (at least 4 hex digits), as `stubmail status` shows them.
        id: String,
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
pub enum DeviceCommand {
    /// Set up another device (a laptop next to a desktop): a new home at DIR
    /// with your key, config and keyring and a device id of its own, so
    /// both receive every message. Copy DIR to the device.
    #[command(after_help = "Examples:\n  stubmail device add /tmp/laptop-home\n  stubmail device add /tmp/laptop-home --notify udp://192.0.2.7:2526")]
    Add {
        /// The new device's home directory (new or empty).
        dir: PathBuf,
        /// The new device's own notify endpoint (udp://HOST:PORT), bound into
        /// your key next to this one's (at most four devices have one).
        #[arg(long)]
        notify: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print your own certificate (armored), to give to contacts.
    #[command(after_help = "Example:\n  stubmail keys export > alice.asc")]
    Export,
    /// Add contacts' certificates (armored or binary, e.g. from `gpg --export`).
    #[command(after_help = "Examples:\n  stubmail keys import bob.asc\n  gpg --export bob@example.net | stubmail keys import -\n  stubmail keys import --replace bob-new-key.asc")]
    Import {
        /// A file, or - for standard input.
        file: PathBuf,
        /// One address, one contact: remove the contacts whose addresses
        /// these certificates claim (e.g. a contact's new key). Without it,
        /// such an import is refused.
        #[arg(long)]
        replace: bool,
    },
    /// List your contacts.
    #[command(after_help = "Example:\n  stubmail keys list")]
    List,
    /// Fetch a contact's current key from their outbox and take it, new
    /// addresses included (your poller takes updates by itself, but never
    /// an address you did not accept).
    #[command(after_help = "Example:\n  stubmail keys refresh bob@example.net")]
    Refresh {
        /// The contact's address or full fingerprint.
        contact: String,
    },
    /// Remove a contact by address or full fingerprint.
    #[command(after_help = "Example:\n  stubmail keys remove bob@example.net")]
    Remove { contact: String },
}

#[derive(Subcommand)]
pub enum BlocklistCommand {
    /// Take the list published at URL, signed by the key in SIGNER, now
    /// and then every few hours (http2mbox refreshes it).
    #[command(after_help = "Example:\n  stubmail blocklist subscribe https://lists.example.org/stubmail-blocklist.json --signer lists.asc")]
    Subscribe {
        url: String,
        /// The publisher's certificate (armored): only lists it signed are taken.
        #[arg(long)]
        signer: PathBuf,
        /// Hours between refreshes (1 to 8760).
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=8760))]
        every: u64,
    },
    /// Stop taking a shared list; its entries stop applying at once.
    #[command(after_help = "Example:\n  stubmail blocklist unsubscribe https://lists.example.org/stubmail-blocklist.json")]
    Unsubscribe { url: String },
    /// Fetch every subscribed list now.
    #[command(after_help = "Example:\n  stubmail blocklist refresh")]
    Refresh,
    /// Sign your own blocks as a list others can subscribe to; put the
    /// output where they can fetch it.
    #[command(after_help = "Example:\n  stubmail blocklist publish --out /var/www/html/stubmail-blocklist.json")]
    Publish {
        /// Where to write it (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ListCommand {
    /// Make a list in this (new) home: its key, with the addresses LIST@,
    /// LIST-subscribe@ and LIST-unsubscribe@, bound to the list's outbox.
    #[command(after_help = "Example:\n  stubmail --home /var/lib/stubmail-lists/team list create team@example.org --outbox https://mail.example.org/stubmail/ --owner alice.asc")]
    Create {
        /// The list's posting address.
        address: String,
        /// URL of the list's outbox (post_manager); bound into its key.
        #[arg(long)]
        outbox: String,
        /// A few words about the list (List-Id's phrase, the key's name).
        #[arg(long)]
        description: Option<String>,
        /// The owner's certificate: the first member, told what the robot
        /// refused.
        #[arg(long, value_name = "FILE")]
        owner: Option<PathBuf>,
        /// Where the robot takes stubs (udp://HOST:PORT): members' posts
        /// arrive at once, and strangers can ask to join. Without it, only
        /// members the owner adds can join.
        #[arg(long)]
        notify: Option<String>,
        /// A non-member's post: refused (the poster and the owner are told),
        /// held for the owner to approve, or accepted (a role address like
        /// abuse@: anyone writes, the members read).
        #[arg(long, default_value = "reject", value_parser = ["reject", "hold", "accept"])]
        non_members: String,
        /// How strangers join: confirm a request by mail; confirm, then the
        /// owner admits them (`stubmail list admit`); or closed (the owner
        /// adds members).
        #[arg(long, default_value = "confirm", value_parser = ["confirm", "approve", "closed"])]
        subscription: String,
        /// A public list: its outbox serves an archive of every post (an
        /// Atom feed, signed posts) to anyone.
        #[arg(long)]
        public: bool,
    },
    /// Run the list's robot: poll the members, publish their posts, act on
    /// their requests, until interrupted.
    #[command(after_help = "Example:\n  stubmail --home /var/lib/stubmail-lists/team list run")]
    Run,
    /// Add members by their certificates (a file, or - for standard input).
    #[command(after_help = "Example:\n  stubmail list add bob.asc")]
    Add { file: PathBuf },
    /// Remove a member by address or full fingerprint.
    #[command(after_help = "Example:\n  stubmail list remove bob@example.net")]
    Remove { member: String },
    /// The members.
    #[command(after_help = "Example:\n  stubmail list members")]
    Members,
    /// Non-members' posts held for the owner (list.non_members = "hold").
    #[command(after_help = "Example:\n  stubmail list held")]
    Held,
    /// Publish a held post (the robot does it on its next round).
    #[command(after_help = "Example:\n  stubmail list approve l0123456789abcdef01234567")]
    Approve { id: String },
    /// Drop a held post.
    #[command(after_help = "Example:\n  stubmail list discard l0123456789abcdef01234567")]
    Discard { id: String },
    /// Let in someone who asked to join and confirmed (list.subscription =
    /// "approve"; the owner was told their fingerprint).
    #[command(after_help = "Example:\n  stubmail list admit 0123456789ABCDEF0123456789ABCDEF01234567")]
    Admit { fingerprint: String },
}

#[derive(Subcommand)]
pub enum IntroCommand {
    /// Show the strangers whose stubs are held: nothing was fetched from them.
    #[command(after_help = "Example:\n  stubmail intro list")]
    List,
    /// Accept a stranger: fetch and check their certificate from their
    /// outbox, add them to your keyring, and fetch their mail.
    #[command(after_help = "Example:\n  stubmail intro accept 0123456789ABCDEF0123456789ABCDEF01234567")]
    Accept { fingerprint: String },
    /// Turn a stranger away: forget their stubs and drop future ones.
    #[command(after_help = "Example:\n  stubmail intro reject 0123456789ABCDEF0123456789ABCDEF01234567")]
    Reject { fingerprint: String },
}

#[derive(Subcommand)]
pub enum IdentityCommand {
    /// Print your fingerprint, address and outbox, and your mail client's settings.
    #[command(after_help = "Example:\n  stubmail identity show")]
    Show,
    /// Another address of yours (an alias) that you send as: added to your
    /// key as a User ID bound to your outbox, so recipients see it verified
    /// (`from=pass`), and to `identity.aliases`.
    #[command(after_help = "Example:\n  stubmail identity add-address alice.smith@example.org")]
    AddAddress {
        /// The address.
        address: String,
    },
    /// Move to another outbox: binds your key to URL anew, updates
    /// config.toml, and keeps your old outbox (if `stubmail up` runs it)
    /// serving the updated key, so contacts' pollers follow the move.
    #[command(after_help = "Examples:\n  stubmail identity set-outbox https://outbox.example.org/alice/\n  stubmail identity set-outbox --here https://alice.example.org/")]
    SetOutbox {
        /// The new outbox's base URL.
        url: String,
        /// URL is another name of the outbox `stubmail up` runs for you
        /// (say, behind a reverse proxy with HTTPS): it takes the name.
        #[arg(long)]
        here: bool,
    },
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn every_example_in_help_parses() {
        stubmail::help::check_examples(super::Cli::command(), "stubmail", &|w| {
            super::Cli::try_parse_from(w).map(|_| ()).map_err(|e| e.to_string())
        });
    }
}
