//! Many CGI processes and several `serve` instances over one data
//! directory at once never corrupt it or lose an upload; a `kill -9` in the
//! middle of uploads leaves it consistent.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use sha2::{Digest, Sha256};
use stubmail::{client, protocol, Identity};

fn body(i: usize, size: usize) -> Vec<u8> {
    let mut v = format!("message {i} ").into_bytes();
    v.resize(size, b'a' + (i % 26) as u8);
    v
}

/// Upload through a CGI process, as a web server would run it.
fn cgi_upload(data: &Path, outbox: &str, me: &Identity, bytes: &[u8], rcpt: &str) -> u16 {
    let id = hex::encode(Sha256::digest(bytes));
    let path = format!("/stubmail/v1/messages/{id}");
    let sig = stubmail::auth::sign_request(me, outbox, "PUT", &path, &id, stubmail::time::unix_now()).unwrap();
    let mut child = Command::new(bin("post_manager"))
        .env_clear()
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", "PUT")
        .env("REQUEST_URI", &path)
        .env("SCRIPT_NAME", "/stubmail")
        .env("CONTENT_LENGTH", bytes.len().to_string())
        .env("HTTP_STUBMAIL_SIGNATURE", sig)
        .env("HTTP_STUBMAIL_CONTENT_SHA256", &id)
        .env("HTTP_STUBMAIL_RECIPIENTS", rcpt)
        .env("POST_MANAGER_DATA", data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.strip_prefix("Status: ").and_then(|s| s.get(..3)).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Every state file has its complete bytes; returns the ids with state.
fn check_consistent(data: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(data.join("meta")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let Some(id) = name.strip_suffix(".json") else { continue };
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("meta").join(&name)).unwrap()).unwrap();
        let bytes = std::fs::read(data.join("messages").join(id)).unwrap_or_else(|_| panic!("{id}: state without bytes"));
        assert_eq!(hex::encode(Sha256::digest(&bytes)), id, "{id}: stored bytes are not what was announced");
        assert_eq!(meta["size"].as_u64().unwrap(), bytes.len() as u64);
        ids.push(id.to_string());
    }
    ids.sort();
    ids
}

#[test]
fn cgi_processes_and_serve_instances_share_one_data_directory() {
    let root = tempfile::tempdir().unwrap();
    let a = Outbox::start(root.path(), "outbox");
    // Two more instances, each also known by its own URL (--public-url):
    // a signed request is bound to the outbox URL it was made for.
    let instance = |name: &str| {
        let port = free_port();
        let mut c = bin_cmd("post_manager");
        c.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--prefix", "/stubmail/"])
            .args(["--public-url", &format!("http://127.0.0.1:{port}/stubmail/"), "--data"])
            .arg(&a.data);
        Server::start(name, c, root.path())
    };
    let (b, b2) = (instance("outbox-2"), instance("outbox-3"));
    let alice = User::init(root.path(), "alice", "alice@example.org", &a.url());
    a.add_account(&alice);
    let me = Arc::new(Identity::load(&alice.home.join("secret.pgp")).unwrap());
    let rcpt = "B".repeat(40);
    let n = 24;
    let mut handles = Vec::new();
    for i in 0..n {
        let (me, data, rcpt, account_url) = (me.clone(), a.data.clone(), rcpt.clone(), a.url());
        let url = [format!("http://{}/stubmail/", b.addr), format!("http://{}/stubmail/", b2.addr)][i % 2].clone();
        let dir = root.path().to_path_buf();
        handles.push(std::thread::spawn(move || {
            let bytes = body(i, 200_000 + i * 1000);
            if i % 3 == 0 {
                return cgi_upload(&data, &account_url, &me, &bytes, &rcpt);
            }
            let id = hex::encode(Sha256::digest(&bytes));
            let f = dir.join(format!("up-{i}"));
            std::fs::write(&f, &bytes).unwrap();
            let rt = tokio::runtime::Runtime::new().unwrap();
            let c = client::OutboxClient::new(client::http_client().unwrap(), &url, me).unwrap();
            match rt.block_on(c.upload(&id, &[protocol::Fpr::parse(&rcpt).unwrap()], &f)) {
                Ok(_) => 201,
                Err(e) => panic!("upload {i}: {e}"),
            }
        }));
    }
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(codes.iter().all(|c| *c == 201), "{codes:?}");
    let ids = check_consistent(&a.data);
    assert_eq!(ids.len(), n, "every upload stored once");
    assert_eq!(std::fs::read_dir(a.data.join("tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(a.data.join(format!("inbox/{rcpt}"))).unwrap().count(), n);
}

#[test]
fn kill_9_during_uploads_leaves_the_store_consistent() {
    let root = tempfile::tempdir().unwrap();
    let a = Outbox::start(root.path(), "outbox");
    let alice = User::init(root.path(), "alice", "alice@example.org", &a.url());
    a.add_account(&alice);
    let me = Arc::new(Identity::load(&alice.home.join("secret.pgp")).unwrap());
    let rcpt = protocol::Fpr::parse(&"B".repeat(40)).unwrap();
    let url = a.url();
    let mut acked = Vec::new();
    let mut handles = Vec::new();
    for i in 0..8 {
        let (me, url, rcpt, dir) = (me.clone(), url.clone(), rcpt.clone(), root.path().to_path_buf());
        handles.push(std::thread::spawn(move || {
            let bytes = body(i, 4_000_000);
            let id = hex::encode(Sha256::digest(&bytes));
            let f = dir.join(format!("big-{i}"));
            std::fs::write(&f, &bytes).unwrap();
            let rt = tokio::runtime::Runtime::new().unwrap();
            let c = client::OutboxClient::new(client::http_client().unwrap(), &url, me).unwrap();
            rt.block_on(c.upload(&id, &[rcpt], &f)).ok().map(|_| id)
        }));
    }
    // Kill the server while the uploads are in flight.
    wait_for("uploads in progress", 30, || (std::fs::read_dir(a.data.join("tmp")).unwrap().count() > 0).then_some(()));
    let data = a.data.clone();
    let listen = a.server.addr.clone();
    drop(a);
    for h in handles {
        if let Some(id) = h.join().unwrap() {
            acked.push(id);
        }
    }
    let ids = check_consistent(&data);
    for id in &acked {
        assert!(ids.contains(id), "{id} was acknowledged but is not stored");
    }
    // A restarted server (same address: the URL Alice's key binds) sees a
    // usable store and accepts new uploads.
    let mut c = bin_cmd("post_manager");
    c.args(["serve", "--listen", &listen, "--data"]).arg(&data);
    let s = Server::start("outbox-again", c, root.path());
    let bytes = body(99, 1000);
    let f = root.path().join("after");
    std::fs::write(&f, &bytes).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client::OutboxClient::new(client::http_client().unwrap(), &format!("http://{}/", s.addr), me).unwrap();
    rt.block_on(c.upload(&hex::encode(Sha256::digest(&bytes)), &[rcpt], &f)).unwrap();
    assert_eq!(check_consistent(&data).len(), ids.len() + 1);
}
