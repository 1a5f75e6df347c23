//! `stubmail doctor`: check a home and say how to fix each problem.

use std::sync::Arc;
use std::time::Duration;

use stubmail::client::{self, ClientError, OutboxClient};
use stubmail::{fsutil, pgp, Home};

#[derive(Default)]
struct Report {
    problems: usize,
}

impl Report {
    fn ok(&self, what: &str) {
        println!("ok       {what}");
    }
    fn note(&self, what: &str) {
        println!("note     {what}");
    }
    fn problem(&mut self, what: &str, fix: &str) {
        self.problems += 1;
        println!("PROBLEM  {what}\n         fix: {fix}");
    }
}

pub fn run(home: &Home) -> anyhow::Result<bool> {
    let mut r = Report::default();
    let config = match home.load_config() {
        Ok(c) => {
            r.ok(&format!("config {}", home.config_file().display()));
            c
        }
        Err(e) => {
            r.problem(&format!("{e:#}"), "create one with `stubmail init --email ADDRESS --outbox URL` (or `stubmail up`)");
            return Ok(false);
        }
    };
    if fsutil::mode_of(&home.config_file()).is_ok_and(|m| m & 0o077 != 0)
        && (config.smtp.password.is_some() || config.poll.pop3.password.is_some())
    {
        r.problem("config.toml holds passwords and others can read it", &format!("chmod 600 {}", home.config_file().display()));
    }
    match (&config.smtp.password, config.smtp.auth) {
        (_, stubmail::config::AuthPolicy::LoopbackOpen) => r.note(
            "smtp.auth = \"loopback-open\": any program or user of this machine can send mail signed as you \
             (remove the line to require the password)",
        ),
        (Some(_), _) => r.ok("SMTP requires AUTH; the password is smtp.password in config.toml (`stubmail identity show` prints it)"),
        (None, _) => r.problem("smtp.password is not set: smtp2stub requires AUTH", "stubmail identity show  (makes one and prints it)"),
    }
    if let Ok(set) = http2mbox::poller::SetAside::new(home.state_dir().join("rejected")).list() {
        let aside = set.iter().filter(|x| x.attempts >= http2mbox::poller::SetAside::TRIES).count();
        if aside > 0 {
            r.note(&format!("{aside} received message(s) failed their checks and are set aside: `stubmail status` lists them with their senders"));
        }
    }
    let me = match home.load_identity() {
        Ok(me) => {
            r.ok(&format!("secret key {} ({})", home.secret_key().display(), me.fpr()));
            // Contacts poll the outbox the key binds; smtp2stub uploads to
            // the config's. Two different ones: mail nobody will fetch.
            let bound = pgp::outbox_of(&me.cert()).unwrap_or_default();
            if stubmail::protocol::outbox_id(&bound) != stubmail::protocol::outbox_id(&config.identity.outbox) {
                r.problem(
                    &format!(
                        "your key binds the outbox {bound}, but identity.outbox in config.toml is {}: contacts poll {bound}, mail goes to the other",
                        config.identity.outbox
                    ),
                    &format!("stubmail identity set-outbox {}", config.identity.outbox),
                );
            }
            Some(Arc::new(me))
        }
        Err(e) => {
            let fix = if e.to_string().contains("chmod 600") {
                format!("chmod 600 {}", home.secret_key().display())
            } else {
                "restore the key from your backup, or make a new identity with `stubmail init`".into()
            };
            r.problem(&format!("secret key: {e:#}"), &fix);
            None
        }
    };
    match home.keyring().all() {
        Ok(all) => {
            let with_outbox = all.iter().filter(|c| pgp::outbox_of(c).is_some()).count();
            r.ok(&format!("keyring: {} contact(s), {with_outbox} with a Stubmail outbox", all.len()));
            for c in &all {
                if let Err(e) = pgp::check_contact(c) {
                    r.problem(&format!("contact {e}"), &format!("stubmail keys remove {} (then import a current key)", pgp::fpr_of(c)));
                }
            }
        }
        Err(e) => r.problem(&format!("keyring: {e}"), &format!("check {}", home.keyring_dir().display())),
    }
    match stubmail::blocklist::load(&home.data_dir) {
        Ok(b) => {
            r.ok(&format!("blocklist: {} block(s), {} exception(s), {} shared list(s)", b.blocks.len(), b.allows.len(), b.subscriptions.len()));
            for s in b.subscriptions.iter().filter(|s| s.error.is_some()) {
                r.note(&format!("shared blocklist {}: {}", s.url, s.error.as_deref().unwrap_or_default()));
            }
        }
        // http2mbox polls nothing while it cannot read the blocks.
        Err(e) => r.problem(&format!("{e}"), &format!("fix {} by hand (or move it away to start a new, empty one)", stubmail::blocklist::path(&home.data_dir).display())),
    }
    // The addresses in use: those the running programs recorded in their
    // locks (a flag may have overridden config.toml), else the config's.
    let state = home.state_dir();
    let mut listeners = vec![("smtp2stub", "SMTP", "smtp", config.smtp.listen), ("http2mbox", "POP3", "pop3", config.poll.pop3.listen)];
    if config.poll.imap.enabled && config.poll.deliver == stubmail::config::Delivery::Maildir {
        listeners.push(("http2mbox", "IMAP", "imap", config.poll.imap.listen));
    }
    for (role, name, key, configured) in listeners {
        match stubmail::node::holder(&state, role) {
            Some(h) => {
                let Some(addr) = h.listening.get(key).and_then(|a| a.parse::<std::net::SocketAddr>().ok()) else {
                    r.ok(&format!("{role} runs: {h}"));
                    continue;
                };
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(_) => r.ok(&format!("{name} answers on {addr}: {h}")),
                    Err(e) => r.problem(
                        &format!("{name} on {addr} does not answer ({e}), though {h} holds this home"),
                        "restart your node (Ctrl-C, then `stubmail up`)",
                    ),
                }
                if addr != configured {
                    r.note(&format!("{name} runs on {addr}, config.toml says {configured}: the next start without flags uses {configured}"));
                }
            }
            None => match std::net::TcpListener::bind(configured) {
                Ok(_) => r.note(&format!("{name} port {configured} is free ({role} is not running for this home)")),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => r.problem(
                    &format!("{name} port {configured} (config.toml) is taken by another program; {role} of this home is not running"),
                    "stop that program, or choose another listen address in config.toml",
                ),
                Err(e) => r.problem(&format!("{name} port {configured}: {e}"), "choose another listen address in config.toml"),
            },
        }
    }
    if let Some(relay) = &config.relay {
        let target = format!("{}:{}", relay.host, relay.port);
        match std::net::ToSocketAddrs::to_socket_addrs(&target)
            .ok()
            .and_then(|mut a| a.next())
            .map(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(5)))
        {
            Some(Ok(_)) => r.ok(&format!("SMTP relay {target} answers")),
            _ => r.problem(&format!("SMTP relay {target} does not answer"), "check [relay] host and port in config.toml"),
        }
    }
    if let Some(me) = me {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(check_outbox(&mut r, &config, me))?;
    }
    if r.problems == 0 {
        println!("\nno problems found");
    } else {
        println!("\n{} problem(s) found", r.problems);
    }
    Ok(r.problems == 0)
}

async fn check_outbox(r: &mut Report, config: &stubmail::Config, me: Arc<stubmail::Identity>) -> anyhow::Result<()> {
    let url = &config.identity.outbox;
    let http = client::http_client_with_timeout(Duration::from_secs(10))?;
    let outbox = match OutboxClient::new(http.clone(), url, me.clone()) {
        Ok(o) => o,
        Err(e) => {
            r.problem(&format!("outbox {url}: {e}"), "set identity.outbox to your outbox's http(s) URL");
            return Ok(());
        }
    };
    // The clock, from the outbox's Date header.
    if let Ok(resp) = http.get(url.as_str()).send().await {
        let date = resp.headers().get(reqwest::header::DATE).and_then(|d| d.to_str().ok()).and_then(httpdate_parse);
        if let Some(t) = date {
            let skew = (stubmail::time::unix_now() - t).abs();
            if skew > 60 {
                r.problem(&format!("this clock differs from the outbox's by {skew} s"), "synchronise the clock (e.g. systemd-timesyncd or chrony)");
            } else {
                r.ok(&format!("clock agrees with the outbox's (within {skew} s)"));
            }
        }
    }
    match outbox.account().await {
        Ok(st) => {
            r.ok(&format!("outbox {url} knows you: {}", st.usage()));
            let near = st.nearly_full();
            if !near.is_empty() {
                r.problem(
                    &format!("your outbox is (nearly) at its limit of {}", near.join(", ")),
                    "`stubmail unsend ID` old messages nobody fetched, wait for recipients to fetch, or ask the operator for more",
                );
            }
        }
        Err(ClientError::Transport(e)) => {
            r.problem(&format!("outbox {url} is unreachable: {e}"), "start it (`stubmail up` runs one for you) or fix identity.outbox");
            return Ok(());
        }
        Err(ClientError::Server { body, .. }) if body.error == "stale_timestamp" => {
            r.problem(&format!("the outbox refuses your requests: {}", body.message), "synchronise the clock");
        }
        Err(ClientError::Server { body, .. }) if body.error == "unauthenticated" => r.problem(
            "your key is not an account on your outbox",
            "ask its operator to run `post_manager account add --key` with the output of `stubmail keys export`",
        ),
        Err(e) => r.problem(&format!("outbox {url}: {e}"), "see the outbox's log"),
    }
    // Does the outbox publish your key, so contacts can discover it?
    let origin = reqwest::Url::parse(url).ok().map(|u| u.origin().ascii_serialization());
    let found = stubmail::wkd::lookup(&http, &config.identity.email, origin.as_deref(), Duration::from_secs(10)).await;
    if found.iter().any(|c| pgp::fpr_of(c) == me.fpr()) {
        r.ok("your outbox serves your key in its Web Key Directory");
    } else {
        r.problem(
            "your outbox does not serve your key in its Web Key Directory",
            "outboxes serve their accounts' keys at /.well-known/openpgpkey/: register this key as an account (see above)",
        );
    }
    Ok(())
}

fn httpdate_parse(s: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
}
