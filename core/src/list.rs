//! Mailing lists and forwarding (issue #18): what a list robot, a
//! forwarder and their recipients share. Pure functions over bytes, no I/O.
//!
//! A list is an identity run by a robot. Its certificate names three
//! addresses — `LIST@D` (posts), `LIST-subscribe@D`, `LIST-unsubscribe@D` —
//! and its keyring is the member list. A member's post reaches the robot
//! like any contact's mail; the robot publishes it **once**, signed by the
//! list's key, as
//!
//! ```text
//! List-Id: <LIST.D>                       (RFC 2919)
//! List-Post: <mailto:LIST@D>              (RFC 2369)
//! List-Subscribe: <mailto:LIST-subscribe@D>
//! List-Unsubscribe: <mailto:LIST-unsubscribe@D>
//! Precedence: list
//! Stubmail-Author-Signature: fpr=<FPR>; sig=<base64>
//! <the author's message, byte for byte as the author signed it>
//! ```
//!
//! The last list field carries the author's own OpenPGP signature, a
//! detached signature over exactly the bytes that follow the field (with
//! CRLF line endings, as submitted): anyone holding the author's
//! certificate can check that the list passed the message on unchanged.

use crate::protocol::Fpr;

/// The field that ends the list's own fields and carries the author's
/// signature over everything after it.
pub const AUTHOR_FIELD: &str = "Stubmail-Author-Signature";

/// The first line of a file in a robot's intake (`list/intake/new/`): who
/// signed the message that follows and their signature over it.
pub const INTAKE_FIELD: &str = "Stubmail-Intake";

/// Fields a member's post may not carry: the list writes them, and a post
/// carrying them would be a list post passed on again (a loop) or one
/// pretending to be.
pub const LIST_FIELDS: &[&str] = &[
    "List-Id",
    "List-Post",
    "List-Subscribe",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Archive",
    "List-Help",
    "List-Owner",
    AUTHOR_FIELD,
];

/// A list's addresses, derived from its posting address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// `LIST@D`, lower case.
    pub post: String,
    pub subscribe: String,
    pub unsubscribe: String,
    /// A public list's archive feed (`…/v1/archive/<FPR>/feed`), named in
    /// `List-Archive:`; `None` for a private list.
    pub archive: Option<String>,
}

/// What a message sent to a list asks for, by the list address it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Post,
    Subscribe,
    Unsubscribe,
}

impl Addresses {
    /// From `LIST@DOMAIN`; `None` unless it is a plain address.
    pub fn of(post: &str) -> Option<Addresses> {
        let post = post.trim().to_ascii_lowercase();
        if !crate::mail::is_plain_address(&post) {
            return None;
        }
        let (local, domain) = post.split_once('@')?;
        Some(Addresses {
            subscribe: format!("{local}-subscribe@{domain}"),
            unsubscribe: format!("{local}-unsubscribe@{domain}"),
            post,
            archive: None,
        })
    }

    /// Every address, posting address first (the identity's User IDs).
    pub fn all(&self) -> [&str; 3] {
        [&self.post, &self.subscribe, &self.unsubscribe]
    }

    /// RFC 2919 list identifier: `LIST.DOMAIN` (the `@` becomes a dot).
    pub fn list_id(&self) -> String {
        self.post.replacen('@', ".", 1)
    }

    /// Which list address among `named` (To and Cc, lower case) this
    /// message is for. A message naming two of them is ambiguous: `None`,
    /// as is one naming none (a Bcc cannot be told apart from a post that
    /// merely copies the list).
    pub fn request(&self, named: &[String]) -> Option<Request> {
        let mut found = None;
        for a in named {
            let r = if *a == self.post {
                Request::Post
            } else if *a == self.subscribe {
                Request::Subscribe
            } else if *a == self.unsubscribe {
                Request::Unsubscribe
            } else {
                continue;
            };
            match found {
                Some(f) if f != r => return None,
                _ => found = Some(r),
            }
        }
        found
    }

    /// The fields the list writes above a post (CRLF), up to and including
    /// the author's signature field. `description` is List-Id's phrase.
    pub fn post_fields(&self, description: Option<&str>, author: &Fpr, sig: &[u8]) -> Vec<u8> {
        use base64::Engine;
        let phrase = description
            .map(|d| d.chars().filter(|c| !c.is_control() && !"<>\"\\".contains(*c)).collect::<String>())
            .filter(|d| !d.trim().is_empty())
            .map(|d| format!("\"{}\" ", d.trim()))
            .unwrap_or_default();
        format!(
            "List-Id: {phrase}<{}>\r\n\
             List-Post: <mailto:{}>\r\n\
             List-Subscribe: <mailto:{}>\r\n\
             List-Unsubscribe: <mailto:{}>\r\n\
             {}\
             Precedence: list\r\n\
             {AUTHOR_FIELD}: fpr={author}; sig={}\r\n",
            self.list_id(),
            self.post,
            self.subscribe,
            self.unsubscribe,
            // A URL of ours (the outbox's, checked when the list was
            // made): no field can be smuggled through it.
            self.archive.as_ref().filter(|a| !a.chars().any(|c| c.is_control() || c == '>')).map(|a| format!("List-Archive: <{a}>\r\n")).unwrap_or_default(),
            base64::engine::general_purpose::STANDARD.encode(sig),
        )
        .into_bytes()
    }
}

/// The fields a forwarder writes above a message it passes on (RFC 5322
/// §3.6.6, CRLF), ending with the author's signature field, like a list's.
pub fn resent_fields(me: &str, to: &str, date: &str, message_id: &str, author: &Fpr, sig: &[u8]) -> Vec<u8> {
    use base64::Engine;
    format!(
        "Resent-From: {me}\r\nResent-To: {to}\r\nResent-Date: {date}\r\nResent-Message-ID: {message_id}\r\n\
         {AUTHOR_FIELD}: fpr={author}; sig={}\r\n",
        base64::engine::general_purpose::STANDARD.encode(sig),
    )
    .into_bytes()
}

/// How many times a message was forwarded: its `Resent-From` fields.
pub fn hops(header: &[u8]) -> usize {
    header
        .split(|&b| b == b'\n')
        .filter(|l| l.len() > 12 && l[..12].eq_ignore_ascii_case(b"resent-from:"))
        .count()
}

/// The intake line written before a message the robot received.
pub fn intake_line(author: &Fpr, sig: &[u8]) -> Vec<u8> {
    use base64::Engine;
    format!("{INTAKE_FIELD}: author={author}; sig={}\r\n", base64::engine::general_purpose::STANDARD.encode(sig)).into_bytes()
}

/// Parse an intake file: (author, signature, offset of the message).
pub fn parse_intake(file: &[u8]) -> Option<(Fpr, Vec<u8>, usize)> {
    let end = file.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&file[..end]).ok()?.trim_end_matches('\r');
    let rest = line.strip_prefix(INTAKE_FIELD)?.strip_prefix(": ")?;
    let (author, sig) = params(rest)?;
    Some((author, sig, end + 1))
}

/// `fpr=<FPR>; sig=<base64>` (the author field's and the intake line's value).
fn params(v: &str) -> Option<(Fpr, Vec<u8>)> {
    use base64::Engine;
    let mut fpr = None;
    let mut sig = None;
    for p in v.split(';') {
        let (k, val) = p.trim().split_once('=')?;
        match k {
            "fpr" | "author" => fpr = Some(Fpr::parse(val.trim()).ok()?),
            "sig" => sig = Some(base64::engine::general_purpose::STANDARD.decode(val.trim()).ok()?),
            _ => {}
        }
    }
    Some((fpr?, sig?))
}

/// In a list post (CRLF or LF line endings), the author's fingerprint and
/// signature, and where the author's message starts: right after the
/// author field (continuation lines included).
pub fn author_of(post: &[u8]) -> Option<(Fpr, Vec<u8>, usize)> {
    let header_end = crate::mail::header_len(post).unwrap_or(post.len());
    let mut at = 0;
    let lines: Vec<&[u8]> = post[..header_end].split_inclusive(|&b| b == b'\n').collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        at += line.len();
        i += 1;
        let name = AUTHOR_FIELD.as_bytes();
        if line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name) && line[name.len()] == b':' {
            let mut value = String::from_utf8_lossy(&line[name.len() + 1..]).into_owned();
            while i < lines.len() && matches!(lines[i].first(), Some(b' ' | b'\t')) {
                value.push_str(&String::from_utf8_lossy(lines[i]));
                at += lines[i].len();
                i += 1;
            }
            let (fpr, sig) = params(value.trim())?;
            return Some((fpr, sig, at));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fpr() -> Fpr {
        Fpr::parse(&"AB".repeat(20)).unwrap()
    }

    #[test]
    fn addresses_and_requests() {
        let a = Addresses::of("Team@Example.org").unwrap();
        assert_eq!(a.all(), ["team@example.org", "team-subscribe@example.org", "team-unsubscribe@example.org"]);
        assert_eq!(a.list_id(), "team.example.org");
        let req = |v: &[&str]| a.request(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(req(&["team@example.org"]), Some(Request::Post));
        assert_eq!(req(&["bob@x.org", "team@example.org", "team@example.org"]), Some(Request::Post));
        assert_eq!(req(&["team-unsubscribe@example.org"]), Some(Request::Unsubscribe));
        assert_eq!(req(&["team-subscribe@example.org"]), Some(Request::Subscribe));
        // Two requests at once, or none: refused.
        assert_eq!(req(&["team@example.org", "team-unsubscribe@example.org"]), None);
        assert_eq!(req(&["bob@x.org"]), None);
        assert_eq!(req(&[]), None);
        for bad in ["", "team", "a b@x.org", "<t@x.org>", "t@x.org\r\nBcc: y@z"] {
            assert!(Addresses::of(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_author_field_ends_the_list_fields_and_the_message_follows_byte_for_byte() {
        let a = Addresses::of("team@example.org").unwrap();
        let original = b"From: alice@example.org\r\nSubject: hi\r\n\r\nbody\r\n";
        let mut post = a.post_fields(Some("The \"Team\"\r\nBcc: x"), &fpr(), b"\x88sig");
        post.extend_from_slice(original);
        let s = String::from_utf8_lossy(&post);
        assert!(s.starts_with("List-Id: \"The TeamBcc: x\" <team.example.org>\r\n"), "{s}");
        let (f, sig, at) = author_of(&post).unwrap();
        assert_eq!((f, sig.as_slice(), &post[at..]), (fpr(), &b"\x88sig"[..], &original[..]));
        // The same in a mailbox's LF copy, and with the field folded.
        let lf = String::from_utf8(post.clone()).unwrap().replace("\r\n", "\n");
        let (_, _, at) = author_of(lf.as_bytes()).unwrap();
        assert_eq!(&lf.as_bytes()[at..], b"From: alice@example.org\nSubject: hi\n\nbody\n");
        let folded = lf.replacen("; sig=", ";\n sig=", 1);
        let (f, sig, at) = author_of(folded.as_bytes()).unwrap();
        assert_eq!((f, sig.as_slice(), &folded.as_bytes()[at..]), (fpr(), &b"\x88sig"[..], &b"From: alice@example.org\nSubject: hi\n\nbody\n"[..]));
        // A public list names its archive; nothing rides in on its URL.
        let mut public = a.clone();
        public.archive = Some("https://o.example/v1/archive/AB/feed".into());
        let fields = String::from_utf8(public.post_fields(None, &fpr(), b"s")).unwrap();
        assert!(fields.contains("\r\nList-Archive: <https://o.example/v1/archive/AB/feed>\r\nPrecedence: list\r\n"), "{fields}");
        public.archive = Some("https://o.example/>\r\nBcc: x".into());
        assert!(!String::from_utf8(public.post_fields(None, &fpr(), b"s")).unwrap().contains("Bcc"));
        // No field in the header, or only in the body: none.
        assert!(author_of(b"Subject: x\r\n\r\nStubmail-Author-Signature: fpr=x; sig=AA==\r\n").is_none());
        assert!(author_of(b"Stubmail-Author-Signature: fpr=nothex; sig=AA==\r\n\r\n").is_none());
    }

    #[test]
    fn a_forward_carries_the_authors_signature_and_counts_its_hops() {
        let original = b"Resent-From: x@y.org\r\nFrom: alice@example.org\r\n\r\nbody\r\n";
        let mut fwd = resent_fields("bob@example.net", "carol@example.com", "D", "<f1@example.net>", &fpr(), b"sig");
        fwd.extend_from_slice(original);
        let (f, sig, at) = author_of(&fwd).unwrap();
        assert_eq!((f, sig.as_slice(), &fwd[at..]), (fpr(), &b"sig"[..], &original[..]));
        assert_eq!((hops(&fwd), hops(original), hops(b"Resent-Fromage: 1\r\nresent-from: a\r\n")), (2, 1, 1));
    }

    #[test]
    fn intake_lines_round_trip_and_garbage_is_refused() {
        let mut file = intake_line(&fpr(), b"\x01\x02");
        file.extend_from_slice(b"From: a@b.c\r\n\r\nx");
        let (f, sig, at) = parse_intake(&file).unwrap();
        assert_eq!((f, sig, &file[at..]), (fpr(), vec![1, 2], &b"From: a@b.c\r\n\r\nx"[..]));
        for bad in [&b""[..], b"From: a@b.c\r\n", b"Stubmail-Intake: author=AB; sig=AA==\r\n", b"Stubmail-Intake: sig=AA==\r\n"] {
            assert!(parse_intake(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
