//! What FETCH says of one message: ENVELOPE, BODYSTRUCTURE and BODY[...]
//! sections (RFC 9051 §6.4.5, §7.5.2), from the message's bytes with CRLF
//! line endings. The MIME tree comes from mail-parser; section bytes are
//! cut from the raw message by its offsets, never re-encoded.

use mail_parser::{Address, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType};

use super::wire::{nstring, string};

/// A parsed message and its bytes.
pub struct Parsed<'a> {
    pub raw: &'a [u8],
    pub msg: Message<'a>,
}

/// How deep MIME nesting is followed (mail-parser's own limit is similar);
/// deeper parts are shown as opaque.
const MAX_DEPTH: usize = 20;

impl<'a> Parsed<'a> {
    pub fn new(raw: &'a [u8]) -> Parsed<'a> {
        let msg = MessageParser::default().parse(raw).unwrap_or_else(|| Message { raw_message: raw.into(), ..Default::default() });
        Parsed { raw, msg }
    }
}

/// A message's own bytes. A message/rfc822 part that was not encoded
/// shares the outer message's buffer (its offsets are the outer ones);
/// one that was (base64) has a buffer of its own. Either way its root
/// part spans it.
pub fn own_bytes<'m>(m: &'m Message<'_>) -> &'m [u8] {
    let raw = m.raw_message.as_ref();
    match m.parts.first() {
        Some(root) => raw.get(root.offset_header as usize..root.offset_end as usize).unwrap_or(raw),
        None => raw,
    }
}

/// The header block of `raw` (through the empty line), and where the body
/// starts.
pub fn split_header(raw: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    while i < raw.len() {
        let end = raw[i..].iter().position(|&b| b == b'\n').map_or(raw.len(), |p| i + p + 1);
        let line = &raw[i..end];
        if line == b"\r\n" || line == b"\n" {
            return (&raw[..end], &raw[end..]);
        }
        i = end;
    }
    (raw, &raw[raw.len()..])
}

/// The header fields of a block: (name, the whole field with its CRLF).
pub fn fields(block: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out: Vec<(&[u8], &[u8])> = Vec::new();
    let mut i = 0;
    let mut start: Option<usize> = None;
    while i < block.len() {
        let end = block[i..].iter().position(|&b| b == b'\n').map_or(block.len(), |p| i + p + 1);
        let line = &block[i..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let continuation = line[0] == b' ' || line[0] == b'\t';
        if !continuation {
            if let Some(s) = start {
                push_field(&mut out, &block[s..i]);
            }
            start = Some(i);
        }
        i = end;
    }
    if let Some(s) = start {
        push_field(&mut out, &block[s..i.min(block.len())]);
    }
    out
}

fn push_field<'b>(out: &mut Vec<(&'b [u8], &'b [u8])>, f: &'b [u8]) {
    if let Some(colon) = f.iter().position(|&b| b == b':') {
        out.push((f[..colon].trim_ascii(), f));
    }
}

/// The unfolded value of the first field called `name`.
pub fn field_value(block: &[u8], name: &str) -> Option<Vec<u8>> {
    let (_, f) = fields(block).into_iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))?;
    let colon = f.iter().position(|&b| b == b':')?;
    let v: Vec<u8> = f[colon + 1..].iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
    Some(v.trim_ascii().to_vec())
}

/// HEADER.FIELDS / HEADER.FIELDS.NOT: the chosen fields, then CRLF.
pub fn header_fields(block: &[u8], names: &[Vec<u8>], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, f) in fields(block) {
        let listed = names.iter().any(|x| x.eq_ignore_ascii_case(n));
        if listed != not {
            out.extend_from_slice(f);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A part as a section number reaches it.
pub struct PartRef<'p, 'a> {
    pub msg: &'p Message<'a>,
    pub idx: usize,
}

impl<'p, 'a> PartRef<'p, 'a> {
    pub fn part(&self) -> &'p MessagePart<'a> {
        &self.msg.parts[self.idx]
    }
    fn raw(&self) -> &'p [u8] {
        self.msg.raw_message.as_ref()
    }
    /// The part's body as it is in the message (still encoded).
    pub fn body(&self) -> &'p [u8] {
        let p = self.part();
        self.raw().get(p.offset_body as usize..self.end()).unwrap_or_default()
    }

    /// Where the part's body ends: a part of a multipart ends at the CRLF
    /// before its parent's next boundary (RFC 2046 §5.1.1: that CRLF
    /// belongs to the boundary), whatever the parser's own offsets say.
    fn end(&self) -> usize {
        let (p, raw) = (self.part(), self.raw());
        let idx = self.idx as u32;
        let parent = self.msg.parts.iter().find(|q| matches!(&q.body, PartType::Multipart(ch) if ch.contains(&idx)));
        if let Some(boundary) = parent.and_then(|q| q.content_type()).and_then(|c| c.attribute("boundary")) {
            let from = (p.offset_body as usize).saturating_sub(2).max(p.offset_header as usize).min(raw.len());
            let pat = format!("\n--{boundary}");
            if let Some(i) = raw[from..].windows(pat.len()).position(|w| w == pat.as_bytes()) {
                let mut end = from + i;
                if end > 0 && raw[end - 1] == b'\r' {
                    end -= 1;
                }
                return end.max(p.offset_body as usize);
            }
        }
        p.offset_end as usize
    }

    /// The bytes of the message inside a message/rfc822 part.
    pub fn nested_bytes(&self) -> Option<&'p [u8]> {
        let m = self.nested()?;
        // Not encoded: it is this part's body, in the outer buffer. Encoded:
        // mail-parser decoded it into a buffer of its own.
        if std::ptr::eq(m.raw_message.as_ptr(), self.raw().as_ptr()) { Some(self.body()) } else { Some(own_bytes(m)) }
    }
    /// The part's own MIME header.
    pub fn mime(&self) -> &'p [u8] {
        let p = self.part();
        self.raw().get(p.offset_header as usize..p.offset_body as usize).unwrap_or_default()
    }
    /// The message inside a message/rfc822 part.
    pub fn nested(&self) -> Option<&'p Message<'a>> {
        match &self.part().body {
            PartType::Message(m) => Some(m),
            _ => None,
        }
    }
}

/// Why a part's content cannot be given decoded (RFC 3516 BINARY).
#[derive(Debug, PartialEq, Eq)]
pub enum Undecodable {
    /// A Content-Transfer-Encoding this server does not know.
    UnknownCte(String),
    /// Declared base64 or quoted-printable, and it is not.
    Corrupt(&'static str),
}

/// A part's content with its Content-Transfer-Encoding undone (RFC 3516
/// BINARY[]): a multipart or message/rfc822 part as it is (it has no
/// encoding of its own to undo).
pub fn decoded(r: &PartRef<'_, '_>) -> Result<Vec<u8>, Undecodable> {
    let body = r.body();
    if matches!(r.part().body, PartType::Multipart(_) | PartType::Message(_)) {
        return Ok(body.to_vec());
    }
    let cte = field_value(r.mime(), "Content-Transfer-Encoding").map(|v| String::from_utf8_lossy(&v).trim().to_ascii_lowercase()).unwrap_or_default();
    match cte.as_str() {
        "" | "7bit" | "8bit" | "binary" => Ok(body.to_vec()),
        "base64" => {
            use base64::Engine as _;
            let clean: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            // Padding may be missing or extra (what real mailers send).
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new().with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent).with_decode_allow_trailing_bits(true),
            );
            engine.decode(clean.strip_suffix(b"=").unwrap_or(&clean)).or_else(|_| engine.decode(&clean)).map_err(|_| Undecodable::Corrupt("base64"))
        }
        "quoted-printable" => quoted_printable::decode(body, quoted_printable::ParseMode::Robust).map_err(|_| Undecodable::Corrupt("quoted-printable")),
        other => Err(Undecodable::UnknownCte(other.chars().filter(|c| c.is_ascii_graphic()).take(40).collect())),
    }
}

/// Follow a section's part numbers (`1.2.3`).
pub fn resolve<'p, 'a>(msg: &'p Message<'a>, path: &[u32]) -> Option<PartRef<'p, 'a>> {
    let (mut m, mut idx, mut at_root) = (msg, 0usize, true);
    if path.len() > MAX_DEPTH {
        return None;
    }
    for &k in path {
        let k = k as usize;
        let part = m.parts.get(idx)?;
        match &part.body {
            PartType::Multipart(ch) => {
                idx = *ch.get(k.checked_sub(1)?)? as usize;
            }
            PartType::Message(nested) if !at_root => {
                m = nested;
                match &m.parts.first()?.body {
                    PartType::Multipart(ch) => idx = *ch.get(k.checked_sub(1)?)? as usize,
                    _ if k == 1 => idx = 0,
                    _ => return None,
                }
            }
            // A part that is neither multipart nor a message has one
            // part, itself (what Dovecot answers for `2.1` of a leaf).
            _ if k == 1 => {}
            _ => return None,
        }
        at_root = false;
    }
    Some(PartRef { msg: m, idx })
}

/// The ENVELOPE of a message (its top-level header).
pub fn envelope(out: &mut Vec<u8>, msg: &Message<'_>) {
    let (block, _) = split_header(own_bytes(msg));
    out.push(b'(');
    nstring(out, field_value(block, "Date").as_deref());
    out.push(b' ');
    nstring(out, field_value(block, "Subject").as_deref());
    let root = msg.parts.first();
    let addr = |name: &str| root.and_then(|p| p.headers.iter().find(|h| h.name.as_str().eq_ignore_ascii_case(name)).map(|h| &h.value));
    let from = addr("From");
    for (name, fallback) in [("From", None), ("Sender", from), ("Reply-To", from), ("To", None), ("Cc", None), ("Bcc", None)] {
        out.push(b' ');
        addresses(out, addr(name).or(fallback));
    }
    out.push(b' ');
    nstring(out, field_value(block, "In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, field_value(block, "Message-ID").as_deref());
    out.push(b')');
}

fn addresses(out: &mut Vec<u8>, v: Option<&HeaderValue<'_>>) {
    let one = |out: &mut Vec<u8>, name: Option<&str>, address: Option<&str>| {
        let (local, host) = match address {
            Some(a) => match a.rsplit_once('@') {
                Some((l, h)) => (Some(l), Some(h)),
                None => (Some(a), None),
            },
            None => (None, None),
        };
        out.push(b'(');
        nstring(out, name.filter(|n| !n.is_empty()).map(encode_word).as_deref());
        out.extend_from_slice(b" NIL ");
        nstring(out, local.map(str::as_bytes));
        out.push(b' ');
        nstring(out, host.map(str::as_bytes));
        out.push(b')');
    };
    match v {
        Some(HeaderValue::Address(Address::List(list))) if !list.is_empty() => {
            out.push(b'(');
            for a in list {
                one(out, a.name.as_deref(), a.address.as_deref());
            }
            out.push(b')');
        }
        Some(HeaderValue::Address(Address::Group(groups))) if !groups.is_empty() => {
            out.push(b'(');
            for g in groups {
                match &g.name {
                    // A group: (NIL NIL "name" NIL) ... (NIL NIL NIL NIL).
                    Some(n) => {
                        out.extend_from_slice(b"(NIL NIL ");
                        string(out, &encode_word(n));
                        out.extend_from_slice(b" NIL)");
                        for a in &g.addresses {
                            one(out, a.name.as_deref(), a.address.as_deref());
                        }
                        out.extend_from_slice(b"(NIL NIL NIL NIL)");
                    }
                    None => {
                        for a in &g.addresses {
                            one(out, a.name.as_deref(), a.address.as_deref());
                        }
                    }
                }
            }
            out.push(b')');
        }
        _ => out.extend_from_slice(b"NIL"),
    }
}

/// A display name as the client expects it in ENVELOPE: ASCII as is,
/// anything else as an RFC 2047 encoded word (mail-parser decoded it).
fn encode_word(name: &str) -> Vec<u8> {
    use base64::Engine;
    if name.is_ascii() {
        name.as_bytes().to_vec()
    } else {
        format!("=?utf-8?b?{}?=", base64::engine::general_purpose::STANDARD.encode(name)).into_bytes()
    }
}

/// BODY (`extended` false) or BODYSTRUCTURE (`extended` true).
pub fn bodystructure(out: &mut Vec<u8>, msg: &Message<'_>, extended: bool) {
    if msg.parts.is_empty() {
        out.extend_from_slice(b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)");
        return;
    }
    part_structure(out, msg, 0, extended, 0);
}

fn part_structure(out: &mut Vec<u8>, msg: &Message<'_>, idx: usize, extended: bool, depth: usize) {
    let r = PartRef { msg, idx };
    let p = r.part();
    let ct = p.content_type();
    out.push(b'(');
    match &p.body {
        PartType::Multipart(children) if depth < MAX_DEPTH => {
            for &c in children {
                part_structure(out, msg, c as usize, extended, depth + 1);
            }
            if children.is_empty() {
                // A multipart with no parts: an empty text part stands in.
                out.extend_from_slice(b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)");
            }
            out.push(b' ');
            let sub = ct.and_then(|c| c.c_subtype.as_deref()).unwrap_or("mixed");
            string(out, sub.to_ascii_lowercase().as_bytes());
            if extended {
                out.push(b' ');
                params(out, ct);
                ext_tail(out, p);
            }
        }
        _ => {
            // Lower case, and text's default charset spelt out, as Dovecot
            // writes them (clients compare without case either way).
            let (ty, sub) = match ct {
                Some(c) => (c.c_type.to_ascii_lowercase(), c.c_subtype.as_deref().unwrap_or(if c.c_type.eq_ignore_ascii_case("text") { "plain" } else { "octet-stream" }).to_ascii_lowercase()),
                None => ("text".into(), "plain".into()),
            };
            string(out, ty.as_bytes());
            out.push(b' ');
            string(out, sub.as_bytes());
            out.push(b' ');
            let has_charset = ct.and_then(|c| c.attribute("charset")).is_some();
            if ty == "text" && !has_charset {
                let mut with = Vec::new();
                params(&mut with, ct);
                if with == b"NIL" {
                    out.extend_from_slice(b"(\"charset\" \"us-ascii\")");
                } else {
                    out.extend_from_slice(b"(\"charset\" \"us-ascii\" ");
                    out.extend_from_slice(&with[1..]);
                }
            } else {
                params(out, ct);
            }
            out.push(b' ');
            nstring(out, p.content_id().map(|s| format!("<{s}>")).as_deref().map(str::as_bytes));
            out.push(b' ');
            nstring(out, p.content_description().map(str::as_bytes));
            out.push(b' ');
            let enc = p.content_transfer_encoding().unwrap_or("7bit").to_ascii_lowercase();
            string(out, enc.as_bytes());
            let body = r.body();
            out.extend_from_slice(format!(" {}", body.len()).as_bytes());
            let lines = body.iter().filter(|&&b| b == b'\n').count();
            match &p.body {
                PartType::Message(nested) if ty == "message" && (sub == "rfc822" || sub == "global") && depth < MAX_DEPTH => {
                    out.push(b' ');
                    envelope(out, nested);
                    out.push(b' ');
                    if nested.parts.is_empty() {
                        bodystructure(out, nested, extended);
                    } else {
                        part_structure(out, nested, 0, extended, depth + 1);
                    }
                    out.extend_from_slice(format!(" {lines}").as_bytes());
                }
                _ if ty == "text" => out.extend_from_slice(format!(" {lines}").as_bytes()),
                _ => {}
            }
            if extended {
                // body-ext-1part: md5, then the shared tail.
                out.extend_from_slice(b" NIL");
                ext_tail(out, p);
            }
        }
    }
    out.push(b')');
}

/// Disposition, language, location.
fn ext_tail(out: &mut Vec<u8>, p: &MessagePart<'_>) {
    out.push(b' ');
    match p.content_disposition() {
        Some(d) => {
            out.push(b'(');
            string(out, d.c_type.to_ascii_lowercase().as_bytes());
            out.push(b' ');
            params(out, Some(d));
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    match p.content_language() {
        HeaderValue::Text(t) => string(out, t.as_bytes()),
        HeaderValue::TextList(l) if !l.is_empty() => {
            out.push(b'(');
            for (i, t) in l.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, t.as_bytes());
            }
            out.push(b')');
        }
        _ => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    nstring(out, p.content_location().map(str::as_bytes));
}

fn params(out: &mut Vec<u8>, ct: Option<&mail_parser::ContentType<'_>>) {
    match ct.and_then(|c| c.attributes.as_ref()).filter(|a| !a.is_empty()) {
        Some(attrs) => {
            out.push(b'(');
            for (i, a) in attrs.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, a.name.to_ascii_lowercase().as_bytes());
                out.push(b' ');
                string(out, a.value.as_bytes());
            }
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\nTo: a@x.org, \"B B\" <b@y.org>\r\nSubject: Hi\r\n there\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m1@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npre\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: c@z.org\r\n\r\ninner body\r\n--XX--\r\n";

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn envelope_carries_raw_fields_and_parsed_addresses() {
        let p = Parsed::new(MIXED);
        let mut out = Vec::new();
        envelope(&mut out, &p.msg);
        assert_eq!(
            s(out),
            "(\"Mon, 7 Dec 2026 10:00:00 +0000\" \"Hi there\" ((\"=?utf-8?b?SsO2cmc=?=\" NIL \"j\" \"example.org\")) ((\"=?utf-8?b?SsO2cmc=?=\" NIL \"j\" \"example.org\")) ((\"=?utf-8?b?SsO2cmc=?=\" NIL \"j\" \"example.org\")) ((NIL NIL \"a\" \"x.org\")(\"B B\" NIL \"b\" \"y.org\")) NIL NIL NIL \"<m1@x>\")"
        );
    }

    #[test]
    fn sections_cut_the_raw_message() {
        let p = Parsed::new(MIXED);
        assert_eq!(resolve(&p.msg, &[1]).unwrap().body(), b"hello\r\nworld");
        let two = resolve(&p.msg, &[2]).unwrap();
        assert!(two.body().starts_with(b"Subject: inner\r\n"));
        let inner = two.nested().unwrap();
        assert_eq!(split_header(own_bytes(inner)).1, b"inner body");
        assert_eq!(resolve(&p.msg, &[2, 1]).unwrap().body(), b"inner body");
        assert!(resolve(&p.msg, &[3]).is_none());
        // A leaf's only part is itself (as Dovecot answers); no part 2.
        assert_eq!(resolve(&p.msg, &[1, 1]).unwrap().body(), b"hello\r\nworld");
        assert!(resolve(&p.msg, &[1, 2]).is_none());
        let (block, _) = split_header(MIXED);
        assert_eq!(header_fields(block, &[b"subject".to_vec()], false), b"Subject: Hi\r\n there\r\n\r\n");
        // A single-part message: part 1 is its body.
        let single = Parsed::new(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(resolve(&single.msg, &[1]).unwrap().body(), b"body\r\n");
    }

    #[test]
    fn bodystructure_describes_the_tree() {
        let p = Parsed::new(MIXED);
        let mut out = Vec::new();
        bodystructure(&mut out, &p.msg, false);
        let text = s(out);
        assert!(text.starts_with("((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 12 1)(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 43 "), "{text}");
        assert!(text.ends_with(" 3) \"mixed\")"), "{text}");
        let mut ext = Vec::new();
        bodystructure(&mut ext, &p.msg, true);
        assert!(s(ext).contains("\"mixed\" (\"boundary\" \"XX\") NIL NIL NIL)"));
    }
}
