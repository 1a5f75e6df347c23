//! RFC 9051 syntax that imap-codec 2.0.0-alpha.10 does not parse yet,
//! lifted off a complete command (its bytes, literals inline) before the
//! rest goes to imap-codec: SEARCH's `RETURN (...)` (ESEARCH, RFC 4731),
//! the saved search result `$` (SEARCHRES, RFC 5182), and LIST's
//! selection and return options (LIST-EXTENDED, RFC 5258; LIST-STATUS,
//! RFC 5819). Pure functions over bytes, no I/O; "not one of these" is
//! `None`, never an error.

use std::ops::Range;

/// One token of a command: what these extensions need to tell apart.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Atom(Vec<u8>),
    /// A quoted string, its content.
    Str(Vec<u8>),
    /// A literal: where its content is in the command (not copied: an
    /// APPEND's message may be megabytes).
    Lit(Range<usize>),
    Open,
    Close,
}

/// Most tokens looked at; a longer command is left to imap-codec as it is.
const MAX_TOKENS: usize = 4096;

/// The command's tokens with their byte ranges, up to the line's end.
fn tokens(cmd: &[u8]) -> Result<Vec<(Tok, Range<usize>)>, &'static str> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cmd.len() {
        if out.len() > MAX_TOKENS {
            return Err("too many tokens");
        }
        let start = i;
        match cmd[i] {
            b' ' => i += 1,
            b'\r' | b'\n' => break,
            b'(' => {
                out.push((Tok::Open, i..i + 1));
                i += 1;
            }
            b')' => {
                out.push((Tok::Close, i..i + 1));
                i += 1;
            }
            b'"' => {
                let mut v = Vec::new();
                i += 1;
                loop {
                    match cmd.get(i) {
                        None | Some(b'\r') | Some(b'\n') => return Err("a quoted string without its end"),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            v.push(*cmd.get(i + 1).ok_or("a quoted string without its end")?);
                            i += 2;
                        }
                        Some(&c) => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push((Tok::Str(v), start..i));
            }
            b'{' | b'~' if literal_len(&cmd[i..]).is_some() => {
                let (n, head) = literal_len(&cmd[i..]).expect("checked");
                let body = i + head;
                let end = body.checked_add(n).filter(|&e| e <= cmd.len()).ok_or("a literal longer than the command")?;
                out.push((Tok::Lit(body..end), start..end));
                i = end;
            }
            _ => {
                while i < cmd.len() && !matches!(cmd[i], b' ' | b'(' | b')' | b'\r' | b'\n') {
                    // A section's brackets hold spaces and parentheses
                    // (`BODY[HEADER.FIELDS (A B)]`): one atom to its `]`.
                    if cmd[i] == b'[' {
                        match cmd[i..].iter().position(|&c| c == b']') {
                            Some(k) => i += k,
                            None => return Err("a section without its ]"),
                        }
                    }
                    i += 1;
                }
                out.push((Tok::Atom(cmd[start..i].to_vec()), start..i));
            }
        }
    }
    Ok(out)
}

/// `{N}`, `{N+}`, `~{N}` followed by CRLF (or LF): (N, header length).
fn literal_len(b: &[u8]) -> Option<(usize, usize)> {
    let b2 = b.strip_prefix(b"~").unwrap_or(b);
    let skip = b.len() - b2.len();
    let rest = b2.strip_prefix(b"{")?;
    // Ten digits and a `+` at most: no scan of the rest of the command.
    let close = rest.iter().take(12).position(|&c| c == b'}')?;
    let digits = rest[..close].strip_suffix(b"+").unwrap_or(&rest[..close]);
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let after = &rest[close + 1..];
    let eol = if after.starts_with(b"\r\n") {
        2
    } else if after.starts_with(b"\n") {
        1
    } else {
        return None;
    };
    Some((n, skip + 1 + close + 1 + eol))
}

/// The command's name (after a `UID`), read off its first bytes without
/// tokenizing the rest: most commands are none of these extensions', and
/// an APPEND's literal is not copied to find that out.
fn quick_name(cmd: &[u8]) -> Option<(String, bool)> {
    let head = &cmd[..cmd.len().min(64)];
    let mut words = head.split(|&b| b == b' ' || b == b'\r' || b == b'\n').filter(|w| !w.is_empty()).skip(1);
    let first = String::from_utf8_lossy(words.next()?).to_ascii_uppercase();
    if first == "UID" {
        return Some((String::from_utf8_lossy(words.next()?).to_ascii_uppercase(), true));
    }
    Some((first, false))
}

fn is(t: &Tok, word: &str) -> bool {
    matches!(t, Tok::Atom(a) if a.eq_ignore_ascii_case(word.as_bytes()))
}

/// The command's name and where its arguments start, after a `UID`.
fn name(toks: &[(Tok, Range<usize>)]) -> Option<(String, bool, usize)> {
    let Tok::Atom(first) = &toks.get(1)?.0 else { return None };
    let first = String::from_utf8_lossy(first).to_ascii_uppercase();
    if first == "UID" {
        let Tok::Atom(second) = &toks.get(2)?.0 else { return None };
        return Some((String::from_utf8_lossy(second).to_ascii_uppercase(), true, 3));
    }
    Some((first, false, 2))
}

/// A parenthesized list of atoms at `toks[k]` (no nesting), upper case,
/// at most `max`; and the index after its `)`.
fn atom_list(toks: &[(Tok, Range<usize>)], k: usize, max: usize, what: &str) -> Result<(Vec<String>, usize), String> {
    if toks.get(k).map(|t| &t.0) != Some(&Tok::Open) {
        return Err(format!("{what} wants a parenthesized list"));
    }
    let mut out = Vec::new();
    let mut k = k + 1;
    loop {
        match toks.get(k).map(|t| &t.0) {
            Some(Tok::Close) => return Ok((out, k + 1)),
            Some(Tok::Atom(a)) if out.len() < max => {
                out.push(String::from_utf8_lossy(a).to_ascii_uppercase());
                k += 1;
            }
            Some(Tok::Atom(_)) => return Err(format!("{what}: at most {max} items")),
            _ => return Err(format!("{what} (...) is not closed")),
        }
    }
}

/// ESEARCH's result options (RFC 4731, RFC 5182 SAVE).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
    pub save: bool,
}

impl SearchReturn {
    /// `RETURN ()`: as `RETURN (ALL)`.
    fn normalised(mut self) -> SearchReturn {
        if !(self.min || self.max || self.all || self.count || self.save) {
            self.all = true;
        }
        self
    }

    /// Only SAVE: no ESEARCH response at all (RFC 5182 §2.4).
    pub fn only_save(&self) -> bool {
        self.save && !(self.min || self.max || self.all || self.count)
    }
}

/// A SEARCH with `RETURN (...)`: the command without it, and the options.
/// `Some(Err)` for a RETURN this server does not take (answer BAD).
pub fn search_return(cmd: &[u8]) -> Option<Result<(Vec<u8>, SearchReturn), String>> {
    if quick_name(cmd)?.0 != "SEARCH" {
        return None;
    }
    let toks = tokens(cmd).ok()?;
    let (name, _, at) = name(&toks)?;
    if name != "SEARCH" || !toks.get(at).is_some_and(|t| is(&t.0, "RETURN")) {
        return None;
    }
    let (opts, after) = match atom_list(&toks, at + 1, 16, "RETURN") {
        Ok(x) => x,
        Err(why) => return Some(Err(format!("{why}: RETURN (MIN MAX ALL COUNT SAVE)"))),
    };
    let mut r = SearchReturn::default();
    for o in opts {
        match o.as_str() {
            "MIN" => r.min = true,
            "MAX" => r.max = true,
            "ALL" => r.all = true,
            "COUNT" => r.count = true,
            "SAVE" => r.save = true,
            other => return Some(Err(format!("RETURN option {other:?} is not offered (MIN MAX ALL COUNT SAVE)"))),
        }
    }
    let from = toks[at].1.start;
    let to = toks[after - 1].1.end;
    let mut out = cmd[..from].to_vec();
    let rest = &cmd[to..];
    out.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
    Some(Ok((out, r.normalised())))
}

/// SEARCH keys followed by an argument that is not a set (RFC 9051
/// §6.4.4, RFC 7162 MODSEQ); HEADER takes two.
const TAKES_ARGUMENT: &[&str] = &[
    "BCC", "BEFORE", "BODY", "CC", "FROM", "HEADER", "KEYWORD", "LARGER", "ON", "SENTBEFORE", "SENTON", "SENTSINCE", "SINCE", "SMALLER", "SUBJECT", "TEXT", "TO", "UNKEYWORD", "MODSEQ",
    "CHARSET", "OLDER", "YOUNGER",
];

/// Where a `$` stands for a set of messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dollar {
    /// Bytes to replace (a search key `UID $` as a whole).
    pub range: Range<usize>,
    /// UIDs rather than sequence numbers.
    pub uid: bool,
    /// In a SEARCH: replaced by a search key, not a bare set.
    pub in_search: bool,
}

/// Each `$` in a command that takes a sequence set (RFC 5182 §2.1).
pub fn dollars(cmd: &[u8]) -> Vec<Dollar> {
    if memchr::memchr(b'$', cmd).is_none() || !quick_name(cmd).is_some_and(|(n, _)| ["FETCH", "STORE", "COPY", "MOVE", "EXPUNGE", "SEARCH"].contains(&n.as_str())) {
        return Vec::new();
    }
    let Ok(toks) = tokens(cmd) else { return Vec::new() };
    let Some((name, uid, at)) = name(&toks) else { return Vec::new() };
    let dollar = |t: &Tok| matches!(t, Tok::Atom(a) if a == b"$");
    match name.as_str() {
        "FETCH" | "STORE" | "COPY" | "MOVE" | "EXPUNGE" if uid || name != "EXPUNGE" => {
            toks.get(at).filter(|t| dollar(&t.0)).map(|t| vec![Dollar { range: t.1.clone(), uid, in_search: false }]).unwrap_or_default()
        }
        "SEARCH" => {
            let mut out = Vec::new();
            for k in at..toks.len() {
                if !dollar(&toks[k].0) {
                    continue;
                }
                let prev = toks.get(k.wrapping_sub(1)).map(|t| &t.0);
                let prev2 = toks.get(k.wrapping_sub(2)).map(|t| &t.0);
                // An argument of a key (a keyword, a string, a field name,
                // a date or number) is a word, not a set: `SUBJECT $`.
                if prev.is_some_and(|p| TAKES_ARGUMENT.iter().any(|w| is(p, w))) || prev2.is_some_and(|p| is(p, "HEADER")) {
                    continue;
                }
                if k > at && prev.is_some_and(|p| is(p, "UID")) {
                    out.push(Dollar { range: toks[k - 1].1.start..toks[k].1.end, uid: true, in_search: true });
                } else {
                    out.push(Dollar { range: toks[k].1.clone(), uid: false, in_search: true });
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// LIST's selection options (RFC 5258 §3.1, RFC 6154 §5.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListSelect {
    pub subscribed: bool,
    pub remote: bool,
    pub recursive_match: bool,
    pub special_use: bool,
}

/// LIST's return options (RFC 5258 §3.2, RFC 5819, RFC 6154).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListReturn {
    pub subscribed: bool,
    pub children: bool,
    pub special_use: bool,
    /// STATUS items, upper case, as the client named them.
    pub status: Option<Vec<String>>,
}

/// An extended LIST.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListExtended {
    pub select: ListSelect,
    pub reference: String,
    pub patterns: Vec<String>,
    pub ret: ListReturn,
}

/// Most patterns one LIST may name.
const MAX_PATTERNS: usize = 64;

/// A LIST with selection options, several patterns or return options;
/// `None` for a plain LIST (imap-codec parses those), `Some(Err)` for one
/// to answer BAD.
pub fn list_extended(cmd: &[u8]) -> Option<Result<ListExtended, String>> {
    if quick_name(cmd)? != ("LIST".to_string(), false) {
        return None;
    }
    let toks = tokens(cmd).ok()?;
    let (name, uid, mut k) = name(&toks)?;
    if name != "LIST" || uid {
        return None;
    }
    let mut l = ListExtended::default();
    let mut extended = false;
    let text = |t: &Tok| match t {
        Tok::Atom(a) | Tok::Str(a) => Some(String::from_utf8_lossy(a).into_owned()),
        Tok::Lit(r) => Some(String::from_utf8_lossy(&cmd[r.clone()]).into_owned()),
        _ => None,
    };
    if toks.get(k).map(|t| &t.0) == Some(&Tok::Open) {
        extended = true;
        let (opts, after) = match atom_list(&toks, k, 16, "LIST selection options") {
            Ok(x) => x,
            Err(why) => return Some(Err(why)),
        };
        for o in opts {
            match o.as_str() {
                "SUBSCRIBED" => l.select.subscribed = true,
                "REMOTE" => l.select.remote = true,
                "RECURSIVEMATCH" => l.select.recursive_match = true,
                "SPECIAL-USE" => l.select.special_use = true,
                other => return Some(Err(format!("LIST selection option {other:?} is not offered (SUBSCRIBED REMOTE RECURSIVEMATCH SPECIAL-USE)"))),
            }
        }
        k = after;
        // RFC 5258 §3.1: RECURSIVEMATCH only with an option it refines.
        if l.select.recursive_match && !(l.select.subscribed || l.select.special_use) {
            return Some(Err("RECURSIVEMATCH needs SUBSCRIBED or SPECIAL-USE beside it".into()));
        }
    }
    let Some(reference) = toks.get(k).and_then(|t| text(&t.0)) else {
        return extended.then(|| Err("LIST wants a reference name and a pattern".into()));
    };
    l.reference = reference;
    k += 1;
    match toks.get(k).map(|t| &t.0) {
        Some(Tok::Open) => {
            extended = true;
            k += 1;
            loop {
                match toks.get(k).map(|t| &t.0) {
                    Some(Tok::Close) => break,
                    Some(t) if text(t).is_some() => {
                        if l.patterns.len() >= MAX_PATTERNS {
                            return Some(Err(format!("at most {MAX_PATTERNS} patterns in one LIST")));
                        }
                        l.patterns.push(text(t).expect("checked"));
                        k += 1;
                    }
                    _ => return Some(Err("LIST (...) patterns are not closed".into())),
                }
            }
            if l.patterns.is_empty() {
                return Some(Err("LIST wants at least one pattern".into()));
            }
            k += 1;
        }
        Some(t) if text(t).is_some() => {
            l.patterns.push(text(t).expect("checked"));
            k += 1;
        }
        _ => return extended.then(|| Err("LIST wants a reference name and a pattern".into())),
    }
    if let Some(t) = toks.get(k) {
        if !is(&t.0, "RETURN") {
            return extended.then(|| Err("LIST takes nothing after its patterns but RETURN (...)".into()));
        }
        extended = true;
        k += 1;
        if toks.get(k).map(|t| &t.0) != Some(&Tok::Open) {
            return Some(Err("RETURN wants a list: RETURN (CHILDREN SUBSCRIBED SPECIAL-USE STATUS (...))".into()));
        }
        k += 1;
        loop {
            match toks.get(k).map(|t| &t.0) {
                Some(Tok::Close) => break,
                Some(Tok::Atom(a)) => {
                    match String::from_utf8_lossy(a).to_ascii_uppercase().as_str() {
                        "SUBSCRIBED" => l.ret.subscribed = true,
                        "CHILDREN" => l.ret.children = true,
                        "SPECIAL-USE" => l.ret.special_use = true,
                        "STATUS" => {
                            let (items, after) = match atom_list(&toks, k + 1, 16, "STATUS") {
                                Ok(x) => x,
                                Err(why) => return Some(Err(why)),
                            };
                            // The loop's `k += 1` steps past the `)`.
                            k = after - 1;
                            if items.is_empty() {
                                return Some(Err("STATUS wants at least one item (RFC 5819)".into()));
                            }
                            l.ret.status = Some(items);
                        }
                        other => return Some(Err(format!("LIST return option {other:?} is not offered (SUBSCRIBED CHILDREN SPECIAL-USE STATUS)"))),
                    }
                    k += 1;
                }
                _ => return Some(Err("RETURN (...) is not closed".into())),
            }
        }
        if toks.len() > k + 1 {
            return Some(Err("LIST takes nothing after RETURN (...)".into()));
        }
    }
    extended.then_some(Ok(l))
}

/// Quoted strings holding UTF-8 (IMAP4rev2 names, RFC 9051 §5.1) as
/// literals, which imap-codec takes (its quoted strings are ASCII);
/// `None` when there is none.
pub fn quoted_utf8_as_literals(cmd: &[u8]) -> Option<Vec<u8>> {
    if cmd.is_ascii() {
        return None;
    }
    let toks = tokens(cmd).ok()?;
    // The quoted strings to turn, found first: the command is copied only
    // when there is one (and then once).
    let turn: Vec<(&Vec<u8>, &Range<usize>)> = toks
        .iter()
        .filter_map(|(t, r)| match t {
            Tok::Str(v) if !v.is_ascii() && std::str::from_utf8(v).is_ok() => Some((v, r)),
            _ => None,
        })
        .collect();
    if turn.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(cmd.len() + 16 * turn.len());
    let mut at = 0;
    for (v, r) in turn {
        out.extend_from_slice(&cmd[at..r.start]);
        out.extend_from_slice(format!("{{{}}}\r\n", v.len()).as_bytes());
        out.extend_from_slice(v);
        at = r.end;
    }
    out.extend_from_slice(&cmd[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_return_is_lifted_off_and_the_rest_left_as_it_was() {
        let (rest, r) = search_return(b"a SEARCH RETURN (MIN COUNT) UNSEEN\r\n").unwrap().unwrap();
        assert_eq!(rest, b"a SEARCH UNSEEN\r\n");
        assert_eq!(r, SearchReturn { min: true, count: true, ..Default::default() });
        let (rest, r) = search_return(b"t uid search return () charset utf-8 subject {3}\r\n(x)\r\n").unwrap().unwrap();
        assert_eq!(rest, b"t uid search charset utf-8 subject {3}\r\n(x)\r\n");
        assert!(r.all && !r.min);
        let (_, r) = search_return(b"a SEARCH RETURN (SAVE) ALL\r\n").unwrap().unwrap();
        assert!(r.only_save());
        // Not this extension: left alone.
        for plain in [&b"a SEARCH ALL\r\n"[..], b"a FETCH 1 (RETURN)\r\n", b"a SEARCH SUBJECT RETURN\r\n", b"a SEARCH \"RETURN (MIN)\"\r\n"] {
            assert_eq!(search_return(plain), None, "{}", String::from_utf8_lossy(plain));
        }
        for bad in [&b"a SEARCH RETURN MIN ALL\r\n"[..], b"a SEARCH RETURN (PARTIAL 1:5) ALL\r\n", b"a SEARCH RETURN (MIN ALL\r\n"] {
            assert!(matches!(search_return(bad), Some(Err(_))), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn dollar_is_found_where_a_set_goes_and_nowhere_else() {
        let r = |c: &[u8]| dollars(c).into_iter().map(|d| (String::from_utf8_lossy(&c[d.range]).into_owned(), d.uid, d.in_search)).collect::<Vec<_>>();
        assert_eq!(r(b"a FETCH $ FLAGS\r\n"), [("$".into(), false, false)]);
        assert_eq!(r(b"a UID FETCH $ (FLAGS)\r\n"), [("$".into(), true, false)]);
        assert_eq!(r(b"a UID EXPUNGE $\r\n"), [("$".into(), true, false)]);
        assert_eq!(r(b"a UID MOVE $ Junk\r\n"), [("$".into(), true, false)]);
        assert_eq!(r(b"a SEARCH $ UNSEEN OR UID $ SEEN\r\n"), [("$".into(), false, true), ("UID $".into(), true, true)]);
        for none in [
            &b"a EXPUNGE $\r\n"[..],
            b"a STORE 1 +FLAGS ($)\r\n",
            b"a SEARCH KEYWORD $\r\n",
            b"a SEARCH SUBJECT $\r\n",
            b"a SEARCH HEADER Subject $\r\n",
            b"a SEARCH HEADER $ x\r\n",
            b"a SEARCH OR BODY $ TEXT $\r\n",
            b"a SEARCH SUBJECT \"$\"\r\n",
            b"a SEARCH SUBJECT {1}\r\n$\r\n",
            b"a FETCH 1:$ FLAGS\r\n",
            b"a APPEND $ {1}\r\nx\r\n",
            b"a SELECT $\r\n",
        ] {
            assert!(dollars(none).is_empty(), "{}", String::from_utf8_lossy(none));
        }
    }

    #[test]
    fn list_extended_takes_options_patterns_and_status() {
        let l = list_extended(b"a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (INBOX \"Sent*\" {4}\r\nJunk) RETURN (CHILDREN STATUS (MESSAGES unseen))\r\n").unwrap().unwrap();
        assert!(l.select.subscribed && l.select.recursive_match);
        assert_eq!(l.patterns, ["INBOX", "Sent*", "Junk"]);
        assert!(l.ret.children);
        assert_eq!(l.ret.status, Some(vec!["MESSAGES".into(), "UNSEEN".into()]));
        let l = list_extended(b"a list \"\" % return (special-use)\r\n").unwrap().unwrap();
        assert_eq!((l.reference.as_str(), l.patterns.as_slice(), l.ret.special_use), ("", &["%".to_string()][..], true));
        assert_eq!(list_extended(b"a LIST \"\" *\r\n"), None, "plain: imap-codec's");
        assert_eq!(list_extended(b"a LSUB \"\" (*)\r\n"), None);
        for bad in [
            &b"a LIST (RECURSIVEMATCH) \"\" *\r\n"[..],
            b"a LIST (FOO) \"\" *\r\n",
            b"a LIST \"\" * RETURN (BAR)\r\n",
            b"a LIST \"\" () \r\n",
            b"a LIST \"\" * RETURN (STATUS MESSAGES)\r\n",
            b"a LIST \"\" * RETURN (STATUS ())\r\n",
            b"a LIST (SUBSCRIBED \"\" *\r\n",
            b"a LIST \"\" * RETURN (CHILDREN) X\r\n",
        ] {
            assert!(matches!(list_extended(bad), Some(Err(_))), "{}", String::from_utf8_lossy(bad));
        }
        let many = format!("a LIST \"\" ({})\r\n", vec!["x"; 65].join(" "));
        assert!(matches!(list_extended(many.as_bytes()), Some(Err(_))));
    }

    #[test]
    fn utf8_in_quoted_strings_becomes_literals() {
        assert_eq!(quoted_utf8_as_literals("a SELECT \"Entwürfe\"\r\n".as_bytes()).unwrap(), "a SELECT {9}\r\nEntwürfe\r\n".as_bytes());
        assert_eq!(quoted_utf8_as_literals(b"a SELECT \"Drafts\"\r\n"), None);
        // Already a literal, or not UTF-8: left alone.
        assert_eq!(quoted_utf8_as_literals("a SELECT {9}\r\nEntwürfe\r\n".as_bytes()), None);
        assert_eq!(quoted_utf8_as_literals(b"a SELECT \"\xff\xfe\"\r\n"), None);
    }

    #[test]
    fn hostile_bytes_never_panic() {
        for c in [
            &b""[..],
            b"a",
            b"a SEARCH RETURN (",
            b"a LIST (",
            b"a LIST \"\" (\"x",
            b"a FETCH {99999999999}\r\n",
            b"a SEARCH {5}\r\nab",
            b"a SEARCH ~{2}\r\n$$ $\r\n",
            b"a FETCH BODY[HEADER.FIELDS (A $)] $\r\n",
            b"\"\\",
            b"a SEARCH [[[[",
        ] {
            let _ = (search_return(c), dollars(c), list_extended(c));
        }
    }
}
