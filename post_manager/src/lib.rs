//! post_manager: the sender's outbox. It holds each message until its
//! recipients fetch it, answers only signed requests, and keeps each
//! message's delivery status. `store` is the data directory, `handler` the
//! protocol logic shared by every way of running, `server` the standalone
//! HTTP server.

pub mod cgi;
pub mod handler;
pub mod server;
pub mod store;
