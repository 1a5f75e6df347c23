//! post_manager as a CGI program under the real Apache (mod_cgid) and the
//! real nginx + fcgiwrap, using the configurations in contrib/: the same
//! mail path as `serve`, the Web Key Directory, and refusals.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::*;

fn is_root() -> bool {
    stdout(&ok(Command::new("id").arg("-u"))).trim() == "0"
}

/// A web server process, killed on drop with its error log printed.
struct Web {
    name: &'static str,
    children: Vec<Child>,
    log: PathBuf,
    port: u16,
}

impl Drop for Web {
    fn drop(&mut self) {
        for c in &mut self.children {
            // Kill the whole group where the child leads one (fcgiwrap's workers).
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).output();
            let _ = c.kill();
            let _ = c.wait();
        }
        println!("----- {} error log -----\n{}", self.name, std::fs::read_to_string(&self.log).unwrap_or_default());
    }
}

fn wait_listening(port: u16) {
    wait_for("the web server to listen", 30, || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
}

fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib").join(rel)
}

fn apache(dir: &Path, data: &Path) -> Web {
    let port = free_port();
    let log = dir.join("apache-error.log");
    let user = if is_root() { "User www-data\nGroup www-data\n" } else { "" };
    let conf = format!(
        "Define STUBMAIL_CGI {cgi}\nDefine STUBMAIL_DATA {data}\nServerRoot /etc/apache2\nServerName localhost\n\
         Listen 127.0.0.1:{port}\nPidFile {dir}/apache.pid\nErrorLog {log}\nLogLevel info\nMutex file:{dir} default\n\
         LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so\n\
         LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\n\
         LoadModule alias_module /usr/lib/apache2/modules/mod_alias.so\n\
         LoadModule cgid_module /usr/lib/apache2/modules/mod_cgid.so\n\
         LoadModule env_module /usr/lib/apache2/modules/mod_env.so\n\
         ScriptSock {dir}/cgid.sock\nDocumentRoot {dir}\n{user}Include {contrib}\n",
        cgi = bin("post_manager-cgi").display(),
        data = data.display(),
        dir = dir.display(),
        log = log.display(),
        contrib = contrib("apache/stubmail-outbox.conf").display(),
    );
    let cf = dir.join("apache.conf");
    std::fs::write(&cf, conf).unwrap();
    use std::os::unix::process::CommandExt;
    // Its own process group, so its workers and cgid daemon die with it.
    let child = Command::new(require_sbin("apache2")).process_group(0).arg("-f").arg(&cf).arg("-DFOREGROUND").spawn().unwrap();
    wait_listening(port);
    Web { name: "apache", children: vec![child], log, port }
}

fn nginx(dir: &Path, data: &Path) -> Web {
    let port = free_port();
    let log = dir.join("nginx-error.log");
    let sock = dir.join("fcgiwrap.sock");
    use std::os::unix::process::CommandExt;
    // Its own process group, so its forked workers die with it.
    let fcgi = Command::new(require_sbin("fcgiwrap"))
        .process_group(0)
        .arg("-s")
        .arg(format!("unix:{}", sock.display()))
        .args(["-c", "4"])
        .spawn()
        .unwrap();
    wait_for("fcgiwrap's socket", 30, || sock.exists().then_some(()));
    std::fs::copy("/etc/nginx/fastcgi_params", dir.join("fastcgi_params")).unwrap();
    let user = if is_root() { "user root;\n" } else { "" };
    let conf = format!(
        "{user}daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {log} info;\nevents {{}}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  fastcgi_temp_path {dir}/fcgi;\n\
         proxy_temp_path {dir}/proxy;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
         server {{\n    listen 127.0.0.1:{port};\n    set $stubmail_cgi {cgi};\n    set $stubmail_data {data};\n\
         set $stubmail_fcgi unix:{sock};\n    include {contrib};\n  }}\n}}\n",
        dir = dir.display(),
        log = log.display(),
        cgi = bin("post_manager-cgi").display(),
        data = data.display(),
        sock = sock.display(),
        contrib = contrib("nginx/stubmail-outbox.locations").display(),
    );
    let cf = dir.join("nginx.conf");
    std::fs::write(&cf, conf).unwrap();
    let child = Command::new(require_sbin("nginx")).arg("-p").arg(dir).arg("-c").arg(&cf).spawn().unwrap();
    wait_listening(port);
    Web { name: "nginx", children: vec![child, fcgi], log, port }
}

fn require_sbin(tool: &str) -> PathBuf {
    let p = Path::new("/usr/sbin").join(tool);
    if p.exists() { p } else { require(tool) }
}

/// Alice's outbox behind `web`: the whole path, then WKD and refusals.
fn round_trip(start: fn(&Path, &Path) -> Web) {
    let root = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    // The web server's user must reach the data directory.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = root.path().join("outbox-data");
    let web = start(root.path(), &data);
    let url = format!("http://127.0.0.1:{}/stubmail/", web.port);
    let alice = User::init(root.path(), "alice", "alice@example.org", &url);
    // Bob's notify endpoint: this test listens there itself.
    let stubs = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    stubs.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let notify = format!("udp://{}", stubs.local_addr().unwrap());
    let bob = User::init_with(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/", &["--notify", &notify]);
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&data).arg("--key").arg(alice.export()));
    if is_root() && web.name == "apache" {
        ok(Command::new("chown").args(["-R", "www-data:www-data"]).arg(&data));
    }
    // The outbox sends stubs only to recipients that polled it with mail
    // waiting (their own certificate, not one a sender hands over).
    had_mail_before(&url, &data, &bob.fingerprint());
    let bob_id = std::sync::Arc::new(stubmail::Identity::load(&bob.home.join("secret.pgp")).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = stubmail::client::OutboxClient::new(stubmail::client::http_client().unwrap(), &url, bob_id.clone()).unwrap();
        let req = stubmail::protocol::PollRequest { senders: None, certs: vec![stubmail::pgp::armored(&bob_id.cert()).unwrap()], device: None, ..Default::default() };
        client.poll(&req).await.unwrap();
    });
    if is_root() && web.name == "apache" {
        // The CGI runs as www-data: give it the data directory.
        ok(Command::new("chown").args(["-R", "www-data:www-data"]).arg(&data));
    }
    // The UDP companion of a CGI outbox, sharing its data directory.
    let mut c = bin_cmd("post_manager");
    c.args(["udp", "--listen", "127.0.0.1:0", "--data"]).arg(&data);
    let companion = Server::start(&format!("post_manager-udp-{}", web.name), c, root.path());
    alice.import(&bob.export());
    bob.import(&alice.export());
    alice.edit_config(|t| {
        table(t, "discovery").insert("wkd".into(), false.into());
    });
    let smtp = alice.smtp2stub(root.path());
    let msg = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: via a web server\r\n\r\nCGI works\r\n";
    assert!(smtplib_send(smtp.port(), "alice@example.org", &["bob@example.net"], msg).unwrap().starts_with("250"));
    wait_for("stored via the web server", 60, || {
        matches!(alice.status_json()[0]["state"].as_str(), Some("stored" | "notified")).then_some(())
    });
    // The CGI queued Alice's signed stub; the companion sent it to Bob.
    let mut buf = [0u8; 2048];
    let n = stubs.recv(&mut buf).expect("a stub from the UDP companion");
    let (stub, _, _) = stubmail::protocol::udp::Stub::decode(&buf[..n]).unwrap();
    assert_eq!((stub.sender.to_string(), stub.recipient.to_string()), (alice.fingerprint(), bob.fingerprint()));
    assert_eq!(stub.id, alice.status_json()[0]["id"].as_str().unwrap());
    wait_stubs_sent(&data, &alice, 1);
    assert_eq!(alice.status_json()[0]["state"], "stored", "the sender does not see that a stub went out");
    // Signed polls through the web server hand out cookies the companion knows.
    let statuses = rt.block_on(async {
        let client = stubmail::client::OutboxClient::new(stubmail::client::http_client().unwrap(), &url, bob_id.clone()).unwrap();
        let req = stubmail::protocol::PollRequest {
            senders: None,
            certs: vec![stubmail::pgp::armored(&bob_id.cert()).unwrap()],
            device: Some("d1".into()),
            ..Default::default()
        };
        let resp = client.poll(&req).await.unwrap();
        assert_eq!(resp.udp_port, Some(companion.port()), "the cookie names the companion's port");
        let cookie = resp.cookies[0].decode().unwrap();
        client.udp_poll(companion.port(), &[cookie], 1, std::time::Duration::from_secs(5)).await
    });
    assert_eq!(statuses, Some(vec![stubmail::protocol::udp::PollStatus::Mail]), "the companion sees the waiting message");
    let out = bob.http2mbox_once();
    assert!(out.contains("delivered 1"), "{out}");
    let got = std::fs::read_to_string(&bob.maildir_new()[0]).unwrap();
    assert!(got.contains("Subject: via a web server") && got.contains("CGI works"), "{got}");
    assert_eq!(alice.status_json()[0]["state"], "retrieved");

    // WKD: the hashed local part is the one GnuPG computes.
    let wks = ["/usr/lib/gnupg/gpg-wks-client", "/usr/libexec/gpg-wks-client"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| require("gpg-wks-client"));
    let hash = stdout(&ok(Command::new(wks).args(["--print-wkd-hash", "alice@example.org"])));
    let hash = hash.split_whitespace().next().unwrap().to_string();
    let script = r#"
import sys, urllib.request, urllib.error
base = sys.argv[1]
def get(path, method="GET", data=None, headers={}):
    req = urllib.request.Request(base + path, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r: return r.status, r.read()
    except urllib.error.HTTPError as e: return e.code, e.read()
s, body = get("/.well-known/openpgpkey/hu/" + sys.argv[2] + "?l=alice")
assert s == 200 and len(body) > 100 and body[0] & 0x80, (s, body[:50])
s, _ = get("/.well-known/openpgpkey/example.org/hu/" + sys.argv[2] + "?l=alice")
assert s == 200, s
s, _ = get("/.well-known/openpgpkey/policy"); assert s == 200, s
# The WKD draft asks for CORS on key lookups, through the web server too.
with urllib.request.urlopen(base + "/.well-known/openpgpkey/hu/" + sys.argv[2] + "?l=alice", timeout=30) as r:
    assert r.headers.get("Access-Control-Allow-Origin") == "*", dict(r.headers)
s, _ = get("/.well-known/openpgpkey/hu/ybndrfg8ejkmcpqxot1uwisza345h769"); assert s == 404, s
# Unsigned, malformed or traversing requests are refused with structured errors.
s, body = get("/stubmail/v1/messages"); assert s == 401 and b'"error"' in body, (s, body)
s, body = get("/stubmail/v1/messages/..%2F..%2Fetc%2Fpasswd"); assert s in (400, 404), (s, body)
s, body = get("/stubmail/v1/messages/" + "a" * 64, method="PUT", data=b"x" * 10); assert s == 401, (s, body)
s, body = get("/stubmail/v1/poll", method="POST", data=b"{}", headers={"Stubmail-Signature": "v1; garbage"}); assert s == 401, (s, body)
print("ok")
"#;
    let (good, out) = python(script, &[&format!("http://127.0.0.1:{}", web.port), &hash]);
    assert!(good, "{out}");
    // Refused requests stored nothing (Alice's message, and the earlier one).
    assert_eq!(std::fs::read_dir(data.join("messages")).unwrap().count(), 2);
    assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0);

    // A chunked upload (no Content-Length), signed like any other.
    let me = stubmail::Identity::load(&alice.home.join("secret.pgp")).unwrap();
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let id = stubmail::client::sha256_hex(&bytes);
    let path = format!("/stubmail/v1/messages/{id}");
    let sig = stubmail::auth::sign_request(&me, &url, "PUT", &path, &id, stubmail::time::unix_now()).unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(7_000).map(|c| Ok(c.to_vec())).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        stubmail::client::http_client()
            .unwrap()
            .put(format!("http://127.0.0.1:{}{path}", web.port))
            .header("Stubmail-Signature", sig)
            .header("Stubmail-Content-SHA256", &id)
            .header("Stubmail-Recipients", "B".repeat(40))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status.as_u16(), 201, "chunked upload through {}", web.name);
    assert_eq!(std::fs::read(data.join("messages").join(&id)).unwrap(), bytes);
}

#[test]
fn outbox_as_cgi_under_apache() {
    round_trip(apache);
}

#[test]
fn outbox_as_cgi_under_nginx_and_fcgiwrap() {
    round_trip(nginx);
}
