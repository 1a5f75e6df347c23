//! Small RFC 5322 helpers shared by the programs: find the header block,
//! drop header fields, read addresses. Pure functions over bytes.

/// Length of the header block including the blank line that ends it, if
/// `buf` contains the whole header (CRLF or LF line endings).
pub fn header_len(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    if buf.starts_with(b"\n") {
        return Some(1);
    }
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        i = nl + 1;
    }
    None
}

/// Read a message's header block, at most `max` bytes, including the blank
/// line that ends it; the reader is left at the body. A message without a
/// blank line is all header.
pub fn read_header(r: &mut impl std::io::BufRead, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{BufRead, Read};
    let mut header = Vec::new();
    loop {
        let before = header.len();
        let n = r.take((max - header.len().min(max)) as u64).read_until(b'\n', &mut header)?;
        if n == 0 || header.len() >= max {
            return Ok(header);
        }
        let line = &header[before..];
        if line == b"\r\n" || line == b"\n" {
            return Ok(header);
        }
    }
}

/// Remove every field named in `names` (case-insensitive), with its
/// continuation lines, from a header block.
pub fn remove_fields(header: &[u8], names: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    let mut skipping = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            skipping = names.iter().any(|n| {
                line.len() > n.len() && line[..n.len()].eq_ignore_ascii_case(n.as_bytes()) && line[n.len()] == b':'
            });
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Remove every field for which `drop(name, value)` says so (the value
/// with its continuation lines), from a header block.
pub fn remove_fields_where(header: &[u8], mut drop: impl FnMut(&[u8], &[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    let lines: Vec<&[u8]> = header.split_inclusive(|&b| b == b'\n').collect();
    let mut i = 0;
    while i < lines.len() {
        // One field: its first line and the continuation lines after it.
        let mut j = i + 1;
        while j < lines.len() && matches!(lines[j].first(), Some(b' ' | b'\t')) {
            j += 1;
        }
        let field: Vec<u8> = lines[i..j].concat();
        // The name as a lenient reader (mail-parser, some clients) takes it:
        // leading colons skipped, blanks and control bytes inside ignored
        // (":fro m: x" is a From field to mail-parser).
        let lead = field.iter().take_while(|&&b| b == b':').count();
        let skip = match field[lead..].iter().position(|&b| b == b':') {
            Some(c) if !matches!(lines[i].first(), Some(b' ' | b'\t')) => {
                let name: Vec<u8> = field[lead..lead + c].iter().copied().filter(|b| !b.is_ascii_whitespace() && !b.is_ascii_control()).collect();
                drop(&name, &field[lead + c + 1..])
            }
            _ => false,
        };
        if !skip {
            out.extend_from_slice(&field);
        }
        i = j;
    }
    out
}

/// Does the header block have a field of this name (case-insensitive,
/// blanks before the colon allowed)?
pub fn has_field(header: &[u8], name: &str) -> bool {
    header.split_inclusive(|&b| b == b'\n').any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && line[name.len()..].iter().find(|b| !matches!(b, b' ' | b'\t')) == Some(&b':')
    })
}

/// Add the fields a header block lacks, before the blank line that ends
/// it (RFC 6409 §8: a submission server adds a missing Date: and
/// Message-ID:). `fields` are (name, value) pairs; a field already
/// present is left as it is.
pub fn add_missing_fields(header: &[u8], fields: &[(&str, &str)]) -> Vec<u8> {
    let end = if header.ends_with(b"\r\n\r\n") || header == b"\r\n" {
        header.len() - 2
    } else if header.ends_with(b"\n\n") || header == b"\n" {
        header.len() - 1
    } else {
        header.len()
    };
    // The header's own line ending (the spool's is CRLF).
    let eol = if header.contains(&b'\n') && !header.contains(&b'\r') { "\n" } else { "\r\n" };
    let mut out = header[..end].to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(eol.as_bytes());
    }
    for (name, value) in fields {
        if !has_field(header, name) {
            out.extend_from_slice(format!("{name}: {value}{eol}").as_bytes());
        }
    }
    out.extend_from_slice(&header[end..]);
    out
}

/// Lower-cased addresses in the given address fields (e.g. To, Cc).
pub fn addresses(header: &[u8], fields: &[&str]) -> Vec<String> {
    let Some(msg) = mail_parser::MessageParser::default().parse_headers(header) else { return vec![] };
    let mut out = Vec::new();
    for f in fields {
        for h in msg.headers().iter().filter(|h| h.name().eq_ignore_ascii_case(f)) {
            if let Some(a) = h.value().as_address() {
                out.extend(a.iter().filter_map(|x| x.address()).map(|s| s.to_ascii_lowercase()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_len_all_line_endings() {
        assert_eq!(header_len(b"A: b\r\n\r\nbody"), Some(8));
        assert_eq!(header_len(b"A: b\n\nbody"), Some(6));
        assert_eq!(header_len(b"\r\nbody"), Some(2));
        assert_eq!(header_len(b"A: b\r\nC: d\r\n"), None);
    }

    #[test]
    fn header_reading_stops_at_blank_line() {
        let mut r = std::io::BufReader::new(&b"A: 1\r\nB: 2\r\n\r\nbody\r\n"[..]);
        assert_eq!(read_header(&mut r, 1 << 20).unwrap(), b"A: 1\r\nB: 2\r\n\r\n");
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut rest).unwrap();
        assert_eq!(rest, b"body\r\n");
    }

    #[test]
    fn removes_bcc_with_continuations() {
        let h = b"From: a@x.org\r\nBcc: secret@y.org,\r\n other@z.org\r\nbcc:x@y.org\r\nSubject: hi\r\n\r\n";
        let out = remove_fields(h, &["Bcc"]);
        assert_eq!(out, b"From: a@x.org\r\nSubject: hi\r\n\r\n".to_vec());
        assert_eq!(remove_fields(b"Bccx: 1\r\n\r\n", &["Bcc"]), b"Bccx: 1\r\n\r\n".to_vec());
    }

    #[test]
    fn reads_addresses() {
        let h = b"To: Bob <Bob@Example.net>, c@x.org\r\nCc: \"D\" <d@y.org>\r\nFrom: a@x.org\r\n\r\n";
        assert_eq!(addresses(h, &["To", "Cc"]), vec!["bob@example.net", "c@x.org", "d@y.org"]);
    }

    #[test]
    fn missing_date_and_message_id_are_added_before_the_blank_line() {
        let add = |h: &[u8]| super::add_missing_fields(h, &[("Date", "D"), ("Message-ID", "<m@x>")]);
        assert_eq!(add(b"Subject: s\r\n\r\n"), b"Subject: s\r\nDate: D\r\nMessage-ID: <m@x>\r\n\r\n");
        assert_eq!(add(b"DATE : old\r\nmessage-id:<a@b>\r\n\r\n"), b"DATE : old\r\nmessage-id:<a@b>\r\n\r\n");
        // A header without a blank line (a message without a body).
        assert_eq!(add(b"Subject: s\r\n"), b"Subject: s\r\nDate: D\r\nMessage-ID: <m@x>\r\n");
        assert_eq!(add(b"Subject: s"), b"Subject: s\r\nDate: D\r\nMessage-ID: <m@x>\r\n");
        assert_eq!(add(b"Subject: s\n\n"), b"Subject: s\nDate: D\nMessage-ID: <m@x>\n\n");
        // "Date-Extra:" is not "Date:", and a continuation line is no field.
        assert!(!super::has_field(b"Date-Extra: x\r\nSubject: a\r\n Date: y\r\n", "Date"));
    }
}

/// Is `a` a plain `local@domain` mail address (no display name, comments,
/// quoting, spaces or controls; a one-label domain such as `localhost`
/// allowed)? For addresses a peer names that we may mail.
pub fn is_plain_address(a: &str) -> bool {
    let Some((local, domain)) = a.split_once('@') else { return false };
    let plain = |x: &str| !x.is_empty() && x.len() <= 253 && !x.chars().any(|c| c.is_whitespace() || c.is_control() || "<>\\\",;:()[]@".contains(c));
    a.len() <= 254 && local.len() <= 64 && plain(local) && plain(domain.trim_end_matches('.'))
}
