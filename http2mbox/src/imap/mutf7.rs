//! Modified UTF-7 (RFC 3501 §5.1.3): how IMAP4rev1 writes mailbox names,
//! and how the Maildir++ folders are named on disk. IMAP4rev2 clients
//! (RFC 9051 §5.1) use UTF-8 instead: names are turned one into the other
//! at the session's edge.

use base64::Engine as _;

const B64: base64::engine::GeneralPurpose =
    base64::engine::GeneralPurpose::new(&base64::alphabet::IMAP_MUTF7, base64::engine::GeneralPurposeConfig::new().with_encode_padding(false).with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone));

/// The UTF-8 name a modified UTF-7 name stands for; `None` if it is not
/// valid modified UTF-7 (bad base64, an odd number of octets, a lone
/// surrogate, printable ASCII or a control encoded).
pub fn decode(name: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = name;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after.find('-')?;
        let b64 = &after[..end];
        if b64.is_empty() {
            out.push('&');
        } else {
            let bytes = B64.decode(b64).ok()?;
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            let s = String::from_utf16(&units).ok()?;
            if s.chars().any(|c| c.is_control() || (' '..='~').contains(&c) || invisible(c)) {
                return None;
            }
            out.push_str(&s);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    // One spelling per name (`&AOQ-&APw-` is `&AOQA,A-` badly written):
    // two folders must never read as the same name.
    (encode(&out) == name).then_some(out)
}

/// Characters no folder name may hold (RFC 9051 §5.1: not U+2028 or
/// U+2029): line and paragraph separators, and the invisible format
/// characters that make one name look like another (zero-width spaces
/// and joiners, bidirectional overrides and isolates, the BOM).
fn invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// A UTF-8 name written in modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::new();
    let mut run: Vec<u16> = Vec::new();
    let flush = |run: &mut Vec<u16>, out: &mut String| {
        if !run.is_empty() {
            let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
            out.push('&');
            out.push_str(&B64.encode(bytes));
            out.push('-');
            run.clear();
        }
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut run, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_go_both_ways_as_rfc_3501_writes_them() {
        for (utf8, utf7) in [
            ("Entwürfe", "Entw&APw-rfe"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("R&D", "R&-D"),
            ("plain", "plain"),
            ("😀", "&2D3eAA-"),
        ] {
            assert_eq!(encode(utf8), utf7);
            assert_eq!(decode(utf7).as_deref(), Some(utf8));
        }
        for bad in ["&", "&AGE-", "&Jjo", "&2D0-", "&AAA-", "&Jjo!-", "&AOQ-&APw-", "&AOQ-&AOQ-", &encode("a\u{2028}b"), &encode("INBOX\u{200B}"), &encode("a\u{202E}b")] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
