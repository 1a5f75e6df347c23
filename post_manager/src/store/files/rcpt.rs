//! Recipients' delivery states of one message: `rcpt/<id>.tab`, a table of
//! fixed-size records sorted by fingerprint.
//!
//! Why a table and not a file per recipient: a list's post has thousands
//! of recipients, and a small file each costs its bytes, its directory
//! entry and its share of the directories holding them — about 200 bytes a
//! recipient, more than the state itself. A record here is 32 bytes.
//!
//! - An upload that adds recipients rewrites the table (merged and sorted),
//!   replacing it by a rename: readers see the old table or the new one.
//!   A table that existed is fsync'd before it replaces the old one, so a
//!   crash never swaps recipients' states for an empty file.
//! - A state change (ack, notification, unsend, expiry) overwrites its one
//!   record in place. A record is 32-byte aligned, so it never straddles a
//!   disk sector: a crash leaves the old record or the new, not half of
//!   each. Finding it is a binary search over the sorted records, a few
//!   reads whatever the number of recipients.
//! - The devices that acked (rare: several devices, one identity) are
//!   beside, `rcpt/<id>.dev/<FPR>`, one name a line; a record's flag says
//!   whether that file exists.
//!
//! Every change happens under the message's lock; readers take none.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use stubmail::fsutil;
use stubmail::protocol::{self, DeliveryState, Fpr};

use super::messages::{Dirty, RecipientMeta};
use super::{Files, StoreError};

/// The table's first bytes (the last is the format's version).
const MAGIC: &[u8; 8] = b"SMRCPT\0\x01";
/// The header: magic, then the number of records (u64, little-endian),
/// then reserved zeros.
const HEADER: u64 = 32;
/// One record: the fingerprint (20 bytes), the state (1), flags (1), a
/// CRC-16 of the record's other 30 bytes (little-endian), the Unix time of
/// the last change (i64, little-endian).
const RECORD: u64 = 32;
/// Far more recipients than any account may give one message: a table
/// claiming more is corrupt, not read.
const MAX_RECORDS: u64 = 1 << 22;
/// Largest devices file read.
const MAX_DEVICES_FILE: u64 = 64 << 10;
/// Record flag: the recipient has a devices file.
const HAS_DEVICES: u8 = 1;

/// A decoded record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Rec {
    fpr: [u8; 20],
    state: DeliveryState,
    flags: u8,
    at: i64,
}

fn state_code(s: DeliveryState) -> u8 {
    match s {
        DeliveryState::Stored => 1,
        DeliveryState::Notified => 2,
        DeliveryState::Retrieved => 3,
        DeliveryState::Expired => 4,
        DeliveryState::Unsent => 5,
    }
}

fn state_of(c: u8) -> Option<DeliveryState> {
    Some(match c {
        1 => DeliveryState::Stored,
        2 => DeliveryState::Notified,
        3 => DeliveryState::Retrieved,
        4 => DeliveryState::Expired,
        5 => DeliveryState::Unsent,
        // 0: a record never written (zeros), or anything else: corrupt.
        _ => return None,
    })
}

fn key(f: &Fpr) -> [u8; 20] {
    let mut k = [0u8; 20];
    hex::decode_to_slice(f.as_str(), &mut k).expect("a fingerprint is 40 hex digits");
    k
}

impl Rec {
    fn of(r: &RecipientMeta) -> Rec {
        Rec { fpr: key(&r.fpr), state: r.state, flags: if r.devices.is_empty() { 0 } else { HAS_DEVICES }, at: r.at }
    }

    fn encode(&self) -> [u8; RECORD as usize] {
        let mut b = [0u8; RECORD as usize];
        b[..20].copy_from_slice(&self.fpr);
        b[20] = state_code(self.state);
        b[21] = self.flags;
        b[24..].copy_from_slice(&self.at.to_le_bytes());
        let c = crc16(&b);
        b[22..24].copy_from_slice(&c.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Rec> {
        if u16::from_le_bytes([b[22], b[23]]) != crc16(b) {
            return None;
        }
        let mut fpr = [0u8; 20];
        fpr.copy_from_slice(&b[..20]);
        Some(Rec { fpr, state: state_of(b[20])?, flags: b[21], at: i64::from_le_bytes(b[24..32].try_into().ok()?) })
    }

    fn fpr(&self) -> Fpr {
        Fpr::parse(&hex::encode_upper(self.fpr)).expect("20 bytes are a fingerprint")
    }
}

/// CRC-16/CCITT of a record's bytes but its check (bytes 22 and 23): a
/// flipped bit or a record overwritten by something else is caught, not
/// taken for another recipient's state.
fn crc16(b: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for (i, &byte) in b[..RECORD as usize].iter().enumerate() {
        if i == 22 || i == 23 {
            continue;
        }
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// Are the records in strictly increasing fingerprint order (each
/// recipient once)? The binary search relies on it.
fn in_order(recs: &[Rec]) -> bool {
    recs.windows(2).all(|w| w[0].fpr < w[1].fpr)
}

/// An open table: its file and how many records it holds.
struct Table {
    file: File,
    count: u64,
    path: PathBuf,
}

impl Table {
    fn corrupt(&self) -> StoreError {
        StoreError::Corrupt(self.path.display().to_string())
    }

    /// The record at `i`.
    fn at(&self, i: u64) -> Result<Rec, StoreError> {
        let mut b = [0u8; RECORD as usize];
        self.file.read_exact_at(&mut b, HEADER + i * RECORD)?;
        Rec::decode(&b).ok_or_else(|| self.corrupt())
    }

    /// The index and record of a fingerprint (binary search). A miss is
    /// checked against the whole table (rare: the recipient is asked about
    /// a message that is not theirs), so records out of order are found
    /// corrupt rather than taken for a recipient's absence.
    fn find(&self, k: &[u8; 20]) -> Result<Option<(u64, Rec)>, StoreError> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = self.at(mid)?;
            match r.fpr.cmp(k) {
                std::cmp::Ordering::Equal => return Ok(Some((mid, r))),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        self.all()?;
        Ok(None)
    }

    /// Every record, checked (each record's CRC, and their order).
    fn all(&self) -> Result<Vec<Rec>, StoreError> {
        let mut b = vec![0u8; (self.count * RECORD) as usize];
        self.file.read_exact_at(&mut b, HEADER)?;
        let recs = b.chunks_exact(RECORD as usize).map(|c| Rec::decode(c).ok_or_else(|| self.corrupt())).collect::<Result<Vec<_>, _>>()?;
        if !in_order(&recs) {
            return Err(self.corrupt());
        }
        Ok(recs)
    }
}

impl Files {
    fn table_path(&self, id: &str) -> PathBuf {
        self.p(&format!("rcpt/{id}.tab"))
    }

    fn devices_path(&self, id: &str, f: &Fpr) -> PathBuf {
        self.p(&format!("rcpt/{id}.dev/{f}"))
    }

    /// The message's table, if it has one.
    fn open_table(&self, id: &str, write: bool) -> Result<Option<Table>, StoreError> {
        let path = self.table_path(id);
        let file = match OpenOptions::new().read(true).write(write).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut h = [0u8; HEADER as usize];
        let len = file.metadata()?.len();
        let t = Table { file, count: 0, path };
        if len < HEADER {
            return Err(t.corrupt());
        }
        t.file.read_exact_at(&mut h, 0)?;
        let count = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        if &h[..8] != MAGIC || count > MAX_RECORDS || len != HEADER + count * RECORD {
            return Err(t.corrupt());
        }
        Ok(Some(Table { count, ..t }))
    }

    /// Every record of a message's table, in fingerprint order.
    fn records(&self, id: &str) -> Result<Vec<Rec>, StoreError> {
        match self.open_table(id, false)? {
            Some(t) => t.all(),
            None => Ok(vec![]),
        }
    }

    fn meta_of(&self, id: &str, r: &Rec) -> Result<RecipientMeta, StoreError> {
        let fpr = r.fpr();
        let devices = if r.flags & HAS_DEVICES != 0 {
            match fsutil::read_bounded(&self.devices_path(id, &fpr), MAX_DEVICES_FILE) {
                Ok(b) => String::from_utf8_lossy(&b).lines().filter(|d| protocol::is_valid_device(d)).map(str::to_string).collect(),
                // Lost in a crash before the flush that the ack's answer
                // waited for: the device acks again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => vec![],
                Err(e) => return Err(e.into()),
            }
        } else {
            vec![]
        };
        Ok(RecipientMeta { fpr, state: r.state, at: r.at, devices })
    }

    /// One recipient's state of a message.
    pub(crate) fn read_rcpt(&self, id: &str, r: &Fpr) -> Result<Option<RecipientMeta>, StoreError> {
        let Some(t) = self.open_table(id, false)? else { return Ok(None) };
        match t.find(&key(r))? {
            Some((_, rec)) => Ok(Some(self.meta_of(id, &rec)?)),
            None => Ok(None),
        }
    }

    /// Every recipient's state of a message, in fingerprint order (none
    /// yet: a crash came between its meta file and its table).
    pub(crate) fn recipients_of(&self, id: &str) -> Result<Vec<RecipientMeta>, StoreError> {
        self.records(id)?.iter().map(|r| self.meta_of(id, r)).collect()
    }

    /// How many recipients a message has.
    pub(super) fn rcpt_count(&self, id: &str) -> Result<usize, StoreError> {
        Ok(self.open_table(id, false)?.map_or(0, |t| t.count as usize))
    }

    /// Add recipients to a message (those it has already are left as they
    /// are). Returns what is not yet durable.
    pub(super) fn add_rcpts(&self, id: &str, new: &[RecipientMeta]) -> Result<Vec<Dirty>, StoreError> {
        let old = self.records(id)?;
        let existed = self.table_path(id).exists();
        let mut all = old.clone();
        let mut added = std::collections::HashSet::new();
        let mut dirty = Vec::new();
        for r in new {
            let rec = Rec::of(r);
            if old.binary_search_by(|o| o.fpr.cmp(&rec.fpr)).is_ok() || !added.insert(rec.fpr) {
                continue;
            }
            if !r.devices.is_empty() {
                dirty.push(self.write_devices(id, r)?);
            }
            all.push(rec);
        }
        if all.len() == old.len() && existed {
            return Ok(dirty);
        }
        all.sort_by(|a, b| a.fpr.cmp(&b.fpr));
        let mut bytes = Vec::with_capacity((HEADER + all.len() as u64 * RECORD) as usize);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(all.len() as u64).to_le_bytes());
        bytes.resize(HEADER as usize, 0);
        for r in &all {
            bytes.extend_from_slice(&r.encode());
        }
        let path = self.table_path(id);
        if existed {
            // Durable before it replaces states that may be acks.
            fsutil::write_atomic(&path, &bytes, 0o600)?;
        } else {
            fsutil::write_replace(&path, &bytes)?;
            dirty.push(Dirty::Entry(path));
        }
        Ok(dirty)
    }

    /// Change a recipient's state (and devices) in place, not yet durably.
    /// A recipient the message does not have is added.
    pub(super) fn update_rcpt_soft(&self, id: &str, r: &RecipientMeta) -> Result<Vec<Dirty>, StoreError> {
        let Some(t) = self.open_table(id, true)? else { return self.add_rcpts(id, std::slice::from_ref(r)) };
        let Some((i, old)) = t.find(&key(&r.fpr))? else { return self.add_rcpts(id, std::slice::from_ref(r)) };
        let mut dirty = Vec::new();
        let rec = Rec::of(r);
        if !r.devices.is_empty() {
            dirty.push(self.write_devices(id, r)?);
        }
        if rec != old {
            t.file.write_all_at(&rec.encode(), HEADER + i * RECORD)?;
            dirty.push(Dirty::Data(t.path));
        }
        Ok(dirty)
    }

    /// Change a recipient's state durably.
    pub(super) fn update_rcpt(&self, id: &str, r: &RecipientMeta) -> Result<(), StoreError> {
        let dirty = self.update_rcpt_soft(id, r)?;
        Ok(self.make_durable(&dirty)?)
    }

    fn write_devices(&self, id: &str, r: &RecipientMeta) -> io::Result<Dirty> {
        let p = self.devices_path(id, &r.fpr);
        fs::create_dir_all(p.parent().expect("in a directory"))?;
        fsutil::write_replace(&p, r.devices.join("\n").as_bytes())?;
        Ok(Dirty::Entry(p))
    }

    /// Forget every recipient of a message (its status is dropped).
    pub(super) fn remove_rcpts(&self, id: &str) {
        let _ = fs::remove_file(self.table_path(id));
        let _ = fs::remove_dir_all(self.p(&format!("rcpt/{id}.dev")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fpr(c: char) -> Fpr {
        Fpr::parse(&c.to_string().repeat(40)).unwrap()
    }

    fn meta(c: char, state: DeliveryState) -> RecipientMeta {
        RecipientMeta { fpr: fpr(c), state, at: 7, devices: vec![] }
    }

    const ID: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn records_are_32_bytes_each_and_found_in_any_order_of_adding() {
        let d = tempfile::tempdir().unwrap();
        let s = Files::open(d.path()).unwrap();
        // Added in three uploads, out of order.
        s.add_rcpts(ID, &[meta('C', DeliveryState::Stored), meta('A', DeliveryState::Stored)]).unwrap();
        s.add_rcpts(ID, &[meta('F', DeliveryState::Stored), meta('A', DeliveryState::Retrieved)]).unwrap();
        s.add_rcpts(ID, &[meta('B', DeliveryState::Stored), meta('E', DeliveryState::Stored), meta('B', DeliveryState::Stored)]).unwrap();
        assert_eq!(fs::metadata(s.table_path(ID)).unwrap().len(), HEADER + 5 * RECORD);
        assert_eq!(s.rcpt_count(ID).unwrap(), 5);
        let all: String = s.recipients_of(ID).unwrap().iter().map(|r| &r.fpr.as_str()[..1]).collect();
        assert_eq!(all, "ABCEF");
        for c in ['A', 'B', 'C', 'E', 'F'] {
            let r = s.read_rcpt(ID, &fpr(c)).unwrap().unwrap();
            assert_eq!(r.state, DeliveryState::Stored, "{c}: a second add changes nothing");
        }
        assert!(s.read_rcpt(ID, &fpr('D')).unwrap().is_none());
        assert!(s.read_rcpt(ID, &fpr('0')).unwrap().is_none());
        assert!(s.read_rcpt(ID, &fpr('9')).unwrap().is_none());
    }

    #[test]
    fn a_state_changes_in_place_and_devices_live_beside() {
        let d = tempfile::tempdir().unwrap();
        let s = Files::open(d.path()).unwrap();
        s.add_rcpts(ID, &[meta('A', DeliveryState::Stored), meta('B', DeliveryState::Stored)]).unwrap();
        let ino = |s: &Files| std::os::unix::fs::MetadataExt::ino(&fs::metadata(s.table_path(ID)).unwrap());
        let before = ino(&s);
        let mut b = meta('B', DeliveryState::Retrieved);
        b.at = 99;
        b.devices = vec!["laptop".into(), "phone".into()];
        s.update_rcpt(ID, &b).unwrap();
        assert_eq!(ino(&s), before, "rewritten in place");
        let got = s.read_rcpt(ID, &fpr('B')).unwrap().unwrap();
        assert_eq!((got.state, got.at, got.devices), (DeliveryState::Retrieved, 99, b.devices.clone()));
        assert_eq!(s.read_rcpt(ID, &fpr('A')).unwrap().unwrap().state, DeliveryState::Stored);
        // A recipient it does not have is added.
        s.update_rcpt(ID, &meta('C', DeliveryState::Unsent)).unwrap();
        assert_eq!(s.rcpt_count(ID).unwrap(), 3);
        s.remove_rcpts(ID);
        assert_eq!(s.rcpt_count(ID).unwrap(), 0);
        assert!(!d.path().join(format!("rcpt/{ID}.dev")).exists());
    }

    /// What a damaged table may look like: each is found corrupt, never
    /// read past or taken for states.
    #[test]
    fn damaged_tables_are_corrupt_not_misread() {
        let d = tempfile::tempdir().unwrap();
        let s = Files::open(d.path()).unwrap();
        s.add_rcpts(ID, &[meta('A', DeliveryState::Stored), meta('B', DeliveryState::Stored)]).unwrap();
        let good = fs::read(s.table_path(ID)).unwrap();
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("header cut", good[..20].to_vec()),
            ("a record cut", good[..good.len() - 5].to_vec()),
            ("a record more than counted", [&good[..], &[0u8; 32]].concat()),
        ];
        let mut magic = good.clone();
        magic[0] ^= 1;
        cases.push(("another format", magic));
        let mut huge = good.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        cases.push(("a count that overflows", huge));
        let mut zero = good.clone();
        zero[HEADER as usize..].fill(0);
        cases.push(("records never written", zero));
        let mut flipped = good.clone();
        flipped[HEADER as usize + 3] ^= 0x10;
        cases.push(("a bit flipped in a fingerprint", flipped));
        let mut state = good.clone();
        state[HEADER as usize + RECORD as usize + 20] = 3;
        cases.push(("a state changed behind the check", state));
        let mut swapped = good[..HEADER as usize].to_vec();
        swapped.extend_from_slice(&good[(HEADER + RECORD) as usize..]);
        swapped.extend_from_slice(&good[HEADER as usize..(HEADER + RECORD) as usize]);
        cases.push(("records out of order", swapped));
        for (what, bytes) in cases {
            fs::write(s.table_path(ID), &bytes).unwrap();
            assert!(matches!(s.recipients_of(ID), Err(StoreError::Corrupt(_))), "{what}");
            // One recipient's lookup reads a few records: it finds the
            // damage, or its own intact record — never a wrong state, never
            // "not a recipient" for one who is.
            for c in ['A', 'B'] {
                match s.read_rcpt(ID, &fpr(c)) {
                    Err(StoreError::Corrupt(_)) => {}
                    Ok(Some(r)) if r.fpr == fpr(c) && r.state == DeliveryState::Stored => {}
                    other => panic!("{what}: {c}: {other:?}"),
                }
            }
            assert!(matches!(s.read_rcpt(ID, &fpr('C')), Err(StoreError::Corrupt(_))), "{what}: a miss checks the whole table");
        }
    }
}
