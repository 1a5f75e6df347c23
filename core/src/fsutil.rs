//! Durable file-system operations. Everything that promises "it is on disk"
//! goes through here, so the fsync discipline lives in one place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// fsync a directory, making renames and creations in it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` (and parents) with mode 0700 if missing.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Create `dir` (and parents) if missing, with the process umask.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

/// A random, collision-free name for a temporary file.
pub fn unique_name(prefix: &str) -> String {
    use rand::Rng;
    let r: u64 = rand::rng().random();
    format!("{prefix}{}.{}.{r:016x}", std::process::id(), crate::time::unix_now())
}

/// Write `data` to `path` atomically and durably: temporary file in the same
/// directory, fsync, rename, fsync the directory. `mode` sets the permissions
/// of the new file (e.g. 0o600 for secrets).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}", unique_name("tmp.")));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replace `path` atomically but not durably (temp file in the same
/// directory, rename; no fsync): for soft state that is rebuilt or
/// recounted when lost (UDP cookies, queued stubs, usage caches).
pub fn write_replace(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}", unique_name("tmp.")));
    let result = fs::write(&tmp, data).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The permission bits of a file, or an error naming the file.
pub fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode_of(&p).unwrap(), 0o600);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}

/// Read a regular file of at most `max` bytes, without following a
/// symbolic link in its last component and without blocking on a FIFO or
/// device: what a directory another user may have written holds is read
/// only if it is what it should be.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_regular(path)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is {len} bytes, over the limit of {max}", path.display())));
    }
    let mut v = Vec::with_capacity(len as usize);
    Read::by_ref(&mut f).take(max + 1).read_to_end(&mut v)?;
    if v.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} grew over the limit of {max} bytes", path.display())));
    }
    Ok(v)
}

/// Open a regular file for reading (no symbolic link in its last
/// component, no FIFO, device or directory).
pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a regular file", path.display())));
    }
    Ok(f)
}
