//! The data directory backend. Plain files, so many processes (CGI
//! instances, `serve` instances) can share one directory: every change is a
//! write-to-temp + fsync + rename, and per-message changes hold an exclusive
//! lock on `locks/<id>`.
//!
//! Layout (documented for operators in docs/OPERATING.md):
//!
//! ```text
//! accounts/<FPR>.pgp        certificates of the local users allowed to upload
//! certs/<FPR>.pgp           recipients' certificates, merged from their polls
//! messages/<id>             stored message bytes (id = SHA-256 of them)
//! meta/<id>.json            a message: sender, size, time (Meta)
//! rcpt/<id>.tab             its recipients' delivery states, 32-byte records (`rcpt.rs`)
//! rcpt/<id>.dev/<FPR>       the devices of a recipient that acked it, one a line
//! inbox/<RCPT-FPR>/<id>     index: messages pending for a recipient (empty files)
//! listed/<RCPT-FPR>/<id>    index: retrieved by one of its devices, offered to the others
//! devices/<RCPT-FPR>/<dev>/<id>  index: offered to this device, not yet acked by it
//! layout                    the layout's version (3; 1 kept states in meta/, 2 in a JSON file
//!                           per recipient; both upgraded at open)
//! sent/<SENDER-FPR>/<id>    index: messages of a sender (empty files)
//! nonces/<FPR>/<window>/<nonce>  replay protection, by windows of request time
//! accounts/urls             this outbox's own base URLs (signed requests name one)
//! rcptlog/<FPR>/<day>       an account's distinct recipients per UTC day
//! accounts/<FPR>.rate       an account's uploads in the current minute (soft state)
//! accounts/<FPR>.suspended  why and since when an account may not upload
//! complaints/<FPR>/<day>    recipients' complaints about an account's mail, one per line
//!                           (made by the first complaint: nothing at open, which every CGI request does)
//! locks/<id>                lock files
//! tmp/                      uploads in progress
//! cookies/<id>.json         UDP poll cookies (soft state, see `udp`)
//! cookies/current/<FPR>.<device>  the current cookie of a recipient's device
//! notify/<id>.<FPR>.json    notification stubs still to be (re)sent
//! udp.json                  the UDP service's port, while it runs
//! ```
//!
//! Counters of UDP cookies live in the memory of the one UDP service that
//! serves a data directory.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};


mod abuse;
mod archive;
mod accounts;
mod certs;
mod layout;
mod messages;
mod nonces;
mod rcpt;
mod retention;
mod udp;

pub use messages::{Meta, RecipientMeta};

use super::StoreError;

/// One outbox data directory.
#[derive(Clone, Debug)]
pub struct Files {
    root: PathBuf,
}

const DIRS: &[&str] =
    &["accounts", "certs", "messages", "meta", "rcpt", "inbox", "listed", "devices", "sent", "nonces", "locks", "tmp", "rcptlog", "cookies", "cookies/current", "notify"];

impl Files {
    /// Open (creating the layout if needed) a data directory.
    pub fn open(root: &Path) -> io::Result<Files> {
        for d in DIRS {
            fs::create_dir_all(root.join(d))?;
        }
        let f = Files { root: root.to_path_buf() };
        f.upgrade().map_err(io::Error::from)?;
        Ok(f)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Check that this process can write every part of the data directory.
    /// Under a web server the CGI runs as the server's user (www-data):
    /// the directory must belong to that user, or nothing can be stored.
    fn check_ready(&self) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        for d in DIRS {
            let p = self.p(d);
            let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)?;
            // SAFETY: a valid NUL-terminated path; access() only reads it.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
                // SAFETY: geteuid has no preconditions.
                let uid = unsafe { libc::geteuid() };
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is not writable by uid {uid}; give the data directory to the user the outbox runs as \
                         (e.g. `chown -R www-data: {}`) — see docs/OPERATING.md",
                        p.display(),
                        self.root.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    // ---- locking --------------------------------------------------------

    fn lock(&self, name: &str) -> io::Result<File> {
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(self.p(&format!("locks/{name}")))?;
        f.lock()?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests;

impl super::Backend for Files {
    fn describe(&self) -> String {
        format!("data directory {}", self.root.display())
    }
    fn check_ready(&self) -> io::Result<()> {
        Files::check_ready(self)
    }
}
