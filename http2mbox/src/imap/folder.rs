//! Maildir++ folders as IMAP sees them: persistent UIDs, flags in file
//! names, and the operations that change a folder (append, copy, move,
//! flag changes, expunge).
//!
//! The INBOX is the Maildir itself; folder `Sent` is `<Maildir>/.Sent`,
//! `Lists.rust` is `<Maildir>/.Lists.rust` (Maildir++; the IMAP hierarchy
//! delimiter is `.`, as Dovecot's default Maildir++ layout has it).
//!
//! Each folder keeps `stubmail-uidlist`: its UIDVALIDITY, its next UID, its
//! highest modification sequence (CONDSTORE, RFC 7162) and one line per
//! message (UID, size as sent over IMAP, modification sequence, flags as
//! last seen, base file name: the name before `:2,`). A flag change made
//! by anyone (mutt renaming the file included) is seen at the next sync as
//! a difference from the flags recorded, and given a new modification
//! sequence. Flags live only in the file name (`:2,FRS`...), so
//! mutt reading the same Maildir and IMAP clients agree, and a flag change
//! is one rename. Everything that reads or writes the uid list holds
//! `stubmail-uidlist.lock`, so several IMAP sessions, POP3 and delivery
//! may run at once: delivery only adds files to `new/`, POP3 only removes
//! them, and both show up at the next sync.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Name of the per-folder uid list and its lock.
const UIDLIST: &str = "stubmail-uidlist";
const UIDLIST_LOCK: &str = "stubmail-uidlist.lock";

/// The folders made at login, with their RFC 6154 special use.
pub const SPECIAL: &[(&str, &str)] = &[("Drafts", "\\Drafts"), ("Sent", "\\Sent"), ("Junk", "\\Junk"), ("Trash", "\\Trash"), ("Archive", "\\Archive")];

/// The system flags, as Maildir letters (sorted, as the info part wants).
pub const FLAG_LETTERS: &[(char, &str)] = &[('D', "\\Draft"), ('F', "\\Flagged"), ('R', "\\Answered"), ('S', "\\Seen"), ('T', "\\Deleted")];

/// A message's flags as Maildir letters (`D F P R S T`), kept sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags(pub String);

impl Flags {
    pub fn from_info(name: &str) -> Flags {
        let info = name.split_once(":2,").map(|(_, i)| i).unwrap_or("");
        // Upper case: system flags (and P); lower case: keywords.
        let mut v: Vec<char> = info.chars().filter(|c| c.is_ascii_alphabetic()).collect();
        v.sort_unstable();
        v.dedup();
        Flags(v.into_iter().collect())
    }

    pub fn has(&self, letter: char) -> bool {
        self.0.contains(letter)
    }

    pub fn set(&mut self, letter: char, on: bool) {
        let mut v: Vec<char> = self.0.chars().filter(|&c| c != letter).collect();
        if on {
            v.push(letter);
        }
        v.sort_unstable();
        self.0 = v.into_iter().collect();
    }

    /// The IMAP flag names, e.g. `\Seen \Answered $Junk`.
    pub fn imap(&self, recent: bool, kw: &Keywords) -> String {
        let mut out: Vec<&str> = FLAG_LETTERS.iter().filter(|(c, _)| self.has(*c)).map(|(_, n)| *n).collect();
        if self.has('P') {
            out.push("$Forwarded");
        }
        out.extend(self.0.chars().filter(char::is_ascii_lowercase).filter_map(|c| kw.name(c)));
        if recent {
            out.push("\\Recent");
        }
        out.join(" ")
    }

    /// The letter for an IMAP flag this store keeps (`None`: not kept).
    pub fn letter(flag: &str) -> Option<char> {
        if flag.eq_ignore_ascii_case("$Forwarded") {
            return Some('P');
        }
        FLAG_LETTERS.iter().find(|(_, n)| n.eq_ignore_ascii_case(flag)).map(|(c, _)| *c)
    }
}

/// Keywords (RFC 9051 §2.3.2: `$Junk`, `$NotJunk`, `$Label1`...): one
/// lower-case letter each in the file names, as Dovecot stores them, from
/// one table for the whole mailbox (`<Maildir>/stubmail-keywords`, a line
/// `a $Junk` per letter), so a copy into another folder keeps its
/// keywords. 26 at most; a 27th is not stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keywords {
    /// By letter: `names[0]` is `a`.
    names: Vec<String>,
}

const KEYWORDS: &str = "stubmail-keywords";

impl Keywords {
    pub fn load(root: &Path) -> Keywords {
        let mut names = Vec::new();
        if let Ok(text) = fs::read_to_string(root.join(KEYWORDS)) {
            for (i, l) in text.lines().enumerate().take(26) {
                match l.split_once(' ') {
                    Some((letter, name)) if letter.len() == 1 && letter.as_bytes()[0] == b'a' + i as u8 && is_keyword(name) => names.push(name.to_string()),
                    _ => break,
                }
            }
        }
        Keywords { names }
    }

    pub fn name(&self, letter: char) -> Option<&str> {
        let i = (letter as u32).checked_sub('a' as u32)? as usize;
        self.names.get(i).map(String::as_str)
    }

    pub fn letter(&self, name: &str) -> Option<char> {
        self.names.iter().position(|n| n.eq_ignore_ascii_case(name)).map(|i| (b'a' + i as u8) as char)
    }

    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// The letter for `name`, given one if it has none yet (under the
    /// table's lock, durably). `None`: all 26 are taken, or not a keyword.
    pub fn letter_or_add(&mut self, root: &Path, name: &str) -> io::Result<Option<char>> {
        if !is_keyword(name) {
            return Ok(None);
        }
        if let Some(l) = self.letter(name) {
            return Ok(Some(l));
        }
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(root.join(format!("{KEYWORDS}.lock")))?;
        lock.lock()?;
        *self = Keywords::load(root);
        if let Some(l) = self.letter(name) {
            return Ok(Some(l));
        }
        if self.names.len() >= 26 {
            return Ok(None);
        }
        self.names.push(name.to_string());
        let text: String = self.names.iter().enumerate().map(|(i, n)| format!("{} {n}\n", (b'a' + i as u8) as char)).collect();
        stubmail::fsutil::write_replace(&root.join(KEYWORDS), text.as_bytes())?;
        Ok(self.letter(name))
    }
}

/// An IMAP keyword: an atom, not a system flag (no `\`), printable.
fn is_keyword(name: &str) -> bool {
    !name.is_empty() && name.len() <= 100 && name.bytes().all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b))
}

/// One message of a folder.
#[derive(Clone, Debug)]
pub struct Entry {
    pub uid: u32,
    /// Octets as IMAP sends it (CRLF line endings).
    pub size: u64,
    /// The file name before `:2,`; unique in the folder, kept by renames.
    pub base: String,
    /// Where it is now: `new/NAME` or `cur/NAME`.
    pub rel: String,
    pub flags: Flags,
    /// CONDSTORE's modification sequence: raised by every flag change.
    pub modseq: u64,
}

impl Entry {
    pub fn in_new(&self) -> bool {
        self.rel.starts_with("new/")
    }
}

/// A folder's state after a sync.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub uidvalidity: u32,
    pub uidnext: u32,
    /// The highest modification sequence given out (raised by expunges too).
    pub highestmodseq: u64,
    /// By ascending UID.
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("no such folder")]
    NoSuchFolder,
    #[error("that folder name is not allowed here")]
    Invalid,
}

/// The mailbox root and its folders.
#[derive(Clone, Debug)]
pub struct Store {
    pub root: PathBuf,
}

/// Longest folder name taken from a client.
const MAX_NAME: usize = 200;

impl Store {
    /// The directory of folder `name` (`INBOX` in any case is the root).
    /// Refuses names that could leave the Maildir or clash with its
    /// own directories.
    pub fn dir(&self, name: &str) -> Result<PathBuf, NameError> {
        if name.eq_ignore_ascii_case("INBOX") {
            return Ok(self.root.clone());
        }
        // `INBOX.x` is `x` (the INBOX's children are the top level), in
        // any case of INBOX.
        let name = match name.get(..6) {
            Some(p) if p.eq_ignore_ascii_case("INBOX.") => &name[6..],
            _ => name,
        };
        if name.is_empty()
            || name.len() > MAX_NAME
            || name.split('.').any(|c| c.is_empty())
            || name.bytes().any(|b| b == b'/' || b == b'\\' || !(0x20..0x7f).contains(&b) || b == b'*' || b == b'%')
            || !valid_mutf7(name)
        {
            return Err(NameError::Invalid);
        }
        Ok(self.root.join(format!(".{name}")))
    }

    /// Every folder that exists, INBOX first, then by name.
    pub fn folders(&self) -> Vec<String> {
        let mut out = vec!["INBOX".to_string()];
        let mut rest: Vec<String> = fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        let folder = n.strip_prefix('.')?.to_string();
                        (!folder.is_empty() && !folder.starts_with('.') && is_real_dir(&e.path()) && e.path().join("cur").is_dir()).then_some(folder)
                    })
                    .collect()
            })
            .unwrap_or_default();
        rest.sort();
        out.extend(rest);
        out
    }

    /// Make a folder (and its Maildir subdirectories), durably.
    pub fn create(&self, name: &str) -> Result<bool, io::Error> {
        let dir = self.dir(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let existed = dir.join("cur").is_dir();
        stubmail::maildir::Maildir::open(&dir)?;
        if !existed {
            stubmail::fsutil::fsync_dir(&self.root)?;
        }
        Ok(!existed)
    }

    /// The special-use folders exist after this.
    pub fn ensure_special(&self) -> io::Result<()> {
        stubmail::maildir::Maildir::open(&self.root)?;
        for (name, _) in SPECIAL {
            self.create(name)?;
        }
        Ok(())
    }

    pub fn special_use(name: &str) -> Option<&'static str> {
        SPECIAL.iter().find(|(n, _)| *n == name).map(|(_, u)| *u)
    }

    /// Remove an empty-of-subfolders folder with its messages.
    pub fn delete(&self, name: &str) -> io::Result<()> {
        if name.eq_ignore_ascii_case("INBOX") {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the INBOX cannot be deleted"));
        }
        let dir = self.dir(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if !dir.join("cur").is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such folder"));
        }
        fs::remove_dir_all(&dir)?;
        stubmail::fsutil::fsync_dir(&self.root)
    }

    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let inval = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
        if from.eq_ignore_ascii_case("INBOX") || to.eq_ignore_ascii_case("INBOX") {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "renaming the INBOX is not supported"));
        }
        let (a, b) = (self.dir(from).map_err(inval)?, self.dir(to).map_err(inval)?);
        if !a.join("cur").is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such folder"));
        }
        if b.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a folder of that name exists"));
        }
        let (na, nb) = (a.to_string_lossy().into_owned(), b.to_string_lossy().into_owned());
        if nb.starts_with(&format!("{na}.")) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a folder cannot move under itself"));
        }
        // Its subfolders go with it (`.a.x` becomes `.b.x`).
        let (pa, pb) = (a.file_name().unwrap_or_default().to_string_lossy().into_owned(), b.file_name().unwrap_or_default().to_string_lossy().into_owned());
        let children: Vec<String> = fs::read_dir(&self.root)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&format!("{pa}."))).collect();
        fs::rename(a, b)?;
        for c in children {
            fs::rename(self.root.join(&c), self.root.join(format!("{pb}{}", &c[pa.len()..])))?;
        }
        stubmail::fsutil::fsync_dir(&self.root)
    }
}

/// The folder's lock, held while its uid list is read or written.
pub struct Locked {
    pub dir: PathBuf,
    _lock: File,
}

/// A directory itself, not a symbolic link to one: a folder is inside the
/// Maildir, whatever links are planted there.
fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

impl Locked {
    pub fn open(dir: &Path) -> io::Result<Locked> {
        if !is_real_dir(dir) || !dir.join("cur").is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such folder"));
        }
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(UIDLIST_LOCK))?;
        lock.lock()?;
        Ok(Locked { dir: dir.to_path_buf(), _lock: lock })
    }

    /// Read the uid list, look at `new/` and `cur/`, give new files their
    /// UIDs (in delivery order), forget files gone, and write the list back
    /// if it changed.
    pub fn sync(&self) -> io::Result<Snapshot> {
        let (mut validity, mut next, mut highest, known) = read_uidlist(&self.dir.join(UIDLIST));
        // Files now: base name -> (rel path, flags).
        let mut files: HashMap<String, (String, Flags)> = HashMap::new();
        for sub in ["new", "cur"] {
            let Ok(rd) = fs::read_dir(self.dir.join(sub)) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let base = name.split(':').next().unwrap_or(&name).to_string();
                let flags = if sub == "new" { Flags::default() } else { Flags::from_info(&name) };
                files.insert(base, (format!("{sub}/{name}"), flags));
            }
        }
        let mut changed = false;
        if validity == 0 {
            validity = fresh_uidvalidity(&self.dir)?;
            next = 1;
            highest = 1;
            changed = true;
        }
        let mut entries = Vec::with_capacity(files.len());
        let mut gone = false;
        for k in known {
            match files.remove(&k.base) {
                Some((rel, flags)) => {
                    let modseq = if flags == k.flags {
                        k.modseq
                    } else {
                        highest += 1;
                        changed = true;
                        highest
                    };
                    entries.push(Entry { uid: k.uid, size: k.size, base: k.base, rel, flags, modseq });
                }
                None => gone = true,
            }
        }
        if gone {
            highest += 1;
            changed = true;
        }
        // New files: oldest first (Maildir names begin with the time).
        let mut fresh: Vec<(String, (String, Flags))> = files.into_iter().collect();
        fresh.sort_by(|a, b| a.0.cmp(&b.0));
        for (base, (rel, flags)) in fresh {
            let size = match crlf_size(&self.dir.join(&rel)) {
                Ok(s) => s,
                // Gone meanwhile (POP3, another client): not ours to number.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            highest += 1;
            entries.push(Entry { uid: next, size, base, rel, flags, modseq: highest });
            next += 1;
            changed = true;
        }
        let snap = Snapshot { uidvalidity: validity, uidnext: next, highestmodseq: highest, entries };
        if changed {
            self.write(&snap)?;
        }
        Ok(snap)
    }

    fn write(&self, s: &Snapshot) -> io::Result<()> {
        let mut out = String::with_capacity(64 + s.entries.len() * 64);
        out += &format!("V{} N{} M{}\n", s.uidvalidity, s.uidnext, s.highestmodseq);
        for e in &s.entries {
            let flags = if e.flags.0.is_empty() { "-" } else { &e.flags.0 };
            out += &format!("{} {} {} {} {}\n", e.uid, e.size, e.modseq, flags, e.base);
        }
        // Written whole and renamed over: a crash leaves the old list or
        // the new one. Not fsync'd: a list lost with a crash is rebuilt
        // with a new UIDVALIDITY, and clients fetch the folder again.
        let tmp = self.dir.join(format!("{UIDLIST}.tmp"));
        fs::write(&tmp, out)?;
        fs::rename(tmp, self.dir.join(UIDLIST))
    }

    /// Set a message's flags: one rename into `cur/` with the new info.
    /// Returns its new place, or `None` if it is gone.
    pub fn set_flags(&self, e: &Entry, flags: &Flags) -> io::Result<Option<String>> {
        let rel = format!("cur/{}:2,{}", e.base, flags.0);
        if rel == e.rel {
            return Ok(Some(rel));
        }
        match fs::rename(self.dir.join(&e.rel), self.dir.join(&rel)) {
            Ok(()) => Ok(Some(rel)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                // Renamed by someone else since our sync: find it again.
                match find(&self.dir, &e.base) {
                    Some(now) => {
                        fs::rename(self.dir.join(&now), self.dir.join(&rel))?;
                        Ok(Some(rel))
                    }
                    None => Ok(None),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Remove messages (EXPUNGE), durably. Returns the UIDs removed.
    pub fn remove(&self, gone: &[Entry]) -> io::Result<()> {
        for e in gone {
            let path = match current(&self.dir, e) {
                Some(rel) => self.dir.join(rel),
                None => continue,
            };
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        stubmail::fsutil::fsync_dir(&self.dir.join("cur"))?;
        stubmail::fsutil::fsync_dir(&self.dir.join("new"))
    }

    /// Move every message in `new/` to `cur/` (a session that SELECTs the
    /// folder has seen them: the Maildir rule mutt and Dovecot follow).
    /// Returns the base names moved (recent to this session).
    pub fn take_new(&self, snap: &mut Snapshot) -> io::Result<Vec<String>> {
        let mut moved = Vec::new();
        for e in snap.entries.iter_mut().filter(|e| e.in_new()) {
            let rel = format!("cur/{}:2,{}", e.base, e.flags.0);
            match fs::rename(self.dir.join(&e.rel), self.dir.join(&rel)) {
                Ok(()) => {
                    e.rel = rel;
                    moved.push(e.base.clone());
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(moved)
    }

    /// Give a file that is already in this folder's `tmp/` (fsync'd) its
    /// place in `cur/` with `flags`, durably, and its UID. Returns the UID.
    pub fn add(&self, tmp_name: &str, base: &str, flags: &Flags, size: u64) -> io::Result<u32> {
        let mut snap = self.sync()?;
        let rel = format!("cur/{base}:2,{}", flags.0);
        fs::rename(self.dir.join("tmp").join(tmp_name), self.dir.join(&rel))?;
        stubmail::fsutil::fsync_dir(&self.dir.join("cur"))?;
        let uid = snap.uidnext;
        snap.highestmodseq += 1;
        snap.entries.push(Entry { uid, size, base: base.to_string(), rel, flags: flags.clone(), modseq: snap.highestmodseq });
        snap.uidnext += 1;
        self.write(&snap)?;
        Ok(uid)
    }

    /// Hard-link (or copy) messages from another folder into this one,
    /// keeping their base names (so a report finds a message copied to
    /// Junk as the one delivered). Returns the (source UID, new UID) pairs.
    pub fn link_from(&self, src_dir: &Path, msgs: &[Entry], remove_source: bool) -> io::Result<Vec<(u32, u32)>> {
        let mut snap = self.sync()?;
        let mut pairs = Vec::new();
        for e in msgs {
            let Some(src_rel) = current(src_dir, e) else { continue };
            let mut base = e.base.clone();
            if snap.entries.iter().any(|x| x.base == base) {
                // Already here (a second copy): a new name.
                base = stubmail::maildir::Maildir::unique_name();
            }
            let rel = format!("cur/{base}:2,{}", e.flags.0);
            let (from, to) = (src_dir.join(&src_rel), self.dir.join(&rel));
            if remove_source && base == e.base {
                fs::rename(&from, &to)?;
            } else {
                match fs::hard_link(&from, &to) {
                    Ok(()) => {}
                    Err(_) => {
                        let tmp = self.dir.join("tmp").join(&base);
                        fs::copy(&from, &tmp)?;
                        File::open(&tmp)?.sync_all()?;
                        fs::rename(&tmp, &to)?;
                    }
                }
                if remove_source {
                    fs::remove_file(&from)?;
                }
            }
            let uid = snap.uidnext;
            snap.uidnext += 1;
            snap.highestmodseq += 1;
            snap.entries.push(Entry { uid, size: e.size, base, rel, flags: e.flags.clone(), modseq: snap.highestmodseq });
            pairs.push((e.uid, uid));
        }
        stubmail::fsutil::fsync_dir(&self.dir.join("cur"))?;
        if remove_source {
            stubmail::fsutil::fsync_dir(&src_dir.join("cur"))?;
            stubmail::fsutil::fsync_dir(&src_dir.join("new"))?;
        }
        self.write(&snap)?;
        Ok(pairs)
    }
}

/// Is `name` valid modified UTF-7 (RFC 3501 §5.1.3), decoding to no
/// control character? (`&-` is `&`; `&...-` is base64 of UTF-16.)
fn valid_mutf7(name: &str) -> bool {
    super::mutf7::decode(name).is_some()
}

/// Where an entry's file is now: where the last look saw it (one stat),
/// else found again by its base name (a directory read: it was renamed
/// since). EXPUNGE and MOVE of thousands must not read the directory once
/// per message.
fn current(dir: &Path, e: &Entry) -> Option<String> {
    if fs::symlink_metadata(dir.join(&e.rel)).is_ok() { Some(e.rel.clone()) } else { find(dir, &e.base) }
}

/// Where the file with `base` is now (`new/...` or `cur/...`).
pub fn find(dir: &Path, base: &str) -> Option<String> {
    let plain = format!("new/{base}");
    if dir.join(&plain).exists() {
        return Some(plain);
    }
    let rd = fs::read_dir(dir.join("cur")).ok()?;
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.split(':').next() == Some(base) {
            return Some(format!("cur/{n}"));
        }
    }
    None
}

/// One line of a uid list.
struct Known {
    uid: u32,
    size: u64,
    modseq: u64,
    flags: Flags,
    base: String,
}

/// (uidvalidity, uidnext, highestmodseq, lines); zeros if absent or
/// damaged (then the folder is numbered anew with a new UIDVALIDITY).
fn read_uidlist(path: &Path) -> (u32, u32, u64, Vec<Known>) {
    let bad = || (0, 0, 0, Vec::new());
    let Ok(f) = File::open(path) else { return bad() };
    let mut lines = BufReader::new(f).lines();
    let Some(Ok(head)) = lines.next() else { return bad() };
    let mut it = head.split(' ');
    let v = it.next().and_then(|v| v.strip_prefix('V')?.parse::<u32>().ok());
    let n = it.next().and_then(|n| n.strip_prefix('N')?.parse::<u32>().ok());
    let m = it.next().and_then(|m| m.strip_prefix('M')?.parse::<u64>().ok());
    let (Some(v), Some(n), Some(m)) = (v, n, m) else { return bad() };
    let mut out: Vec<Known> = Vec::new();
    let mut last = 0u32;
    for l in lines {
        let Ok(l) = l else { return bad() };
        let mut p = l.splitn(5, ' ');
        let (uid, size, modseq, flags, base) = (p.next().and_then(|u| u.parse::<u32>().ok()), p.next().and_then(|s| s.parse::<u64>().ok()), p.next().and_then(|s| s.parse::<u64>().ok()), p.next(), p.next());
        match (uid, size, modseq, flags, base) {
            (Some(uid), Some(size), Some(modseq), Some(flags), Some(base)) if uid > last && uid < n && modseq <= m && !base.is_empty() => {
                last = uid;
                let flags = if flags == "-" { Flags::default() } else { Flags(flags.to_string()) };
                out.push(Known { uid, size, modseq, flags, base: base.to_string() });
            }
            _ => return bad(),
        }
    }
    (v, n, m, out)
}

/// A UIDVALIDITY no earlier list of any folder of this mailbox had: the
/// clock in seconds, but always above the last one given, kept in the
/// INBOX's `stubmail-uidvalidity` (a folder deleted or renamed and made
/// again within a second got the old one: found by an attack).
fn fresh_uidvalidity(dir: &Path) -> io::Result<u32> {
    let root = if dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) { dir.parent().unwrap_or(dir) } else { dir };
    let path = root.join("stubmail-uidvalidity");
    let f = fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
    f.lock()?;
    let last: u32 = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1) as u32;
    let v = now.max(last.saturating_add(1)).max(1);
    fs::write(&path, format!("{v}\n"))?;
    Ok(v)
}

/// Size of a file as sent with CRLF line endings.
pub fn crlf_size(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut size, mut prev) = (0u64, 0u8);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(size);
        }
        for &b in &buf[..n] {
            if b == b'\n' && prev != b'\r' {
                size += 1;
            }
            size += 1;
            prev = b;
        }
    }
}

/// A message's bytes with CRLF line endings (as IMAP sends it).
/// `hint`: the size expected (the uid list's), to read it in one go.
pub fn read_crlf(path: &Path, max: u64, hint: u64) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut raw = Vec::with_capacity(hint.max(8192).min(max.saturating_add(1)) as usize + 1);
    f.take(max + 1).read_to_end(&mut raw)?;
    if raw.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "message larger than the IMAP server serves"));
    }
    Ok(to_crlf(&raw))
}

pub fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 30 + 2);
    // Line by line (memchr), not byte by byte: most of a FETCH's work.
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', raw) {
        if nl > 0 && raw[nl - 1] == b'\r' {
            continue;
        }
        out.extend_from_slice(&raw[start..nl]);
        out.extend_from_slice(b"\r\n");
        start = nl + 1;
    }
    out.extend_from_slice(&raw[start..]);
    out
}

/// Subscriptions (`<Maildir>/subscriptions`, one name a line, as Dovecot
/// keeps them). Absent: every folder is subscribed.
pub fn subscriptions(root: &Path, all: &[String]) -> Vec<String> {
    match fs::read_to_string(root.join("subscriptions")) {
        Ok(s) => s.lines().filter(|l| !l.is_empty()).map(str::to_string).collect(),
        Err(_) => all.to_vec(),
    }
}

pub fn set_subscribed(root: &Path, all: &[String], name: &str, on: bool) -> io::Result<()> {
    let mut set: BTreeMap<String, ()> = subscriptions(root, all).into_iter().map(|n| (n, ())).collect();
    if on {
        set.insert(name.to_string(), ());
    } else {
        set.remove(name);
    }
    let mut out = Vec::new();
    for n in set.keys() {
        writeln!(out, "{n}")?;
    }
    stubmail::fsutil::write_replace(&root.join("subscriptions"), &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(root: &Path, name: &str, body: &str) {
        fs::write(root.join("new").join(name), body).unwrap();
    }

    #[test]
    fn uids_persist_and_grow_in_delivery_order() {
        let d = tempfile::tempdir().unwrap();
        let store = Store { root: d.path().to_path_buf() };
        store.ensure_special().unwrap();
        deliver(d.path(), "2.b", "B\n");
        deliver(d.path(), "1.a", "A\nline\n");
        let l = Locked::open(d.path()).unwrap();
        let s = l.sync().unwrap();
        assert_eq!(s.entries.iter().map(|e| (e.uid, e.base.as_str(), e.size)).collect::<Vec<_>>(), vec![(1, "1.a", 9), (2, "2.b", 3)]);
        // A flag change renames the file; the UID stays.
        l.set_flags(&s.entries[0], &Flags("S".into())).unwrap();
        deliver(d.path(), "0.c", "C\n");
        let s2 = l.sync().unwrap();
        assert_eq!(s2.uidvalidity, s.uidvalidity);
        assert_eq!(s2.entries.iter().map(|e| (e.uid, e.base.as_str(), e.flags.0.as_str())).collect::<Vec<_>>(), vec![(1, "1.a", "S"), (2, "2.b", ""), (3, "0.c", "")]);
        // POP3 (or mutt) removed one: it is forgotten, its UID never reused.
        fs::remove_file(d.path().join("new/2.b")).unwrap();
        let s3 = l.sync().unwrap();
        assert_eq!(s3.entries.iter().map(|e| e.uid).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(s3.uidnext, 4);
        // A damaged list: numbered anew, with a new UIDVALIDITY.
        fs::write(d.path().join(UIDLIST), "garbage").unwrap();
        let s4 = l.sync().unwrap();
        assert_eq!(s4.entries.len(), 2);
        assert!(s4.uidvalidity > s.uidvalidity, "never a UIDVALIDITY given before, even within the second");
    }

    #[test]
    fn folder_names_stay_inside_the_maildir() {
        let store = Store { root: PathBuf::from("/m") };
        assert_eq!(store.dir("inbox").unwrap(), PathBuf::from("/m"));
        assert_eq!(store.dir("Sent").unwrap(), PathBuf::from("/m/.Sent"));
        assert_eq!(store.dir("INBOX.Sent").unwrap(), PathBuf::from("/m/.Sent"));
        assert_eq!(store.dir("a.b").unwrap(), PathBuf::from("/m/.a.b"));
        assert_eq!(store.dir("inbox.Sent").unwrap(), PathBuf::from("/m/.Sent"));
        assert_eq!(store.dir("Entw&APw-rfe").unwrap(), PathBuf::from("/m/.Entw&APw-rfe"));
        assert_eq!(store.dir("a&-b").unwrap(), PathBuf::from("/m/.a&-b"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a..b", "x.", "a\0b", "a*", &"x".repeat(300), "&", "&ZZZ", "&AAA-", "&AGE-", "é"] {
            assert!(store.dir(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_map_to_maildir_letters() {
        let f = Flags::from_info("123.x:2,SRFb");
        assert_eq!(f.0, "FRSb");
        let d = tempfile::tempdir().unwrap();
        let mut kw = Keywords::load(d.path());
        assert_eq!(kw.letter_or_add(d.path(), "$Junk").unwrap(), Some('a'));
        assert_eq!(kw.letter_or_add(d.path(), "$Label1").unwrap(), Some('b'));
        assert_eq!(kw.letter_or_add(d.path(), "$junk").unwrap(), Some('a'));
        assert_eq!(kw.letter_or_add(d.path(), "\\Bogus").unwrap(), None);
        assert_eq!(Keywords::load(d.path()), kw, "kept on disk");
        assert_eq!(f.imap(false, &kw), "\\Flagged \\Answered \\Seen $Label1");
        assert_eq!(Flags::letter("\\deleted"), Some('T'));
        assert_eq!(Flags::letter("$Junk"), None);
        assert_eq!(crlf_size_of(b"a\nb\r\n"), 6);
        for (raw, want) in [(&b""[..], &b""[..]), (b"\n", b"\r\n"), (b"\r\n", b"\r\n"), (b"a\n\nb", b"a\r\n\r\nb"), (b"\r\r\n\n", b"\r\r\n\r\n"), (b"x\r", b"x\r")] {
            assert_eq!(to_crlf(raw), want, "{raw:?}");
        }
    }

    fn crlf_size_of(b: &[u8]) -> u64 {
        to_crlf(b).len() as u64
    }
}
