//! Stubmail's shared core: identity and keyring (OpenPGP), the wire protocol
//! (pure data, no I/O), request signing, the signed outbox client, and the
//! on-disk helpers every program uses.
//!
//! See `ARCHITECTURE.md` for the map and `docs/PROTOCOL.md` for the wire format.

pub mod auth;
pub mod blocklist;
pub mod client;
pub mod config;
pub mod fsutil;
pub mod guard;
pub mod help;
pub mod keyring;
pub mod list;
pub mod logging;
pub mod mail;
pub mod maildir;
pub mod node;
pub mod pgp;
pub mod progress;
pub mod protocol;
pub mod relay;
pub mod server;
pub mod signals;
pub mod spool;
pub mod time;
pub mod tls;
pub mod wkd;

pub use config::{Config, Home};
pub use pgp::Identity;
/// The OpenPGP implementation, re-exported so every crate uses one version.
pub use sequoia_openpgp as openpgp;
