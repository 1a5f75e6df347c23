//! OpenPGP, through sequoia-openpgp: the user's identity (a secret key),
//! certificates of contacts, detached signatures for requests, and the
//! streaming sign+encrypt / decrypt+verify of messages.
//!
//! Every certificate Stubmail makes is an RFC 4880 (v4) certificate that
//! advertises SEIPDv1 only, so GnuPG 2.2 can read what we write.

use std::io::{self, Read, Write};
use std::path::Path;

use openpgp::cert::prelude::*;
use openpgp::crypto::{KeyPair, SessionKey};
use openpgp::packet::signature::SignatureBuilder;
use openpgp::packet::{PKESK, SKESK, UserID};
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, DetachedVerifierBuilder, MessageLayer, MessageStructure,
    VerificationHelper,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Encryptor, LiteralWriter, Message, Signer};
use openpgp::serialize::{Serialize as _, SerializeInto as _};
use openpgp::packet::signature::subpacket::NotationDataFlags;
use openpgp::types::{Features, KeyFlags, PublicKeyAlgorithm, SignatureType, SymmetricAlgorithm};
use openpgp::{Cert, KeyHandle};
use sequoia_openpgp as openpgp;

use crate::protocol::Fpr;

mod esk;
pub use esk::MAX_ESKS;

/// Notation on the self-signed User ID binding that names the owner's outbox.
pub const OUTBOX_NOTATION: &str = "outbox@stubmail.org";

/// Notation on the self-signed User ID binding that names the owner's notify
/// endpoint (`udp://HOST:PORT`), where outboxes send notification stubs.
pub const NOTIFY_NOTATION: &str = "notify@stubmail.org";

/// Notation on the self-signed User ID binding of a mailing list's key,
/// naming its posting address: the key is a robot's, which publishes its
/// members' posts (their From: is the author's, not the list's) and
/// takes a stranger's request to join (`stubmail::list`).
pub const LIST_NOTATION: &str = "list@stubmail.org";

/// The one policy every check uses.
pub static POLICY: StandardPolicy<'static> = StandardPolicy::new();

/// Errors of the OpenPGP layer. Messages name the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    #[error("secret key {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    LoosePermissions { path: String, mode: u32 },
    #[error("cannot read secret key {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("OpenPGP: {0:#}")]
    Openpgp(#[from] anyhow::Error),
}

type Result<T> = std::result::Result<T, PgpError>;

fn invalid(s: impl Into<String>) -> PgpError {
    PgpError::Invalid(s.into())
}

/// Fingerprint of a certificate in wire form.
pub fn fpr_of(cert: &Cert) -> Fpr {
    Fpr::parse(&cert.fingerprint().to_hex()).expect("a v4 fingerprint is 40 hex digits")
}

/// The user's own key: certificate with secret key material. `Debug` never
/// prints the secret.
#[derive(Clone)]
pub struct Identity {
    cert: Cert,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.cert.fingerprint())
    }
}

impl Identity {
    /// Create a new identity: Ed25519 primary key (certify + sign), X25519
    /// encryption subkey, one User ID, the outbox URL bound by notation, no
    /// expiry (a mail identity should not silently stop working; revoke it
    /// instead).
    pub fn generate(name: Option<&str>, email: &str, outbox: &str) -> Result<Identity> {
        Identity::generate_with(name, email, outbox, None)
    }

    /// [`Identity::generate`], also binding a notify endpoint
    /// (`udp://HOST:PORT`) for notification stubs.
    pub fn generate_with(name: Option<&str>, email: &str, outbox: &str, notify: Option<&str>) -> Result<Identity> {
        Identity::generate_inner(name, email, outbox, notify, None)
    }

    /// A mailing list's identity: [`Identity::generate_with`], its bindings
    /// also naming it a list ([`LIST_NOTATION`]) with posting address `email`.
    pub fn generate_list(name: Option<&str>, email: &str, outbox: &str, notify: Option<&str>) -> Result<Identity> {
        Identity::generate_inner(name, email, outbox, notify, Some(email))
    }

    fn generate_inner(name: Option<&str>, email: &str, outbox: &str, notify: Option<&str>, list: Option<&str>) -> Result<Identity> {
        check_email(email)?;
        if let Some(n) = notify
            && crate::protocol::udp::parse_notify_endpoint(n).is_none() {
                return Err(invalid(format!("{n:?} is not a notify endpoint like udp://127.0.0.1:2526")));
            }
        let uid = user_id(name.map(str::to_string), email);
        let mut template = binding_template(outbox, notify)?;
        if let Some(l) = list {
            template = template.add_notation(LIST_NOTATION, l.to_ascii_lowercase().as_bytes(), NotationDataFlags::empty().set_human_readable(), false)?;
        }
        let (cert, _rev) = CertBuilder::new()
            .set_profile(openpgp::Profile::RFC4880)?
            .set_features(Features::empty().set_seipdv1())?
            .set_cipher_suite(CipherSuite::Cv25519)
            .set_primary_key_flags(KeyFlags::empty().set_certification().set_signing())
            .set_validity_period(None)
            .add_subkey(KeyFlags::empty().set_transport_encryption().set_storage_encryption(), None, None)
            .add_userid_with(UserID::from(uid), template)?
            .generate()?;
        Ok(Identity { cert })
    }

    /// Load a secret key file, refusing one that group or others can read,
    /// and refusing RSA keys (the pure-Rust RSA backend is not constant-time).
    pub fn load(path: &Path) -> Result<Identity> {
        let p = path.display().to_string();
        let mode = crate::fsutil::mode_of(path).map_err(|source| PgpError::Io { path: p.clone(), source })?;
        if mode & 0o077 != 0 {
            return Err(PgpError::LoosePermissions { path: p, mode });
        }
        let bytes = std::fs::read(path).map_err(|source| PgpError::Io { path: p.clone(), source })?;
        let cert = Cert::from_bytes(&bytes).map_err(|e| invalid(format!("{p} is not an OpenPGP secret key: {e}")))?;
        Identity::from_cert(cert).map_err(|e| invalid(format!("{p}: {e}")))
    }

    /// Wrap a certificate with secret keys, checking it is usable.
    pub fn from_cert(cert: Cert) -> Result<Identity> {
        if !cert.is_tsk() {
            return Err(invalid("the key has no secret key material"));
        }
        for k in cert.keys().secret() {
            #[allow(deprecated)]
            let rsa = matches!(
                k.key().pk_algo(),
                PublicKeyAlgorithm::RSAEncryptSign | PublicKeyAlgorithm::RSAEncrypt | PublicKeyAlgorithm::RSASign
            );
            if rsa {
                return Err(invalid(
                    "RSA secret keys are refused: this build's RSA is not constant-time. \
                     Create a Curve25519 key with `stubmail init`",
                ));
            }
        }
        let id = Identity { cert };
        id.signing_keypair()?;
        Ok(id)
    }

    /// Add a User ID with another address of the same person, bound like
    /// the first (the outbox and notify notations), so that recipients see
    /// `from=pass` for mail from it. The name is the primary User ID's.
    pub fn add_address(&mut self, email: &str) -> Result<()> {
        check_email(email)?;
        let want = email.to_ascii_lowercase();
        if emails_of(&self.cert).contains(&want) {
            return Err(invalid(format!("{email} is already an address of this key")));
        }
        let outbox = outbox_of(&self.cert).ok_or_else(|| invalid("this key binds no outbox".to_string()))?;
        let name = self
            .cert
            .with_policy(&POLICY, None)
            .ok()
            .and_then(|vc| vc.primary_userid().ok().and_then(|u| u.userid().name().ok().flatten().map(str::to_string)));
        let uid = user_id(name, email);
        let notify: Vec<String> = notify_all(&self.cert).iter().map(|n| format!("udp://{n}")).collect();
        // Modelled on the primary User ID's binding: a key made by GnuPG
        // keeps its key flags and preferences there, and a new binding
        // without them could become the one that counts.
        let primary = self.cert.with_policy(&POLICY, None)?.primary_userid()?.binding_signature().clone();
        // ... but not its primary flag: the new address is an alias.
        let template = rebinding_template(&primary, &outbox, &notify)?.modify_hashed_area(|mut a| {
            a.remove_all(openpgp::packet::signature::subpacket::SubpacketTag::PrimaryUserID);
            Ok(a)
        })?;
        let mut kp = self.cert.primary_key().key().clone().parts_into_secret()?.into_keypair()?;
        let uid = UserID::from(uid);
        let sig = uid.bind(&mut kp, &self.cert, template)?;
        self.cert = self.cert.clone().insert_packets(vec![openpgp::Packet::from(uid), sig.into()])?.0;
        Ok(())
    }

    /// Bind every valid User ID anew to this outbox (and notify endpoint,
    /// `udp://HOST:PORT`, or none): a new self-signature on each, newer than
    /// the old ones, which it supersedes. Contacts who get the updated
    /// certificate (from the outbox's `/v1/certs`, WKD, or a re-import) poll
    /// the new outbox.
    pub fn rebind(&mut self, outbox: &str, notify: Option<&str>) -> Result<()> {
        self.rebind_all(outbox, &notify.map(|n| vec![n.to_string()]).unwrap_or_default())
    }

    /// [`Identity::rebind`] with several notify endpoints (`udp://HOST:PORT`
    /// each, one per device, at most [`MAX_NOTIFY_ENDPOINTS`]): contacts'
    /// outboxes send each stub to every one.
    pub fn rebind_all(&mut self, outbox: &str, notify: &[String]) -> Result<()> {
        if notify.len() > MAX_NOTIFY_ENDPOINTS {
            return Err(invalid(format!("at most {MAX_NOTIFY_ENDPOINTS} notify endpoints (one per device)")));
        }
        for n in notify {
            if crate::protocol::udp::parse_notify_endpoint(n).is_none() {
                return Err(invalid(format!("{n:?} is not a notify endpoint like udp://127.0.0.1:2526")));
            }
        }
        let vc = self.cert.with_policy(&POLICY, None)?;
        let uids: Vec<(UserID, openpgp::packet::Signature)> = vc
            .userids()
            .filter(|u| !matches!(u.revocation_status(), openpgp::types::RevocationStatus::Revoked(_)))
            .map(|u| (u.userid().clone(), u.binding_signature().clone()))
            .collect();
        // A binding only supersedes one made strictly earlier: wait out the
        // second of the last one (at most a second; `init` then `rebind`).
        let newest = vc.userids().filter_map(|u| u.binding_signature().signature_creation_time()).max();
        while newest.is_some_and(|t| std::time::SystemTime::now() <= t + std::time::Duration::from_secs(1)) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mut kp = self.cert.primary_key().key().clone().parts_into_secret()?.into_keypair()?;
        let mut packets: Vec<openpgp::Packet> = Vec::new();
        for (uid, old) in uids {
            // Everything the old binding said (key flags, preferences,
            // expiry, primary flag), with the new notations.
            let sig = uid.bind(&mut kp, &self.cert, rebinding_template(&old, outbox, notify)?)?;
            packets.push(uid.into());
            packets.push(sig.into());
        }
        self.cert = self.cert.clone().insert_packets(packets)?.0;
        Ok(())
    }

    /// Armored secret key, for the 0600 key file.
    pub fn to_armored_secret(&self) -> Result<Vec<u8>> {
        Ok(self.cert.as_tsk().armored().to_vec()?)
    }

    /// The public certificate (no secrets).
    pub fn cert(&self) -> Cert {
        self.cert.clone().strip_secret_key_material()
    }

    pub fn fpr(&self) -> Fpr {
        fpr_of(&self.cert)
    }

    /// The signing key pair (for building OpenPGP messages, e.g. in tests).
    pub fn signing_keypair(&self) -> Result<KeyPair> {
        let ka = self
            .cert
            .keys()
            .with_policy(&POLICY, None)
            .supported()
            .alive()
            .revoked(false)
            .for_signing()
            .secret()
            .next()
            .ok_or_else(|| invalid("no usable signing key: expired, revoked, or made after this machine's clock time (check the clock)"))?;
        Ok(ka.key().clone().into_keypair()?)
    }

    fn decryption_keypairs(&self) -> Vec<KeyPair> {
        self.cert
            .keys()
            .with_policy(&POLICY, None)
            .supported()
            .for_transport_encryption()
            .for_storage_encryption()
            .secret()
            .filter_map(|ka| ka.key().clone().into_keypair().ok())
            .collect()
    }

    /// A binary OpenPGP detached signature over `data`.
    pub fn sign_detached(&self, data: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        {
            let m = Message::new(&mut out);
            let mut s = Signer::new(m, self.signing_keypair()?)?.detached().build()?;
            s.write_all(data).map_err(anyhow::Error::from)?;
            s.finalize()?;
        }
        Ok(out)
    }
}

fn check_email(email: &str) -> Result<()> {
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !email.chars().any(|c| c.is_whitespace() || matches!(c, '<' | '>' | ',' | ';'));
    if ok { Ok(()) } else { Err(invalid(format!("{email:?} is not an email address like alice@example.org"))) }
}

/// `Name <email>`, or `<email>` without a name.
fn user_id(name: Option<String>, email: &str) -> String {
    match name {
        Some(n) if !n.trim().is_empty() => format!("{} <{email}>", n.trim()),
        _ => format!("<{email}>"),
    }
}

/// The self-signature template binding a User ID to the owner's outbox
/// (and notify endpoint, `udp://HOST:PORT`).
fn binding_template(outbox: &str, notify: Option<&str>) -> Result<SignatureBuilder> {
    let mut t = SignatureBuilder::new(SignatureType::PositiveCertification).set_notation(
        OUTBOX_NOTATION,
        outbox.as_bytes(),
        NotationDataFlags::empty().set_human_readable(),
        false,
    )?;
    if let Some(n) = notify {
        t = t.add_notation(NOTIFY_NOTATION, n.as_bytes(), NotationDataFlags::empty().set_human_readable(), false)?;
    }
    Ok(t)
}

/// Does the key hold secret key material protected by a passphrase?
pub fn has_locked_secrets(cert: &Cert) -> bool {
    cert.keys().secret().any(|ka| !ka.key().has_unencrypted_secret())
}

/// The key with every passphrase-protected secret unlocked.
pub fn unlock_secrets(cert: Cert, passphrase: &str) -> Result<Cert> {
    let pw = openpgp::crypto::Password::from(passphrase);
    let mut packets: Vec<openpgp::Packet> = Vec::new();
    for ka in cert.keys().secret() {
        if ka.key().has_unencrypted_secret() {
            continue;
        }
        let key = ka.key().clone().decrypt_secret(&pw).map_err(|_| invalid("wrong passphrase for the secret key"))?;
        packets.push(if ka.primary() { key.role_into_primary().into() } else { key.role_into_subordinate().into() });
    }
    Ok(cert.insert_packets(packets)?.0)
}

/// A new binding modelled on `old`: its subpackets kept (key flags,
/// algorithm preferences, features, expiry, the primary flag), its
/// notations replaced by the outbox (and notify) ones.
fn rebinding_template(old: &openpgp::packet::Signature, outbox: &str, notify: &[String]) -> Result<SignatureBuilder> {
    use openpgp::packet::signature::subpacket::SubpacketTag;
    // A list stays a list whatever else is bound anew.
    let list: Vec<Vec<u8>> = old.notation(LIST_NOTATION).map(<[u8]>::to_vec).collect();
    let mut t = SignatureBuilder::from(old.clone())
        .set_signature_creation_time(std::time::SystemTime::now())?
        .modify_hashed_area(|mut a| {
            a.remove_all(SubpacketTag::NotationData);
            Ok(a)
        })?
        .set_notation(OUTBOX_NOTATION, outbox.as_bytes(), NotationDataFlags::empty().set_human_readable(), false)?;
    for n in notify {
        t = t.add_notation(NOTIFY_NOTATION, n.as_bytes(), NotationDataFlags::empty().set_human_readable(), false)?;
    }
    for l in list {
        t = t.add_notation(LIST_NOTATION, &l, NotationDataFlags::empty().set_human_readable(), false)?;
    }
    Ok(t)
}

/// Parse armored or binary certificates (as `gpg --export` prints them).
pub fn parse_certs(bytes: &[u8]) -> Result<Vec<Cert>> {
    let certs: Vec<Cert> = CertParser::from_bytes(bytes)
        .map_err(|e| invalid(format!("not OpenPGP data: {e}")))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| invalid(format!("corrupt certificate: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificate found in the input"));
    }
    Ok(certs)
}

/// Armored public certificate.
pub fn armored(cert: &Cert) -> Result<String> {
    Ok(String::from_utf8(cert.armored().to_vec()?).expect("armor is ASCII"))
}

/// Binary public certificate.
pub fn binary(cert: &Cert) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    cert.serialize(&mut v)?;
    Ok(v)
}

/// Check that a certificate is usable as a contact now: valid under the
/// policy, not revoked, not expired, with an email User ID and an
/// encryption key. Returns the email addresses.
pub fn check_contact(cert: &Cert) -> Result<Vec<String>> {
    let fp = cert.fingerprint();
    let vc = cert
        .with_policy(&POLICY, None)
        .map_err(|e| invalid(format!("certificate {fp} is not valid: {e}")))?;
    if let openpgp::types::RevocationStatus::Revoked(_) = vc.revocation_status() {
        return Err(invalid(format!("certificate {fp} is revoked")));
    }
    if let Err(e) = vc.alive() {
        return Err(invalid(match vc.primary_key().key_expiration_time() {
            Some(t) if t <= std::time::SystemTime::now() => {
                let unix = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
                format!("certificate {fp} expired on {}", crate::time::rfc5322(unix))
            }
            _ => format!("certificate {fp} is expired or not yet valid: {e}"),
        }));
    }
    let emails = emails_of(cert);
    if emails.is_empty() {
        return Err(invalid(format!("certificate {fp} has no valid User ID with an email address")));
    }
    if vc.keys().supported().alive().revoked(false).for_transport_encryption().next().is_none() {
        return Err(invalid(format!("certificate {fp} has no usable encryption key")));
    }
    Ok(emails)
}

/// Every email address a certificate's User IDs name, valid or not, for
/// reports about a certificate that is refused.
pub fn all_emails_of(cert: &Cert) -> Vec<String> {
    let mut v: Vec<String> =
        cert.userids().filter_map(|u| u.userid().email().ok().flatten().map(str::to_ascii_lowercase)).collect();
    v.sort();
    v.dedup();
    v
}

/// The email addresses of a certificate's valid User IDs, lower-cased,
/// the primary User ID's first (callers take the first as the owner's
/// main address: the Return-Path, a list member's address).
pub fn emails_of(cert: &Cert) -> Vec<String> {
    let Ok(vc) = cert.with_policy(&POLICY, None) else { return vec![] };
    let mut v: Vec<String> = vc
        .userids()
        .filter(|u| !matches!(u.revocation_status(), openpgp::types::RevocationStatus::Revoked(_)))
        .filter_map(|u| u.userid().email().ok().flatten().map(str::to_ascii_lowercase))
        .collect();
    v.dedup();
    let primary = vc.primary_userid().ok().and_then(|u| u.userid().email().ok().flatten().map(str::to_ascii_lowercase));
    if let Some(at) = primary.and_then(|p| v.iter().position(|e| *e == p)) {
        let p = v.remove(at);
        v.insert(0, p);
    }
    v
}

/// Largest certificate an outbox keeps for a recipient, once reduced.
pub const MAX_REMEMBERED_CERT: usize = 64 * 1024;

/// A certificate reduced to what an outbox needs to check its owner's
/// requests: the primary key, at most 8 User IDs and 8 subkeys, each with
/// the owner's own signatures and revocations only — no third-party
/// certifications, no photos, no unknown packets. A peer's certificate can
/// then not grow without bound (certifications by throwaway keys, one more
/// per poll). Refused if still over [`MAX_REMEMBERED_CERT`] bytes.
pub fn reduced(cert: &Cert) -> Result<Cert> {
    use openpgp::Packet;
    let mut p: Vec<Packet> = vec![cert.primary_key().key().clone().into()];
    let pk = cert.primary_key();
    p.extend(pk.self_signatures().map(|s| Packet::from(s.clone())));
    p.extend(pk.self_revocations().map(|s| Packet::from(s.clone())));
    for u in cert.userids().take(8) {
        p.push(u.userid().clone().into());
        p.extend(u.self_signatures().map(|s| Packet::from(s.clone())));
        p.extend(u.self_revocations().map(|s| Packet::from(s.clone())));
    }
    for k in cert.keys().subkeys().take(8) {
        p.push(k.key().clone().into());
        p.extend(k.self_signatures().map(|s| Packet::from(s.clone())));
        p.extend(k.self_revocations().map(|s| Packet::from(s.clone())));
    }
    let c = Cert::from_packets(p.into_iter())?;
    let size = binary(&c)?.len();
    if size > MAX_REMEMBERED_CERT {
        return Err(invalid(format!("certificate {} is {size} bytes even reduced", c.fingerprint())));
    }
    Ok(c)
}

/// A certificate cut to what proves one stub and lets its recipient answer
/// (a datagram's worth): the primary key with any revocation, the primary
/// User ID with its current binding, and each valid subkey with its
/// current binding. Everything else — direct-key and older signatures,
/// other User IDs, certifications — is left out.
pub fn minimal(cert: &Cert) -> Result<Cert> {
    use openpgp::Packet;
    let vc = cert.with_policy(&POLICY, None)?;
    let mut p: Vec<Packet> = vec![cert.primary_key().key().clone().into()];
    // No direct-key signature (200 bytes): the primary User ID's binding
    // carries the same key flags and preferences. A revoked key says so,
    // even cut short.
    p.extend(cert.primary_key().self_revocations().map(|s| Packet::from(s.clone())));
    let u = vc.primary_userid()?;
    p.push(u.userid().clone().into());
    p.push(u.binding_signature().clone().into());
    for k in vc.keys().subkeys() {
        p.push(k.key().clone().into());
        p.push(k.binding_signature().clone().into());
    }
    Ok(Cert::from_packets(p.into_iter())?)
}

/// Is the certificate revoked (by its owner, valid under the policy)?
pub fn is_revoked(cert: &Cert) -> bool {
    cert.with_policy(&POLICY, None)
        .is_ok_and(|vc| matches!(vc.revocation_status(), openpgp::types::RevocationStatus::Revoked(_)))
}

/// `known` with the owner's revocations of its primary key taken from
/// `presented` (the same certificate, as a peer presented it): only
/// revocation signatures are taken, nothing else of what the peer sent.
pub fn with_revocations_from(known: &Cert, presented: &Cert) -> Result<Cert> {
    if known.fingerprint() != presented.fingerprint() {
        return Err(invalid("not the same certificate"));
    }
    let revs: Vec<openpgp::Packet> = presented.primary_key().self_revocations().map(|s| s.clone().into()).collect();
    Ok(known.clone().insert_packets(revs)?.0)
}

/// The certificate with only the User IDs whose email is `email`
/// (lower-cased compare): what a key found by looking `email` up (WKD) may
/// speak for, as `gpg --locate-keys` keeps only the matching User ID.
/// `None` if no User ID carries exactly that address.
pub fn only_userid_for(cert: Cert, email: &str) -> Option<Cert> {
    let want = email.to_ascii_lowercase();
    let matches = |u: &openpgp::packet::UserID| u.email().ok().flatten().is_some_and(|e| e.to_ascii_lowercase() == want);
    if !cert.userids().any(|u| matches(u.userid())) {
        return None;
    }
    let kept = cert.retain_userids(|u| matches(u.userid()));
    // Attributes (photos) speak for no address either.
    let kept = kept.retain_user_attributes(|_| false);
    emails_of(&kept).contains(&want).then_some(kept)
}

/// The `Autocrypt:` header field (Autocrypt Level 1) announcing `cert`
/// for `addr`: the key reduced to that one User ID (and its subkeys), base64
/// folded into continuation lines. `None` if the key has no such address.
pub fn autocrypt_header(cert: &Cert, addr: &str) -> Option<String> {
    use base64::Engine as _;
    let only = only_userid_for(cert.clone().strip_secret_key_material(), addr)?;
    let data = base64::engine::general_purpose::STANDARD.encode(binary(&only).ok()?);
    let mut out = format!("Autocrypt: addr={}; prefer-encrypt=mutual; keydata=", addr.to_ascii_lowercase());
    for (i, chunk) in data.as_bytes().chunks(76).enumerate() {
        if i > 0 || out.len() + chunk.len() > 78 {
            out.push_str("\r\n ");
        }
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
    }
    out.push_str("\r\n");
    Some(out)
}

/// The certificate with only the User IDs naming one of `emails` (and no
/// user attributes); `None` if none is left.
pub fn only_userids_for(cert: Cert, emails: &[String]) -> Option<Cert> {
    let keep = |u: &openpgp::packet::UserID| u.email().ok().flatten().is_some_and(|e| emails.contains(&e.to_ascii_lowercase()));
    if !cert.userids().any(|u| keep(u.userid())) {
        return None;
    }
    Some(cert.retain_userids(|u| keep(u.userid())).retain_user_attributes(|_| false))
}

/// A human-readable notation the owner bound on a self-signed User ID
/// binding (primary User ID first) that `accept` takes.
fn bound_notation(cert: &Cert, name: &str, accept: impl Fn(&str) -> Option<String>) -> Option<String> {
    let vc = cert.with_policy(&POLICY, None).ok()?;
    let from = |u: &ValidUserIDAmalgamation| {
        u.binding_signature().notation(name).next().and_then(|v| std::str::from_utf8(v).ok()).and_then(&accept)
    };
    if let Ok(p) = vc.primary_userid()
        && let Some(o) = from(&p) {
            return Some(o);
        }
    vc.userids().find_map(|u| from(&u))
}

/// The outbox URL the owner bound into the certificate (primary User ID
/// first), or `None` for a certificate without one (an ordinary PGP user).
pub fn outbox_of(cert: &Cert) -> Option<String> {
    bound_notation(cert, OUTBOX_NOTATION, |v| Some(v.to_string()))
}

/// The posting address of the list whose key this is ([`LIST_NOTATION`],
/// primary User ID first), if it is a list's and the address is one of
/// its own.
pub fn list_of(cert: &Cert) -> Option<String> {
    let addr = bound_notation(cert, LIST_NOTATION, |v| Some(v.to_ascii_lowercase()))?;
    (crate::mail::is_plain_address(&addr) && emails_of(cert).contains(&addr)).then_some(addr)
}

/// Every outbox URL the owner bound on any valid User ID (an outbox must
/// know them all before it takes the certificate as an account).
pub fn outboxes_of(cert: &Cert) -> Vec<String> {
    let Ok(vc) = cert.with_policy(&POLICY, None) else { return vec![] };
    let mut v: Vec<String> = vc
        .userids()
        .flat_map(|u| {
            u.binding_signature()
                .notation(OUTBOX_NOTATION)
                .filter_map(|x| std::str::from_utf8(x).ok().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Notify endpoints one key may bind: one per device of the identity.
pub const MAX_NOTIFY_ENDPOINTS: usize = 4;

/// Every notify endpoint (`HOST:PORT`) the owner bound (primary User ID
/// first, else the first User ID binding any), well-formed ones only, at
/// most [`MAX_NOTIFY_ENDPOINTS`]: each device of the identity may have one.
pub fn notify_all(cert: &Cert) -> Vec<String> {
    let Ok(vc) = cert.with_policy(&POLICY, None) else { return vec![] };
    let of = |u: &ValidUserIDAmalgamation| -> Vec<String> {
        u.binding_signature()
            .notation(NOTIFY_NOTATION)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .filter_map(|v| crate::protocol::udp::parse_notify_endpoint(v).map(str::to_string))
            .collect()
    };
    let mut v = vc.primary_userid().ok().map(|p| of(&p)).filter(|v| !v.is_empty()).or_else(|| vc.userids().map(|u| of(&u)).find(|v| !v.is_empty())).unwrap_or_default();
    v.dedup();
    v.truncate(MAX_NOTIFY_ENDPOINTS);
    v
}

/// The notify endpoint (`HOST:PORT`) the owner bound into the certificate,
/// if any and well-formed.
pub fn notify_of(cert: &Cert) -> Option<String> {
    bound_notation(cert, NOTIFY_NOTATION, |v| crate::protocol::udp::parse_notify_endpoint(v).map(str::to_string))
}

/// Verify a detached signature over `data` by `cert` (the named signer,
/// nobody else).
pub fn verify_detached(cert: &Cert, data: &[u8], sig: &[u8]) -> Result<()> {
    let helper = OnlySigner { cert: cert.clone(), good: false, sig: None };
    let mut v = DetachedVerifierBuilder::from_bytes(sig)?.with_policy(&POLICY, None, helper)?;
    v.verify_bytes(data)?;
    Ok(())
}

/// [`verify_detached`] over what `data` reads (to its end), so a large
/// message needs no copy in memory.
pub fn verify_detached_reader(cert: &Cert, data: impl Read + Send + Sync, sig: &[u8]) -> Result<()> {
    let helper = OnlySigner { cert: cert.clone(), good: false, sig: None };
    let mut v = DetachedVerifierBuilder::from_bytes(sig)?.with_policy(&POLICY, None, helper)?;
    v.verify_reader(data)?;
    Ok(())
}

/// Verification policy: a good signature by exactly this certificate, and
/// (when decrypting) the message must have been encrypted.
struct OnlySigner {
    cert: Cert,
    good: bool,
    /// The good signature by `cert`, serialized, once checked: a list
    /// robot carries it with the post so members can verify the author.
    sig: Option<Vec<u8>>,
}

impl VerificationHelper for OnlySigner {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(vec![self.cert.clone()])
    }
    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        let want = self.cert.fingerprint();
        for layer in structure.into_iter() {
            if let MessageLayer::SignatureGroup { results } = layer
                && let Some(Ok(g)) = results.iter().find(|r| matches!(r, Ok(g) if g.ka.cert().fingerprint() == want)) {
                    self.good = true;
                    self.sig = openpgp::Packet::from(g.sig.clone()).to_vec().ok();
                }
        }
        if self.good { Ok(()) } else { Err(anyhow::anyhow!("no valid signature by {want}")) }
    }
}

/// Sign with `me` and encrypt to every certificate in `to` and to `me`
/// (the sender's copy is the archive), streaming `input` into `out`.
pub fn sign_encrypt<W: Write + Send + Sync>(me: &Identity, to: &[Cert], input: &mut dyn Read, out: W) -> Result<()> {
    sign_encrypt_with(me, to, input, out, false)
}

/// [`sign_encrypt`], ASCII-armored (`-----BEGIN PGP MESSAGE-----`), as the
/// encrypted part of a PGP/MIME message carries it (RFC 3156 §4).
pub fn sign_encrypt_armored<W: Write + Send + Sync>(me: &Identity, to: &[Cert], input: &mut dyn Read, out: W) -> Result<()> {
    sign_encrypt_with(me, to, input, out, true)
}

fn sign_encrypt_with<W: Write + Send + Sync>(me: &Identity, to: &[Cert], input: &mut dyn Read, out: W, armor: bool) -> Result<()> {
    let own = me.cert();
    let mut recipients = Vec::new();
    for cert in to.iter().chain(std::iter::once(&own)) {
        let vc = cert
            .with_policy(&POLICY, None)
            .map_err(|e| invalid(format!("certificate {} is not valid: {e}", cert.fingerprint())))?;
        let before = recipients.len();
        recipients.extend(vc.keys().supported().alive().revoked(false).for_transport_encryption().for_storage_encryption());
        if recipients.len() == before {
            return Err(invalid(format!("certificate {} has no usable encryption key", cert.fingerprint())));
        }
    }
    let mut m = Message::new(out);
    if armor {
        m = openpgp::serialize::stream::Armorer::new(m).kind(openpgp::armor::Kind::Message).build()?;
    }
    let m = Encryptor::for_recipients(m, recipients).build()?;
    let m = Signer::new(m, me.signing_keypair()?)?.build()?;
    let mut lw = LiteralWriter::new(m).build()?;
    io::copy(input, &mut lw).map_err(anyhow::Error::from)?;
    lw.finalize()?;
    Ok(())
}

/// Decrypt a message for `me` and require a valid signature by `sender`.
///
/// Plaintext is released as it is decrypted (a small buffer, so memory does
/// not grow with message size); the signature is checked at the end of the
/// stream, where `read` fails if it is bad. So a caller must read to EOF
/// without error before trusting — or delivering — what it read.
pub fn decrypt_verify<'a, R: Read + Send + Sync + 'a>(
    me: &Identity,
    sender: &Cert,
    input: R,
) -> Result<impl Read + 'a> {
    decrypt_verify_signed(me, sender, input)
}

/// [`decrypt_verify`], keeping the sender's signature: once the reader
/// has read to EOF without error, [`Signed::signature`] gives the
/// signature packet (binary OpenPGP), a detached signature over exactly
/// the bytes read. A list robot carries it with the post it publishes.
pub fn decrypt_verify_signed<'a, R: Read + Send + Sync + 'a>(me: &Identity, sender: &Cert, input: R) -> Result<Signed<'a>> {
    let keys = me.decryption_keypairs();
    let ours: Vec<KeyHandle> = keys.iter().map(|k| KeyHandle::from(k.public().fingerprint())).collect();
    // Only our session keys reach the decryptor, whose cost grows with the
    // square of their number (see esk.rs).
    let input = esk::binary_only_ours(input, &ours).map_err(anyhow::Error::from)?;
    let helper = Decrypt { keys, ours, verify: OnlySigner { cert: sender.clone(), good: false, sig: None } };
    let d = DecryptorBuilder::from_reader(input)?
        .buffer_size(64 * 1024)
        .with_policy(&POLICY, None, helper)?;
    Ok(Signed(d))
}

/// A decrypting, verifying reader that keeps the signature it verified.
pub struct Signed<'a>(openpgp::parse::stream::Decryptor<'a, Decrypt>);

impl Read for Signed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Signed<'_> {
    /// The verified signature packet; `None` until the whole message was
    /// read and the signature checked.
    pub fn signature(&self) -> Option<Vec<u8>> {
        let v = &self.0.helper_ref().verify;
        if v.good { v.sig.clone() } else { None }
    }
}

struct Decrypt {
    keys: Vec<KeyPair>,
    /// Each key's handle, in the same order (computed once, not per PKESK).
    ours: Vec<KeyHandle>,
    verify: OnlySigner,
}

impl VerificationHelper for Decrypt {
    fn get_certs(&mut self, ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        self.verify.get_certs(ids)
    }
    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        let encrypted = structure.iter().any(|l| matches!(l, MessageLayer::Encryption { .. }));
        if !encrypted {
            return Err(anyhow::anyhow!("message was not encrypted"));
        }
        self.verify.check(structure)
    }
}

impl DecryptionHelper for Decrypt {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        _skesks: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        for pkesk in pkesks {
            for (kp, handle) in self.keys.iter_mut().zip(&self.ours) {
                let matches = match pkesk.recipient() {
                    Some(r) => r.aliases(handle),
                    None => true, // anonymous recipient: try every key
                };
                if !matches {
                    continue;
                }
                if let Some((algo, sk)) = pkesk.decrypt(kp, sym_algo)
                    && decrypt(algo, &sk) {
                        return Ok(None);
                    }
            }
        }
        Err(anyhow::anyhow!("message is not encrypted to this identity"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity::generate(Some("Alice"), "alice@example.org", "http://127.0.0.1:1/").unwrap()
    }

    #[test]
    fn identity_binds_a_notify_endpoint_next_to_the_outbox() {
        let a = Identity::generate_with(None, "a@example.org", "http://o/", Some("udp://127.0.0.1:2526")).unwrap();
        assert_eq!(notify_of(&a.cert()).as_deref(), Some("127.0.0.1:2526"));
        assert_eq!(outbox_of(&a.cert()).as_deref(), Some("http://o/"));
        assert!(Identity::generate_with(None, "a@example.org", "http://o/", Some("tcp://x:1")).is_err());
    }

    #[test]
    fn rebinding_moves_every_address_to_the_new_outbox_and_notify() {
        let mut a = alice();
        a.add_address("al@example.org").unwrap();
        a.rebind("https://new.example.org/", Some("udp://127.0.0.1:2600")).unwrap();
        let c = a.cert();
        assert_eq!(outbox_of(&c).as_deref(), Some("https://new.example.org/"));
        assert_eq!(outboxes_of(&c), vec!["https://new.example.org/"], "no User ID keeps the old URL");
        assert_eq!(notify_of(&c).as_deref(), Some("127.0.0.1:2600"));
        assert_eq!(check_contact(&c).unwrap().len(), 2);
        // And back without notify: the newest binding wins.
        a.rebind("http://127.0.0.1:1/", None).unwrap();
        assert_eq!(notify_of(&a.cert()), None);
        // One endpoint per device, at most four; adding an address keeps them.
        let two = vec!["udp://127.0.0.1:2601".to_string(), "udp://[::1]:2602".to_string()];
        a.rebind_all("http://127.0.0.1:1/", &two).unwrap();
        a.add_address("third@example.org").unwrap();
        assert_eq!(notify_all(&a.cert()), vec!["127.0.0.1:2601", "[::1]:2602"]);
        assert!(a.rebind_all("http://x/", &vec![two[0].clone(); 5]).is_err());
        assert_eq!(outboxes_of(&a.cert()), vec!["http://127.0.0.1:1/"]);
        assert!(a.rebind("http://x/", Some("tcp://x:1")).is_err());
    }

    #[test]
    fn a_key_binding_many_notify_endpoints_names_four() {
        // A hostile key with six endpoints on its binding (no `rebind_all`
        // cap in the way): readers take four.
        let a = alice();
        let six: Vec<String> = (0..6).map(|i| format!("udp://192.0.2.{i}:2526")).collect();
        let vc = a.cert.with_policy(&POLICY, None).unwrap();
        let u = vc.primary_userid().unwrap();
        let (uid, old) = (u.userid().clone(), u.binding_signature().clone());
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let mut kp = a.cert.primary_key().key().clone().parts_into_secret().unwrap().into_keypair().unwrap();
        let sig = uid.bind(&mut kp, &a.cert, rebinding_template(&old, "http://o/", &six).unwrap()).unwrap();
        let c = a.cert().insert_packets(vec![openpgp::Packet::from(uid), sig.into()]).unwrap().0;
        assert_eq!(notify_all(&c).len(), MAX_NOTIFY_ENDPOINTS);
        assert_eq!(notify_all(&c)[0], "192.0.2.0:2526");
    }

    #[test]
    fn a_list_stays_a_list_through_new_addresses_and_rebinding() {
        let mut l = Identity::generate_list(Some("Team"), "Team@example.org", "http://o/", None).unwrap();
        assert_eq!(list_of(&l.cert()).as_deref(), Some("team@example.org"));
        l.add_address("team-subscribe@example.org").unwrap();
        l.rebind("http://p/", Some("udp://127.0.0.1:9")).unwrap();
        let c = l.cert();
        assert_eq!((list_of(&c).as_deref(), outbox_of(&c).as_deref()), (Some("team@example.org"), Some("http://p/")));
        assert_eq!(emails_of(&c), vec!["team@example.org", "team-subscribe@example.org"], "the posting address first");
        assert_eq!(list_of(&alice().cert()), None);
        // A list notation naming an address the key does not have is no list.
        let odd = Identity::generate_inner(None, "x@example.org", "http://o/", None, Some("y@example.org")).unwrap();
        assert_eq!(list_of(&odd.cert()), None);
    }

    #[test]
    fn identity_binds_outbox_and_email() {
        let a = alice();
        let c = a.cert();
        assert_eq!(outbox_of(&c).as_deref(), Some("http://127.0.0.1:1/"));
        assert_eq!(notify_of(&c), None);
        assert_eq!(emails_of(&c), vec!["alice@example.org"]);
        assert_eq!(check_contact(&c).unwrap(), vec!["alice@example.org"]);
        assert!(!c.is_tsk());
        // v4, SEIPDv1 only (readable by GnuPG 2.2), no expiry.
        assert_eq!(c.primary_key().key().version(), 4);
        let vc = c.with_policy(&POLICY, None).unwrap();
        let f = vc.features().unwrap();
        assert!(f.supports_seipdv1() && !f.supports_seipdv2());
        assert!(vc.primary_key().key_expiration_time().is_none());
        // Debug shows no secrets.
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[test]
    fn bad_email_refused() {
        for e in ["", "alice", "alice@", "@x.org", "a b@x.org", "a@localhost", "<a@x.org>"] {
            assert!(Identity::generate(None, e, "http://x/").is_err(), "{e}");
        }
    }

    #[test]
    fn detached_signature_checks_signer_and_data() {
        let a = alice();
        let b = Identity::generate(None, "bob@example.net", "http://x/").unwrap();
        let sig = a.sign_detached(b"hello").unwrap();
        verify_detached(&a.cert(), b"hello", &sig).unwrap();
        assert!(verify_detached(&a.cert(), b"hellO", &sig).is_err());
        assert!(verify_detached(&b.cert(), b"hello", &sig).is_err());
        assert!(verify_detached(&a.cert(), b"hello", b"garbage").is_err());
    }

    fn roundtrip(sender: &Identity, signer_expected: &Cert, reader: &Identity, to: &[Cert], msg: &[u8]) -> Result<Vec<u8>> {
        let mut ct = Vec::new();
        sign_encrypt(sender, to, &mut &msg[..], &mut ct).unwrap();
        let mut r = decrypt_verify(reader, signer_expected, &ct[..])?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| invalid(e.to_string()))?;
        Ok(out)
    }

    #[test]
    fn encrypt_decrypt_and_signer_check() {
        let a = alice();
        let b = Identity::generate(None, "bob@example.net", "http://x/").unwrap();
        let m = Identity::generate(None, "mallory@example.com", "http://x/").unwrap();
        let msg = b"Subject: hi\r\n\r\nbody\r\n".repeat(10000);
        assert_eq!(roundtrip(&a, &a.cert(), &b, &[b.cert()], &msg).unwrap(), msg);
        // The sender's own copy decrypts for the sender (archive).
        assert_eq!(roundtrip(&a, &a.cert(), &a, &[b.cert()], &msg).unwrap(), msg);
        // Signed by Mallory, claimed to be from Alice: refused.
        assert!(roundtrip(&m, &a.cert(), &b, &[b.cert()], &msg).is_err());
        // Not encrypted to Mallory: she cannot read it.
        assert!(roundtrip(&a, &a.cert(), &m, &[b.cert()], &msg).is_err());
    }

    #[test]
    fn a_message_to_many_reads_for_each_of_them_and_no_one_else() {
        let a = alice();
        let readers: Vec<Identity> =
            (0..40).map(|i| Identity::generate(None, &format!("r{i}@example.net"), "http://x/").unwrap()).collect();
        let to: Vec<Cert> = readers.iter().map(Identity::cert).collect();
        let msg = b"Subject: to many\r\n\r\nbody\r\n".to_vec();
        // First, middle and last of the session keys: each reader finds
        // theirs among the others (which are skipped, not parsed by the
        // decryptor), and the sender's own copy still opens.
        for r in [&readers[0], &readers[20], &readers[39], &a] {
            assert_eq!(roundtrip(&a, &a.cert(), r, &to, &msg).unwrap(), msg);
        }
        let outsider = Identity::generate(None, "o@example.net", "http://x/").unwrap();
        assert!(roundtrip(&a, &a.cert(), &outsider, &to, &msg).is_err());
    }

    #[test]
    fn an_armored_message_decrypts_as_a_binary_one() {
        let a = alice();
        let b = Identity::generate(None, "bob@example.net", "http://x/").unwrap();
        let mut ct = Vec::new();
        sign_encrypt_armored(&a, &[b.cert()], &mut &b"armored"[..], &mut ct).unwrap();
        assert!(ct.starts_with(b"-----BEGIN PGP MESSAGE-----"));
        let mut out = Vec::new();
        decrypt_verify(&b, &a.cert(), &ct[..]).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, b"armored");
    }

    #[test]
    fn a_session_key_packet_cut_short_is_refused_not_a_panic() {
        let a = alice();
        let b = Identity::generate(None, "bob@example.net", "http://x/").unwrap();
        let mut ct = Vec::new();
        sign_encrypt(&a, &[b.cert()], &mut &b"hi"[..], &mut ct).unwrap();
        for cut in [1, 2, 3, 10, 40] {
            let r = decrypt_verify(&b, &a.cert(), &ct[..cut]).and_then(|mut r| {
                let mut out = Vec::new();
                r.read_to_end(&mut out).map_err(|e| invalid(e.to_string()))
            });
            assert!(r.is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn rsa_secret_keys_are_refused() {
        let (cert, _) = CertBuilder::general_purpose(["<r@example.org>"])
            .set_cipher_suite(CipherSuite::RSA2k)
            .generate()
            .unwrap();
        let e = Identity::from_cert(cert).unwrap_err().to_string();
        assert!(e.contains("RSA secret keys are refused") && e.contains("stubmail init"), "{e}");
    }

    #[test]
    fn secret_key_permissions_enforced() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret.pgp");
        let a = alice();
        std::fs::write(&p, a.to_armored_secret().unwrap()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Identity::load(&p).unwrap().fpr(), a.fpr());
    }
}
