//! The schema and its migrations. Each migration runs once, in order,
//! under a transaction-level advisory lock: instances started together
//! wait for the first one's migration instead of racing it.

use postgres::Client;

/// Advisory lock key of migrations ("SMig").
const MIGRATION_LOCK: i64 = 0x534d_6967;

/// Every migration, in order; `stubmail_schema.version` counts those done.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE outbox_urls (url text PRIMARY KEY);
    -- Who may upload: the certificate, and the URL it was registered with
    -- (names derived from accounts never come from a pushed certificate).
    CREATE TABLE accounts (fpr text PRIMARY KEY, cert bytea NOT NULL, registered_url text);
    -- Limits set by the operator (defaults where absent).
    CREATE TABLE limits (fpr text PRIMARY KEY, max_bytes bigint NOT NULL, max_messages bigint NOT NULL,
        max_recipients_per_day bigint NOT NULL, max_recipients_per_message bigint NOT NULL);
    -- Bytes and messages an account stores now, kept in the transaction that
    -- changes them.
    CREATE TABLE usage (fpr text PRIMARY KEY, bytes bigint NOT NULL, messages bigint NOT NULL);
    -- An account's distinct recipients per UTC day.
    CREATE TABLE rcptlog (sender text NOT NULL, day text NOT NULL, rcpt text NOT NULL, PRIMARY KEY (sender, day, rcpt));
    -- Recipients' certificates, from their signed polls (reduced).
    CREATE TABLE certs (fpr text PRIMARY KEY, cert bytea NOT NULL);
    -- One row per stored message; its bytes are `chunks` while has_bytes.
    CREATE TABLE messages (id text PRIMARY KEY, sender text NOT NULL, size bigint NOT NULL, stored bigint NOT NULL,
        has_bytes boolean NOT NULL);
    CREATE INDEX messages_by_sender ON messages (sender);
    CREATE TABLE chunks (id text NOT NULL REFERENCES messages ON DELETE CASCADE, seq integer NOT NULL, data bytea NOT NULL,
        PRIMARY KEY (id, seq));
    -- Ciphertext does not compress: do not try.
    ALTER TABLE chunks ALTER COLUMN data SET STORAGE EXTERNAL;
    -- One row per recipient of a message: an ack changes one row.
    -- `listed`: retrieved by a device, so still offered to the recipient's
    -- other devices (an ack without a device ends the offer).
    CREATE TABLE recipients (id text NOT NULL REFERENCES messages ON DELETE CASCADE, fpr text NOT NULL,
        state smallint NOT NULL, at bigint NOT NULL, listed boolean NOT NULL DEFAULT false, PRIMARY KEY (id, fpr));
    CREATE INDEX recipients_pending ON recipients (fpr) WHERE state < 2;
    -- A recipient's devices, and for each the retrieved messages it has not
    -- acked yet: a device's poll reads its own rows, not everything the
    -- recipient ever retrieved.
    CREATE TABLE devices (fpr text NOT NULL, device text NOT NULL, PRIMARY KEY (fpr, device));
    CREATE TABLE device_inbox (fpr text NOT NULL, device text NOT NULL, id text NOT NULL REFERENCES messages ON DELETE CASCADE,
        PRIMARY KEY (fpr, device, id));
    CREATE INDEX device_inbox_by_id ON device_inbox (id);
    -- Bumped whenever a recipient's list changes (the UDP service's cache).
    CREATE TABLE inboxes (fpr text PRIMARY KEY, version bigint NOT NULL);
    -- Nonces of signed requests, by their signed timestamp.
    CREATE TABLE nonces (fpr text NOT NULL, nonce text NOT NULL, ts bigint NOT NULL, PRIMARY KEY (fpr, nonce));
    CREATE INDEX nonces_by_ts ON nonces (ts);
    -- UDP poll cookies; `last` is the highest counter answered, by any instance.
    CREATE TABLE cookies (id text PRIMARY KEY, recipient text NOT NULL, device text NOT NULL, body text NOT NULL,
        issued_ns bigint NOT NULL, last bigint NOT NULL DEFAULT 0, UNIQUE (recipient, device));
    -- Stubs to send; `owner` is the instance sending it until `lease`.
    CREATE TABLE stubs (name text PRIMARY KEY, id text NOT NULL, body text NOT NULL, owner text, lease bigint NOT NULL DEFAULT 0);
    -- Running UDP services (soft state): each renews `seen` every few
    -- seconds; one that stopped renewing is not announced.
    CREATE TABLE udp_services (owner text PRIMARY KEY, body text NOT NULL, started bigint NOT NULL, seen bigint NOT NULL);
    "#,
    // 2: abuse controls (issue #19): upload rate, complaints, suspensions.
    r#"
    -- NULL: the default limit.
    ALTER TABLE limits ADD COLUMN max_uploads_per_minute bigint, ADD COLUMN max_upload_bytes_per_minute bigint,
        ADD COLUMN max_complaints_per_day bigint;
    -- An account's uploads in the current minute (minute = unix time / 60).
    CREATE TABLE upload_rate (fpr text PRIMARY KEY, minute bigint NOT NULL, uploads bigint NOT NULL, bytes bigint NOT NULL);
    -- Recipients' verified complaints about an account's messages.
    CREATE TABLE complaints (sender text NOT NULL, id text NOT NULL, by_fpr text NOT NULL, day text NOT NULL, at bigint NOT NULL,
        PRIMARY KEY (sender, id, by_fpr));
    CREATE INDEX complaints_by_day ON complaints (sender, day);
    -- Accounts that may not upload, and why.
    CREATE TABLE suspensions (fpr text PRIMARY KEY, since bigint NOT NULL, reason text NOT NULL);
    -- When the operator last resumed an account: complaints before it count no more.
    CREATE TABLE resumptions (fpr text PRIMARY KEY, at bigint NOT NULL);
    "#,
    // 3: public lists' archives; `seq` orders them, newest last.
    r#"
    CREATE TABLE archive (list text NOT NULL, id text NOT NULL, seq bigserial, entry text NOT NULL, post bytea NOT NULL,
        sig bytea NOT NULL, PRIMARY KEY (list, id));
    CREATE INDEX archive_by_seq ON archive (list, seq);
    "#,
];

pub(super) fn migrate(c: &mut Client) -> Result<(), postgres::Error> {
    // Up to date (every start but the first): one query, no lock (a CGI
    // request connects each time).
    let current = c.query_opt("SELECT version FROM stubmail_schema", &[]).ok().flatten().map(|r| r.get::<_, i32>(0));
    if current == Some(MIGRATIONS.len() as i32) {
        return Ok(());
    }
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS stubmail_schema (version integer NOT NULL)")?;
    let done: i32 = match tx.query_opt("SELECT version FROM stubmail_schema", &[])? {
        Some(r) => r.get(0),
        None => {
            tx.execute("INSERT INTO stubmail_schema VALUES (0)", &[])?;
            0
        }
    };
    for (i, m) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.batch_execute(m)?;
        tx.execute("UPDATE stubmail_schema SET version = $1", &[&(i as i32 + 1)])?;
    }
    tx.commit()
}
