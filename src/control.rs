//! The `pgredact` control schema inside each protected database: the HMAC key (readable only by
//! the control-plane role) and the SECURITY DEFINER functions that use it. Masked sessions reach
//! these functions only through SQL the rewriter writes: a user-written reference to schema
//! `pgredact` is refused.

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

/// The SECURITY DEFINER functions below name every object schema-qualified (functions,
/// operators, tables), so they carry no `SET search_path` (which costs a settings save/restore
/// on every call, i.e. every masked row).
///
/// Creates or updates the control schema and stores the HMAC key (as its padded halves).
/// Idempotent; runs as the control-plane role, which owns the schema.
pub async fn ensure(client: &Client, hash_key: Option<&[u8]>) -> Result<(), ControlError> {
    // One DDL script, run as one (implicit or the caller's) transaction and serialized with a
    // transaction-level advisory lock, so two instances can start at once.
    client
        .batch_execute(
            r#"
SELECT pg_catalog.pg_advisory_xact_lock(7320451);
CREATE SCHEMA IF NOT EXISTS pgredact;
REVOKE ALL ON SCHEMA pgredact FROM PUBLIC;
GRANT USAGE ON SCHEMA pgredact TO PUBLIC;
CREATE TABLE IF NOT EXISTS pgredact.hash_key (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    ipad bytea NOT NULL,
    opad bytea NOT NULL
);
REVOKE ALL ON pgredact.hash_key FROM PUBLIC;
CREATE OR REPLACE FUNCTION pgredact.hmac_hex(v text) RETURNS text
LANGUAGE sql STABLE STRICT SECURITY DEFINER AS $f$
  SELECT pg_catalog.encode(pg_catalog.sha256(k.opad OPERATOR(pg_catalog.||)
         pg_catalog.sha256(k.ipad OPERATOR(pg_catalog.||) pg_catalog.convert_to(v, 'UTF8'))), 'hex')
  FROM pgredact.hash_key k
$f$;
CREATE OR REPLACE FUNCTION pgredact.mask_hash(v text) RETURNS text
LANGUAGE sql STABLE STRICT SECURITY DEFINER AS $f$
  SELECT pg_catalog.left(pgredact.hmac_hex(v), 16)
$f$;
REVOKE ALL ON FUNCTION pgredact.hmac_hex(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgredact.mask_hash(text) TO PUBLIC;
"#,
        )
        .await?;
    if let Some(key) = hash_key {
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
