//! `stubmail demo`: two users, Alice and Bob, each with a node of their own
//! in this process; Alice sends Bob a message over SMTP; Bob's poller
//! fetches it into his Maildir; Alice's status turns to "retrieved".

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stubmail::client::{self, OutboxClient};
use stubmail::Home;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::up;

pub fn run(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("stubmail-demo-{:08x}", rand::random::<u32>())));
    std::fs::create_dir_all(&dir)?;
    println!("Working in {} (kept, so you can look around).\n", dir.display());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse()?;
        let args = |email: &str, name: &str| up::Args {
            email: Some(email.into()),
            name: Some(name.into()),
            smtp: Some(any),
            pop3: Some(any),
            imap: Some(any),
            outbox_listen: Some(any),
            outbox_url: None,
        };
        let (ah, bh) = (Home::single(&dir.join("alice")), Home::single(&dir.join("bob")));
        let alice = up::start(&ah, &args("alice@example.org", "Alice")).await?;
        let bob = up::start(&bh, &args("bob@example.net", "Bob")).await?;
        println!("1. Alice and Bob each run a node: an outbox, smtp2stub and http2mbox.");
        println!("   Alice's outbox: {}   Bob's outbox: {}", alice.config.identity.outbox, bob.config.identity.outbox);
        let (ai, bi) = (Arc::new(ah.load_identity()?), bh.load_identity()?);
        for (home, cert) in [(&ah, bi.cert()), (&bh, ai.cert())] {
            let kr = home.keyring();
            for c in kr.import(vec![cert])? {
                kr.vouch(&stubmail::pgp::fpr_of(&c))?;
            }
        }
        println!("2. They exchange keys: the keyring is the address book and the whitelist.");
        let text = "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: Hello Bob\r\n\r\n\
                    Hello Bob, this message waited in my outbox until you fetched it.\r\n";
        let pass = alice.config.smtp.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default();
        let reply = smtp_send(alice.smtp, (&alice.config.smtp_username(), &pass), "alice@example.org", "bob@example.net", text).await?;
        println!("3. Alice's mail client sends over SMTP to {}: {reply}", alice.smtp);
        let outbox = OutboxClient::new(client::http_client()?, &alice.config.identity.outbox, ai.clone())?;
        let mut stored = None;
        for _ in 0..300 {
            if let Some(m) = outbox.list().await?.messages.into_iter().next() {
                stored = Some(m);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let st = stored.ok_or_else(|| anyhow::anyhow!("the message never reached Alice's outbox"))?;
        println!("4. smtp2stub signed it with Alice's key, encrypted it to Bob (and Alice),");
        println!("   and stored it in ALICE's outbox as {}… ({} bytes): {}", &st.id[..16], st.size, state(&st));
        let poller = http2mbox::poller_for(&bh, &bob.config, true)?;
        let r = poller.poll_once().await?;
        println!("5. Bob's http2mbox polls his contacts' outboxes: delivered {}.", r.delivered);
        let new = bh.path(&bob.config.poll.maildir).join("new");
        for e in std::fs::read_dir(&new)? {
            let p = e?.path();
            println!("   {}:\n", p.display());
            for line in std::fs::read_to_string(&p)?.lines() {
                println!("   | {line}");
            }
        }
        let st = outbox.status(&st.id).await?;
        println!("\n6. Alice's status for that message: {} at {} — no bounces, ever.", state(&st), st.recipients[0].at);
        alice.stop().await?;
        bob.stop().await?;
        Ok(())
    })
}

fn state(st: &stubmail::protocol::MessageStatus) -> String {
    super::wire_name(&st.recipients[0].state)
}

/// A minimal SMTP client: enough for the demo to be its own mail client.
async fn smtp_send(addr: std::net::SocketAddr, (user, pass): (&str, &str), from: &str, to: &str, text: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> anyhow::Result<String> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                anyhow::bail!("the SMTP server closed the connection");
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.trim_end().to_string());
            }
        }
    }
    reply(&mut r).await?;
    for (cmd, want) in [
        ("EHLO demo".to_string(), "250"),
        // AUTH is required on loopback too, as from any mail client.
        (format!("AUTH PLAIN {}", base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))), "235"),
        (format!("MAIL FROM:<{from}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".into(), "354"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).await?;
        let got = reply(&mut r).await?;
        anyhow::ensure!(got.starts_with(want), "{cmd}: {got}");
    }
    w.write_all(text.as_bytes()).await?;
    w.write_all(b".\r\n").await?;
    let done = reply(&mut r).await?;
    anyhow::ensure!(done.starts_with("250"), "DATA: {done}");
    w.write_all(b"QUIT\r\n").await?;
    Ok(done)
}
