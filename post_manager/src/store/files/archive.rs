//! Public lists' archives: `archive/<LIST>/<id>.eml` (the post),
//! `<id>.sig` (the list's signature over it) and `index` (one JSON entry a
//! line, oldest first), appended once the post and its signature are
//! durable.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};

use stubmail::fsutil;
use stubmail::protocol::Fpr;

use super::{Files, StoreError};
use crate::archive::Entry;
use crate::store::Archive;

/// Largest archive index read (a line a post: millions of posts).
const MAX_INDEX: u64 = 1 << 30;

impl Files {
    /// The index's bytes (empty if there is none yet).
    fn archive_index(&self, list: &Fpr) -> io::Result<Vec<u8>> {
        match fsutil::read_bounded(&self.p(&format!("archive/{list}/index")), MAX_INDEX) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e),
        }
    }
}

/// The index's lines: one entry each, oldest first (a line a crash cut
/// short is there too, and fails to parse).
fn lines(index: &[u8]) -> Vec<&[u8]> {
    index.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect()
}

impl Archive for Files {
    fn archive_put(&self, list: &Fpr, e: &Entry, post: &[u8], sig: &[u8]) -> Result<bool, StoreError> {
        let _lock = self.lock(&format!("archive-{list}"))?;
        let index = self.archive_index(list)?;
        // Found by its id's JSON string, not by parsing every entry.
        if String::from_utf8_lossy(&index).contains(&format!("\"{}\"", e.id)) {
            return Ok(false);
        }
        let dir = self.p(&format!("archive/{list}"));
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            fsutil::fsync_dir(&self.p("archive"))?;
            fsutil::fsync_dir(&self.root)?;
        }
        fsutil::write_atomic(&dir.join(format!("{}.eml", e.id)), post, 0o644)?;
        fsutil::write_atomic(&dir.join(format!("{}.sig", e.id)), sig, 0o644)?;
        let mut f = OpenOptions::new().create(true).append(true).open(dir.join("index"))?;
        // After a line a crash cut short, a new line of its own.
        let mut line = if index.last().is_some_and(|b| *b != b'\n') { b"\n".to_vec() } else { vec![] };
        line.extend(serde_json::to_vec(e).expect("serialisable"));
        line.push(b'\n');
        f.write_all(&line)?;
        f.sync_all()?;
        fsutil::fsync_dir(&dir)?;
        Ok(true)
    }

    fn archive_page(&self, list: &Fpr, skip: usize, n: usize) -> Result<(Vec<Entry>, usize), StoreError> {
        // Only the page's entries are parsed.
        let index = self.archive_index(list)?;
        let all = lines(&index);
        let page = all.iter().rev().skip(skip).take(n).filter_map(|l| serde_json::from_slice(l).ok()).collect();
        Ok((page, all.len()))
    }

    fn archive_get(&self, list: &Fpr, id: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        if !stubmail::protocol::is_valid_id(id) {
            return Ok(None);
        }
        let dir = self.p(&format!("archive/{list}"));
        match (fs::read(dir.join(format!("{id}.eml"))), fs::read(dir.join(format!("{id}.sig")))) {
            (Ok(p), Ok(s)) => Ok(Some((p, s))),
            _ => Ok(None),
        }
    }
}
