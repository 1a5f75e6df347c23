//! A PostgreSQL cluster of the test's own: `initdb` in a temporary
//! directory, `postgres` on a loopback port of its own, stopped on drop —
//! and by a watchdog if the test process dies first. As root (CI), the
//! cluster runs as `nobody`: PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{free_port, ok, wait_for};

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The newest installed server's binaries (Debian: /usr/lib/postgresql/N/bin).
fn bindir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed; run the tests with scripts/test, which installs it")
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("no initdb under /usr/lib/postgresql").1
}

impl Postgres {
    /// The command as the cluster's user.
    fn as_owner(&self, tool: &str) -> Command {
        as_owner(&self.bin.join(tool))
    }

    /// A cluster on a port and in a directory of its own, not started.
    fn new() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let bin = bindir();
        if is_root() {
            ok(Command::new("chown").args(["-R", "nobody:nogroup"]).arg(dir.path()));
        }
        Postgres { port: free_port(), dir, bin }
    }

    pub fn start() -> Postgres {
        let pg = Postgres::new();
        ok(pg.as_owner("initdb").args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "-D"]).arg(pg.data()));
        pg.launch();
        pg
    }

    /// A standby of `primary`, replicating it (streaming replication).
    pub fn standby_of(primary: &Postgres) -> Postgres {
        let pg = Postgres::new();
        ok(pg
            .as_owner("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres", "-X", "stream", "-R", "-D"])
            .arg(pg.data()));
        pg.launch();
        pg
    }

    /// Make a standby the primary.
    pub fn promote(&self) {
        ok(self.as_owner("pg_ctl").args(["-D"]).arg(self.data()).args(["-w", "promote"]));
    }

    /// Stop at once, as a crash would.
    pub fn crash(&self) {
        ok(self.as_owner("pg_ctl").args(["-D"]).arg(self.data()).args(["-m", "immediate", "stop"]));
    }

    fn launch(&self) {
        let pg = self;
        let data = pg.data();
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200", pg.port, pg.dir.path().display());
        ok(pg.as_owner("pg_ctl").args(["-D"]).arg(&data).args(["-l"]).arg(pg.dir.path().join("log")).args(["-o", &opts, "-w", "start"]));
        // If this process dies without dropping the cluster, stop it anyway.
        let watchdog = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; kill -QUIT $(head -1 {data}/postmaster.pid 2>/dev/null) 2>/dev/null",
            pid = std::process::id(),
            data = data.display()
        );
        Command::new("setsid").args(["sh", "-c", &watchdog]).stdin(std::process::Stdio::null()).spawn().unwrap();
        wait_for("PostgreSQL to accept connections", 30, || {
            pg.as_owner("pg_isready").args(["-h", "127.0.0.1", "-p", &pg.port.to_string()]).output().unwrap().status.success().then_some(())
        });
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A new, empty database.
    pub fn create_db(&self, name: &str) -> String {
        ok(self.psql("postgres").args(["-c", &format!("CREATE DATABASE {name}")]));
        self.url(name)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn psql(&self, db: &str) -> Command {
        let mut c = self.as_owner("psql");
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", db]);
        c
    }

    /// One value from a query.
    pub fn query(&self, db: &str, sql: &str) -> String {
        super::stdout(&ok(self.psql(db).args(["-A", "-t", "-c", sql]))).trim().to_string()
    }

    pub fn bin(&self, tool: &str) -> Command {
        self.as_owner(tool)
    }
}

fn as_owner(tool: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]).arg(tool);
        // nobody cannot enter root's working directory.
        c.current_dir("/");
        c
    } else {
        Command::new(tool)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.as_owner("pg_ctl").args(["-D"]).arg(self.data()).args(["-m", "immediate", "stop"]).output();
    }
}
