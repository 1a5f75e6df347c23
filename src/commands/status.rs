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
    subject: String,
    recipient: String,
    fingerprint: String,
    /// queued | stored | retrieved | expired | unsent | relayed | failed | unknown
    /// (`notified` from an outbox that predates hiding it)
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
        let subject = env
            .subject
            .clone()
            .or_else(|| smtp2stub::worker::spool_header(&spool.msg_path(&env.qid)).ok().and_then(|h| smtp2stub::worker::subject_of(&h)))
            .unwrap_or_default();
        let fpr_of = |r: &smtp2stub::spool::Rcpt| match &r.route {
            Route::Stub { fpr } => fpr.to_string(),
            Route::Pgp { fpr } => fpr.to_string(),
            Route::Relay => String::new(),
        };
        if env.jobs.is_empty() {
            // Accepted, not yet planned: everyone is queued.
            for r in &env.rcpts {
                lines.push(Line {
                    queue_id: env.qid.clone(),
                    id: None,
                    subject: subject.clone(),
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
                    subject: subject.clone(),
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
    match rt.block_on(outbox.account()) {
        Ok(st) => println!("your outbox: {}\n", st.usage()),
        Err(e) => println!("your outbox: not reachable ({e})\n"),
    }
    if !lines.is_empty() {
        println!("{:<24} {:<12} {:<30} {:<10} {:<20} SUBJECT", "QUEUE ID", "MESSAGE ID", "RECIPIENT", "STATE", "AT");
    }
    let mut unsendable = false;
    for l in &lines {
        unsendable |= matches!(l.state.as_str(), "queued" | "stored" | "notified");
        // A short prefix, as git shows commits: `unsend` takes it.
        let short = l.id.as_deref().map_or("-", |i| &i[..12.min(i.len())]);
        let subject: String = l.subject.chars().take(60).collect();
        println!(
            "{:<24} {:<12} {:<30} {:<10} {:<20} {subject}{}",
            l.queue_id,
            short,
            l.recipient,
            l.state,
            l.at.as_deref().unwrap_or("-"),
            l.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
        );
    }
    if unsendable {
        println!("
withdraw one not yet fetched: stubmail unsend ID  (its message id or queue id, or a unique prefix of either)");
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

/// What `stubmail unsend` was asked to withdraw.
#[derive(Debug, PartialEq, Eq)]
enum Unsend {
    /// An envelope still in the spool (some copy not yet uploaded).
    Queued(String),
    /// A message in the outbox, by its id.
    Stored(String),
    /// Something that never reached the outbox (why, for the user).
    Nothing(String),
}

/// Resolve a message id, a queue id, or a unique prefix of either (at
/// least 4 characters, as git takes commits) against the spool.
fn resolve(spool: &smtp2stub::spool::Spool, what: &str) -> anyhow::Result<Unsend> {
    use smtp2stub::spool::JobState;
    let what = what.trim().to_ascii_lowercase();
    if what.len() < 4 || !what.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("{what:?} is not a message id or queue id (hex digits, at least 4); `stubmail status` lists them");
    }
    let queued = spool.queued()?;
    let sent = spool.sent()?;
    // (what it names, the key it matched)
    let mut hits: Vec<(Unsend, String)> = Vec::new();
    for (env, in_queue) in queued.iter().map(|e| (e, true)).chain(sent.iter().map(|e| (e, false))) {
        if env.qid.starts_with(&what) {
            let t = if in_queue { Unsend::Queued(env.qid.clone()) } else { Unsend::Stored(String::new()) };
            hits.push((t, env.qid.clone()));
        }
        for j in &env.jobs {
            let Some(id) = &j.id else { continue };
            if id.starts_with(&what) {
                let t = match j.state {
                    JobState::Queued if in_queue => Unsend::Queued(env.qid.clone()),
                    JobState::Uploaded => Unsend::Stored(id.clone()),
                    s => Unsend::Nothing(format!("{id} was never stored in your outbox ({}): nothing to withdraw", wire_name(&s))),
                };
                hits.push((t, id.clone()));
            }
        }
    }
    // A finished envelope's queue id means its stored copies.
    let mut expanded = Vec::new();
    for (t, key) in hits {
        match t {
            Unsend::Stored(id) if id.is_empty() => {
                let env = sent.iter().find(|e| e.qid == key).expect("matched above");
                let ids: Vec<&String> = env.jobs.iter().filter(|j| j.state == JobState::Uploaded).filter_map(|j| j.id.as_ref()).collect();
                match ids.as_slice() {
                    [one] => expanded.push((Unsend::Stored((*one).clone()), key)),
                    [] => anyhow::bail!("queue id {key} was never stored in your outbox: nothing to withdraw"),
                    _ => anyhow::bail!(
                        "queue id {key} went out as {} copies (one per Bcc recipient); name one: {}",
                        ids.len(),
                        ids.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                }
            }
            t => expanded.push((t, key)),
        }
    }
    expanded.sort_by(|a, b| a.1.cmp(&b.1));
    expanded.dedup_by(|a, b| a.0 == b.0);
    match expanded.len() {
        1 => Ok(expanded.remove(0).0),
        // Not in this spool (sent from another device, or the spool was
        // cleaned): a full id still goes to the outbox.
        0 if stubmail::protocol::is_valid_id(&what) => Ok(Unsend::Stored(what)),
        0 => anyhow::bail!("no message or queue id starts with {what}; `stubmail status` lists them"),
        _ => anyhow::bail!(
            "{what} is ambiguous: it starts {}; give more digits",
            expanded.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `stubmail unsend ID`: withdraw a message from every recipient who has
/// not fetched it — from the spool if it has not left yet (it is then never
/// uploaded), and from the outbox where it is stored.
pub fn unsend(home: &Home, what: &str) -> anyhow::Result<()> {
    use smtp2stub::spool::{JobState, Route, Spool};
    let spool = Spool::open(&home.spool_dir())?;
    let config = home.load_config()?;
    let me = Arc::new(home.load_identity()?);
    let outbox = OutboxClient::new(client::http_client()?, &config.identity.outbox, me)?;
    let rt = tokio::runtime::Runtime::new()?;
    let withdraw = |id: &str| -> anyhow::Result<()> {
        let st = rt.block_on(outbox.unsend(id)).map_err(|e| match e {
            client::ClientError::Server { status, .. } if status == 404 => {
                anyhow::anyhow!("your outbox has no message {id} of yours (`stubmail status` lists them)")
            }
            e => e.into(),
        })?;
        for r in &st.recipients {
            println!("{}  {}  {}", &id[..12], r.fpr, wire_name(&r.state));
        }
        Ok(())
    };
    match resolve(&spool, what)? {
        Unsend::Stored(id) => withdraw(&id),
        Unsend::Nothing(why) => anyhow::bail!(why),
        Unsend::Queued(qid) => {
            // Wait for the worker to finish what it is doing with it (an
            // upload in progress), then take it out of its hands.
            let _lock = spool.lock(&qid)?;
            let Some(mut env) = spool.load(&qid)? else {
                anyhow::bail!("{qid} left the queue meanwhile; run `stubmail unsend` again with its message id from `stubmail status`");
            };
            let mut uploaded = Vec::new();
            for j in &mut env.jobs {
                match j.state {
                    JobState::Queued => {
                        j.state = JobState::Unsent;
                        for r in &j.rcpts {
                            let how = if matches!(r.route, Route::Stub { .. }) { "never uploaded" } else { "not relayed" };
                            println!("{qid}  {}  unsent ({how})", r.addr);
                        }
                    }
                    JobState::Uploaded => uploaded.extend(j.id.clone()),
                    _ => {}
                }
            }
            if env.jobs.is_empty() {
                // Not planned yet: every recipient is withdrawn as one.
                for r in &env.rcpts {
                    println!("{qid}  {}  unsent (never uploaded)", r.addr);
                }
                env.jobs.push(smtp2stub::spool::Job {
                    kind: smtp2stub::spool::JobKind::Stub,
                    rcpts: env.rcpts.clone(),
                    id: None,
                    state: JobState::Unsent,
                    attempts: 0,
                    next_try: 0,
                    last_error: None,
                });
            }
            spool.save(&env)?;
            spool.finish(&env)?;
            for id in uploaded {
                withdraw(&id)?;
            }
            Ok(())
        }
    }
}
