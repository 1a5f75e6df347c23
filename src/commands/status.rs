//! `stubmail status`: what happened to the mail you sent. Reads the local
//! spool (queued, failed) and asks your outbox about what it stores.

use std::sync::Arc;

use serde::Serialize;
use stubmail::client::{self, OutboxClient};
use stubmail::Home;

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
    let config = home.load_config()?;
    let me = Arc::new(home.load_identity()?);
    let spool = home.spool_dir();
    let mut envs = Vec::new();
    for dir in ["queue", "sent"] {
        if let Ok(rd) = std::fs::read_dir(spool.join(dir)) {
            for e in rd.flatten() {
                // Envelopes only, not leftovers of a write a crash cut short.
                if e.path().extension().and_then(|x| x.to_str()) != Some("json") {
                    continue;
                }
                if let Ok(v) = std::fs::read(e.path()).map(|b| serde_json::from_slice::<serde_json::Value>(&b))
                    && let Ok(v) = v {
                        envs.push(v);
                    }
            }
        }
    }
    envs.sort_by_key(|v| v["received"].as_i64().unwrap_or(0));
    let rt = tokio::runtime::Runtime::new()?;
    let outbox = OutboxClient::new(client::http_client()?, &config.identity.outbox, me)?;
    let mut lines = Vec::new();
    for env in &envs {
        let qid = env["qid"].as_str().unwrap_or("").to_string();
        let jobs = env["jobs"].as_array().cloned().unwrap_or_default();
        if jobs.is_empty() {
            for r in env["rcpts"].as_array().cloned().unwrap_or_default() {
                lines.push(Line {
                    queue_id: qid.clone(),
                    id: None,
                    recipient: r["addr"].as_str().unwrap_or("").into(),
                    fingerprint: r["route"]["stub"]["fpr"].as_str().unwrap_or("").into(),
                    state: "queued".into(),
                    at: None,
                    detail: None,
                });
            }
            continue;
        }
        for j in jobs {
            let id = j["id"].as_str().map(str::to_string);
            let job_state = j["state"].as_str().unwrap_or("queued");
            let remote = match (&id, job_state) {
                (Some(id), "uploaded") => Some(rt.block_on(outbox.status(id))),
                _ => None,
            };
            for r in j["rcpts"].as_array().cloned().unwrap_or_default() {
                let fpr = r["route"]["stub"]["fpr"].as_str().unwrap_or("").to_string();
                let (state, at, detail) = match &remote {
                    Some(Ok(st)) => match st.recipients.iter().find(|x| x.fpr.as_str() == fpr) {
                        Some(x) => (serde_json::to_value(x.state)?.as_str().unwrap_or("").to_string(), Some(x.at.clone()), None),
                        None => ("unknown".into(), None, Some("the outbox does not list this recipient".into())),
                    },
                    Some(Err(e)) => ("stored".into(), None, Some(format!("outbox not reachable: {e}"))),
                    None => (job_state.to_string(), None, j["last_error"].as_str().map(str::to_string)),
                };
                lines.push(Line {
                    queue_id: qid.clone(),
                    id: id.clone(),
                    recipient: r["addr"].as_str().unwrap_or("").into(),
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
        println!("{}  {}", r.fpr, serde_json::to_value(r.state)?.as_str().unwrap_or(""));
    }
    Ok(())
}
