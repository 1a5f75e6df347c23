//! Keeping only the encrypted session keys a reader can use.
//!
//! sequoia-openpgp's `Decryptor` checks the message grammar after every
//! packet by parsing again every packet seen so far
//! (`MessageValidator::check`), so a message carrying N PKESKs costs O(N²)
//! before one byte is decrypted: 0.4 ms at 100 recipients, 640 ms at
//! 10,000 — and a hostile sender could make it far worse. We read the
//! leading session-key packets ourselves, in one pass, keep the first few
//! addressed to one of our keys (and anonymous ones, up to a bound), drop
//! the rest (others' keys, password-based ones, unreadable ones), and hand
//! the decryptor those followed by the rest of the stream untouched, so
//! it never sees more than a dozen.
//!
//! Dropping a PKESK changes nothing the reader relies on: the signature
//! covers the literal data inside the encryption container, not the
//! session-key packets, and the container's integrity (MDC or AEAD) is
//! checked as before.

use std::io::{self, Chain, Cursor, Read};

use openpgp::packet::PKESK;
use openpgp::parse::Parse;
use openpgp::KeyHandle;
use sequoia_openpgp as openpgp;

/// A session-key packet larger than this is dropped unread: a PKESK of the
/// largest algorithm (ML-KEM-1024 + X448) is under 2 KiB.
const MAX_ESK_BODY: usize = 64 * 1024;

/// Anonymous PKESKs (wildcard recipient) kept: each costs the decryptor
/// one public-key operation per key of ours, so a sender cannot make us
/// try thousands. Stubmail never writes them.
const MAX_ANONYMOUS: usize = 4;

/// PKESKs naming one of our keys kept. A sender writes one per key; more
/// are hostile (each is a public-key operation, and every one kept is
/// another packet for the decryptor's quadratic check), so only the first
/// few are kept.
const MAX_OURS: usize = 8;

/// At most this many leading session-key packets are read; a message with
/// more is refused (10× the outbox's recipient cap per message for a list
/// robot would still be far below it).
pub const MAX_ESKS: usize = 1_000_000;

const TAG_PKESK: u8 = 1;
const TAG_SKESK: u8 = 3;
/// Packets a message may carry among its session keys and that mean
/// nothing (RFC 9580 §5.8, §5.14): dropped, so they cannot end the
/// filtered region early and let a flood behind them through.
const TAG_MARKER: u8 = 10;
const TAG_PADDING: u8 = 21;

/// `input` as binary OpenPGP (armor removed) with only our session keys
/// among its leading packets (see [`only_ours`]).
pub fn binary_only_ours<'a, R: Read + Send + Sync + 'a>(input: R, ours: &[KeyHandle]) -> io::Result<Box<dyn Read + Send + Sync + 'a>> {
    let mut input = io::BufReader::with_capacity(64 * 1024, input);
    let first = io::BufRead::fill_buf(&mut input)?.first().copied();
    // A packet header has its high bit set; anything else is armor (or
    // garbage, which the armor reader refuses). Dearmored first, so an
    // armored message is filtered like a binary one.
    if first.is_some_and(|b| b & 0x80 == 0) {
        let dearmored = openpgp::armor::Reader::from_reader(input, openpgp::armor::ReaderMode::Tolerant(Some(openpgp::armor::Kind::Message)));
        return Ok(Box::new(only_ours(io::BufReader::with_capacity(64 * 1024, dearmored), ours)?));
    }
    Ok(Box::new(only_ours(input, ours)?))
}

/// The stream `input` with only the first few leading PKESKs addressed to
/// one of `ours` (and a few anonymous ones) left among its leading packets;
/// other session keys, markers and padding are dropped. Binary OpenPGP
/// only: armored input is returned as is ([`binary_only_ours`] dearmors).
pub fn only_ours<R: Read>(mut input: R, ours: &[KeyHandle]) -> io::Result<Chain<Cursor<Vec<u8>>, R>> {
    let mut kept = Vec::new();
    let mut anonymous = 0;
    let mut mine = 0;
    let mut seen = 0usize;
    loop {
        // One packet header, read a byte at a time (a few bytes per
        // packet; the caller's reader is buffered).
        let mut hdr = Vec::with_capacity(6);
        let Some(b0) = read_byte(&mut input, &mut hdr)? else { break };
        let Some((tag, len)) = header(b0, &mut input, &mut hdr)? else {
            // Not a session-key packet, or one we do not measure:
            // everything from here on is passed through unchanged.
            kept.extend_from_slice(&hdr);
            break;
        };
        if !matches!(tag, TAG_PKESK | TAG_SKESK | TAG_MARKER | TAG_PADDING) {
            kept.extend_from_slice(&hdr);
            break;
        }
        seen += 1;
        if seen > MAX_ESKS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the message carries more than {MAX_ESKS} encrypted session keys: refused"),
            ));
        }
        if tag != TAG_PKESK || len > MAX_ESK_BODY {
            // Never used (see below), meaningless, or too large to be a
            // session key: skipped without being read into memory.
            let skipped = io::copy(&mut (&mut input).take(len as u64), &mut io::sink())?;
            if skipped < len as u64 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated OpenPGP packet"));
            }
            continue;
        }
        let mut body = vec![0; len];
        input.read_exact(&mut body)?;
        // Password-encrypted session keys (SKESK) were skipped above:
        // Stubmail decrypts with the reader's keys only.
        let keep = match PKESK::from_bytes(&body).ok().map(|p| p.recipient()) {
                // Unreadable here: the decryptor would only fail on it.
                None => false,
                Some(Some(r)) if ours.iter().any(|k| r.aliases(k)) => {
                    mine += 1;
                    mine <= MAX_OURS
                }
                Some(Some(_)) => false,
                Some(None) => {
                    anonymous += 1;
                    anonymous <= MAX_ANONYMOUS
                }
            };
        if keep {
            kept.extend_from_slice(&hdr);
            kept.extend_from_slice(&body);
        }
    }
    Ok(Cursor::new(kept).chain(input))
}

fn read_byte(r: &mut impl Read, into: &mut Vec<u8>) -> io::Result<Option<u8>> {
    let mut b = [0u8];
    loop {
        match r.read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) => {
                into.push(b[0]);
                return Ok(Some(b[0]));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn need_byte(r: &mut impl Read, into: &mut Vec<u8>) -> io::Result<u8> {
    read_byte(r, into)?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "truncated OpenPGP packet header"))
}

/// A packet header's tag and body length (RFC 9580 §4.2), the header's
/// bytes appended to `hdr`; `None` for anything that is not a packet with a
/// definite length (armor, partial or indeterminate lengths).
fn header(b0: u8, r: &mut impl Read, hdr: &mut Vec<u8>) -> io::Result<Option<(u8, usize)>> {
    if b0 & 0x80 == 0 {
        return Ok(None);
    }
    if b0 & 0x40 != 0 {
        let tag = b0 & 0x3f;
        let l1 = need_byte(r, hdr)? as usize;
        let len = match l1 {
            0..=191 => l1,
            192..=223 => ((l1 - 192) << 8) + need_byte(r, hdr)? as usize + 192,
            255 => {
                let mut n = 0usize;
                for _ in 0..4 {
                    n = (n << 8) | need_byte(r, hdr)? as usize;
                }
                n
            }
            _ => return Ok(None), // partial body length: never a session key
        };
        Ok(Some((tag, len)))
    } else {
        let tag = (b0 >> 2) & 0x0f;
        let bytes = match b0 & 3 {
            0 => 1,
            1 => 2,
            2 => 4,
            _ => return Ok(None), // indeterminate length
        };
        let mut n = 0usize;
        for _ in 0..bytes {
            n = (n << 8) | need_byte(r, hdr)? as usize;
        }
        Ok(Some((tag, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_every_length_form() {
        // (bytes, tag, len)
        let cases: &[(&[u8], u8, usize)] = &[
            (&[0xc1, 0x05], 1, 5),
            (&[0xc1, 0xc0, 0x00], 1, 192),
            (&[0xc1, 0xdf, 0xff], 1, 8383),
            (&[0xc3, 0xff, 0x00, 0x01, 0x00, 0x00], 3, 65536),
            (&[0x84, 0x10], 1, 16),            // old format, 1-byte length
            (&[0x85, 0x01, 0x00], 1, 256),     // old format, 2-byte length
            (&[0x8e, 0, 0, 0x01, 0x02], 3, 258), // old format, 4-byte length
        ];
        for (bytes, tag, len) in cases {
            let mut r = &bytes[1..];
            let mut hdr = vec![bytes[0]];
            assert_eq!(header(bytes[0], &mut r, &mut hdr).unwrap(), Some((*tag, *len)), "{bytes:02x?}");
            assert_eq!(&hdr[..], *bytes);
        }
        // Partial and indeterminate lengths, and armor, are not measured.
        for bytes in [&[0xd2u8, 0xe0][..], &[0x87][..], &b"-----BEGIN"[..]] {
            let mut r = &bytes[1..];
            assert_eq!(header(bytes[0], &mut r, &mut vec![bytes[0]]).unwrap(), None, "{bytes:02x?}");
        }
        // A header cut short is an error, not a panic.
        let mut r = &[0xffu8][..];
        assert!(header(0xc1, &mut r, &mut vec![]).is_err());
    }

    /// The leading packets of a stream: (tag, whole packet bytes), up to
    /// the first that is not a session key.
    fn leading(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(&b0) = b.first() {
            let mut r = &b[1..];
            let mut hdr = vec![b0];
            let Some((tag, len)) = header(b0, &mut r, &mut hdr).unwrap() else { break };
            if tag != TAG_PKESK && tag != TAG_SKESK {
                break;
            }
            let n = hdr.len() + len;
            out.push((tag, b[..n].to_vec()));
            b = &b[n..];
        }
        out
    }

    #[test]
    fn floods_of_our_own_and_password_session_keys_are_cut_to_a_few() {
        let a = crate::pgp::Identity::generate(None, "alice@example.org", "http://x/").unwrap();
        let b = crate::pgp::Identity::generate(None, "bob@example.net", "http://x/").unwrap();
        let mut ct = Vec::new();
        crate::pgp::sign_encrypt(&a, &[b.cert()], &mut &b"hi"[..], &mut ct).unwrap();
        let esks = leading(&ct);
        let prefix: usize = esks.iter().map(|(_, p)| p.len()).sum();
        let ours: Vec<KeyHandle> = b.decryption_keypairs().iter().map(|k| KeyHandle::from(k.public().fingerprint())).collect();
        let bobs = esks
            .iter()
            .find(|(_, p)| {
                let mut r = &p[1..];
                let (_, len) = header(p[0], &mut r, &mut vec![p[0]]).unwrap().unwrap();
                let body = &p[p.len() - len..];
                PKESK::from_bytes(body).unwrap().recipient().is_some_and(|r| ours.iter().any(|k| r.aliases(k)))
            })
            .unwrap()
            .1
            .clone();
        // 1,000 copies of Bob's own session key and 1,000 password-based
        // ones (a bare SKESK v4: version, cipher, simple S2K) ahead of the
        // message.
        let skesk: &[u8] = &[0xc3, 0x04, 0x04, 0x09, 0x00, 0x02];
        let mut hostile = Vec::new();
        for _ in 0..1000 {
            hostile.extend_from_slice(&bobs);
            hostile.extend_from_slice(skesk);
        }
        hostile.extend_from_slice(&ct);
        let mut out = Vec::new();
        only_ours(&hostile[..], &ours).unwrap().read_to_end(&mut out).unwrap();
        let kept = leading(&out);
        assert_eq!(kept.len(), MAX_OURS, "the first few of ours, no password-based one");
        assert!(kept.iter().all(|(tag, p)| *tag == TAG_PKESK && p == &bobs));
        assert_eq!(&out[MAX_OURS * bobs.len()..], &ct[prefix..], "the rest untouched");
        // Whatever comes first — a marker, padding, an oversized session
        // key — the flood behind it is cut just the same.
        let oversized: Vec<u8> = [&[0xc3u8, 0xff, 0, 1, 0x18, 0][..], &vec![0u8; 70 * 1024]].concat();
        for (what, lead) in [("a marker", vec![0xca, 0x03, b'P', b'G', b'P']), ("padding", vec![0xd5, 0x02, 0, 0]), ("an oversized session key", oversized)] {
            let flood: Vec<u8> = [&lead[..], &hostile].concat();
            let mut out = Vec::new();
            only_ours(&flood[..], &ours).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(leading(&out).len(), MAX_OURS, "behind {what}");
            assert_eq!(&out[MAX_OURS * bobs.len()..], &ct[prefix..], "behind {what}: the rest untouched");
        }
        // Armored, it is cut once dearmored.
        let mut armored = Vec::new();
        {
            let mut w = openpgp::armor::Writer::new(&mut armored, openpgp::armor::Kind::Message).unwrap();
            std::io::Write::write_all(&mut w, &hostile).unwrap();
            w.finalize().unwrap();
        }
        let mut out = Vec::new();
        binary_only_ours(&armored[..], &ours).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(leading(&out).len(), MAX_OURS, "armored");
        // The ordinary message: Bob's session key kept, Alice's dropped.
        let mut out = Vec::new();
        only_ours(&ct[..], &ours).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(leading(&out), vec![(TAG_PKESK, bobs.clone())]);
    }

    #[test]
    fn input_that_is_not_a_session_key_passes_through_unchanged() {
        for input in [&b""[..], b"-----BEGIN PGP MESSAGE-----\n", &[0xd2, 0xe0, 1, 2, 3], &[0xc1], &[0xc1, 0x05, 1]] {
            let mut out = Vec::new();
            match only_ours(input, &[]) {
                Ok(mut r) => {
                    r.read_to_end(&mut out).unwrap();
                    assert_eq!(out, input);
                }
                // A truncated session-key packet: an error, never a panic.
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{input:02x?}"),
            }
        }
    }
}
