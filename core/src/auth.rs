//! Signed requests (docs/PROTOCOL.md §3): making the `Stubmail-Signature`
//! header on the client, checking it on the server. The rules' order is part
//! of the protocol: timestamp, signature, nonce.

use sequoia_openpgp::Cert;

use crate::pgp;
use crate::protocol::{self, Fpr, SignatureHeader, MAX_CLOCK_SKEW};
use crate::Identity;

/// A fresh `Stubmail-Signature` value for one request.
pub fn sign_request(me: &Identity, method: &str, path: &str, body_sha256: &str, now: i64) -> Result<String, pgp::PgpError> {
    use rand::Rng;
    let nonce = hex::encode(rand::rng().random::<[u8; 16]>());
    let data = protocol::canonical_request(method, path, now, &nonce, body_sha256);
    let sig = me.sign_detached(&data)?;
    Ok(SignatureHeader { fpr: me.fpr(), ts: now, nonce, sig }.format())
}

/// Why a request was not authenticated. `code()` is the wire error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the request is not signed: add a Stubmail-Signature header (docs/PROTOCOL.md §3)")]
    Missing,
    #[error("bad Stubmail-Signature header: {0}")]
    Malformed(String),
    #[error("request time {ts} is more than {MAX_CLOCK_SKEW} s from the server's time {now}; fix the clock")]
    Stale { ts: i64, now: i64 },
    #[error("the request signature could not be verified")]
    Unauthenticated,
    #[error("this request was already received (replayed nonce)")]
    Replayed,
    #[error("cannot record the nonce: {0}")]
    Storage(String),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Stale { .. } => "stale_timestamp",
            AuthError::Replayed => "replayed",
            AuthError::Storage(_) => "unavailable",
            _ => "unauthenticated",
        }
    }
}

/// Remembers nonces for replay protection. `remember` returns false if
/// `(fpr, nonce)` was already seen.
pub trait NonceStore {
    fn remember(&self, fpr: &Fpr, nonce: &str, ts: i64) -> std::io::Result<bool>;
}

/// Check every signature header of a request; return the verified signers.
/// `lookup` gives the certificate that may sign for a fingerprint.
pub fn verify_request(
    headers: &[&str],
    method: &str,
    path: &str,
    body_sha256: &str,
    now: i64,
    lookup: &mut dyn FnMut(&Fpr) -> Option<Cert>,
    nonces: &dyn NonceStore,
) -> Result<Vec<Fpr>, AuthError> {
    if headers.is_empty() {
        return Err(AuthError::Missing);
    }
    if headers.len() > 100 {
        return Err(AuthError::Malformed("more than 100 signatures".into()));
    }
    let parsed: Vec<SignatureHeader> = headers
        .iter()
        .map(|h| SignatureHeader::parse(h).map_err(|e| AuthError::Malformed(e.to_string())))
        .collect::<Result<_, _>>()?;
    for h in &parsed {
        if (now - h.ts).abs() > MAX_CLOCK_SKEW {
            return Err(AuthError::Stale { ts: h.ts, now });
        }
    }
    for h in &parsed {
        let cert = lookup(&h.fpr).ok_or(AuthError::Unauthenticated)?;
        if pgp::fpr_of(&cert) != h.fpr {
            return Err(AuthError::Unauthenticated);
        }
        let data = protocol::canonical_request(method, path, h.ts, &h.nonce, body_sha256);
        pgp::verify_detached(&cert, &data, &h.sig).map_err(|_| AuthError::Unauthenticated)?;
    }
    let mut out = Vec::new();
    for h in parsed {
        if !nonces.remember(&h.fpr, &h.nonce, h.ts).map_err(|e| AuthError::Storage(e.to_string()))? {
            return Err(AuthError::Replayed);
        }
        if !out.contains(&h.fpr) {
            out.push(h.fpr);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashSet;

    #[derive(Default)]
    struct Mem(RefCell<HashSet<(Fpr, String)>>);
    impl NonceStore for Mem {
        fn remember(&self, f: &Fpr, n: &str, _ts: i64) -> std::io::Result<bool> {
            Ok(self.0.borrow_mut().insert((f.clone(), n.to_string())))
        }
    }

    #[test]
    fn sign_verify_table() {
        let a = Identity::generate(None, "a@example.org", "http://a/").unwrap();
        let m = Identity::generate(None, "m@example.org", "http://m/").unwrap();
        let now = 1_800_000_000;
        let store = Mem::default();
        let d = protocol::EMPTY_SHA256;
        let mut look = |f: &Fpr| if *f == a.fpr() { Some(a.cert()) } else { None };
        let h = sign_request(&a, "GET", "/v1/messages", d, now).unwrap();
        assert_eq!(verify_request(&[&h], "GET", "/v1/messages", d, now + 10, &mut look, &store).unwrap(), vec![a.fpr()]);
        // The same header again is a replay.
        assert_eq!(verify_request(&[&h], "GET", "/v1/messages", d, now, &mut look, &store), Err(AuthError::Replayed));
        // Each part of the canonical request is covered.
        let h = sign_request(&a, "GET", "/v1/messages", d, now).unwrap();
        assert_eq!(verify_request(&[&h], "POST", "/v1/messages", d, now, &mut look, &store), Err(AuthError::Unauthenticated));
        assert_eq!(verify_request(&[&h], "GET", "/v1/poll", d, now, &mut look, &store), Err(AuthError::Unauthenticated));
        assert_eq!(verify_request(&[&h], "GET", "/v1/messages", &"0".repeat(64), now, &mut look, &store), Err(AuthError::Unauthenticated));
        // Stale in both directions.
        assert!(matches!(verify_request(&[&h], "GET", "/v1/messages", d, now + 301, &mut look, &store), Err(AuthError::Stale { .. })));
        assert!(matches!(verify_request(&[&h], "GET", "/v1/messages", d, now - 301, &mut look, &store), Err(AuthError::Stale { .. })));
        // Unknown signer and a signer claiming someone else's fingerprint.
        let hm = sign_request(&m, "GET", "/v1/messages", d, now).unwrap();
        assert_eq!(verify_request(&[&hm], "GET", "/v1/messages", d, now, &mut look, &store), Err(AuthError::Unauthenticated));
        let forged = hm.replace(m.fpr().as_str(), a.fpr().as_str());
        assert_eq!(verify_request(&[&forged], "GET", "/v1/messages", d, now, &mut look, &store), Err(AuthError::Unauthenticated));
        assert_eq!(verify_request(&[], "GET", "/", d, now, &mut look, &store), Err(AuthError::Missing));
        // A failed request consumed no nonce: the valid one still works.
        assert!(verify_request(&[&h], "GET", "/v1/messages", d, now, &mut look, &store).is_ok());
    }
}
