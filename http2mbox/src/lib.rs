//! http2mbox: the recipient's side. It polls the outboxes of the people in
//! the keyring (the address book and the whitelist), verifies and decrypts
//! what it finds, delivers it into the local Maildir, and only then confirms
//! retrieval to the sender's outbox.

pub mod deliver;
pub mod mbox;
pub mod poller;
pub mod pop3;
