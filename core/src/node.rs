//! One node per home. Two smtp2stubs on one spool would upload each message
//! twice, two pollers would fight over one mailbox, and a copy of the user's
//! node started by mistake would keep ports the user thinks are free. So each
//! running program holds an exclusive lock on its *role* in the home
//! (`state/<role>.lock`): `smtp2stub` (the SMTP side and its spool) and
//! `http2mbox` (the poller and the mailbox server). `stubmail up` holds
//! both. A second program wanting a role that is taken refuses to start,
//! naming the one that runs. The lock file also says where the running
//! program listens, so `stubmail doctor` checks the addresses in use.
//!
//! The locks are `flock(2)` locks: the kernel drops them when the process
//! ends, however it ends, so a crash never leaves a stale lock behind.
//! `http2mbox --once` takes no role: it is "check now", and its poll cycle
//! shares the cycle lock with the running daemon.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

/// What a lock file says about the program holding it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// Process id of the holder.
    pub pid: u32,
    /// How it was started: `stubmail up`, `smtp2stub`, `http2mbox`.
    pub program: String,
    /// What it listens on, by name (`smtp`, `pop3`, `outbox`, `notify`).
    #[serde(default)]
    pub listening: BTreeMap<String, String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` (pid {}", self.program, self.pid)?;
        for (k, v) in &self.listening {
            write!(f, ", {k} {v}")?;
        }
        write!(f, ")")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "this home already runs {role}: {holder}. Stop it first (Ctrl-C, or `systemctl --user stop` its unit), \
         or give this one a home of its own with --home DIR"
    )]
    Taken { role: String, holder: Holder },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// A role held in a home, until dropped (or the process ends).
#[derive(Debug)]
pub struct RoleLock {
    file: File,
    holder: Holder,
}

fn lock_path(state_dir: &Path, role: &str) -> std::path::PathBuf {
    state_dir.join(format!("{role}.lock"))
}

/// Take `role` in the home whose state directory is `state_dir`, for
/// `program`; refuse, naming the holder, if another process has it.
pub fn hold(state_dir: &Path, role: &str, program: &str) -> Result<RoleLock, NodeError> {
    let path = lock_path(state_dir, role);
    let io = |source| NodeError::Io { path: path.display().to_string(), source };
    crate::fsutil::ensure_private_dir(state_dir).map_err(io)?;
    // The state directory is the user's alone: one others may write to
    // could hold a symlink in place of the lock (a write through it lands
    // on whatever it names). Ours: made private; someone else's: refused.
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::metadata(state_dir).map_err(io)?;
        if m.mode() & 0o022 != 0 {
            // SAFETY: geteuid has no preconditions.
            if m.uid() != unsafe { libc::geteuid() } {
                return Err(io(std::io::Error::other(format!(
                    "{} is writable by others and not yours: fix its owner and mode (chmod 700)",
                    state_dir.display()
                ))));
            }
            std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut s = String::new();
            let _ = file.read_to_string(&mut s);
            let holder = serde_json::from_str(&s).unwrap_or_else(|_| Holder { program: "another program".into(), ..Default::default() });
            return Err(NodeError::Taken { role: role.into(), holder });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let mut lock = RoleLock { file, holder: Holder { pid: std::process::id(), program: program.into(), listening: BTreeMap::new() } };
    lock.write().map_err(io)?;
    Ok(lock)
}

impl RoleLock {
    /// Record an address the holder listens on (for `doctor`, and for the
    /// message a second program gets).
    pub fn listening(&mut self, what: &str, addr: impl std::fmt::Display) -> std::io::Result<()> {
        self.holder.listening.insert(what.into(), addr.to_string());
        self.write()
    }

    fn write(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(&serde_json::to_vec(&self.holder).expect("serialisable"))?;
        self.file.flush()
    }
}

/// The program holding `role` in this home now, if any.
pub fn holder(state_dir: &Path, role: &str) -> Option<Holder> {
    let mut file = File::open(lock_path(state_dir, role)).ok()?;
    match file.try_lock() {
        // We got it: nobody holds it (released at once as `file` drops).
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut s = String::new();
            file.read_to_string(&mut s).ok()?;
            Some(serde_json::from_str(&s).unwrap_or_default())
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_role_is_held_once_and_freed_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let mut a = super::hold(d.path(), "smtp2stub", "stubmail up").unwrap();
        a.listening("smtp", "127.0.0.1:2525").unwrap();
        // flock locks belong to the open file: a second open in this very
        // process conflicts like another process would.
        let e = super::hold(d.path(), "smtp2stub", "smtp2stub").unwrap_err().to_string();
        assert!(e.contains("stubmail up") && e.contains("127.0.0.1:2525") && e.contains(&std::process::id().to_string()), "{e}");
        // Another role is free.
        let b = super::hold(d.path(), "http2mbox", "http2mbox").unwrap();
        assert_eq!(super::holder(d.path(), "smtp2stub").unwrap().listening["smtp"], "127.0.0.1:2525");
        drop(a);
        assert!(super::holder(d.path(), "smtp2stub").is_none());
        super::hold(d.path(), "smtp2stub", "smtp2stub").unwrap();
        drop(b);
    }

    #[test]
    fn a_symlink_in_place_of_a_lock_is_not_followed_and_the_state_dir_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, state.join("smtp2stub.lock")).unwrap();
        assert!(super::hold(&state, "smtp2stub", "smtp2stub").is_err(), "a symlinked lock is refused");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
