//! The Stubmail wire protocol, version 1, as data: ids, fingerprints, the
//! signed-request header, the canonical string that is signed, and the JSON
//! bodies. See `docs/PROTOCOL.md`.
//!
//! Invariant: this module does no I/O and knows nothing of OpenPGP; it only
//! parses and formats. That keeps it testable with tables and property tests.

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod udp;

/// Protocol version, the path prefix of every endpoint.
pub const VERSION_PREFIX: &str = "v1/";
/// Header carrying one requester signature (may repeat).
pub const SIGNATURE_HEADER: &str = "stubmail-signature";
/// Header carrying the SHA-256 of the request body.
pub const DIGEST_HEADER: &str = "stubmail-content-sha256";
/// Header listing the recipient fingerprints of an upload.
pub const RECIPIENTS_HEADER: &str = "stubmail-recipients";
/// Allowed clock difference between requester and server, in seconds.
pub const MAX_CLOCK_SKEW: i64 = 300;
/// How long a server remembers a nonce; longer than the skew window on both
/// sides, so a replay is always caught while its timestamp is acceptable.
pub const NONCE_MEMORY: i64 = 2 * MAX_CLOCK_SKEW;
/// The most recipients one stored message may have.
pub const MAX_RECIPIENTS: usize = 1000;
/// SHA-256 of the empty string: the digest of a request without a body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// True if `s` is a message id: 64 lower-case hex digits (a SHA-256).
pub fn is_valid_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A full v4 OpenPGP fingerprint: 40 upper-case hex digits. Never a key id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fpr(String);

impl Fpr {
    /// Parse a fingerprint, accepting lower case and spaces (as gpg prints
    /// them) and normalising to 40 upper-case hex digits.
    pub fn parse(s: &str) -> Result<Fpr, ProtocolError> {
        let norm: String = s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
        if norm.len() == 40 && norm.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Fpr(norm))
        } else {
            Err(ProtocolError::BadFingerprint(s.chars().take(80).collect()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Fpr {
    type Error = ProtocolError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Fpr::parse(&s)
    }
}
impl From<Fpr> for String {
    fn from(f: Fpr) -> String {
        f.0
    }
}
impl fmt::Display for Fpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Fpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fpr({})", self.0)
    }
}

/// Errors in parsing wire data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("not a full OpenPGP fingerprint (40 hex digits): {0:?}")]
    BadFingerprint(String),
    #[error("malformed Stubmail-Signature header: {0}")]
    BadSignatureHeader(&'static str),
    #[error("malformed recipient list: {0}")]
    BadRecipients(String),
}

/// One `Stubmail-Signature` header:
/// `v1; fpr=<FPR>; ts=<unix>; nonce=<32 hex>; sig=<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    /// The signer's certificate.
    pub fpr: Fpr,
    /// Unix seconds at signing; checked against the server's clock.
    pub ts: i64,
    /// 16 random bytes, hex; a server refuses a second use.
    pub nonce: String,
    /// Binary OpenPGP detached signature over [`canonical_request`].
    pub sig: Vec<u8>,
}

impl fmt::Debug for SignatureHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureHeader")
            .field("fpr", &self.fpr)
            .field("ts", &self.ts)
            .field("nonce", &self.nonce)
            .field("sig_len", &self.sig.len())
            .finish()
    }
}

/// True if `s` is a device id: 1 to 64 characters of [A-Za-z0-9_-].
pub fn is_valid_device(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// True if `s` is a nonce: 32 lower-case hex digits.
pub fn is_valid_nonce(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl SignatureHeader {
    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        use base64::Engine;
        use ProtocolError::BadSignatureHeader as Bad;
        if s.len() > 8192 {
            return Err(Bad("too long"));
        }
        let mut parts = s.split(';').map(str::trim);
        match parts.next() {
            Some("v2") => {}
            Some("v1") => return Err(Bad("v1 signatures are not bound to an outbox and are refused: upgrade Stubmail (v2)")),
            _ => return Err(Bad("must start with \"v2;\"")),
        }
        let (mut fpr, mut ts, mut nonce, mut sig) = (None, None, None, None);
        for p in parts {
            let (k, v) = p.split_once('=').ok_or(Bad("parameter without '='"))?;
            let slot = match k.trim() {
                "fpr" => &mut fpr,
                "ts" => &mut ts,
                "nonce" => &mut nonce,
                "sig" => &mut sig,
                _ => return Err(Bad("unknown parameter")),
            };
            if slot.replace(v.trim()).is_some() {
                return Err(Bad("duplicate parameter"));
            }
        }
        let fpr = Fpr::parse(fpr.ok_or(Bad("missing fpr"))?).map_err(|_| Bad("bad fpr"))?;
        let ts_s = ts.ok_or(Bad("missing ts"))?;
        if ts_s.is_empty() || ts_s.len() > 12 || !ts_s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Bad("bad ts"));
        }
        let ts = ts_s.parse().map_err(|_| Bad("bad ts"))?;
        let nonce = nonce.ok_or(Bad("missing nonce"))?;
        if !is_valid_nonce(nonce) {
            return Err(Bad("nonce must be 32 lower-case hex digits"));
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig.ok_or(Bad("missing sig"))?)
            .map_err(|_| Bad("sig is not base64"))?;
        if sig.is_empty() {
            return Err(Bad("empty sig"));
        }
        Ok(SignatureHeader { fpr, ts, nonce: nonce.to_string(), sig })
    }

    pub fn format(&self) -> String {
        use base64::Engine;
        format!(
            "v2; fpr={}; ts={}; nonce={}; sig={}",
            self.fpr,
            self.ts,
            self.nonce,
            base64::engine::general_purpose::STANDARD.encode(&self.sig)
        )
    }
}

/// The bytes a requester signs (docs/PROTOCOL.md §3). `outbox` is the
/// outbox's base URL as [`outbox_id`] writes it: a request signed for one
/// outbox does not verify at another.
pub fn canonical_request(outbox: &str, method: &str, path: &str, ts: i64, nonce: &str, body_sha256: &str) -> Vec<u8> {
    format!("stubmail-request-v2\n{outbox}\n{method}\n{path}\n{ts}\n{nonce}\n{body_sha256}\n").into_bytes()
}

/// An outbox's base URL in the one form both ends sign: scheme and host in
/// lower case, no default port, no query or fragment, path ending in `/`.
/// `None` for anything but an http(s) URL with a host.
pub fn outbox_id(url: &str) -> Option<String> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || authority.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    let default = if scheme == "http" { ":80" } else { ":443" };
    if let Some(a) = authority.strip_suffix(default) {
        authority = a.to_string();
    }
    let mut path = path.to_string();
    if !path.ends_with('/') {
        path.push('/');
    }
    Some(format!("{scheme}://{authority}{path}"))
}

/// Parse the `Stubmail-Recipients` header: comma-separated distinct
/// fingerprints, at least one, at most [`MAX_RECIPIENTS`].
pub fn parse_recipients(s: &str) -> Result<Vec<Fpr>, ProtocolError> {
    let mut out: Vec<Fpr> = Vec::new();
    for part in s.split(',') {
        let f = Fpr::parse(part.trim()).map_err(|e| ProtocolError::BadRecipients(e.to_string()))?;
        if out.contains(&f) {
            return Err(ProtocolError::BadRecipients(format!("{f} listed twice")));
        }
        out.push(f);
        if out.len() > MAX_RECIPIENTS {
            return Err(ProtocolError::BadRecipients(format!("more than {MAX_RECIPIENTS}")));
        }
    }
    Ok(out)
}

pub fn format_recipients(r: &[Fpr]) -> String {
    r.iter().map(Fpr::as_str).collect::<Vec<_>>().join(",")
}

/// Per-recipient delivery state of a stored message. There are no bounces:
/// this is what a sender reads instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// In the outbox, waiting for the recipient.
    Stored,
    /// A notification stub was sent (later issue).
    Notified,
    /// The recipient fetched it and confirmed durable delivery.
    Retrieved,
    /// Retention ended before the recipient fetched it.
    Expired,
    /// The sender withdrew it before the recipient fetched it.
    Unsent,
}

impl DeliveryState {
    /// Still waiting for the recipient to fetch it.
    pub fn is_pending(self) -> bool {
        matches!(self, DeliveryState::Stored | DeliveryState::Notified)
    }
}

/// Body of `POST /v1/poll`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollRequest {
    /// Only messages from these senders; `None` means every sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senders: Option<Vec<Fpr>>,
    /// The signers' own certificates, ASCII-armored (§3 of the protocol).
    #[serde(default)]
    pub certs: Vec<String>,
    /// Which of the recipient's devices asks (several devices, one identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// `false`: the asker will not poll over UDP (a one-off check beside a
    /// running daemon), so the outbox issues no cookie and the device's
    /// current cookie keeps working (§8.1). Absent means `true`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub udp: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for PollRequest {
    fn default() -> Self {
        PollRequest { senders: None, certs: Vec::new(), device: None, udp: true }
    }
}

/// One message announced by a poll answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollItem {
    pub id: String,
    pub sender: Fpr,
    pub recipient: Fpr,
    pub size: u64,
    /// RFC 3339 time the outbox stored it.
    pub stored: String,
}

/// Answer to `POST /v1/poll`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollResponse {
    pub messages: Vec<PollItem>,
    /// One cookie per signer, for UDP polls (§8); absent when the outbox
    /// answers no UDP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<Cookie>,
    /// The UDP port of the outbox's poll service, on the outbox URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_port: Option<u16>,
}

/// A UDP poll cookie: its id and MAC key, both hex. It stands for the
/// signer, the device and the senders of the signed poll that issued it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cookie {
    pub recipient: Fpr,
    /// 16 octets, hex.
    pub id: String,
    /// 32 octets, hex. A secret: never printed through `Debug`.
    pub key: String,
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cookie({}, {})", self.recipient, self.id)
    }
}

impl Cookie {
    /// The id and key as octets, if well-formed.
    pub fn decode(&self) -> Option<(udp::CookieId, udp::CookieKey)> {
        let mut id = [0u8; 16];
        let mut key = [0u8; 32];
        hex::decode_to_slice(&self.id, &mut id).ok()?;
        hex::decode_to_slice(&self.key, &mut key).ok()?;
        Some((id, key))
    }
}

/// Body of `POST /v1/messages/<id>/notify`: stubs the sender signed, for the
/// outbox to send (and resend) to each recipient's notify endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyRequest {
    pub stubs: Vec<NotifyStub>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyStub {
    /// The recipient's certificate, ASCII-armored: the outbox takes the
    /// endpoint only from the recipient's own self-signature.
    pub cert: String,
    /// The stub datagram (§8), standard base64.
    pub stub: String,
}

/// Most messages one `POST /v1/notify` may name (PROTOCOL.md §8.3); the
/// stubs of all of them together are bounded by [`MAX_RECIPIENTS`].
pub const MAX_NOTIFY_BATCH: usize = 100;

/// Body of `POST /v1/notify`: the stubs of several messages at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyBatchRequest {
    pub messages: Vec<NotifyMessage>,
}

/// One message's stubs in a [`NotifyBatchRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyMessage {
    pub id: String,
    pub stubs: Vec<NotifyStub>,
}

/// Answer to a notify request: how many stubs will be sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyResponse {
    pub accepted: usize,
}

/// Answer to an upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadResponse {
    pub id: String,
    pub size: u64,
    pub recipients: Vec<Fpr>,
}

/// Body of `POST /v1/messages/<id>/ack`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Body of `POST /v1/messages/<id>/complaint`: a recipient reports a
/// message it received as abuse (PROTOCOL.md §4.8).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplaintRequest {
    /// The message's sender (the account it was stored by).
    pub sender: Option<Fpr>,
    /// Free text, at most [`MAX_COMPLAINT_REASON`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The sender's signed stub announcing the message to the complainer
    /// (§8.3), standard base64, when the complainer received one: the
    /// sender's own signed word that it sent this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stub: Option<String>,
}

/// Longest `reason` of a complaint.
pub const MAX_COMPLAINT_REASON: usize = 500;

/// Answer to a complaint: whether it was new (a recipient's second
/// complaint about one message is not counted again).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplaintResponse {
    pub recorded: bool,
    /// The outbox operator's abuse desk, if it publishes one: the reporter
    /// mails it a signed ARF report as well (RFC 5965; PROTOCOL.md §4.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abuse_contact: Option<String>,
}

/// Most ids one `POST /v1/acks` may name (PROTOCOL.md §4.4).
pub const MAX_ACK_BATCH: usize = 1000;

/// Body of `POST /v1/acks`: several messages acked by one signed request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckBatchRequest {
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Answer to `POST /v1/acks`: the status of each message acked (the
/// acking recipient's entry only), and the ids the outbox has nothing of
/// for this recipient (unknown, unsent, expired).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckBatchResponse {
    pub acked: Vec<MessageStatus>,
    #[serde(default)]
    pub not_found: Vec<String>,
}

/// One recipient's line in a status answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientStatus {
    pub fpr: Fpr,
    pub state: DeliveryState,
    /// RFC 3339 time of the last state change.
    pub at: String,
}

/// Delivery status of one stored message (also the answer to ack/unsend).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageStatus {
    pub id: String,
    pub sender: Fpr,
    pub size: u64,
    pub stored: String,
    pub recipients: Vec<RecipientStatus>,
}

/// Answer to `GET /v1/messages`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageList {
    pub messages: Vec<MessageStatus>,
}

/// An account's limits and usage (`GET /v1/account`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountStatus {
    pub fpr: Option<Fpr>,
    /// Bytes and messages stored now.
    pub bytes: u64,
    pub messages: u64,
    /// Distinct recipients today (UTC).
    pub recipients_today: u64,
    pub max_bytes: u64,
    pub max_messages: u64,
    pub max_recipients_per_day: u64,
    /// Which recipients those are, so a client can tell which of its next
    /// message's recipients would be new today (absent from outboxes
    /// before this field; at most `max_recipients_per_day`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub today: Vec<Fpr>,
}

impl AccountStatus {
    /// Usage against every quota, for people: "3 of 10000 messages, …".
    pub fn usage(&self) -> String {
        format!(
            "{} of {} messages, {} of {} bytes, {} of {} recipients today",
            self.messages, self.max_messages, self.bytes, self.max_bytes, self.recipients_today, self.max_recipients_per_day
        )
    }

    /// The quotas at or past 90 %, named.
    pub fn nearly_full(&self) -> Vec<&'static str> {
        let near = |used: u64, max: u64| max > 0 && used.saturating_mul(10) >= max.saturating_mul(9);
        let mut v = Vec::new();
        if near(self.messages, self.max_messages) {
            v.push("messages");
        }
        if near(self.bytes, self.max_bytes) {
            v.push("bytes");
        }
        if near(self.recipients_today, self.max_recipients_per_day) {
            v.push("recipients today");
        }
        v
    }
}

/// Every error answer's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code (docs/PROTOCOL.md §5).
    pub error: String,
    /// A sentence naming the problem and the fix.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: &str = "0123456789ABCDEF0123456789ABCDEF01234567";

    #[test]
    fn ids() {
        let good = "a".repeat(64);
        assert!(is_valid_id(&good));
        for bad in ["", "../etc/passwd", &"A".repeat(64), &"a".repeat(63), &"a".repeat(65), &format!("{}/", "a".repeat(63))] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_normalise() {
        assert_eq!(Fpr::parse("0123 4567 89ab cdef 0123  4567 89AB CDEF 0123 4567").unwrap().as_str(), F);
        for bad in ["", "0123", "DEADBEEF", &"G".repeat(40), &"A".repeat(41)] {
            assert!(Fpr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn signature_header_table() {
        let n = "0".repeat(32);
        let ok = format!("v2; fpr={F}; ts=1700000000; nonce={n}; sig=AAEC");
        let h = SignatureHeader::parse(&ok).unwrap();
        assert_eq!(h.sig, vec![0, 1, 2]);
        assert_eq!(h.ts, 1700000000);
        // v1 (not bound to an outbox) is refused, and says why.
        let v1 = SignatureHeader::parse(&format!("v1; fpr={F}; ts=1; nonce={n}; sig=AA==")).unwrap_err().to_string();
        assert!(v1.contains("not bound to an outbox"), "{v1}");
        let cases = [
            format!("v3; fpr={F}; ts=1; nonce={n}; sig=AA=="),
            format!("v2; fpr={F}; ts=-1; nonce={n}; sig=AA=="),
            format!("v2; fpr={F}; ts=1; nonce=xyz; sig=AA=="),
            format!("v2; fpr={F}; ts=1; nonce={n}; sig=!!"),
            format!("v2; fpr={F}; ts=1; nonce={n}"),
            format!("v2; fpr={F}; fpr={F}; ts=1; nonce={n}; sig=AA=="),
            format!("v2; fpr=DEADBEEF; ts=1; nonce={n}; sig=AA=="),
            format!("v2; fpr={F}; ts=1; nonce={n}; sig=AA==; extra=1"),
            format!("v2; fpr={F}; ts=99999999999999; nonce={n}; sig=AA=="),
            "v1".to_string(),
            String::new(),
            "x".repeat(10000),
        ];
        for c in cases {
            assert!(SignatureHeader::parse(&c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn canonical_is_line_based() {
        let c = canonical_request("http://o/", "GET", "/v1/poll", 5, "n", EMPTY_SHA256);
        assert_eq!(c, format!("stubmail-request-v2\nhttp://o/\nGET\n/v1/poll\n5\nn\n{EMPTY_SHA256}\n").into_bytes());
    }

    #[test]
    fn outbox_ids_are_one_form() {
        for (url, id) in [
            ("http://Example.ORG", Some("http://example.org/")),
            ("HTTPS://mail.example.org:443/stubmail?x=1#f", Some("https://mail.example.org/stubmail/")),
            ("http://127.0.0.1:8080/a/", Some("http://127.0.0.1:8080/a/")),
            ("http://[::1]:80/", Some("http://[::1]/")),
            ("ftp://x/", None),
            ("http:///x", None),
            ("http://user@x/", None),
            ("x", None),
        ] {
            assert_eq!(outbox_id(url).as_deref(), id, "{url}");
        }
    }

    #[test]
    fn recipients() {
        let g = "1".repeat(40);
        assert_eq!(parse_recipients(&format!("{F}, {g}")).unwrap().len(), 2);
        assert!(parse_recipients(&format!("{F},{F}")).is_err());
        assert!(parse_recipients("").is_err());
        assert!(parse_recipients(&format!("{F},")).is_err());
    }

    fn fpr() -> impl Strategy<Value = Fpr> {
        "[0-9A-F]{40}".prop_map(|s| Fpr::parse(&s).unwrap())
    }

    proptest! {
        #[test]
        fn signature_header_round_trips(fpr in fpr(), ts in 0i64..999_999_999_999, nonce in "[0-9a-f]{32}",
                                        sig in proptest::collection::vec(any::<u8>(), 1..300)) {
            let h = SignatureHeader { fpr, ts, nonce, sig };
            prop_assert_eq!(SignatureHeader::parse(&h.format()).unwrap(), h);
        }

        #[test]
        fn signature_header_never_panics(s in ".{0,400}") {
            let _ = SignatureHeader::parse(&s);
        }

        #[test]
        fn recipients_round_trip(r in proptest::collection::btree_set(fpr(), 1..20)) {
            let r: Vec<Fpr> = r.into_iter().collect();
            prop_assert_eq!(parse_recipients(&format_recipients(&r)).unwrap(), r);
        }

        #[test]
        fn poll_json_round_trips(senders in proptest::option::of(proptest::collection::vec(fpr(), 0..5)),
                                 certs in proptest::collection::vec(".{0,50}", 0..3),
                                 items in proptest::collection::vec((fpr(), fpr(), "[0-9a-f]{64}", any::<u64>()), 0..5)) {
            let req = PollRequest { senders, certs, ..Default::default() };
            prop_assert_eq!(serde_json::from_str::<PollRequest>(&serde_json::to_string(&req).unwrap()).unwrap(), req);
            let resp = PollResponse { messages: items.into_iter().map(|(s, r, id, size)| PollItem {
                id, sender: s, recipient: r, size, stored: "2026-01-01T00:00:00Z".into() }).collect(), ..Default::default() };
            prop_assert_eq!(serde_json::from_str::<PollResponse>(&serde_json::to_string(&resp).unwrap()).unwrap(), resp);
        }
    }

    #[test]
    fn fpr_json_rejects_short_ids() {
        assert!(serde_json::from_str::<Fpr>("\"DEADBEEFDEADBEEF\"").is_err());
        let st = MessageStatus {
            id: "a".repeat(64),
            sender: Fpr::parse(F).unwrap(),
            size: 3,
            stored: "x".into(),
            recipients: vec![RecipientStatus { fpr: Fpr::parse(F).unwrap(), state: DeliveryState::Retrieved, at: "y".into() }],
        };
        let j = serde_json::to_string(&st).unwrap();
        assert!(j.contains("\"retrieved\""));
        assert_eq!(serde_json::from_str::<MessageStatus>(&j).unwrap(), st);
    }
}
