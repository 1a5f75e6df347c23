//! UDP datagrams: the parsers, and the outbox's poll service, which must
//! never answer with more octets than it got.
#![no_main]

use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use post_manager::store::Store;
use post_manager::udp::{issue, PollService, UdpSettings};
use stubmail::protocol::udp;
use stubmail::protocol::Fpr;

struct Fixture {
    _dir: tempfile::TempDir,
    svc: PollService,
}

static FIX: LazyLock<Mutex<Fixture>> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // A real cookie, so authentic-looking entries reach the deeper checks.
    issue(&store, &Fpr::parse(&"B".repeat(40)).unwrap(), Some("d"), None).unwrap();
    let svc = PollService::new(store, 0, &UdpSettings { rate_per_source: 1e9, burst_per_source: 1e9, ..Default::default() });
    Mutex::new(Fixture { _dir: dir, svc })
});

fuzz_target!(|input: &[u8]| {
    if let Ok(e) = udp::decode_poll(input) {
        assert_eq!(udp::encode_poll(&e).unwrap(), input);
    }
    if let Ok(e) = udp::decode_reply(input) {
        assert_eq!(udp::encode_reply(&e).unwrap(), input);
    }
    if let Ok((stub, signed, sig)) = udp::Stub::decode(input) {
        assert_eq!(stub.signed_part().unwrap(), signed);
        assert_eq!(stub.encode(sig).unwrap(), input);
    }
    if let Ok((stub, Some(cert))) = udp::split_cert(input) {
        assert_eq!(udp::encode_with_cert(stub, cert).unwrap(), input);
        // The certificate a stranger's stub carries is parsed, bounded by
        // the datagram.
        let _ = stubmail::pgp::parse_certs(cert);
    }
    let mut f = FIX.lock().unwrap();
    if let Some(reply) = f.svc.answer(std::net::Ipv4Addr::LOCALHOST.into(), input) {
        assert!(reply.len() < input.len(), "amplification: {} for {}", reply.len(), input.len());
    }
});
