//! `stubmail status`: what happened to the mail you sent. Reads the local
//! spool (queued, failed) and asks your outbox about what it stores.

use std::sync::Arc;

use serde::Serialize;
use stubmail::client::{self, OutboxClient};
use stubmail::Home;

use super::wire_name;

#[derive(Serialize)]
struct Line {
    queue_id: String,
    id: Option<String>,
    recipient: String,
    fingerprint: String,
    /// queued | stored | notified | retrieved | expired | unsent | relayed | failed | unknown
    state: String,
    at: Option<String>,
    detail: Option<String>,
}

pub fn run(home: &Home, json: bool) -> anyhow::Result<()> {
    use smtp2stub::spool::{JobState, Route, Spool};
    let config = home.load_config()?;
    let me = Arc::new(home.load_identity()?);
    let spool = Spool::open(&home.spool_dir())?;
    let mut envs = spool.queued()?;
    envs.extend(spool.sent()?);
    envs.sort_by(|a, b| a.received.cmp(&b.received).then(a.qid.cmp(&b.qid)));
    let rt = tokio::runtime::Runtime::new()?;
    let outbox = OutboxClient::new(client::http_client()?, &config.identity.outbox, me)?;
    let mut lines = Vec::new();
    for env in &envs {
        let fpr_of = |r: &smtp2stub::spool::Rcpt| match &r.route {
            Route::Stub { fpr } => fpr.to_string(),
            Route::Relay => String::new(),
        };
        if env.jobs.is_empty() {
            // Accepted, not yet planned: everyone is queued.
            for r in &env.rcpts {
                lines.push(Line {
                    queue_id: env.qid.clone(),
                    id: None,
                    recipient: r.addr.clone(),
                    fingerprint: fpr_of(r),
                    state: "queued".into(),
                    at: None,
                    detail: None,
                });
            }
            continue;
        }
        for j in &env.jobs {
            let remote = match (&j.id, j.state) {
                (Some(id), JobState::Uploaded) => Some(rt.block_on(outbox.status(id))),
                _ => None,
            };
            for r in &j.rcpts {
                let fpr = fpr_of(r);
                let (state, at, detail) = match &remote {
                    Some(Ok(st)) => match st.recipients.iter().find(|x| x.fpr.as_str() == fpr) {
                        Some(x) => (wire_name(&x.state), Some(x.at.clone()), None),
                        None => ("unknown".into(), None, Some("the outbox does not list this recipient".into())),
                    },
                    // Stored once; what happened since cannot be asked now.
                    Some(Err(e)) => ("unknown".into(), None, Some(format!("outbox not reachable: {e}"))),
                    None => (wire_name(&j.state), None, j.last_error.clone()),
                };
                lines.push(Line {
                    queue_id: env.qid.clone(),
                    id: j.id.clone(),
                    recipient: r.addr.clone(),
                    fingerprint: fpr,
                    state,
                    at,
                    detail,
                });
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
        return Ok(());
    }
    if lines.is_empty() {
        println!("no sent mail");
    }
    print_set_aside(home)?;
    for l in lines {
        println!(
            "{:<24} {:<30} {:<10} {}{}",
            l.queue_id,
            l.recipient,
            l.state,
            l.at.unwrap_or_default(),
            l.detail.map(|d| format!(" ({d})")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Received messages http2mbox set aside: they failed their checks (bad
/// signature, too large once decrypted, …) too often to be fetched again.
fn print_set_aside(home: &Home) -> anyhow::Result<()> {
    let set = http2mbox::poller::SetAside::new(home.state_dir().join("rejected")).list()?;
    let aside: Vec<_> = set.iter().filter(|r| r.attempts >= http2mbox::poller::SetAside::TRIES).collect();
    if aside.is_empty() {
        return Ok(());
    }
    println!("\nreceived mail set aside (failed its checks {} times; not fetched again, not acked):", http2mbox::poller::SetAside::TRIES);
    for r in aside {
        println!("  {}  from {}  at {}  {}  ({})", r.id, r.sender, r.outbox, stubmail::time::rfc3339(r.last), r.reason);
    }
    Ok(())
}

/// `stubmail unsend ID`: withdraw a stored message from every recipient
/// who has not fetched it.
pub fn unsend(home: &Home, id: &str) -> anyhow::Result<()> {
    if !stubmail::protocol::is_valid_id(id) {
        anyhow::bail!("{id:?} is not a message id (64 lower-case hex digits); `stubmail status` lists them");
    }
    let config = home.load_config()?;
    let me = Arc::new(home.load_identity()?);
    let outbox = OutboxClient::new(client::http_client()?, &config.identity.outbox, me)?;
    let rt = tokio::runtime::Runtime::new()?;
    let st = rt.block_on(outbox.unsend(id)).map_err(|e| match e {
        client::ClientError::Server { status, .. } if status == 404 => {
            anyhow::anyhow!("your outbox has no message {id} of yours (`stubmail status` lists them)")
        }
        e => e.into(),
    })?;
    for r in &st.recipients {
        println!("{}  {}", r.fpr, wire_name(&r.state));
    }
    Ok(())
}
