//! How values are written in IMAP responses (RFC 9051 §4): atoms, quoted
//! strings, literals, NIL.

/// An nstring: NIL, a quoted string, or a literal when quoting cannot
/// carry it (CR, LF, NUL, 8-bit, or long).
pub fn nstring(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => out.extend_from_slice(b"NIL"),
        Some(v) => string(out, v),
    }
}

pub fn string(out: &mut Vec<u8>, v: &[u8]) {
    if v.len() <= 1024 && v.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        out.push(b'"');
        for &b in v {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, v);
    }
}

/// A literal; a NUL (which IMAP4rev1 literals may not carry) is sent as
/// 0x80, as Dovecot does, so the length and every other octet stay.
pub fn literal(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", v.len()).as_bytes());
    let start = out.len();
    out.extend_from_slice(v);
    if memchr::memchr(0, v).is_some() {
        for b in &mut out[start..] {
            if *b == 0 {
                *b = 0x80;
            }
        }
    }
}

/// The head of a literal that may carry any octet: RFC 3516 literal8
/// (`~{n}`) when `v` has a NUL, a plain literal otherwise (what every
/// client reads). `v` itself follows.
pub fn literal8_head(out: &mut Vec<u8>, v: &[u8]) {
    let eight = if memchr::memchr(0, v).is_some() { "~" } else { "" };
    out.extend_from_slice(format!("{eight}{{{}}}\r\n", v.len()).as_bytes());
}

/// A mailbox name as an astring-ish quoted string (names are ASCII:
/// modified UTF-7 on the wire).
pub fn mailbox(name: &str) -> String {
    // An atom where it can be one (as Dovecot writes names).
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b)) {
        return name.to_string();
    }
    let mut v = Vec::new();
    string(&mut v, name.as_bytes());
    String::from_utf8_lossy(&v).into_owned()
}

/// A mailbox name for an IMAP4rev2 client: UTF-8, in a quoted string
/// where it is no atom (RFC 9051 §5.1; names never hold controls).
pub fn mailbox_utf8(name: &str) -> String {
    if name.is_ascii() {
        return mailbox(name);
    }
    let mut v = String::from("\"");
    for c in name.chars() {
        if c == '"' || c == '\\' {
            v.push('\\');
        }
        v.push(c);
    }
    v.push('"');
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_quote_or_become_literals() {
        let w = |v: &[u8]| {
            let mut o = Vec::new();
            string(&mut o, v);
            o
        };
        assert_eq!(w(b"a \"b\" \\c"), b"\"a \\\"b\\\" \\\\c\"");
        assert_eq!(w(b"a\r\nb"), b"{4}\r\na\r\nb");
        assert_eq!(w("é".as_bytes()), b"{2}\r\n\xc3\xa9");
        assert_eq!(w(b"a\0b"), b"{3}\r\na\x80b");
        let mut o = Vec::new();
        nstring(&mut o, None);
        assert_eq!(o, b"NIL");
    }
}
