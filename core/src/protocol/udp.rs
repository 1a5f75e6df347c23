//! The UDP side of protocol v1 (docs/PROTOCOL.md §8): the cookie poll, its
//! reply, and the notification stub. Pure data like the rest of `protocol`:
//! no sockets, no OpenPGP (a stub's signature is carried as opaque bytes and
//! checked by the caller with `pgp::verify_detached`).
//!
//! Three rules shape the formats:
//! * **No amplification.** A reply entry (33 bytes) is smaller than the poll
//!   entry it answers (40 bytes) and a reply only answers entries of its own
//!   request, so a reply is never larger than the datagram that caused it.
//! * **Cheap authentication.** A poll entry carries a truncated HMAC-SHA256
//!   under a key the outbox handed out in a *signed* HTTP poll: checking it
//!   costs a hash, not a signature verification.
//! * **No fragmentation.** Datagrams stay under [`MAX_DATAGRAM`] octets.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Fpr;

/// First four octets of a poll datagram.
pub const POLL_MAGIC: &[u8; 4] = b"SMP1";
/// First four octets of a poll reply.
pub const REPLY_MAGIC: &[u8; 4] = b"SMR1";
/// First four octets of a notification stub.
pub const STUB_MAGIC: &[u8; 4] = b"SMN1";
/// Largest datagram sent or accepted: 1280 (the IPv6 minimum MTU) minus the
/// IPv6 and UDP headers, so nothing is ever fragmented.
pub const MAX_DATAGRAM: usize = 1232;
/// Octets of one poll entry: cookie id, counter, MAC.
pub const POLL_ENTRY: usize = 16 + 8 + 16;
/// Octets of one reply entry: cookie id, status, MAC.
pub const REPLY_ENTRY: usize = 16 + 1 + 16;
/// The most cookies one poll datagram carries.
pub const MAX_COOKIES: usize = (MAX_DATAGRAM - 5) / POLL_ENTRY;
/// Longest outbox URL a stub carries.
pub const MAX_STUB_URL: usize = 255;
/// Longest stub signature accepted (an Ed25519 OpenPGP signature is ~120).
pub const MAX_STUB_SIG: usize = 600;

// The no-amplification rule, checked by the compiler.
const _: () = assert!(REPLY_ENTRY < POLL_ENTRY);

pub type CookieId = [u8; 16];
pub type CookieKey = [u8; 32];
pub type Mac16 = [u8; 16];

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UdpError {
    #[error("datagram too short")]
    Short,
    #[error("not a Stubmail datagram of this kind")]
    BadMagic,
    #[error("datagram length does not match its entry count")]
    Length,
    #[error("a datagram carries 1 to {MAX_COOKIES} entries")]
    Count,
    #[error("datagram larger than {MAX_DATAGRAM} octets")]
    TooLarge,
    #[error("unknown poll status {0}")]
    BadStatus(u8),
    #[error("bad field in a stub: {0}")]
    BadStub(&'static str),
}

type HmacSha256 = Hmac<Sha256>;

fn mac16(key: &CookieKey, parts: &[&[u8]]) -> Mac16 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    let full = m.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

fn mac_ok(key: &CookieKey, parts: &[&[u8]], tag: &Mac16) -> bool {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    // Constant time: a forger learns nothing from timing.
    m.verify_truncated_left(tag).is_ok()
}

/// One cookie in a poll datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollEntry {
    pub cookie: CookieId,
    /// Strictly increasing per cookie (the client uses microseconds since
    /// the epoch, so it need not remember anything across restarts).
    pub counter: u64,
    pub mac: Mac16,
}

impl PollEntry {
    pub fn new(cookie: CookieId, key: &CookieKey, counter: u64) -> PollEntry {
        let mac = mac16(key, &[POLL_MAGIC, &cookie, &counter.to_be_bytes()]);
        PollEntry { cookie, counter, mac }
    }
    pub fn verify(&self, key: &CookieKey) -> bool {
        mac_ok(key, &[POLL_MAGIC, &self.cookie, &self.counter.to_be_bytes()], &self.mac)
    }
}

/// What the outbox says about one cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    /// Nothing new for this recipient (and device) from the senders asked.
    Nothing = 0,
    /// Mail is waiting: do a signed HTTP poll to get it.
    Mail = 1,
    /// Do a signed HTTP poll anyway (the cookie is old, or the outbox could
    /// not tell); it hands out a fresh cookie.
    SignedPoll = 2,
}

impl TryFrom<u8> for PollStatus {
    type Error = UdpError;
    fn try_from(b: u8) -> Result<Self, UdpError> {
        match b {
            0 => Ok(PollStatus::Nothing),
            1 => Ok(PollStatus::Mail),
            2 => Ok(PollStatus::SignedPoll),
            b => Err(UdpError::BadStatus(b)),
        }
    }
}

/// One answer in a reply. Its MAC binds the status to the request's
/// counter, so an off-path forger cannot make a client believe "nothing".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyEntry {
    pub cookie: CookieId,
    pub status: PollStatus,
    pub mac: Mac16,
}

impl ReplyEntry {
    pub fn new(cookie: CookieId, key: &CookieKey, counter: u64, status: PollStatus) -> ReplyEntry {
        let mac = mac16(key, &[REPLY_MAGIC, &cookie, &counter.to_be_bytes(), &[status as u8]]);
        ReplyEntry { cookie, status, mac }
    }
    /// Check against the key and the counter this client sent.
    pub fn verify(&self, key: &CookieKey, counter: u64) -> bool {
        mac_ok(key, &[REPLY_MAGIC, &self.cookie, &counter.to_be_bytes(), &[self.status as u8]], &self.mac)
    }
}

fn header(magic: &[u8; 4], n: usize) -> Result<Vec<u8>, UdpError> {
    if n == 0 || n > MAX_COOKIES {
        return Err(UdpError::Count);
    }
    let mut v = Vec::with_capacity(5 + n * POLL_ENTRY);
    v.extend_from_slice(magic);
    v.push(n as u8);
    Ok(v)
}

fn entries<'a>(b: &'a [u8], magic: &[u8; 4], size: usize) -> Result<std::slice::ChunksExact<'a, u8>, UdpError> {
    if b.len() > MAX_DATAGRAM {
        return Err(UdpError::TooLarge);
    }
    if b.len() < 5 {
        return Err(UdpError::Short);
    }
    if &b[..4] != magic {
        return Err(UdpError::BadMagic);
    }
    let n = b[4] as usize;
    if n == 0 || n > MAX_COOKIES {
        return Err(UdpError::Count);
    }
    if b.len() != 5 + n * size {
        return Err(UdpError::Length);
    }
    Ok(b[5..].chunks_exact(size))
}

pub fn encode_poll(e: &[PollEntry]) -> Result<Vec<u8>, UdpError> {
    let mut v = header(POLL_MAGIC, e.len())?;
    for x in e {
        v.extend_from_slice(&x.cookie);
        v.extend_from_slice(&x.counter.to_be_bytes());
        v.extend_from_slice(&x.mac);
    }
    Ok(v)
}

pub fn decode_poll(b: &[u8]) -> Result<Vec<PollEntry>, UdpError> {
    Ok(entries(b, POLL_MAGIC, POLL_ENTRY)?
        .map(|c| PollEntry {
            cookie: c[..16].try_into().expect("16"),
            counter: u64::from_be_bytes(c[16..24].try_into().expect("8")),
            mac: c[24..40].try_into().expect("16"),
        })
        .collect())
}

pub fn encode_reply(e: &[ReplyEntry]) -> Result<Vec<u8>, UdpError> {
    let mut v = header(REPLY_MAGIC, e.len())?;
    for x in e {
        v.extend_from_slice(&x.cookie);
        v.push(x.status as u8);
        v.extend_from_slice(&x.mac);
    }
    Ok(v)
}

pub fn decode_reply(b: &[u8]) -> Result<Vec<ReplyEntry>, UdpError> {
    entries(b, REPLY_MAGIC, REPLY_ENTRY)?
        .map(|c| {
            Ok(ReplyEntry {
                cookie: c[..16].try_into().expect("16"),
                status: PollStatus::try_from(c[16])?,
                mac: c[17..33].try_into().expect("16"),
            })
        })
        .collect()
}

/// A notification stub: "`sender` has message `id` of `size` octets for
/// `recipient` at `outbox`". It carries no content; it only makes the
/// recipient poll sooner. Signed by the sender's own key (made by the
/// sender's smtp2stub, resent by the outbox, which holds no secret key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stub {
    pub sender: Fpr,
    pub recipient: Fpr,
    /// The message id (64 hex digits).
    pub id: String,
    pub size: u64,
    /// Unix time the sender made the stub.
    pub made: i64,
    /// The sender's outbox URL (for a stranger's stub, where to fetch the
    /// sender's certificate if the user accepts the introduction).
    pub outbox: String,
}

fn fpr_bytes(f: &Fpr) -> [u8; 20] {
    let mut out = [0u8; 20];
    hex::decode_to_slice(f.as_str(), &mut out).expect("an Fpr is 40 hex digits");
    out
}

impl Stub {
    /// The octets the sender signs: everything before the signature.
    pub fn signed_part(&self) -> Result<Vec<u8>, UdpError> {
        if self.outbox.len() > MAX_STUB_URL {
            return Err(UdpError::BadStub("outbox URL longer than 255 octets"));
        }
        let mut id = [0u8; 32];
        hex::decode_to_slice(&self.id, &mut id).map_err(|_| UdpError::BadStub("id"))?;
        if !super::is_valid_id(&self.id) {
            return Err(UdpError::BadStub("id"));
        }
        let mut v = Vec::with_capacity(4 + 20 + 20 + 32 + 16 + 1 + self.outbox.len());
        v.extend_from_slice(STUB_MAGIC);
        v.extend_from_slice(&fpr_bytes(&self.sender));
        v.extend_from_slice(&fpr_bytes(&self.recipient));
        v.extend_from_slice(&id);
        v.extend_from_slice(&self.size.to_be_bytes());
        v.extend_from_slice(&self.made.to_be_bytes());
        v.push(self.outbox.len() as u8);
        v.extend_from_slice(self.outbox.as_bytes());
        Ok(v)
    }

    /// The whole datagram: signed part, signature length (u16), signature.
    pub fn encode(&self, sig: &[u8]) -> Result<Vec<u8>, UdpError> {
        if sig.is_empty() || sig.len() > MAX_STUB_SIG {
            return Err(UdpError::BadStub("signature length"));
        }
        let mut v = self.signed_part()?;
        v.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        v.extend_from_slice(sig);
        if v.len() > MAX_DATAGRAM {
            return Err(UdpError::TooLarge);
        }
        Ok(v)
    }

    /// Parse a datagram into the stub, the signed octets and the signature.
    pub fn decode(b: &[u8]) -> Result<(Stub, &[u8], &[u8]), UdpError> {
        if b.len() > MAX_DATAGRAM {
            return Err(UdpError::TooLarge);
        }
        const FIXED: usize = 4 + 20 + 20 + 32 + 8 + 8 + 1;
        if b.len() < FIXED {
            return Err(UdpError::Short);
        }
        if &b[..4] != STUB_MAGIC {
            return Err(UdpError::BadMagic);
        }
        let url_len = b[FIXED - 1] as usize;
        let signed_end = FIXED + url_len;
        if b.len() < signed_end + 2 {
            return Err(UdpError::Short);
        }
        let sig_len = u16::from_be_bytes([b[signed_end], b[signed_end + 1]]) as usize;
        if sig_len == 0 || sig_len > MAX_STUB_SIG || b.len() != signed_end + 2 + sig_len {
            return Err(UdpError::Length);
        }
        let fpr = |r: std::ops::Range<usize>| Fpr::parse(&hex::encode_upper(&b[r])).map_err(|_| UdpError::BadStub("fingerprint"));
        let outbox = std::str::from_utf8(&b[FIXED..signed_end]).map_err(|_| UdpError::BadStub("outbox URL is not UTF-8"))?;
        if !(outbox.starts_with("http://") || outbox.starts_with("https://")) || outbox.chars().any(char::is_control) {
            return Err(UdpError::BadStub("outbox URL"));
        }
        let made = i64::from_be_bytes(b[84..92].try_into().expect("8"));
        let stub = Stub {
            sender: fpr(4..24)?,
            recipient: fpr(24..44)?,
            id: hex::encode(&b[44..76]),
            size: u64::from_be_bytes(b[76..84].try_into().expect("8")),
            made,
            outbox: outbox.to_string(),
        };
        Ok((stub, &b[..signed_end], &b[signed_end + 2..]))
    }
}

/// A stub with its sender's certificate, for a recipient that does not
/// know the sender yet and acts on its own (a list's robot): the magic,
/// the stub datagram's length (u16), the stub datagram, then the
/// certificate (binary OpenPGP, cut to what proves the stub:
/// `pgp::minimal`) to the end. Still one datagram of at most
/// [`MAX_DATAGRAM`] octets.
pub const CERT_STUB_MAGIC: &[u8; 4] = b"SMC1";

/// The datagram carrying `stub` (an encoded stub) and `cert`.
pub fn encode_with_cert(stub: &[u8], cert: &[u8]) -> Result<Vec<u8>, UdpError> {
    let mut v = Vec::with_capacity(6 + stub.len() + cert.len());
    v.extend_from_slice(CERT_STUB_MAGIC);
    v.extend_from_slice(&u16::try_from(stub.len()).map_err(|_| UdpError::TooLarge)?.to_be_bytes());
    v.extend_from_slice(stub);
    v.extend_from_slice(cert);
    if cert.is_empty() {
        return Err(UdpError::BadStub("no certificate"));
    }
    if v.len() > MAX_DATAGRAM {
        return Err(UdpError::TooLarge);
    }
    Ok(v)
}

/// Split a datagram into its stub and the certificate it carries (`None`
/// for a stub without one).
pub fn split_cert(b: &[u8]) -> Result<(&[u8], Option<&[u8]>), UdpError> {
    if b.len() > MAX_DATAGRAM {
        return Err(UdpError::TooLarge);
    }
    if !b.starts_with(CERT_STUB_MAGIC) {
        return Ok((b, None));
    }
    if b.len() < 6 {
        return Err(UdpError::Short);
    }
    let n = u16::from_be_bytes([b[4], b[5]]) as usize;
    let rest = &b[6..];
    if n > rest.len() || n == rest.len() {
        // The stub cut short, or no certificate after it.
        return Err(UdpError::Length);
    }
    Ok((&rest[..n], Some(&rest[n..])))
}

/// Is `s` a notify endpoint as bound in a certificate: `udp://HOST:PORT`?
/// Returns `HOST:PORT`.
pub fn parse_notify_endpoint(s: &str) -> Option<&str> {
    let rest = s.strip_prefix("udp://")?;
    let (host, port) = rest.rsplit_once(':')?;
    let ok_host = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    (ok_host && port.parse::<u16>().is_ok_and(|p| p != 0)).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: CookieKey = [7u8; 32];

    fn fpr(c: char) -> Fpr {
        Fpr::parse(&c.to_string().repeat(40)).unwrap()
    }

    #[test]
    fn a_reply_is_never_larger_than_its_request() {
        // Both the per-entry and the whole-datagram sizes, for every count.
        for n in 1..=MAX_COOKIES {
            let req: Vec<_> = (0..n).map(|i| PollEntry::new([i as u8; 16], &KEY, 9)).collect();
            let rep: Vec<_> = (0..n).map(|i| ReplyEntry::new([i as u8; 16], &KEY, 9, PollStatus::Mail)).collect();
            let (a, b) = (encode_poll(&req).unwrap(), encode_reply(&rep).unwrap());
            assert!(b.len() < a.len(), "{n} entries: reply {} vs request {}", b.len(), a.len());
            assert!(a.len() <= MAX_DATAGRAM);
        }
        assert_eq!(encode_poll(&vec![PollEntry::new([0; 16], &KEY, 1); MAX_COOKIES + 1]), Err(UdpError::Count));
        assert_eq!(encode_poll(&[]), Err(UdpError::Count));
    }

    #[test]
    fn macs_bind_key_cookie_counter_and_status() {
        let e = PollEntry::new([1; 16], &KEY, 42);
        assert!(e.verify(&KEY));
        assert!(!e.verify(&[8u8; 32]));
        assert!(!PollEntry { counter: 43, ..e.clone() }.verify(&KEY));
        assert!(!PollEntry { cookie: [2; 16], ..e.clone() }.verify(&KEY));
        let mut m = e.mac;
        m[15] ^= 1;
        assert!(!PollEntry { mac: m, ..e }.verify(&KEY));
        let r = ReplyEntry::new([1; 16], &KEY, 42, PollStatus::Nothing);
        assert!(r.verify(&KEY, 42));
        assert!(!r.verify(&KEY, 41), "a reply to another request");
        assert!(!ReplyEntry { status: PollStatus::Mail, ..r }.verify(&KEY, 42), "a flipped status");
    }

    #[test]
    fn hostile_datagrams_are_refused() {
        let good = encode_poll(&[PollEntry::new([1; 16], &KEY, 1)]).unwrap();
        let cases: Vec<(Vec<u8>, UdpError)> = vec![
            (vec![], UdpError::Short),
            (b"SMP".to_vec(), UdpError::Short),
            (b"XXXX\x01".to_vec(), UdpError::BadMagic),
            (b"SMP1\x00".to_vec(), UdpError::Count),
            ([&b"SMP1"[..], &[MAX_COOKIES as u8 + 1]].concat(), UdpError::Count),
            (good[..good.len() - 1].to_vec(), UdpError::Length),
            ([&good[..], b"x"].concat(), UdpError::Length),
            (vec![0u8; MAX_DATAGRAM + 1], UdpError::TooLarge),
            (encode_reply(&[ReplyEntry::new([1; 16], &KEY, 1, PollStatus::Mail)]).unwrap(), UdpError::BadMagic),
        ];
        for (b, want) in cases {
            assert_eq!(decode_poll(&b), Err(want), "{b:?}");
        }
        let mut rep = encode_reply(&[ReplyEntry::new([1; 16], &KEY, 1, PollStatus::Mail)]).unwrap();
        rep[5 + 16] = 9;
        assert_eq!(decode_reply(&rep), Err(UdpError::BadStatus(9)));
    }

    fn stub() -> Stub {
        Stub { sender: fpr('A'), recipient: fpr('B'), id: "ab".repeat(32), size: 4096, made: 1_700_000_000, outbox: "https://mail.example.org/stubmail/".into() }
    }

    #[test]
    fn stubs_refuse_bad_fields() {
        let b = stub().encode(&[1u8; 119]).unwrap();
        assert!(b.len() < 300);
        let (s, signed, sig) = Stub::decode(&b).unwrap();
        assert_eq!(s, stub());
        assert_eq!(signed, &stub().signed_part().unwrap()[..]);
        assert_eq!(sig, &[1u8; 119][..]);
        for cut in 0..b.len() {
            assert!(Stub::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Stub { outbox: "ftp://x/".into(), ..stub() }.encode(&[1]).and_then(|b| Stub::decode(&b).map(|_| ())).is_err());
        assert!(Stub { outbox: "https://x/\r\nHost: y".into(), ..stub() }.encode(&[1]).and_then(|b| Stub::decode(&b).map(|_| ())).is_err());
        assert!(Stub { outbox: format!("https://{}/", "x".repeat(300)), ..stub() }.encode(&[1]).is_err());
        assert!(Stub { id: "../../etc/passwd".into(), ..stub() }.encode(&[1]).is_err());
        assert!(Stub { id: "AB".repeat(32), ..stub() }.encode(&[1]).is_err(), "ids are lower case");
        assert!(stub().encode(&[]).is_err());
        assert!(stub().encode(&[0; MAX_STUB_SIG + 1]).is_err());
    }

    /// A stub with its sender's certificate: a Stubmail identity's (with
    /// a notify endpoint, a long address and a 100-character outbox URL,
    /// which the stub and the certificate both carry) fits one datagram,
    /// and the certificate read back verifies the stub.
    #[test]
    fn a_stub_with_its_senders_certificate_fits_one_datagram() {
        let url = format!("https://{}.example.org/stubmail/post_manager.cgi/", "outbox".repeat(10));
        let me = crate::Identity::generate_with(Some("A Long Enough Name"), "someone.with.a.long.address@example.org", &url, Some("udp://[2001:db8::1]:2526")).unwrap();
        let stub = Stub { sender: me.fpr(), recipient: fpr('B'), id: "ab".repeat(32), size: 1, made: 2, outbox: url };
        let sig = me.sign_detached(&stub.signed_part().unwrap()).unwrap();
        let inner = stub.encode(&sig).unwrap();
        let cert = crate::pgp::binary(&crate::pgp::minimal(&me.cert()).unwrap()).unwrap();
        let d = encode_with_cert(&inner, &cert).unwrap();
        assert!(d.len() <= MAX_DATAGRAM, "{}", d.len());
        let (got, carried) = split_cert(&d).unwrap();
        let back = crate::pgp::parse_certs(carried.unwrap()).unwrap().remove(0);
        assert_eq!(crate::pgp::fpr_of(&back), me.fpr());
        crate::pgp::check_contact(&back).unwrap();
        let (st, signed, sig) = Stub::decode(got).unwrap();
        assert_eq!(st, stub);
        crate::pgp::verify_detached(&back, signed, sig).unwrap();
        // A plain stub splits to itself.
        assert_eq!(split_cert(&inner).unwrap(), (&inner[..], None));
        // Hostile framing.
        for (what, bad) in [
            ("magic only", b"SMC1".to_vec()),
            ("length past the end", [&b"SMC1\xff\xff"[..], &inner].concat()),
            ("no certificate", [&b"SMC1"[..], &(inner.len() as u16).to_be_bytes(), &inner].concat()),
            ("too long", [&d[..], &vec![0u8; MAX_DATAGRAM]].concat()),
        ] {
            assert!(split_cert(&bad).is_err(), "{what}");
        }
        assert!(encode_with_cert(&inner, &[]).is_err());
        assert!(encode_with_cert(&inner, &[0u8; MAX_DATAGRAM]).is_err());
    }

    #[test]
    fn notify_endpoints() {
        for (s, want) in [
            ("udp://127.0.0.1:2526", Some("127.0.0.1:2526")),
            ("udp://mail.example.org:9", Some("mail.example.org:9")),
            ("udp://[::1]:2526", Some("[::1]:2526")),
            ("udp://host:0", None),
            ("udp://host", None),
            ("tcp://host:1", None),
            ("udp://ho st:1", None),
            ("udp://:1", None),
        ] {
            assert_eq!(parse_notify_endpoint(s), want, "{s}");
        }
    }

    proptest! {
        #[test]
        fn polls_round_trip(e in proptest::collection::vec((any::<[u8; 16]>(), any::<u64>(), any::<[u8; 16]>()), 1..=MAX_COOKIES)) {
            let e: Vec<_> = e.into_iter().map(|(cookie, counter, mac)| PollEntry { cookie, counter, mac }).collect();
            prop_assert_eq!(decode_poll(&encode_poll(&e).unwrap()).unwrap(), e);
        }

        #[test]
        fn replies_round_trip(e in proptest::collection::vec((any::<[u8; 16]>(), 0u8..3, any::<[u8; 16]>()), 1..=MAX_COOKIES)) {
            let e: Vec<_> = e.into_iter().map(|(cookie, s, mac)| ReplyEntry { cookie, status: PollStatus::try_from(s).unwrap(), mac }).collect();
            prop_assert_eq!(decode_reply(&encode_reply(&e).unwrap()).unwrap(), e);
        }

        #[test]
        fn stubs_round_trip(id in any::<[u8; 32]>(), size in any::<u64>(), made in any::<i64>(), host in "[a-z0-9.-]{1,200}", sig in proptest::collection::vec(any::<u8>(), 1..=MAX_STUB_SIG)) {
            let s = Stub { sender: fpr('C'), recipient: fpr('D'), id: hex::encode(id), size, made, outbox: format!("https://{host}/") };
            let b = s.encode(&sig).unwrap();
            let (t, _, g) = Stub::decode(&b).unwrap();
            prop_assert_eq!(t, s);
            prop_assert_eq!(g, &sig[..]);
        }

        #[test]
        fn no_input_panics(b in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = decode_poll(&b);
            let _ = decode_reply(&b);
            let _ = Stub::decode(&b);
        }
    }
}
