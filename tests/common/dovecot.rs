//! Dovecot serving a Maildir on loopback (POP3 or IMAP), started in a temp
//! directory on its own port: the anchor the local servers are compared
//! with, in tests and in the benchmarks.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, ok, require, stdout};

/// A running Dovecot; its whole process group is killed on drop.
pub struct Dovecot {
    child: std::process::Child,
    pub port: u16,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).stderr(Stdio::null()).output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sbin(tool: &str) -> std::path::PathBuf {
    let p = Path::new("/usr/sbin").join(tool);
    if p.exists() { p } else { require(tool) }
}

/// Start Dovecot for `protocol` ("pop3" or "imap") over `maildir`, user
/// any name, password `pop-secret`. Err: what its logs said.
pub fn start(dir: &Path, maildir: &Path, protocol: &str) -> Result<Dovecot, String> {
    let bin = sbin("dovecot");
    let port = free_port();
    let id = |args: &[&str]| stdout(&ok(Command::new("id").args(args))).trim().to_string();
    let (mut uid, mut gid) = (id(&["-u"]), id(&["-g"]));
    if uid == "0" {
        // Dovecot never serves mail as root: give it the Maildir as nobody
        // (our servers, as root, still read it).
        (uid, gid) = (id(&["-u", "nobody"]), id(&["-g", "nobody"]));
        ok(Command::new("chown").args(["-R", "nobody:"]).arg(maildir));
        use std::os::unix::fs::PermissionsExt;
        for d in maildir.ancestors().skip(1).take(3) {
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
        }
    }
    let run = dir.join(format!("dovecot-{protocol}-run"));
    std::fs::create_dir_all(&run).unwrap();
    let conf = dir.join(format!("dovecot-{protocol}.conf"));
    let (pop3_port, imap_port) = if protocol == "pop3" { (port, 0) } else { (0, port) };
    std::fs::write(
        &conf,
        format!(
            "base_dir = {run}\nstate_dir = {run}\nlog_path = {dir}/dovecot-{protocol}.log\nprotocols = {protocol}\nlisten = 127.0.0.1\nssl = no\n\
             disable_plaintext_auth = no\nauth_mechanisms = plain\nmail_location = maildir:{md}\nfirst_valid_uid = 0\nfirst_valid_gid = 0\n\
             pop3_uidl_format = %08Xu%08Xv\npassdb {{\n  driver = static\n  args = password=pop-secret\n}}\n\
             userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={dir}\n}}\n\
             service pop3-login {{\n  inet_listener pop3 {{\n    port = {pop3_port}\n  }}\n  inet_listener pop3s {{\n    port = 0\n  }}\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    port = {imap_port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n",
            run = run.display(),
            dir = dir.display(),
            md = maildir.display(),
        ),
    )
    .unwrap();
    use std::os::unix::process::CommandExt;
    let stderr = std::fs::File::create(dir.join(format!("dovecot-{protocol}.stderr"))).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .process_group(0)
        .arg("-F")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot run dovecot: {e}"))?;
    let d = Dovecot { child, port };
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if up {
        Ok(d)
    } else {
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
        Err(format!("{} {}", read(&format!("dovecot-{protocol}.stderr")), read(&format!("dovecot-{protocol}.log"))))
    }
}
