//! `stubmail up`: a whole personal node in one process — the user's own
//! outbox (post_manager), smtp2stub, and http2mbox with POP3 — on loopback.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use stubmail::{Config, Home};
use tokio::net::TcpListener;

pub struct Args {
    pub email: Option<String>,
    pub name: Option<String>,
    pub smtp: SocketAddr,
    pub pop3: SocketAddr,
    pub outbox_listen: SocketAddr,
    pub outbox_url: Option<String>,
}

fn ask_email() -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no identity yet: pass --email ADDRESS to create one");
    }
    print!("Your email address: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// A node started in this process.
pub struct Running {
    pub smtp: SocketAddr,
    pub pop3: SocketAddr,
    pub outbox: SocketAddr,
    pub config: Config,
    pub shutdown: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Stop (if not already asked to) and wait for every part to finish
    /// its work in hand (a message in DATA is spooled or refused, never lost).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for t in std::mem::take(&mut self.tasks) {
            t.await??;
        }
        Ok(())
    }
}

/// A node dropped without `stop` (an error on the way) is still told to
/// stop, so the process can end instead of waiting on its listeners.
impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Bind and start a node for `home` (creating its identity if needed).
pub async fn start(home: &Home, a: &Args) -> anyhow::Result<Running> {
    let outbox_l = TcpListener::bind(a.outbox_listen).await.with_context(|| format!("binding the outbox on {}", a.outbox_listen))?;
    let outbox_addr = outbox_l.local_addr()?;
    if !home.secret_key().exists() {
        let email = match a.email.clone() {
            Some(e) => e,
            None => ask_email()?,
        };
        let url = a.outbox_url.clone().unwrap_or_else(|| format!("http://{outbox_addr}/"));
        super::init::run(home, &email, &url, a.name.as_deref(), None, false)?;
    }
    // Passwords for the mail client, made once and kept in config.toml (0600).
    let config = home.load_config_with_passwords(true)?;
    // The user's own outbox, with the user as its account.
    let me = home.load_identity()?;
    let store = post_manager::store::Store::open(&home.data_dir.join("outbox")).context("opening the outbox")?;
    if store.account(&me.fpr()).is_none() {
        store.add_account(&me.cert())?;
    }
    let smtp_l = TcpListener::bind(a.smtp).await.with_context(|| format!("binding SMTP on {}", a.smtp))?;
    let pop3_l = TcpListener::bind(a.pop3).await.with_context(|| format!("binding POP3 on {}", a.pop3))?;
    let (smtp_addr, pop3_addr) = (smtp_l.local_addr()?, pop3_l.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let settings = post_manager::handler::Settings::default();
    let sd = shutdown.clone();
    let udp = post_manager::bind_udp("auto", outbox_l.local_addr()?)?.map(|u| (u, Default::default()));
    let outbox = tokio::spawn(async move { Ok(post_manager::serve(outbox_l, udp, store, settings, Default::default(), sd).await?) });
    let (home2, config2, sd) = (home.clone(), config.clone(), shutdown.clone());
    let smtp = tokio::spawn(async move { smtp2stub::serve_home(&home2, &config2, smtp_l, sd).await });
    let poller = Arc::new(http2mbox::poller_for(home, &config, false)?);
    let interval = config.poll.interval_secs.max(1);
    let (home3, config3, sd) = (home.clone(), config.clone(), shutdown.clone());
    let poll = tokio::spawn(async move { http2mbox::daemon(&home3, &config3, poller, interval, Some(pop3_l), sd).await });
    Ok(Running { smtp: smtp_addr, pop3: pop3_addr, outbox: outbox_addr, config, shutdown, tasks: vec![outbox, smtp, poll] })
}

pub fn run(home: &Home, a: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let node = start(home, &a).await?;
        let (c, smtp_addr, pop3_addr, outbox_addr) = (&node.config, node.smtp, node.pop3, node.outbox);
        let user = c.identity.email.clone();
        println!("Stubmail node for {user} is running. Mail-client settings:");
        print!("{}", super::identity::client_settings(c, smtp_addr, pop3_addr));
        println!("  Your outbox:     {} (served here on {outbox_addr})", c.identity.outbox);
        println!("  Your key:        stubmail keys export   (give it to your contacts)");
        println!("Press Ctrl-C to stop.");
        println!("stubmail up listening on smtp={smtp_addr} pop3={pop3_addr} outbox={outbox_addr}");
        std::io::stdout().flush()?;
        stubmail::signals::cancel_on_signal(&node.shutdown);
        node.shutdown.cancelled().await;
        node.stop().await?;
        println!("stubmail: stopped");
        Ok(())
    })
}
