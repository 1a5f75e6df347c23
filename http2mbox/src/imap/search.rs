//! SEARCH (RFC 9051 §6.4.4): one message against a parsed search key.
//! Strings match as case-insensitive substrings, dates by day; what needs
//! the message's bytes reads them once, only when a key asks.

use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;

use super::folder::{Flags, Keywords};
use super::message::{field_value, split_header};

/// One message as SEARCH sees it.
pub struct Candidate<'a> {
    pub seq: u32,
    pub uid: u32,
    pub flags: &'a Flags,
    pub recent: bool,
    pub size: u64,
    /// CONDSTORE's modification sequence.
    pub modseq: u64,
    /// The mailbox's keyword letters.
    pub keywords: &'a Keywords,
    /// Delivery time (INTERNALDATE), Unix seconds.
    pub internal: i64,
    /// The message, read when a key needs it (CRLF endings).
    pub load: &'a mut dyn FnMut() -> Option<Vec<u8>>,
    pub loaded: Option<Option<Vec<u8>>>,
    /// Largest sequence number and UID, for `*`.
    pub max_seq: u32,
    pub max_uid: u32,
    /// The key's sets, made searchable once for every message.
    pub sets: &'a SetCache,
}

/// The sets of one search key as sorted, merged ranges, made on first use
/// (by the set's address in the key, which outlives the search): a set of
/// twenty thousand ranges (a saved result, `$`) costs a binary search per
/// message, not a walk of every range.
#[derive(Default)]
pub struct SetCache(std::cell::RefCell<std::collections::HashMap<usize, Vec<(u32, u32)>>>);

impl SetCache {
    pub fn contains(&self, set: &SequenceSet, n: u32, max: u32) -> bool {
        let key = set as *const SequenceSet as usize;
        let mut map = self.0.borrow_mut();
        let ranges = map.entry(key).or_insert_with(|| ranges(set, max));
        let i = ranges.partition_point(|&(_, hi)| hi < n);
        ranges.get(i).is_some_and(|&(lo, _)| lo <= n)
    }
}

/// A set as sorted, merged, inclusive ranges, `*` being `max`.
pub fn ranges(set: &SequenceSet, max: u32) -> Vec<(u32, u32)> {
    use imap_codec::imap_types::sequence::{SeqOrUid, Sequence};
    let v = |s: &SeqOrUid| match s {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => max,
    };
    let mut r: Vec<(u32, u32)> = set
        .0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(a) => (v(a), v(a)),
            Sequence::Range(a, b) => (v(a).min(v(b)), v(a).max(v(b))),
        })
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

impl Candidate<'_> {
    fn bytes(&mut self) -> Option<&[u8]> {
        if self.loaded.is_none() {
            self.loaded = Some((self.load)());
        }
        self.loaded.as_ref().and_then(|b| b.as_deref())
    }
}

/// Case-insensitive substring, in time linear in the haystack whatever
/// the needle (a hostile SEARCH of a long repetitive needle against a
/// long repetitive message must not cost their product: found by an
/// attack, it stalled the daemon for minutes).
pub fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    if needle.len() > hay.len() {
        return false;
    }
    let (hay, needle) = (hay.to_ascii_lowercase(), needle.to_ascii_lowercase());
    memchr::memmem::find(&hay, &needle).is_some()
}

fn day_of(unix: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp(unix, 0).map(|d| d.date_naive()).unwrap_or_default()
}

/// The day a message says it was sent (its Date field, in its own zone).
fn sent_day(raw: &[u8]) -> Option<chrono::NaiveDate> {
    let (block, _) = split_header(raw);
    let v = field_value(block, "Date")?;
    let d = chrono::DateTime::parse_from_rfc2822(String::from_utf8_lossy(&v).trim()).ok()?;
    Some(d.date_naive())
}

pub fn matches(key: &SearchKey<'_>, c: &mut Candidate<'_>) -> bool {
    use SearchKey as K;
    match key {
        K::And(keys) => keys.as_ref().iter().all(|k| matches(k, c)),
        K::SequenceSet(set) => c.sets.contains(set, c.seq, c.max_seq),
        K::Uid(set) => c.sets.contains(set, c.uid, c.max_uid),
        K::All => true,
        K::Answered => c.flags.has('R'),
        K::Unanswered => !c.flags.has('R'),
        K::Deleted => c.flags.has('T'),
        K::Undeleted => !c.flags.has('T'),
        K::Draft => c.flags.has('D'),
        K::Undraft => !c.flags.has('D'),
        K::Flagged => c.flags.has('F'),
        K::Unflagged => !c.flags.has('F'),
        K::Seen => c.flags.has('S'),
        K::Unseen => !c.flags.has('S'),
        K::Recent => c.recent,
        K::Old => !c.recent,
        K::New => c.recent && !c.flags.has('S'),
        K::Keyword(k) => Flags::letter(k.as_ref()).or_else(|| c.keywords.letter(k.as_ref())).is_some_and(|l| c.flags.has(l)),
        K::Unkeyword(k) => !Flags::letter(k.as_ref()).or_else(|| c.keywords.letter(k.as_ref())).is_some_and(|l| c.flags.has(l)),
        K::Larger(n) => c.size > u64::from(*n),
        K::Smaller(n) => c.size < u64::from(*n),
        K::Before(d) => day_of(c.internal) < *d.as_ref(),
        K::On(d) => day_of(c.internal) == *d.as_ref(),
        K::Since(d) => day_of(c.internal) >= *d.as_ref(),
        K::SentBefore(d) => c.bytes().and_then(sent_day).is_some_and(|s| s < *d.as_ref()),
        K::SentOn(d) => c.bytes().and_then(sent_day).is_some_and(|s| s == *d.as_ref()),
        K::SentSince(d) => c.bytes().and_then(sent_day).is_some_and(|s| s >= *d.as_ref()),
        K::Not(k) => !matches(k, c),
        K::Or(a, b) => matches(a, c) || matches(b, c),
        K::From(s) => header_has(c, "From", s.as_ref()),
        K::To(s) => header_has(c, "To", s.as_ref()),
        K::Cc(s) => header_has(c, "Cc", s.as_ref()),
        K::Bcc(s) => header_has(c, "Bcc", s.as_ref()),
        K::Subject(s) => header_has(c, "Subject", s.as_ref()),
        K::Header(name, s) => {
            let name = String::from_utf8_lossy(name.as_ref()).into_owned();
            header_has(c, &name, s.as_ref())
        }
        K::Body(s) => c.bytes().is_some_and(|b| contains_ci(split_header(b).1, s.as_ref())),
        K::Text(s) => c.bytes().is_some_and(|b| contains_ci(b, s.as_ref())),
        K::ModSequence { modseq, .. } => c.modseq >= *modseq,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Does the key search by modification sequence (then SEARCH answers
/// with the highest of what it found, RFC 7162 §3.1.5)?
pub fn uses_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_modseq),
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        _ => false,
    }
}

fn header_has(c: &mut Candidate<'_>, name: &str, needle: &[u8]) -> bool {
    let Some(b) = c.bytes() else { return false };
    let (block, _) = split_header(b);
    // Every field of that name, decoded as a reader sees it would be
    // better; the raw text is what Dovecot's fast path matches too.
    super::message::fields(block).iter().any(|(n, f)| n.eq_ignore_ascii_case(name.as_bytes()) && f.len() > n.len() && contains_ci(&f[n.len() + 1..], needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_merged_ranges_and_membership_is_a_binary_search() {
        let set = SequenceSet::try_from("7,1:3,5,*,2:4,10:9").unwrap();
        assert_eq!(ranges(&set, 20), [(1, 5), (7, 7), (9, 10), (20, 20)]);
        let cache = SetCache::default();
        let inside: Vec<u32> = (0..=21).filter(|&n| cache.contains(&set, n, 20)).collect();
        assert_eq!(inside, [1, 2, 3, 4, 5, 7, 9, 10, 20]);
        // Twenty thousand ranges (a saved result) against forty thousand messages.
        let big = SequenceSet::try_from((0..20_000).map(|i| (2 * i + 1).to_string()).collect::<Vec<_>>().join(",").as_str()).unwrap();
        let hits = (1..=40_000).filter(|&n| cache.contains(&big, n, 40_000)).count();
        assert_eq!(hits, 20_000);
    }
}
