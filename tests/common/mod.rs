//! Harness for end-to-end tests: run the real binaries on loopback ports
//! chosen at run time, each user in a temporary home, and kill every child
//! on drop (printing its output, so a failure explains itself).

#![allow(dead_code)]

pub mod balancer;
pub mod dovecot;
pub mod pg;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A workspace binary. `scripts/test` builds them all before `cargo test`.
pub fn bin(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_stubmail")).parent().unwrap().to_path_buf();
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)", p.display());
    p
}

/// Require an external tool; the README's test command installs them.
pub fn require(tool: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed; run the tests with scripts/test, which installs it");
}

/// Run a command to completion; panic with its output unless it succeeds.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a command expected to fail; return its stderr.
pub fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} should have failed\nstdout:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A running server process: started, its "listening on ADDR" line read.
pub struct Server {
    pub name: String,
    pub addr: String,
    child: Child,
    stderr_log: PathBuf,
    /// Every stdout line so far.
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGINT (Ctrl-C) and wait up to 60 s for a clean exit.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        ok(Command::new("kill").args(["-INT", &self.child.id().to_string()]));
        wait_for("the process to exit after SIGINT", 60, || self.child.try_wait().unwrap())
    }

    /// Start `cmd` and wait (up to 60 s) for "listening on ADDR" on stdout.
    pub fn start(name: &str, mut cmd: Command, log_dir: &Path) -> Server {
        let stderr_log = log_dir.join(format!("{name}.stderr"));
        let err = std::fs::File::create(&stderr_log).unwrap();
        cmd.stdout(Stdio::piped()).stderr(err).stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines2 = lines.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                lines2.lock().unwrap().push(line.trim().to_string());
                if let Some(a) = line.trim().split("listening on ").nth(1) {
                    let _ = tx.send(a.to_string());
                }
                line.clear();
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Server { name: name.into(), addr, child, stderr_log, lines },
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("{name} did not say it is listening; its stderr:\n{log}");
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The rest of the first stdout line starting with `prefix`.
    pub fn stdout_after(&self, prefix: &str) -> Option<String> {
        self.lines.lock().unwrap().iter().find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Printed into the test's captured output: shown when it fails.
        println!("----- {} stderr -----\n{}", self.name, self.log());
    }
}

/// Wait until `f` returns Some, polling every 50 ms, for at most `secs`.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One Stubmail user with a home of their own.
pub struct User {
    pub email: String,
    pub home: PathBuf,
}

impl User {
    /// `stubmail init` in `<root>/<name>`.
    pub fn init(root: &Path, name: &str, email: &str, outbox: &str) -> User {
        User::init_with(root, name, email, outbox, &[])
    }

    /// `stubmail init` with extra arguments (e.g. `--notify`).
    pub fn init_with(root: &Path, name: &str, email: &str, outbox: &str, args: &[&str]) -> User {
        let home = root.join(name);
        ok(bin_cmd("stubmail").arg("--home").arg(&home).args(["init", "--email", email, "--outbox", outbox, "--name", name]).args(args));
        User { email: email.into(), home }
    }

    pub fn stubmail(&self) -> Command {
        let mut c = bin_cmd("stubmail");
        c.arg("--home").arg(&self.home);
        c
    }

    /// The armored certificate, written to a file.
    pub fn export(&self) -> PathBuf {
        let out = ok(self.stubmail().args(["keys", "export"]));
        let p = self.home.join("exported.asc");
        std::fs::write(&p, &out.stdout).unwrap();
        p
    }

    pub fn import(&self, cert: &Path) {
        ok(self.stubmail().args(["keys", "import"]).arg(cert));
    }

    /// The user's own fingerprint (`stubmail identity show`).
    pub fn fingerprint(&self) -> String {
        let out = stdout(&ok(self.stubmail().args(["identity", "show"])));
        out.split_whitespace().next().unwrap().to_string()
    }

    /// Change `config.toml`.
    pub fn edit_config(&self, f: impl FnOnce(&mut toml::Table)) {
        let p = self.home.join("config.toml");
        let mut t: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut t);
        std::fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
    }

    pub fn maildir_new(&self) -> Vec<PathBuf> {
        let dir = self.home.join("Maildir/new");
        let mut v: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => vec![],
        };
        v.sort();
        v
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = ok(self.stubmail().args(["status", "--json"]));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn smtp2stub(&self, logs: &Path) -> Server {
        let mut c = bin_cmd("smtp2stub");
        c.arg("--home").arg(&self.home).args(["--listen", "127.0.0.1:0"]);
        let s = Server::start(&format!("smtp2stub-{}", self.email), c, logs);
        if let Some(login) = self.smtp_login() {
            register_smtp_login(s.port(), login);
        }
        s
    }

    /// Turn POP3 on in http2mbox with this password.
    pub fn set_pop3_password(&self, password: &str) {
        self.edit_config(|t| {
            let mut pop3 = toml::Table::new();
            pop3.insert("password".into(), password.into());
            table(t, "poll").insert("pop3".into(), pop3.into());
        });
    }

    /// The SMTP user name and password from `config.toml` (AUTH is
    /// required on every listener; `stubmail init` made the password).
    pub fn smtp_login(&self) -> Option<(String, String)> {
        let t: toml::Table = toml::from_str(&std::fs::read_to_string(self.home.join("config.toml")).ok()?).ok()?;
        let smtp = t.get("smtp")?.as_table()?;
        let pass = smtp.get("password")?.as_str()?.to_string();
        let user = smtp.get("username").and_then(|u| u.as_str()).unwrap_or(&self.email).to_string();
        Some((user, pass))
    }

    /// `http2mbox --once`: its stdout and its log.
    pub fn http2mbox_once_with_log(&self) -> String {
        let o = ok(bin_cmd("http2mbox").arg("--home").arg(&self.home).arg("--once"));
        format!("{}\n{}", stdout(&o), String::from_utf8_lossy(&o.stderr))
    }

    pub fn http2mbox_once(&self) -> String {
        stdout(&ok(bin_cmd("http2mbox").arg("--home").arg(&self.home).arg("--once")))
    }
}

/// A loopback port that was free a moment ago (for tools that cannot bind
/// port 0 and report it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The table `[name]` of a TOML document, created if missing.
pub fn table<'a>(t: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    t.entry(name).or_insert_with(|| toml::Value::Table(Default::default())).as_table_mut().unwrap()
}

/// Run a Python snippet with arguments; returns (success, stdout+stderr).
/// Defined for every script run by [`python`]: `login_smtp(host, port,
/// ...)` is `smtplib.SMTP(...)` followed by the AUTH a mail client does,
/// with the login of the smtp2stub the test started on that port.
const PY_PRELUDE: &str = r#"
import smtplib as _smtplib, json as _json, os as _os
def login_smtp(host, port, *a, **k):
    s = _smtplib.SMTP(host, port, *a, **k)
    login = _json.loads(_os.environ.get("STUBMAIL_TEST_SMTP_LOGINS", "{}")).get(str(port))
    if login:
        s.login(*login)
    return s
"#;

pub fn python(script: &str, args: &[&str]) -> (bool, String) {
    let logins: std::collections::HashMap<String, (String, String)> =
        SMTP_LOGINS.lock().unwrap().iter().map(|(p, l)| (p.to_string(), l.clone())).collect();
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{PY_PRELUDE}\n{script}"))
        .args(args)
        .env("STUBMAIL_TEST_SMTP_LOGINS", serde_json::to_string(&logins).unwrap())
        .output()
        .expect("python3");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A self-signed certificate and key for localhost, made with openssl.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    ok(Command::new(require("openssl"))
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

/// Peak resident memory of a process, in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn bin_cmd(name: &str) -> Command {
    let mut c = Command::new(bin(name));
    // No test may depend on the user's environment.
    c.env_remove("STUBMAIL_HOME").env("RUST_LOG", "info");
    c
}

/// An outbox (post_manager serve) with its own data directory.
pub struct Outbox {
    pub server: Server,
    pub data: PathBuf,
}

impl Outbox {
    pub fn start(root: &Path, name: &str) -> Outbox {
        Outbox::start_with(root, name, &[])
    }

    /// With extra `serve` arguments.
    pub fn start_with(root: &Path, name: &str, args: &[&str]) -> Outbox {
        let data = root.join(name);
        let mut c = bin_cmd("post_manager");
        c.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(&data).args(args);
        let server = Server::start(name, c, root);
        Outbox { server, data }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.server.addr)
    }

    pub fn add_account(&self, user: &User) {
        ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&self.data).arg("--key").arg(user.export()));
    }
}

/// The login of each smtp2stub the tests started, by port: the helpers
/// below log in as a mail client would (AUTH PLAIN) when one is known.
static SMTP_LOGINS: std::sync::Mutex<Vec<(u16, (String, String))>> = std::sync::Mutex::new(Vec::new());

pub fn register_smtp_login(port: u16, login: (String, String)) {
    let mut l = SMTP_LOGINS.lock().unwrap();
    l.retain(|(p, _)| *p != port);
    l.push((port, login));
}

/// `[user, password]` as JSON for a Python helper (`null`: no AUTH).
fn login_json(port: u16) -> String {
    let l = SMTP_LOGINS.lock().unwrap();
    serde_json::to_string(&l.iter().find(|(p, _)| *p == port).map(|(_, (u, pw))| vec![u.clone(), pw.clone()])).unwrap()
}

/// Send one message with Python's smtplib; returns the server's reply to DATA.
pub fn smtplib_send(port: u16, from: &str, to: &[&str], message: &str) -> Result<String, String> {
    let script = r#"
import smtplib, sys, json
port, sender, rcpts, msg = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.stdin.buffer.read()
login = json.loads(sys.argv[4])
s = smtplib.SMTP("127.0.0.1", port, timeout=60)
s.ehlo("client.test")
try:
    if login: s.login(*login)
    code, resp = s.mail(sender, ["BODY=8BITMIME"])
    if code != 250: print(f"MAIL {code} {resp.decode()}"); sys.exit(3)
    for r in rcpts:
        code, resp = s.rcpt(r)
        if code != 250: print(f"RCPT {code} {resp.decode()}"); sys.exit(3)
    code, resp = s.data(msg)
    print(f"{code} {resp.decode()}")
    sys.exit(0 if code == 250 else 3)
finally:
    s.quit()
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(from)
        .arg(serde_json::to_string(to).unwrap())
        .arg(login_json(port))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let mut text = String::new();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    if out.status.success() {
        Ok(text.trim().to_string())
    } else {
        let mut e = String::new();
        (&out.stderr[..]).read_to_string(&mut e).unwrap();
        Err(format!("{}{}", text.trim(), e))
    }
}

/// Alice, with her outbox running and her account in it, and Bob, whose
/// keyring has Alice's key (and Alice Bob's, if `alice_knows_bob`).
/// Key discovery is off: no test reaches the network.
pub struct Pair {
    pub root: tempfile::TempDir,
    pub outbox: Outbox,
    pub alice: User,
    pub bob: User,
}

impl Pair {
    pub fn start(alice_knows_bob: bool) -> Pair {
        let root = tempfile::tempdir().unwrap();
        let outbox = Outbox::start(root.path(), "alice-outbox");
        let alice = User::init(root.path(), "alice", "alice@example.org", &outbox.url());
        // Bob's own outbox is never contacted in these tests.
        let bob = User::init(root.path(), "bob", "bob@example.net", "http://127.0.0.1:9/");
        outbox.add_account(&alice);
        if alice_knows_bob {
            alice.import(&bob.export());
        }
        bob.import(&alice.export());
        alice.edit_config(|t| {
            table(t, "discovery").insert("wkd".into(), false.into());
        });
        Pair { root, outbox, alice, bob }
    }
}

/// Someone (another account of the outbox, not one of the recipient's
/// contacts) has sent `recipient` mail at this outbox before. An outbox
/// keeps a recipient's certificate, cookies and nonces, and sends it stubs,
/// only once it has had mail there (SECURITY.md: strangers leave nothing);
/// tests of the steady state start from here. The recipient never fetches
/// this message: it polls only for its contacts.
pub fn had_mail_before(outbox_url: &str, data: &Path, recipient: &str) {
    stubmail::client::init_tls();
    let other = std::sync::Arc::new(stubmail::Identity::generate(None, "earlier@example.com", outbox_url).unwrap());
    let f = data.with_file_name(format!("earlier-{}.asc", other.fpr()));
    std::fs::write(&f, stubmail::pgp::armored(&other.cert()).unwrap()).unwrap();
    ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(data).arg("--key").arg(&f));
    let body = format!("not really a message for {recipient}").into_bytes();
    let id = stubmail::client::sha256_hex(&body);
    let file = data.with_file_name(format!("earlier-{id}"));
    std::fs::write(&file, &body).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let c = stubmail::client::OutboxClient::new(stubmail::client::http_client().unwrap(), outbox_url, other).unwrap();
    rt.block_on(c.upload(&id, &[stubmail::protocol::Fpr::parse(recipient).unwrap()], &file)).unwrap();
}

/// The states `stubmail status --json` reports, one per recipient.
pub fn states(u: &User) -> Vec<String> {
    u.status_json().as_array().unwrap().iter().map(|l| l["state"].as_str().unwrap().to_string()).collect()
}

/// Wait until the outbox at `data` (a data directory) has sent a stub for
/// every recipient of `u`'s `n` messages. The outbox keeps that state to
/// itself: its sender sees `stored` (a stub goes only to an address that
/// polls the outbox, which would tell a spammer the live ones).
pub fn wait_stubs_sent(data: &Path, u: &User, n: usize) {
    let store = post_manager::store::Store::open(data).unwrap();
    wait_for(&format!("stubs for {n} recipients"), 120, || {
        let st = u.status_json();
        let all = st.as_array().unwrap();
        let sent = all
            .iter()
            .filter(|l| {
                let (Some(id), Some(r)) = (l["id"].as_str(), l["fingerprint"].as_str().and_then(|r| stubmail::protocol::Fpr::parse(r).ok())) else { return false };
                store.recipient_state(id, &r).ok().flatten() == Some(stubmail::protocol::DeliveryState::Notified)
            })
            .count();
        (all.len() == n && sent == n).then_some(())
    });
}

/// Wait until `u` has sent to `n` recipients, all in `state`.
pub fn wait_states(u: &User, n: usize, state: &str) {
    wait_for(&format!("{n} recipients in state {state}"), 120, || {
        let s = states(u);
        (s.len() == n && s.iter().all(|x| x == state)).then_some(())
    });
}

/// Send one message of about `mib` MiB (76-column lines, generated by the
/// client as it sends) with Python's smtplib.
pub fn smtplib_send_big(port: u16, mib: usize) {
    let script = r#"
import smtplib, sys, json
line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n"
body = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: big\r\n\r\n" + line * (int(sys.argv[2]) * 1024 * 1024 // len(line))
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=600)
login = json.loads(sys.argv[3])
if login: s.login(*login)
s.sendmail("alice@example.org", ["bob@example.net"], body)
s.quit()
"#;
    let (good, out) = python(script, &[&port.to_string(), &mib.to_string(), &login_json(port)]);
    assert!(good, "{out}");
}

/// A UDP relay that drops a share of the datagrams in each direction
/// (deterministically, from `seed`): the lossy network between a poller and
/// an outbox, or between an outbox and a notify endpoint.
pub struct LossyUdp {
    pub port: u16,
    pub forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LossyUdp {
    pub fn start(target: std::net::SocketAddr, drop_share: f64, seed: u64) -> LossyUdp {
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(target).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let port = front.local_addr().unwrap().port();
        let (forwarded, dropped, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let client = Arc::new(Mutex::new(None));
        let rng = Arc::new(Mutex::new(seed | 1));
        let drop_now = move |rng: &Mutex<u64>| {
            let mut x = rng.lock().unwrap();
            // xorshift64: reproducible, no dependency.
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            (*x % 10_000) as f64 / 10_000.0 < drop_share
        };
        let (f2, b2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        for dir in 0..2 {
            let (from, to) = if dir == 0 { (f2.try_clone().unwrap(), b2.try_clone().unwrap()) } else { (b2.try_clone().unwrap(), f2.try_clone().unwrap()) };
            let (fw, dr, st, cl, rng) = (forwarded.clone(), dropped.clone(), stop.clone(), client.clone(), rng.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while !st.load(Ordering::Relaxed) {
                    let Ok((n, src)) = from.recv_from(&mut buf) else { continue };
                    if dir == 0 {
                        *cl.lock().unwrap() = Some(src);
                    }
                    if drop_now(&rng) {
                        dr.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let sent = if dir == 0 { to.send(&buf[..n]) } else { cl.lock().unwrap().map_or(Ok(0), |c| to.send_to(&buf[..n], c)) };
                    if sent.is_ok() {
                        fw.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        LossyUdp { port, forwarded, dropped, stop }
    }

    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (self.forwarded.load(Ordering::Relaxed), self.dropped.load(Ordering::Relaxed))
    }
}

impl Drop for LossyUdp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Send a request with a signature made beforehand (a replay, a request
/// made for another outbox); its status.
pub fn send_signed(method: &str, url: &str, sig: &str, body: Vec<u8>) -> u16 {
    let digest = stubmail::client::sha256_hex(&body);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        stubmail::client::http_client()
            .unwrap()
            .request(method.parse().unwrap(), url)
            .header(stubmail::protocol::SIGNATURE_HEADER, sig)
            .header(stubmail::protocol::DIGEST_HEADER, digest)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

/// Signed polls by `k` fresh recipients: their cookies and the UDP port.
pub fn udp_cookies(outbox: &Outbox, k: usize) -> (Vec<(stubmail::protocol::udp::CookieId, stubmail::protocol::udp::CookieKey)>, u16) {
    let ids = outbox_accounts(outbox, k);
    let mut port = 0;
    let out = ids
        .iter()
        .map(|me| {
            let resp = signed_poll(outbox, me, true);
            port = resp.udp_port.expect("the outbox announces its UDP port");
            resp.cookies[0].decode().unwrap()
        })
        .collect();
    (out, port)
}

/// `k` fresh accounts of the outbox (a stranger's poll gets no cookie: it
/// keeps nothing for strangers with no mail there).
pub fn outbox_accounts(outbox: &Outbox, k: usize) -> Vec<std::sync::Arc<stubmail::Identity>> {
    stubmail::client::init_tls();
    (0..k)
        .map(|i| {
            let me = std::sync::Arc::new(stubmail::Identity::generate(None, &format!("r{i}@example.net"), &outbox.url()).unwrap());
            let f = outbox.data.with_file_name(format!("{}-r{i}.asc", me.fpr()));
            std::fs::write(&f, stubmail::pgp::armored(&me.cert()).unwrap()).unwrap();
            ok(bin_cmd("post_manager").args(["account", "add", "--data"]).arg(&outbox.data).arg("--key").arg(&f));
            me
        })
        .collect()
}

/// One signed poll by `me`, device `d1`, saying whether it will use UDP.
pub fn signed_poll(outbox: &Outbox, me: &std::sync::Arc<stubmail::Identity>, udp: bool) -> stubmail::protocol::PollResponse {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = stubmail::client::OutboxClient::new(stubmail::client::http_client().unwrap(), &outbox.url(), me.clone()).unwrap();
        let req = stubmail::protocol::PollRequest {
            senders: None,
            certs: vec![stubmail::pgp::armored(&me.cert()).unwrap()],
            device: Some("d1".into()),
            udp,
        };
        c.poll(&req).await.unwrap()
    })
}

/// GnuPG in a home of its own (made, 0700, if missing), unattended, with an
/// empty passphrase unless the caller adds its own `--passphrase`.
pub fn gpg(home: &Path) -> Command {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(home).unwrap();
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut c = Command::new(require("gpg"));
    c.arg("--homedir").arg(home).args(["--batch", "--no-tty", "--pinentry-mode", "loopback"]);
    c
}

/// [`gpg`] with the empty passphrase.
pub fn gpg_nopass(home: &Path) -> Command {
    let mut c = gpg(home);
    c.args(["--passphrase", ""]);
    c
}

/// The fingerprint GnuPG lists for `who` in its home.
pub fn gpg_fingerprint(home: &Path, who: &str) -> String {
    stdout(&ok(gpg(home).args(["--with-colons", "--list-keys", who])))
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .unwrap_or_else(|| panic!("gpg lists no key for {who}"))
        .to_string()
}

/// An smtp-sink that stops with the test, however the test ends (a
/// leftover one would hold the test's output pipe open).
pub struct Sink(pub std::process::Child);

impl Sink {
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// smtp-sink as the relay; `extra` are smtp-sink options (e.g. rejects).
pub fn sink(root: &std::path::Path, extra: &[&str]) -> (Sink, u16, std::path::PathBuf) {
    let port = free_port();
    let dump = root.join("sink");
    std::fs::create_dir_all(&dump).unwrap();
    let user = String::from_utf8(ok(Command::new("id").arg("-un")).stdout).unwrap();
    let child = Command::new(require("smtp-sink"))
        .args(["-u", user.trim(), "-d"])
        .arg(format!("{}/%M.", dump.display()))
        .args(extra)
        .arg(format!("127.0.0.1:{port}"))
        .arg("10")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Sink(child);
    wait_for("smtp-sink to listen", 30, || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    (child, port, dump)
}
