//! Where one user's files live (`Home`) and what `config.toml` says
//! (`Config`). Several users can share a machine: each has their own home.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the home directory (same as `--home`).
pub const HOME_ENV: &str = "STUBMAIL_HOME";

/// The directories of one user. With `--home DIR` (or `STUBMAIL_HOME`)
/// everything lives under DIR; otherwise the config is in the XDG config
/// directory and the data in the XDG data directory.
#[derive(Clone, Debug)]
pub struct Home {
    /// Holds `config.toml`.
    pub config_dir: PathBuf,
    /// Holds the secret key, keyring, spool, state and (by default) Maildir.
    pub data_dir: PathBuf,
}

impl Home {
    /// `--home` if given, else the XDG directories.
    pub fn resolve(home: Option<&Path>) -> anyhow::Result<Home> {
        if let Some(h) = home {
            return Ok(Home::single(h));
        }
        let config = dirs::config_dir().ok_or_else(|| anyhow::anyhow!("no config directory; pass --home DIR"))?;
        let data = dirs::data_dir().ok_or_else(|| anyhow::anyhow!("no data directory; pass --home DIR"))?;
        Ok(Home { config_dir: config.join("stubmail"), data_dir: data.join("stubmail") })
    }

    pub fn single(dir: &Path) -> Home {
        Home { config_dir: dir.to_path_buf(), data_dir: dir.to_path_buf() }
    }
    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }
    /// The armored secret key, mode 0600.
    pub fn secret_key(&self) -> PathBuf {
        self.data_dir.join("secret.pgp")
    }
    /// Contacts' certificates: the address book and the whitelist.
    pub fn keyring_dir(&self) -> PathBuf {
        self.data_dir.join("keyring")
    }
    /// smtp2stub's durable queue.
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }
    /// http2mbox's state (download staging, delivery journal).
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("state")
    }

    /// Read `config.toml`, with a message that says how to create it.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        let p = self.config_file();
        let text = std::fs::read_to_string(&p).map_err(|e| {
            anyhow::anyhow!("cannot read {}: {e}; run `stubmail init --email ADDRESS --outbox URL` first", p.display())
        })?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not a valid config: {e}", p.display()))
    }

    /// Write `config.toml` (0600: it holds the mail-client passwords).
    pub fn save_config(&self, config: &Config) -> anyhow::Result<()> {
        let text = format!("# Stubmail configuration. See README.md.\n{}", toml::to_string_pretty(config)?);
        crate::fsutil::write_atomic(&self.config_file(), text.as_bytes(), 0o600)?;
        Ok(())
    }

    /// Read `config.toml` and give it the SMTP password it lacks (a home
    /// made before AUTH was required on loopback), and with `pop3` the POP3
    /// one, saving it and saying so on stderr: the user's mail client
    /// needs the new password.
    pub fn load_config_with_passwords(&self, pop3: bool) -> anyhow::Result<Config> {
        let mut c = self.load_config()?;
        let mut made = c.ensure_smtp_password();
        if pop3 {
            made.extend(c.ensure_pop3_password());
        }
        if !made.is_empty() {
            self.save_config(&c)?;
            for what in made {
                eprintln!(
                    "stubmail: generated a password for {what} and stored it in {} (mode 0600); \
                     your mail client needs it: `stubmail identity show` prints the settings",
                    self.config_file().display()
                );
            }
        }
        Ok(c)
    }

    /// The user's identity (secret key), refusing loose permissions.
    pub fn load_identity(&self) -> anyhow::Result<crate::Identity> {
        Ok(crate::Identity::load(&self.secret_key())?)
    }

    pub fn keyring(&self) -> crate::keyring::Keyring {
        crate::keyring::Keyring::new(self.keyring_dir())
    }

    /// Resolve a path from the config: relative paths are under the data dir.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.data_dir.join(p) }
    }
}

/// A password from the config: written as a plain string in the file, but
/// never shown by `Debug` (logs, error messages).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `config.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub identity: IdentityConfig,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub poll: PollConfig,
    /// Ordinary SMTP for recipients who do not run Stubmail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayConfig>,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Notification stubs: where http2mbox listens, and first contact.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// The user's own outbox as `stubmail up` serves it.
    #[serde(default, skip_serializing_if = "OutboxConfig::is_unset")]
    pub outbox: OutboxConfig,
    /// Set in the home of a mailing list's robot (`stubmail list create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<ListConfig>,
    /// Forward incoming mail to another address (re-hosted in the user's
    /// own outbox, with the author's signature kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardConfig>,
}

/// `[forward]`: http2mbox passes incoming mail on to `to`, as a new message
/// from the user with `Resent-*` fields (RFC 5322 §3.6.6) above the
/// original, which stays byte for byte as its author signed it, under the
/// author's signature (`stubmail::list::AUTHOR_FIELD`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Where to: a contact (re-hosted in the user's outbox) or, with a
    /// `[relay]`, any address.
    pub to: String,
    /// Only mail whose From: is one of these addresses, or at one of
    /// these domains (`@example.org`); empty: all mail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only_from: Vec<String>,
    /// Keep a copy in the user's own mailbox too.
    #[serde(default = "ForwardConfig::yes")]
    pub keep: bool,
    /// A message already forwarded this many times (its `Resent-From`
    /// fields) is not forwarded again: a loop stops there.
    #[serde(default = "ForwardConfig::default_hops")]
    pub max_hops: usize,
}

impl ForwardConfig {
    fn yes() -> bool {
        true
    }
    fn default_hops() -> usize {
        5
    }

    /// Does mail from these From: addresses (lower case) go on?
    pub fn matches(&self, from: &[String]) -> bool {
        self.only_from.is_empty()
            || from.iter().any(|f| {
                self.only_from.iter().any(|o| {
                    let o = o.to_ascii_lowercase();
                    match o.strip_prefix('@') {
                        Some(d) => f.rsplit_once('@').is_some_and(|(_, fd)| fd == d),
                        None => *f == o,
                    }
                })
            })
    }
}

/// `[list]`: this home is a mailing list, run by a robot (`stubmail list
/// run`, or `stubmail up` in this home). Its keyring is the member list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    /// The posting address, `LIST@DOMAIN`; the identity also has
    /// `LIST-subscribe@` and `LIST-unsubscribe@` (see `stubmail::list`).
    pub address: String,
    /// A few words about the list: List-Id's phrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The owner's address (a member), told what the robot refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Largest post taken, in bytes (decrypted): a member's post beyond
    /// it is refused, with a notice to the member.
    #[serde(default = "ListConfig::default_max_post")]
    pub max_post_size: u64,
    /// A post from someone who is not a member: refused (the poster and
    /// the owner are told), held until the owner approves or discards it
    /// (`stubmail list held`), or accepted (a role address such as
    /// `abuse@`, RFC 2142: anyone writes, the members read).
    #[serde(default)]
    pub non_members: NonMembers,
    /// How strangers join: by confirming a request by mail, by confirming
    /// and then waiting for the owner (`stubmail list admit`), or not at
    /// all (the owner adds members with `stubmail list add`).
    #[serde(default)]
    pub subscription: Subscription,
    /// A public list: each post is also archived, signed but not
    /// encrypted, at the list's outbox, which serves the archive to
    /// anyone as an Atom feed. A private list (the default) has none.
    #[serde(default)]
    pub public: bool,
}

/// What a list does with a non-member's post.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonMembers {
    #[default]
    Reject,
    Hold,
    Accept,
}

/// How strangers join a list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subscription {
    #[default]
    Confirm,
    Approve,
    Closed,
}

impl ListConfig {
    pub fn new(address: &str) -> ListConfig {
        ListConfig {
            address: address.to_string(),
            description: None,
            owner: None,
            max_post_size: ListConfig::default_max_post(),
            non_members: NonMembers::Reject,
            subscription: Subscription::Confirm,
            public: false,
        }
    }
    fn default_max_post() -> u64 {
        10 * 1024 * 1024
    }
}

/// `[outbox]`: where `stubmail up` serves the user's own outbox (written by
/// the first `up`, so later runs and the systemd unit keep the address the
/// certificate binds).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// TCP (and UDP poll) address of the outbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

impl OutboxConfig {
    fn is_unset(&self) -> bool {
        self.listen.is_none()
    }
}

/// The notification stub listener (docs/PROTOCOL.md §8). Its public
/// address is bound into the certificate (`stubmail init --notify`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// UDP address http2mbox listens on for stubs; none: no stubs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Keep stubs from strangers in a quarantine list for `stubmail intro`
    /// (off: strangers' stubs are dropped).
    pub first_contact: bool,
    /// Stubs kept per stranger.
    pub max_per_sender: usize,
    /// Strangers kept in quarantine at once.
    pub max_senders: usize,
    /// New strangers one source address may put in quarantine per hour.
    pub new_strangers_per_source_hour: u32,
    /// Stubs taken from one source address per minute, contacts' and
    /// strangers' alike (each costs a signature check); more are dropped
    /// unread.
    pub stubs_per_source_minute: u32,
    /// Polls one contact's stubs may cause: at most one per this many
    /// milliseconds (a stub inside it schedules one poll at its end).
    pub contact_poll_spacing_ms: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            listen: None,
            first_contact: false,
            max_per_sender: 20,
            max_senders: 200,
            new_strangers_per_source_hour: 10,
            stubs_per_source_minute: 6000,
            contact_poll_spacing_ms: 2000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The user's address; MAIL FROM must be one of `email` and `aliases`.
    pub email: String,
    /// Other addresses of the same person that smtp2stub accepts as MAIL FROM.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The user's own outbox (also bound into the certificate).
    pub outbox: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Where smtp2stub listens. Loopback unless you mean otherwise.
    pub listen: SocketAddr,
    /// Largest message accepted (SIZE), in bytes.
    pub max_message_size: u64,
    /// Refuse new mail (452) while the spool has less free space than this,
    /// keeping room to encrypt and send what is queued (like Postfix's
    /// queue_minfree).
    pub min_free_bytes: u64,
    /// AUTH policy: `always` (default), `tls` or `loopback-open`; see [`AuthPolicy`].
    pub auth: AuthPolicy,
    /// User name for AUTH PLAIN/LOGIN (default: the email address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for AUTH. Keep config.toml 0600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// PEM certificate chain offered with STARTTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: "127.0.0.1:2525".parse().unwrap(),
            max_message_size: 50 * 1024 * 1024,
            min_free_bytes: 64 * 1024 * 1024,
            auth: AuthPolicy::Always,
            username: None,
            password: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthPolicy {
    /// AUTH on every listener, loopback included (the default): any local
    /// user, and any program or web page that can reach 127.0.0.1, could
    /// otherwise send mail signed as you. On loopback the password may be
    /// sent without TLS (it never leaves the machine); elsewhere only after
    /// STARTTLS. `auto`, the old default (no AUTH on loopback), now means
    /// this.
    #[default]
    #[serde(alias = "auto")]
    Always,
    /// AUTH only after STARTTLS, on every listener (`required` before).
    #[serde(alias = "required")]
    Tls,
    /// No AUTH on loopback listeners (AUTH still required elsewhere). Only
    /// for a machine where no other user and no untrusted program runs:
    /// anything that can connect to the port sends as you.
    LoopbackOpen,
}

/// The smarthost for recipients without a Stubmail key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub host: String,
    #[serde(default = "default_relay_port")]
    pub port: u16,
    /// `starttls` (default), `tls` (implicit, port 465) or `none`.
    #[serde(default)]
    pub tls: RelayTls,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

fn default_relay_port() -> u16 {
    587
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    #[default]
    Starttls,
    Tls,
    None,
}

/// Finding keys of recipients we have none for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Look up unknown recipients in their domain's Web Key Directory.
    pub wkd: bool,
    /// Seconds for the whole lookup; SMTP waits this long at most.
    pub timeout_secs: u64,
    /// Explicit WKD base URLs per domain (e.g. a split-horizon or test
    /// setup): `{ "example.net" = "http://127.0.0.1:8081/" }`.
    pub wkd_servers: std::collections::BTreeMap<String, String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig { wkd: true, timeout_secs: 5, wkd_servers: Default::default() }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// The Maildir delivered into; relative paths are under the data dir.
    pub maildir: PathBuf,
    /// Seconds between polls in daemon mode.
    pub interval_secs: u64,
    /// Largest message fetched, in bytes.
    pub max_message_size: u64,
    /// Largest message once decrypted and decompressed, in bytes: a few KB
    /// of compressed OpenPGP can expand to gigabytes, and a message is
    /// written out before its signature (at its end) is checked.
    pub max_decrypted_size: u64,
    /// Name of this machine in trace headers: the authserv-id of the
    /// `Authentication-Results` http2mbox adds (default: the host name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Seconds to wait on one outbox (connect, and each read) before giving
    /// up on it for this cycle; a slow outbox never delays the others.
    pub timeout_secs: u64,
    /// Local overrides of contacts' outboxes: `{ "<FINGERPRINT>" = "URL" }`.
    /// Otherwise the outbox comes only from the contact's own certificate.
    pub outboxes: std::collections::BTreeMap<String, String>,
    /// Where mail is delivered.
    pub deliver: Delivery,
    /// The mbox file, for `deliver = "mbox"` (e.g. /var/spool/mail/alice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mbox: Option<PathBuf>,
    /// The command, for `deliver = "mda"`; gets the message on stdin
    /// (like fetchmail's --mda). Exit 0 = delivered, 75 = try again later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mda: Option<String>,
    /// POP3 server (http2mbox in daemon mode).
    pub pop3: Pop3Config,
    /// IMAP server (http2mbox in daemon mode), with POP3's account.
    pub imap: ImapConfig,
    /// Between signed polls, ask with one UDP datagram per outbox (daemon).
    pub udp: bool,
    /// Milliseconds to wait for a UDP answer before a signed poll instead.
    pub udp_timeout_ms: u64,
    /// Seconds between UDP polls of the outboxes that hand out cookies (one
    /// datagram each, so often is cheap); outboxes without one are polled
    /// over signed HTTP every `interval_secs`.
    pub udp_interval_secs: u64,
    /// Seconds between fetches of each contact's current certificate from
    /// their outbox (a contact who moved is followed; a revocation learned).
    pub cert_refresh_secs: u64,
}

/// Delivery target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// One file per message, atomic, no locking: the default.
    #[default]
    Maildir,
    /// Append to an mbox (mboxrd quoting, fcntl + dotlock locking).
    Mbox,
    /// Pipe each message to a command.
    Mda,
}

/// The local POP3 server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Config {
    /// Off unless a password is set.
    pub listen: SocketAddr,
    /// USER name (default: the email address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// PEM certificate and key for STLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

/// The local IMAP server: the same user name and password as POP3
/// (`poll.pop3.username`, `poll.pop3.password`), on while that password is
/// set and `enabled` is true.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// PEM certificate and key for STARTTLS (required off loopback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Largest message APPEND takes (a mail client saving a draft or a
    /// sent message), in bytes.
    pub max_append: u64,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig { enabled: true, listen: "127.0.0.1:1143".parse().unwrap(), tls_cert: None, tls_key: None, max_append: 64 << 20 }
    }
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config { listen: "127.0.0.1:1110".parse().unwrap(), username: None, password: None, tls_cert: None, tls_key: None }
    }
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            maildir: PathBuf::from("Maildir"),
            interval_secs: 300,
            max_message_size: 1 << 30,
            max_decrypted_size: 256 << 20,
            hostname: None,
            timeout_secs: 60,
            outboxes: Default::default(),
            deliver: Delivery::Maildir,
            mbox: None,
            mda: None,
            pop3: Pop3Config::default(),
            imap: ImapConfig::default(),
            udp: true,
            udp_timeout_ms: 1000,
            udp_interval_secs: 30,
            cert_refresh_secs: 86400,
        }
    }
}

/// 16 characters from an alphabet without look-alikes (80 bits), easy to
/// type into a mail client.
pub fn random_password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut r = rand::rng();
    (0..16).map(|_| CHARS[r.random_range(0..CHARS.len())] as char).collect()
}

impl Config {
    pub fn new(email: &str, outbox: &str) -> Config {
        Config {
            identity: IdentityConfig { email: email.to_string(), aliases: vec![], outbox: outbox.to_string() },
            smtp: SmtpConfig::default(),
            poll: PollConfig::default(),
            relay: None,
            discovery: DiscoveryConfig::default(),
            notify: NotifyConfig::default(),
            outbox: OutboxConfig::default(),
            list: None,
            forward: None,
        }
    }

    /// Give smtp2stub a random password if it has none (AUTH is required
    /// on every listener); returns what was generated.
    pub fn ensure_smtp_password(&mut self) -> Vec<&'static str> {
        if self.smtp.password.is_some() {
            return vec![];
        }
        self.smtp.password = Some(Secret::new(random_password()));
        vec!["smtp.password"]
    }

    /// Give POP3 a random password if it has none (which turns POP3 on in
    /// http2mbox: `stubmail up` serves it).
    pub fn ensure_pop3_password(&mut self) -> Vec<&'static str> {
        if self.poll.pop3.password.is_some() {
            return vec![];
        }
        self.poll.pop3.password = Some(Secret::new(random_password()));
        vec!["poll.pop3.password"]
    }

    /// The user name mail clients log in with (SMTP and POP3).
    pub fn smtp_username(&self) -> String {
        self.smtp.username.clone().unwrap_or_else(|| self.identity.email.clone())
    }

    /// The user name mail clients log in to POP3 with.
    pub fn pop3_username(&self) -> String {
        self.poll.pop3.username.clone().unwrap_or_else(|| self.identity.email.clone())
    }

    /// Every address this user may send as, lower-cased.
    pub fn own_addresses(&self) -> Vec<String> {
        std::iter::once(&self.identity.email)
            .chain(&self.identity.aliases)
            .map(|a| a.to_ascii_lowercase())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn forwarding_matches_addresses_and_domains_in_any_case() {
        let f = |only: &[&str]| ForwardConfig { to: "c@x.org".into(), only_from: only.iter().map(|s| s.to_string()).collect(), keep: true, max_hops: 5 };
        let from = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(f(&[]).matches(&from(&["anyone@example.org"])));
        assert!(f(&["Alice@Example.org"]).matches(&from(&["alice@example.org"])));
        assert!(f(&["@Example.org"]).matches(&from(&["bob@example.org"])));
        assert!(!f(&["@example.org"]).matches(&from(&["bob@sub.example.org", "bob@example.org.evil"])));
        assert!(!f(&["alice@example.org"]).matches(&from(&["mallory@example.org"])));
        assert!(!f(&["alice@example.org"]).matches(&from(&[])));
    }

    use super::*;
    #[test]
    fn config_round_trips_and_defaults() {
        let c = Config::new("a@example.org", "http://127.0.0.1:8080/");
        let t = toml::to_string(&c).unwrap();
        let back: Config = toml::from_str(&t).unwrap();
        assert_eq!(back.identity.email, "a@example.org");
        let minimal: Config = toml::from_str("[identity]\nemail='a@x.org'\noutbox='http://x/'\n").unwrap();
        assert!(minimal.smtp.listen.ip().is_loopback());
        assert!(toml::from_str::<Config>("[identity]\nemail='a@x.org'\noutbox='http://x/'\ntypo=1\n").is_err());
    }

    #[test]
    fn passwords_never_show_in_debug() {
        let c: Config = toml::from_str(
            "[identity]\nemail='a@x.org'\noutbox='http://x/'\n[smtp]\npassword='hunter2'\n[poll.pop3]\npassword='hunter3'\n\
             [relay]\nhost='h'\npassword='hunter4'\n",
        )
        .unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("hunter") && d.contains("<redacted>"), "{d}");
        assert_eq!(c.smtp.password.as_ref().unwrap().expose(), "hunter2");
        assert!(toml::to_string(&c).unwrap().contains("password = \"hunter2\""), "the file keeps the plain value");
    }
}
