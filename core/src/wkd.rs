//! OpenPGP Web Key Directory (draft-koch-openpgp-webkey-service): the
//! hashed local part, the lookup URLs, and the lookup itself.

use std::time::Duration;

use sequoia_openpgp::Cert;
use sha1::{Digest, Sha1};

use crate::pgp;

const ZBASE32: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// z-base-32 encoding (RFC 6189 §5.1.6), as WKD uses it.
pub fn zbase32(data: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(ZBASE32[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(ZBASE32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The WKD hash of a local part: z-base-32 of the SHA-1 of its ASCII
/// lower-case form (what `gpg-wks-client --print-wkd-hash` prints).
pub fn local_hash(local: &str) -> String {
    zbase32(&Sha1::digest(local.to_ascii_lowercase().as_bytes()))
}

/// Split an address into (local part, lower-case domain).
pub fn split(address: &str) -> Option<(&str, String)> {
    let (l, d) = address.rsplit_once('@')?;
    (!l.is_empty() && !d.is_empty()).then(|| (l, d.to_ascii_lowercase()))
}

fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Lookup URLs in the order to try: advanced method, then direct. `base`
/// replaces the hosts (for an explicitly configured server).
pub fn urls(address: &str, base: Option<&str>) -> Vec<String> {
    let Some((local, domain)) = split(address) else { return vec![] };
    let h = local_hash(local);
    let l = encode_query(local);
    match base {
        Some(b) => {
            let b = b.trim_end_matches('/');
            vec![
                format!("{b}/.well-known/openpgpkey/{domain}/hu/{h}?l={l}"),
                format!("{b}/.well-known/openpgpkey/hu/{h}?l={l}"),
            ]
        }
        None => vec![
            format!("https://openpgpkey.{domain}/.well-known/openpgpkey/{domain}/hu/{h}?l={l}"),
            format!("https://{domain}/.well-known/openpgpkey/hu/{h}?l={l}"),
        ],
    }
}

/// Look up `address`; returns the usable certificates that carry it.
pub async fn lookup(http: &reqwest::Client, address: &str, base: Option<&str>, timeout: Duration) -> Vec<Cert> {
    let want = address.to_ascii_lowercase();
    for url in urls(address, base) {
        let resp = match http.get(&url).timeout(timeout).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::debug!(url, status = %r.status(), "WKD miss");
                continue;
            }
            Err(e) => {
                tracing::debug!(url, "WKD: {e}");
                continue;
            }
        };
        // A WKD answer is one certificate: bounded like any peer's answer.
        let Ok(body) = crate::client::read_limited(resp, 1 << 20).await else { continue };
        // A certificate found for `want` speaks for `want` only: its other
        // User IDs (say, someone else's address) are dropped, and one
        // without a User ID of exactly `want` is no answer at all.
        let certs: Vec<Cert> = pgp::parse_certs(&body)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| pgp::only_userid_for(c, &want))
            .filter(|c| pgp::check_contact(c).is_ok())
            .collect();
        if !certs.is_empty() {
            return certs;
        }
    }
    vec![]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wkd_key_with_someone_elses_user_id_speaks_only_for_the_address_looked_up() {
        use sequoia_openpgp::cert::prelude::*;
        let (eve, _) = CertBuilder::general_purpose(["<eve@evil.example>", "Alice <alice@example.org>"]).generate().unwrap();
        let kept = pgp::only_userid_for(eve.clone(), "Eve@Evil.Example").unwrap();
        assert_eq!(pgp::emails_of(&kept), vec!["eve@evil.example"]);
        assert!(pgp::only_userid_for(eve, "bob@example.net").is_none(), "no User ID with the address: no answer");
    }

    #[test]
    fn hash_matches_the_draft_example() {
        // draft-koch-openpgp-webkey-service, section 3.1.
        assert_eq!(local_hash("Joe.Doe"), "iy9q119eutrkn8s1mk4r39qejnbu3n5q");
    }

    #[test]
    fn urls_for_both_methods() {
        let u = urls("Joe.Doe@Example.ORG", None);
        assert_eq!(u[0], "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe");
        assert_eq!(u[1], "https://example.org/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe");
        let u = urls("a+b@x.org", Some("http://127.0.0.1:1/"));
        assert!(u[0].starts_with("http://127.0.0.1:1/.well-known/openpgpkey/x.org/hu/") && u[0].ends_with("?l=a%2Bb"));
        assert!(urls("nodomain", None).is_empty());
    }
}
