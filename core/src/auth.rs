//! Signed requests (docs/PROTOCOL.md §3): making the `Stubmail-Signature`
//! header on the client, checking it on the server. The rules' order is part
//! of the protocol: timestamp, signature, nonce.

use sequoia_openpgp::Cert;

use crate::pgp;
use crate::protocol::{self, Fpr, SignatureHeader, MAX_CLOCK_SKEW};
use crate::Identity;

/// A fresh `Stubmail-Signature` value for one request to the outbox whose
/// base URL is `outbox` (any form; it is normalised by
/// [`protocol::outbox_id`]).
pub fn sign_request(me: &Identity, outbox: &str, method: &str, path: &str, body_sha256: &str, now: i64) -> Result<String, pgp::PgpError> {
    use rand::Rng;
    let nonce = hex::encode(rand::rng().random::<[u8; 16]>());
    let outbox = protocol::outbox_id(outbox).unwrap_or_else(|| outbox.to_string());
    let data = protocol::canonical_request(&outbox, method, path, now, &nonce, body_sha256);
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

/// A request whose signatures verified, its nonces not yet recorded.
#[derive(Debug)]
pub struct Verified {
    /// The signers, each once, in header order.
    pub signers: Vec<Fpr>,
    headers: Vec<SignatureHeader>,
}

impl Verified {
    /// Record the nonces (replay protection): the request counts from here.
    /// A request the server answers without keeping anything (a stranger's
    /// empty poll) may skip this, and then writes nothing.
    pub fn remember(self, nonces: &dyn NonceStore) -> Result<Vec<Fpr>, AuthError> {
        for h in &self.headers {
            if !nonces.remember(&h.fpr, &h.nonce, h.ts).map_err(|e| AuthError::Storage(e.to_string()))? {
                return Err(AuthError::Replayed);
            }
        }
        Ok(self.signers)
    }
}

/// Check every signature header of a request, made for one of `outboxes`
/// (this outbox's base URLs, as [`protocol::outbox_id`] writes them): a
/// request made for another outbox does not verify here. `lookup` gives
/// the certificate that may sign for a fingerprint. Nonces are not
/// recorded: see [`Verified::remember`].
pub fn verify_signatures(
    headers: &[&str],
    outboxes: &[String],
    method: &str,
    path: &str,
    body_sha256: &str,
    now: i64,
    lookup: &mut dyn FnMut(&Fpr) -> Option<Cert>,
) -> Result<Verified, AuthError> {
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
        let ok = outboxes.iter().any(|o| {
            let data = protocol::canonical_request(o, method, path, h.ts, &h.nonce, body_sha256);
            pgp::verify_detached(&cert, &data, &h.sig).is_ok()
        });
        if !ok {
            return Err(AuthError::Unauthenticated);
        }
    }
    let mut signers = Vec::new();
    for h in &parsed {
        if !signers.contains(&h.fpr) {
            signers.push(h.fpr.clone());
        }
    }
    Ok(Verified { signers, headers: parsed })
}

/// [`verify_signatures`], then record the nonces; returns the signers.
#[allow(clippy::too_many_arguments)]
pub fn verify_request(
    headers: &[&str],
    outboxes: &[String],
    method: &str,
    path: &str,
    body_sha256: &str,
    now: i64,
    lookup: &mut dyn FnMut(&Fpr) -> Option<Cert>,
    nonces: &dyn NonceStore,
) -> Result<Vec<Fpr>, AuthError> {
    verify_signatures(headers, outboxes, method, path, body_sha256, now, lookup)?.remember(nonces)
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
        const O: &str = "http://Outbox.example:80/base";
        let o = vec![protocol::outbox_id(O).unwrap()];
        let d = protocol::EMPTY_SHA256;
        let mut look = |f: &Fpr| if *f == a.fpr() { Some(a.cert()) } else { None };
        let h = sign_request(&a, O, "GET", "/v1/messages", d, now).unwrap();
        assert_eq!(verify_request(&[&h], &o, "GET", "/v1/messages", d, now + 10, &mut look, &store).unwrap(), vec![a.fpr()]);
        // The same header again is a replay.
        assert_eq!(verify_request(&[&h], &o, "GET", "/v1/messages", d, now, &mut look, &store), Err(AuthError::Replayed));
        // Each part of the canonical request is covered.
        let h = sign_request(&a, O, "GET", "/v1/messages", d, now).unwrap();
        assert_eq!(verify_request(&[&h], &o, "POST", "/v1/messages", d, now, &mut look, &store), Err(AuthError::Unauthenticated));
        assert_eq!(verify_request(&[&h], &o, "GET", "/v1/poll", d, now, &mut look, &store), Err(AuthError::Unauthenticated));
        assert_eq!(verify_request(&[&h], &o, "GET", "/v1/messages", &"0".repeat(64), now, &mut look, &store), Err(AuthError::Unauthenticated));
        // Stale in both directions.
        assert!(matches!(verify_request(&[&h], &o, "GET", "/v1/messages", d, now + 301, &mut look, &store), Err(AuthError::Stale { .. })));
        assert!(matches!(verify_request(&[&h], &o, "GET", "/v1/messages", d, now - 301, &mut look, &store), Err(AuthError::Stale { .. })));
        // Unknown signer and a signer claiming someone else's fingerprint.
        let hm = sign_request(&m, O, "GET", "/v1/messages", d, now).unwrap();
        assert_eq!(verify_request(&[&hm], &o, "GET", "/v1/messages", d, now, &mut look, &store), Err(AuthError::Unauthenticated));
        let forged = hm.replace(m.fpr().as_str(), a.fpr().as_str());
        assert_eq!(verify_request(&[&forged], &o, "GET", "/v1/messages", d, now, &mut look, &store), Err(AuthError::Unauthenticated));
        assert_eq!(verify_request(&[], &o, "GET", "/", d, now, &mut look, &store), Err(AuthError::Missing));
        // A failed request consumed no nonce: the valid one still works.
        assert!(verify_request(&[&h], &o, "GET", "/v1/messages", d, now, &mut look, &store).is_ok());
        // Made for another outbox: refused here, and its nonce untouched.
        let h = sign_request(&a, "http://other.example/base/", "GET", "/v1/messages", d, now).unwrap();
        assert_eq!(verify_request(&[&h], &o, "GET", "/v1/messages", d, now, &mut look, &store), Err(AuthError::Unauthenticated));
        let both = vec![o[0].clone(), "http://other.example/base/".to_string()];
        assert!(verify_request(&[&h], &both, "GET", "/v1/messages", d, now, &mut look, &store).is_ok(), "an outbox known by two URLs");
    }
}
