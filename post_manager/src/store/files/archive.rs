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

impl Files {
    fn archive_index(&self, list: &Fpr) -> io::Result<Vec<Entry>> {
        let text = match fs::read_to_string(self.p(&format!("archive/{list}/index"))) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        // A line a crash cut short is skipped.
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}

impl Archive for Files {
    fn archive_put(&self, list: &Fpr, e: &Entry, post: &[u8], sig: &[u8]) -> Result<bool, StoreError> {
        let _lock = self.lock(&format!("archive-{list}"))?;
        if self.archive_index(list)?.iter().any(|x| x.id == e.id) {
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
        let mut line = serde_json::to_vec(e).expect("serialisable");
        line.push(b'\n');
        f.write_all(&line)?;
        f.sync_all()?;
        fsutil::fsync_dir(&dir)?;
        Ok(true)
    }

    fn archive_page(&self, list: &Fpr, skip: usize, n: usize) -> Result<(Vec<Entry>, usize), StoreError> {
        let all = self.archive_index(list)?;
        let total = all.len();
        Ok((all.into_iter().rev().skip(skip).take(n).collect(), total))
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
