//! `stubmail report ID`: a received message reported as spam to its
//! outbox, its sender blocked here (http2mbox::report).

use std::sync::Arc;

use stubmail::Home;

pub fn run(home: &Home, id: &str, reason: Option<String>, include_message: bool) -> anyhow::Result<()> {
    let config = home.load_config()?;
    let maildir = home.path(&config.poll.maildir);
    let found = http2mbox::report::find(home, &maildir, id)?;
    let found = match found.as_slice() {
        [one] => one.clone(),
        [] => anyhow::bail!("no message with Stubmail-Id {id}… in {}", maildir.display()),
        many => anyhow::bail!(
            "{id} names {} messages ({}); give more of the id",
            many.len(),
            many.iter().map(|f| &f.id[..16]).collect::<Vec<_>>().join(", ")
        ),
    };
    let me = Arc::new(home.load_identity()?);
    let http = stubmail::client::http_client_with_timeout(std::time::Duration::from_secs(config.poll.timeout_secs.max(1)))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let r = rt.block_on(http2mbox::report::report(home, me, http, &found, reason, include_message))?;
    match &r.by_mail {
        Some(to) => println!(
            "reported {} from {} by mail to {to} (ARF, through your relay: {} takes no complaints){}",
            found.id,
            found.sender,
            r.outbox,
            if include_message { ", with the message" } else { "" }
        ),
        None => println!(
            "reported {} from {} to {}{}",
            found.id,
            found.sender,
            r.outbox,
            if r.recorded { "" } else { " (reported before; not counted again)" }
        ),
    }
    match &r.desk {
        Some((to, Ok(()))) => println!("a signed copy went by mail to {to}, the abuse desk {} names", r.outbox),
        Some((to, Err(why))) => println!("{} names {to} as its abuse desk; no copy was mailed: {why}", r.outbox),
        None => {}
    }
    println!(
        "{} is {}blocked here: `stubmail{} unblock {}` undoes it",
        found.sender,
        if r.blocked { "now " } else { "already " },
        super::init::home_flag(home),
        found.sender
    );
    Ok(())
}
