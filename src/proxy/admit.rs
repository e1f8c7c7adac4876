//! Admission after authentication: the database's state and the role lookup, and for a masked
//! role the checks that refuse the session (no policy, a startup setting, a broken wall) and the
//! read of the search path names resolve with.

use super::database::DbState;
use super::error::ClientError;
use super::shared::Shared;
use crate::rewrite::REFUSAL_SQLSTATE;
use crate::tls::ServerStream;
use crate::wire::backend::{DataRow, ErrorFields};
use crate::wire::frontend::Query;
use crate::wire::FrameReader;
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// After PostgreSQL has authenticated the client, before it gets its first ReadyForQuery: the
/// database's state (control connection, catalog) and the role lookup; for a masked role, the
/// checks that refuse the session and its setup on its own connection. Returns the database,
/// whether the role is unmasked, and a masked session's search path.
pub(crate) async fn admit(
    shared: &Arc<Shared>,
    database: &str,
    user: &str,
    params: &[(String, String)],
    server: &mut FrameReader<ServerStream>,
) -> Result<(Arc<DbState>, bool, Vec<String>), ClientError> {
    let db = shared
        .db(database)
        .await
        .map_err(|e| ClientError::authenticated("08006", e))?;
    let unmasked = db
        .is_unmasked(shared, user)
        .await
        .map_err(|e| ClientError::authenticated("08006", e))?;
    if unmasked {
        return Ok((db, true, Vec::new()));
    }
    let snap = db.snapshot();
    if snap.policy.is_none() {
        let why = format!("database {database:?} has no masking policy, so masked roles such as {user:?} may not connect");
        return Err(ClientError::authenticated(REFUSAL_SQLSTATE, why)
            .with_hint("a DBA must add a policy file for this database"));
    }
    check_masked_startup(params).map_err(|m| ClientError::authenticated(REFUSAL_SQLSTATE, m))?;
    // Refused after authentication, so only a role of the database learns why (it could read
    // the same grants in pg_catalog).
    if let Some(why) = &snap.wall_refusal {
        let why = format!("masked sessions are refused: {why}");
        return Err(ClientError::authenticated(REFUSAL_SQLSTATE, why).with_hint("`pgredact check` lists every violation; a policy may opt out with enforcement = \"proxy\", which is weaker (direct connections read raw data)"));
    }
    let path = session_setup(server).await.map_err(|e| {
        ClientError::authenticated("08006", format!("could not set up the masked session: {e}"))
    })?;
    Ok((db, false, path))
}

/// Startup parameters a masked session may set: anything that could change identity,
/// search_path or how SQL is read is refused.
pub(crate) fn check_masked_startup(params: &[(String, String)]) -> Result<(), String> {
    for (k, v) in params {
        match k.as_str() {
            "user" | "database" | "application_name" | "fallback_application_name" => {}
            "client_encoding" => {
                // asyncpg sends 'utf-8', quotes included; PostgreSQL accepts that spelling.
                let v = v.trim().trim_matches('\'').to_ascii_lowercase();
                if !["utf8", "unicode", "utf-8"].contains(&v.as_str()) {
                    return Err(format!(
                        "masked sessions must use client_encoding UTF8, not {v}"
                    ));
                }
            }
            "replication" => {
                return Err("replication connections are not allowed for masked roles".into())
            }
            "options" => {
                for opt in parse_options(v) {
                    let (name, value) = opt?;
                    check_startup_setting(&name, &value)?;
                }
            }
            k if k.starts_with("_pq_.") => {}
            other => check_startup_setting(other, v)?,
        }
    }
    Ok(())
}

pub(crate) fn check_startup_setting(name: &str, value: &str) -> Result<(), String> {
    let n = name.to_ascii_lowercase().replace('-', "_");
    // A search path set at startup (JDBC's currentSchema) is read back with the session's
    // current_schemas(true) before the client gets control, so names resolve as PostgreSQL does.
    if n == "search_path" {
        return Ok(());
    }
    if let Some(allowed) = crate::rewrite::rules::pinned_setting(&n) {
        let v = value.trim().trim_matches('\'').to_ascii_lowercase();
        if allowed.contains(&v.as_str()) {
            return Ok(());
        }
    } else if crate::rewrite::rules::setting_allowed(&n) {
        return Ok(());
    }
    Err(format!(
        "the startup setting {name}={value} is not allowed for masked roles"
    ))
}

/// Splits a libpq `options` string into `-c name=value` / `--name=value` pairs.
pub(crate) fn parse_options(s: &str) -> Vec<Result<(String, String), String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut esc = false;
    for ch in s.chars() {
        if esc {
            cur.push(ch);
            esc = false;
        } else if ch == '\\' {
            esc = true;
        } else if ch.is_whitespace() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(ch);
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let kv = if w == "-c" {
            it.next()
        } else if let Some(r) = w.strip_prefix("--") {
            Some(r.to_string())
        } else if let Some(r) = w.strip_prefix("-c") {
            Some(r.to_string())
        } else {
            out.push(Err(format!(
                "startup option {w:?} is not allowed for masked roles"
            )));
            continue;
        };
        match kv.as_deref().and_then(|kv| kv.split_once('=')) {
            Some((k, v)) => out.push(Ok((k.to_string(), v.to_string()))),
            None => out.push(Err("malformed startup option".into())),
        }
    }
    out
}

/// Before a masked session's client gets control, on the session's own connection: reads the
/// search path that names resolve with. (Nothing else is set for the session: the masking views
/// themselves keep the planner off the raw columns, see `mask_expr` in wall_setup.sql, so
/// `RESET ALL` has nothing of pgredact's to undo.)
pub(crate) async fn session_setup<S: AsyncRead + AsyncWrite + Unpin>(
    srv: &mut FrameReader<S>,
) -> Result<Vec<String>, String> {
    let mut q = BytesMut::new();
    Query::put(
        &mut q,
        "SELECT pg_catalog.unnest(pg_catalog.current_schemas(true))::pg_catalog.text",
    );
    srv.get_mut()
        .write_all(&q)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut err = None;
    loop {
        let f = srv
            .next()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("connection closed")?;
        match f[0] {
            b'D' => {
                // One column: a schema name.
                if let Ok(row) = DataRow::decode(&f) {
                    if let Some(Some(v)) = row.columns.first() {
                        out.push(String::from_utf8_lossy(v).into_owned());
                    }
                }
            }
            b'E' => {
                err = ErrorFields::decode(&f)
                    .ok()
                    .and_then(|e| e.get(b'M').map(String::from))
            }
            b'Z' => break,
            _ => {}
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
