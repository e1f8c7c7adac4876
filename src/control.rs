//! The `pgredact` control schema inside each protected database, owned by the control-plane role
//! and readable by nobody else: the HMAC key, the policy as data (`pgredact.policy`, which the
//! superuser-installed functions of `crate::wall` read), the DDL log, the record of protected
//! relations, and the forget tables. No function here is callable by other roles: masked sessions
//! read pseudonyms only through the masking views, which compute them from the key as the view's
//! owner.

use tokio_postgres::Client;

pub const SCHEMA: &str = "pgredact";

/// The configured hash key differs from the one stored in the database.
#[derive(Debug)]
pub struct KeyMismatch;

#[derive(Debug)]
pub enum ControlError {
    Db(tokio_postgres::Error),
    KeyMismatch,
}

impl From<tokio_postgres::Error> for ControlError {
    fn from(e: tokio_postgres::Error) -> Self {
        ControlError::Db(e)
    }
}

impl From<KeyMismatch> for ControlError {
    fn from(_: KeyMismatch) -> Self {
        ControlError::KeyMismatch
    }
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Db(e) => write!(f, "{e}"),
            ControlError::KeyMismatch => write!(
                f,
                "the hash key in the environment differs from the one stored in the database (pgredact.hash_key); hash pseudonyms and the forget list depend on it, so it is not replaced"
            ),
        }
    }
}

/// The control role's own objects (run as that role, by `ensure` and inside `setup-sql`).
/// The DDL watch: every DDL command in the database appends a row to `pgredact.ddl_log` in its own
/// transaction (through the event trigger `pgredact_ddl`, which only a superuser can create), so
/// the count of committed rows (plus those pruned) is a catalog generation that changes exactly
/// when a DDL commits. Inserts never wait for each other (no single counter row to lock).
pub const CONTROL_OBJECTS: &str = r#"
REVOKE ALL ON SCHEMA pgredact FROM PUBLIC;
CREATE TABLE IF NOT EXISTS pgredact.ddl_log (at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS pgredact.ddl_pruned (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    n bigint NOT NULL
);
INSERT INTO pgredact.ddl_pruned (id, n) VALUES (true, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS pgredact.protected_relations (
    relid oid PRIMARY KEY,
    policy_table text NOT NULL
);
CREATE TABLE IF NOT EXISTS pgredact.hash_key (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    ipad bytea NOT NULL,
    opad bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS pgredact.policy (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    spec jsonb NOT NULL,
    written_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- The pgredact instances serving this database (crate::proxy::peers).
CREATE TABLE IF NOT EXISTS pgredact.instances (
    instance text PRIMARY KEY,
    peer_id integer,
    version text NOT NULL,
    policy_fingerprint text,
    policy_tables text[] NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    seen_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- A fingerprint of the DDL that built these objects and the forget tables: a forget session
-- whose DDL is already in place runs none (each DDL makes every masked session re-read the
-- catalog).
CREATE TABLE IF NOT EXISTS pgredact.schema_state (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    ddl text NOT NULL
);
REVOKE ALL ON pgredact.ddl_log, pgredact.ddl_pruned, pgredact.protected_relations,
    pgredact.hash_key, pgredact.policy, pgredact.instances, pgredact.schema_state FROM PUBLIC;
CREATE OR REPLACE FUNCTION pgredact.hmac_hex(v text) RETURNS text
LANGUAGE sql STABLE STRICT SECURITY DEFINER AS $f$
  SELECT pg_catalog.encode(pg_catalog.sha256(k.opad OPERATOR(pg_catalog.||)
         pg_catalog.sha256(k.ipad OPERATOR(pg_catalog.||) pg_catalog.convert_to(v, 'UTF8'))), 'hex')
  FROM pgredact.hash_key k
$f$;
REVOKE ALL ON FUNCTION pgredact.hmac_hex(text) FROM PUBLIC;
"#;

/// The relations protected so far (oid -> policy table), as last recorded by any pgredact.
pub async fn protection_history(
    client: &Client,
) -> Result<std::collections::HashMap<u32, String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT relid, policy_table FROM pgredact.protected_relations",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Records the relations protected now, keeps `keep` (relations that left the policy's reach
/// without the policy saying so), forgets the rest, except those recorded under a table that
/// another live instance's policy (`pgredact.instances`, instance `me` excluded) still names:
/// during a rolling policy change, the record is the union of the instances' records.
pub async fn record_protection(
    client: &Client,
    me: &str,
    current: &std::collections::HashMap<u32, String>,
    keep: &[u32],
) -> Result<(), tokio_postgres::Error> {
    let (oids, names): (Vec<u32>, Vec<String>) =
        current.iter().map(|(o, n)| (*o, n.clone())).unzip();
    client
        .execute(
            "WITH del AS (DELETE FROM pgredact.protected_relations p \
                 WHERE NOT (p.relid = ANY($1::pg_catalog.oid[]) OR p.relid = ANY($3::pg_catalog.oid[])) \
                   AND NOT EXISTS (SELECT 1 FROM pgredact.instances i \
                         WHERE i.instance <> $4::pg_catalog.text \
                           AND i.seen_at > (pg_catalog.now() - pg_catalog.make_interval(secs => $5::pg_catalog.float8)) \
                           AND p.policy_table = ANY (i.policy_tables))) \
             INSERT INTO pgredact.protected_relations (relid, policy_table) \
             SELECT c.relid, c.policy_table \
             FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.oid[]), pg_catalog.unnest($2::pg_catalog.text[])) \
                  AS c(relid, policy_table) \
             ON CONFLICT (relid) DO UPDATE SET policy_table = EXCLUDED.policy_table",
            &[
                &oids,
                &names,
                &keep,
                &me,
                &f64::from(crate::proxy::peers::LIVE_SECS),
            ],
        )
        .await?;
    Ok(())
}

/// The event trigger's name.
pub const DDL_TRIGGER: &str = "pgredact_ddl";

/// One reading of what can make a decision stale, taken in one snapshot on the gate connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    /// Catalog generation (committed DDL count), or None when the event trigger is missing or
    /// disabled (then DDL cannot be seen as it happens).
    pub ddl_generation: Option<i64>,
    /// The roles asked about (those with open unmasked sessions when the reading was sent).
    pub asked: Vec<String>,
    /// Those of them that are still members of an unmasked role (or superusers).
    pub exempt: Vec<String>,
}

/// The query behind [`Freshness`]: $1 the roles to ask about, $2 the policy's unmasked roles.
/// `pg_has_role` answers from PostgreSQL's membership cache (superusers count as members); names
/// that no longer exist count as not exempt.
pub const FRESHNESS_SQL: &str = "SELECT \
   CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger \
                     WHERE evtname = 'pgredact_ddl' AND evtevent = 'ddl_command_end' \
                       AND evtenabled <> 'D') \
        THEN (SELECT pg_catalog.count(*) FROM pgredact.ddl_log) \
             OPERATOR(pg_catalog.+) (SELECT n FROM pgredact.ddl_pruned WHERE id) END, \
   ARRAY(SELECT u FROM pg_catalog.unnest(CAST($1 AS pg_catalog.text[])) u \
         WHERE pg_catalog.to_regrole(pg_catalog.quote_ident(u)) IS NOT NULL \
           AND EXISTS (SELECT 1 FROM pg_catalog.unnest(CAST($2 AS pg_catalog.text[])) r \
                       WHERE pg_catalog.to_regrole(pg_catalog.quote_ident(r)) IS NOT NULL \
                         AND pg_catalog.pg_has_role(pg_catalog.to_regrole(pg_catalog.quote_ident(u)), \
                               pg_catalog.to_regrole(pg_catalog.quote_ident(r)), 'MEMBER')) \
            OR (SELECT a.rolsuper FROM pg_catalog.pg_roles a WHERE a.rolname = u))";

/// Reads the catalog generation's pruned rows into the counter in one transaction, so the
/// generation (rows + pruned) does not change while the log stays small.
pub const PRUNE_SQL: &str = "WITH d AS (DELETE FROM pgredact.ddl_log RETURNING 1) \
   UPDATE pgredact.ddl_pruned SET n = n + (SELECT pg_catalog.count(*) FROM d) WHERE id";

/// Creates or updates the control schema and stores the HMAC key (as its padded halves).
/// Idempotent; runs as the control-plane role, which owns the schema.
pub async fn ensure(client: &Client, hash_key: Option<&[u8]>) -> Result<(), ControlError> {
    // One DDL script, run as one (implicit or the caller's) transaction and serialized with a
    // transaction-level advisory lock, so two instances can start at once.
    client
        .batch_execute(&format!(
            "SELECT pg_catalog.pg_advisory_xact_lock(7320451);\n\
             CREATE SCHEMA IF NOT EXISTS pgredact;\n{CONTROL_OBJECTS}\n\
             DROP FUNCTION IF EXISTS pgredact.mask_hash(text);"
        ))
        .await?;
    if let Some(key) = hash_key {
        store_key(client, key).await?;
    }
    Ok(())
}

/// The fingerprint of the control objects' DDL together with `more` (the forget tables' DDL).
pub fn ddl_fingerprint(more: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(
        format!("{CONTROL_OBJECTS}\n{more}").as_bytes(),
    ))
}

/// The DDL fingerprint recorded by the last schema install, or None (not installed, an earlier
/// version, or not readable).
pub async fn schema_state(client: &Client) -> Option<String> {
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgredact.schema_state') IS NOT NULL",
            &[],
        )
        .await
        .ok()?
        .get(0);
    if !exists {
        return None;
    }
    client
        .query_opt("SELECT ddl FROM pgredact.schema_state WHERE id", &[])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Records the DDL fingerprint (in the installing transaction).
pub async fn set_schema_state(client: &Client, ddl: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO pgredact.schema_state (id, ddl) VALUES (true, $1) \
             ON CONFLICT (id) DO UPDATE SET ddl = EXCLUDED.ddl",
            &[&ddl],
        )
        .await?;
    Ok(())
}

/// Stores the HMAC key (as its padded halves) once, and refuses a different one later.
pub async fn store_key(client: &Client, key: &[u8]) -> Result<(), ControlError> {
    {
        // The key is set once: hash pseudonyms and the forget list depend on it, so a different
        // key later is refused rather than silently breaking both.
        let (ipad, opad) = crate::policy::hmac_pads(key);
        client
            .execute(
                "INSERT INTO pgredact.hash_key (id, ipad, opad) VALUES (true, $1, $2) \
                 ON CONFLICT (id) DO NOTHING",
                &[&ipad, &opad],
            )
            .await?;
        let row = client
            .query_one("SELECT ipad FROM pgredact.hash_key WHERE id", &[])
            .await?;
        let stored: Vec<u8> = row.get(0);
        if stored != ipad {
            return Err(KeyMismatch.into());
        }
    }
    Ok(())
}
