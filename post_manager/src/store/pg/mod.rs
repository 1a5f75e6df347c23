//! The PostgreSQL backend: everything an outbox keeps, in one database,
//! so several stateless `post_manager` instances (on one host or many,
//! behind a load balancer) serve one outbox (docs/OPERATING.md, "A
//! provider's outbox").
//!
//! Each request is one transaction; its commit is the commit point (a
//! `201` follows it). Message bytes are rows of 256 KiB chunks, streamed in
//! within the upload's transaction and out one chunk at a time, never held
//! whole. Per-recipient state is one row per recipient, so an ack changes
//! one row and a poll reads what it lists (see `messages`). Nonces, UDP
//! cookies and their counters, stubs to send and the retention pass are
//! shared by every instance (`nonces`, `udp`, `retention`).
//!
//! Schema changes run under an advisory lock, so instances started
//! together migrate once (`schema`).

use std::io;
use std::time::Duration;

use r2d2_postgres::postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

use super::StoreError;

mod abuse;
mod archive;
mod accounts;
mod certs;
mod messages;
mod nonces;
mod retention;
mod schema;
mod udp;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
type Conn = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// Message bytes are stored in chunks of this size.
pub const CHUNK: usize = 256 * 1024;

/// One outbox in a PostgreSQL database.
#[derive(Clone)]
pub struct Pg {
    pool: Pool,
    /// Where, for logs: the URL without its password.
    shown: String,
    /// This process's name in claims (stubs) and adverts (UDP service).
    me: String,
}

impl std::fmt::Debug for Pg {
    // The URL's password never prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pg({})", self.shown)
    }
}

/// The connection string as logs and errors show it: user, hosts, ports
/// and database only — never a password, wherever the string put it (in
/// the URL's user part, its query, or a `password=` keyword).
fn shown(url: &str) -> String {
    let Ok(c) = url.parse::<postgres::Config>() else { return "(a connection string that does not parse)".into() };
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            postgres::config::Host::Unix(d) => format!("{}:{p}", d.display()),
        })
        .collect();
    format!("postgres://{}@{}/{}", c.get_user().unwrap_or(""), hosts.join(","), c.get_dbname().unwrap_or(""))
}

/// Whether `spec` is a PostgreSQL connection string (a URL, or libpq's
/// `key=value` form).
pub fn is_connection_string(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://") || spec.contains('=')
}

impl Pg {
    /// Connect with a pool of up to `POST_MANAGER_DB_POOL` connections
    /// (default 16), migrating the schema if needed.
    pub fn connect(url: &str) -> anyhow::Result<Pg> {
        let size = std::env::var("POST_MANAGER_DB_POOL").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
        Self::connect_sized(url, size)
    }

    /// Connect with at most `size` connections (a CGI request uses one).
    pub fn connect_sized(url: &str, size: u32) -> anyhow::Result<Pg> {
        let mut config: postgres::Config = url.parse().map_err(|e| anyhow::anyhow!("--store {}: {e}", shown(url)))?;
        // A database that does not answer is an error in seconds, not a
        // request left hanging.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(size.max(1))
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(5))
            .build(manager)
            .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", shown(url)))?;
        let pg = Pg { pool, shown: shown(url), me: format!("{}.{}", std::process::id(), hex::encode(rand::random::<[u8; 6]>())) };
        let mut c = pg.conn().map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", pg.shown))?;
        schema::migrate(&mut c).map_err(|e| anyhow::anyhow!("migrating the schema of {}: {e}", pg.shown))?;
        Ok(pg)
    }

    pub(crate) fn conn(&self) -> Result<Conn, StoreError> {
        self.pool.get().map_err(|e| StoreError::Db(format!("no database connection: {e}")))
    }
}

/// Database errors where the interface speaks `io::Result`.
pub(super) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("database: {e}"))
}

impl super::Backend for Pg {
    fn describe(&self) -> String {
        format!("PostgreSQL {}", self.shown)
    }
    fn check_ready(&self) -> io::Result<()> {
        self.conn()?.simple_query("SELECT 1").map_err(io_err)?;
        Ok(())
    }
}

/// Delivery states as stored (smallint).
pub(crate) fn state_code(s: stubmail::protocol::DeliveryState) -> i16 {
    use stubmail::protocol::DeliveryState::*;
    match s {
        Stored => 0,
        Notified => 1,
        Retrieved => 2,
        Unsent => 3,
        Expired => 4,
    }
}

pub(super) fn state_of(c: i16) -> Result<stubmail::protocol::DeliveryState, StoreError> {
    use stubmail::protocol::DeliveryState::*;
    Ok(match c {
        0 => Stored,
        1 => Notified,
        2 => Retrieved,
        3 => Unsent,
        4 => Expired,
        _ => return Err(StoreError::Corrupt(format!("delivery state {c}"))),
    })
}
