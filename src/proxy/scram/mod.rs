//! SCRAM-SHA-256 terminated at pgredact (RFC 5802, RFC 7677), with `tls-server-end-point`
//! channel binding (RFC 5929) on each leg.
//!
//! A relayed SCRAM exchange cannot survive TLS on both legs: the client binds to its TLS channel
//! with pgredact, which PostgreSQL never sees, and a client that is told no binding is offered
//! says so in its gs2 header ("y"), which a server on TLS rejects as a downgrade. The gs2 header
//! is inside the signed AuthMessage, so pgredact cannot rewrite it. So pgredact completes SCRAM
//! on each leg itself, the way pgbouncer's SCRAM pass-through and Neon's proxy do:
//!
//! - towards the client it is the SCRAM server, with the role's verifier
//!   (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, read through
//!   `pgredact_admin.auth_verifier`), offering `SCRAM-SHA-256-PLUS` bound to its own certificate
//!   when the client leg is TLS. The client's proof yields its ClientKey:
//!   `ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)`, checked by
//!   `H(ClientKey) = StoredKey`;
//! - towards PostgreSQL it is the SCRAM client with that ClientKey. PostgreSQL reads the same
//!   verifier, so its salt and iteration count are the ones the client used, and
//!   `ClientProof' = ClientKey XOR HMAC(StoredKey, AuthMessage')`; PostgreSQL's signature is
//!   checked with ServerKey. It binds to the upstream TLS channel when PostgreSQL offers
//!   `-PLUS`.
//!
//! PostgreSQL stays the authority: the proof pgredact sends is derived only from the key the
//! client's proof yields. A wrong password gives a wrong key, PostgreSQL refuses it (and logs the
//! failure as for a direct login) and its error is relayed.
//!
//! Without a verifier pgredact may use, the exchange is relayed when PostgreSQL can accept the
//! client's answer (gs2 "n", or "y" towards a plaintext PostgreSQL). A role the function does not
//! return (a superuser, no SCRAM password, an unknown role) is offered what every role is offered,
//! so the offer does not tell roles apart; when the function is missing, PostgreSQL's offer goes
//! out without the `-PLUS` mechanisms pgredact cannot honour. An answer that cannot be relayed
//! gets, after a mock exchange, the error PostgreSQL gives for a wrong password.
//!
//! Nothing here logs a password, a verifier, a proof or a key; the types that hold them print
//! as `..`.

use super::shared::Shared;
use crate::tls::{ClientStream, ServerStream};
use crate::wire::backend::{send_fatal, Authentication, AuthenticationSasl};
use crate::wire::frontend::{SaslInitialResponse, SaslResponse};
use crate::wire::{FrameError, FrameReader};
use bytes::BytesMut;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

mod exchange;
#[cfg(test)]
mod tests;

use exchange::*;
pub use exchange::{
    Binding, ClientExchange, Recovered, ScramError, ServerExchange, Verifier, SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
};

/// AuthenticationSASLContinue, AuthenticationSASLFinal (AuthenticationSASL: its own type).
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

fn auth_message(code: i32, data: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(9 + data.len());
    Authentication { code, data }.encode(&mut out);
    out
}

fn sasl_offer(mechanisms: &[&str]) -> BytesMut {
    let mut out = BytesMut::new();
    AuthenticationSasl {
        mechanisms: mechanisms.iter().map(|m| m.to_string()).collect(),
    }
    .encode(&mut out);
    out
}

/// The mechanisms of an AuthenticationSASL message.
fn offered(f: &[u8]) -> Result<Vec<String>, FrameError> {
    Ok(AuthenticationSasl::decode(f)?.mechanisms)
}

/// Ends a login with a FATAL naming pgredact as the one that refused it.
async fn refuse(
    client: &mut FrameReader<ClientStream>,
    e: &ScramError,
) -> Result<bool, FrameError> {
    send_fatal(
        client.get_mut(),
        e.code,
        &format!("pgredact: {}", e.message),
        None,
    )
    .await;
    Ok(false)
}

/// The code and data of an authentication request from PostgreSQL.
fn auth_request(f: &[u8]) -> Option<(i32, &[u8])> {
    let a = Authentication::decode(f).ok()?;
    Some((a.code, a.data))
}

/// Mechanism and data of a SASLInitialResponse.
fn initial_response(f: &[u8]) -> Result<(String, Vec<u8>), FrameError> {
    let r = SaslInitialResponse::decode(f)?;
    Ok((r.mechanism, r.data))
}

fn sasl_initial_response(mechanism: &str, data: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(10 + mechanism.len() + data.len());
    SaslInitialResponse {
        mechanism: mechanism.into(),
        data: data.to_vec(),
    }
    .encode(&mut out);
    out
}

fn sasl_response(data: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(5 + data.len());
    SaslResponse { data }.encode(&mut out);
    out
}

async fn send<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    r: &mut FrameReader<S>,
    b: &[u8],
) -> Result<(), FrameError> {
    r.get_mut().write_all(b).await.map_err(FrameError::Io)
}

/// The client's next SASL message ('p'), or None when it went away.
async fn client_response(
    client: &mut FrameReader<ClientStream>,
) -> Result<Option<bytes::Bytes>, FrameError> {
    match client.next().await? {
        Some(f) if f[0] == b'p' => Ok(Some(f)),
        Some(_) => Err(FrameError::Protocol("expected a SASL response".into())),
        None => Ok(None),
    }
}

/// What pgredact learned about the role's verifier.
enum Lookup {
    Found(Verifier),
    /// The function answered: this role has no verifier pgredact may read.
    NoVerifier,
    /// No database could answer (setup-sql not run, no grant, no connection): why.
    Unavailable(String),
}

/// Asks `pgredact_admin.auth_verifier` in the session's database, then in the protected
/// databases (roles are cluster-wide, the function exists where setup-sql ran).
async fn lookup(shared: &Arc<Shared>, database: &str, user: &str) -> Lookup {
    let mut names = vec![database.to_string()];
    let mut others: Vec<String> = shared
        .policy_set()
        .by_database
        .keys()
        .filter(|d| d.as_str() != database)
        .cloned()
        .collect();
    others.sort();
    names.extend(others);
    let mut why = Vec::new();
    for name in names {
        let db = match shared.db(&name).await {
            Ok(d) => d,
            Err(e) => {
                why.push(e.to_string());
                continue;
            }
        };
        match db.auth_verifier(shared, user).await {
            Ok(Some(text)) => {
                return match Verifier::parse(&text) {
                    Some(v) => Lookup::Found(v),
                    None => Lookup::NoVerifier,
                }
            }
            Ok(None) => return Lookup::NoVerifier,
            Err(e) => why.push(format!("database {name:?}: {e}")),
        }
    }
    Lookup::Unavailable(why.join("; "))
}

/// Whether the "cannot read verifiers" warning was logged (once per process; then debug).
static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// pgredact's own channel-binding data for this client, when it offers `-PLUS`: the client came
/// over TLS and pgredact's certificate names a hash.
fn own_offer<'a>(shared: &'a Shared, client: &mut FrameReader<ClientStream>) -> Option<&'a [u8]> {
    if client.get_mut().is_tls() {
        shared.tls_end_point.as_deref()
    } else {
        None
    }
}

fn offer_for(end_point: Option<&[u8]>) -> &'static [&'static str] {
    if end_point.is_some() {
        &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    } else {
        &[SCRAM_SHA_256]
    }
}

/// PostgreSQL asked for SASL (`offer` is its AuthenticationSASL): completes SCRAM with the
/// client and with PostgreSQL. Returns false when the session ended (the client was told why);
/// true when authentication goes on (terminated: the client has its AuthenticationSASLFinal
/// and PostgreSQL's AuthenticationOk comes next; relayed: the caller relays the rest).
pub(super) async fn authenticate_sasl(
    shared: &Arc<Shared>,
    database: &str,
    user: &str,
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
    offer: &[u8],
) -> Result<bool, FrameError> {
    let mechanisms = offered(offer)?;
    if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
        send(client, offer).await?;
        return relay_initial(client, server).await;
    }
    match lookup(shared, database, user).await {
        Lookup::Found(v) => terminate(shared, user, client, server, &mechanisms, &v).await,
        Lookup::NoVerifier => {
            // The same offer as for a role pgredact has a verifier for, so the offer does not
            // tell which roles exist; what cannot be relayed fails like a wrong password.
            let own = own_offer(shared, client);
            relay_or_refuse(user, client, server, offer_for(own), own, None).await
        }
        Lookup::Unavailable(why) => {
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!("pgredact cannot read SCRAM verifiers, so SCRAM logins are relayed (with TLS on both legs they fail unless the client sets channel_binding=disable): {why}; a superuser must run the output of `pgredact setup-sql`");
            } else {
                tracing::debug!("SCRAM verifier lookup failed: {why}");
            }
            // PostgreSQL's offer without the -PLUS mechanisms pgredact cannot honour (the same
            // for every role).
            let plain: Vec<&str> = mechanisms
                .iter()
                .map(String::as_str)
                .filter(|m| !m.ends_with("-PLUS"))
                .collect();
            let hint = "pgredact could not read SCRAM verifiers (pgredact_admin.auth_verifier); an administrator must run the output of `pgredact setup-sql`, or connect with channel_binding=disable";
            relay_or_refuse(user, client, server, &plain, None, Some(hint)).await
        }
    }
}

/// Without a verifier: offers `mechanisms` and relays the client's answer when PostgreSQL can
/// accept it (plain SCRAM with gs2 "n", or "y" on a plaintext upstream leg when pgredact did
/// not offer `-PLUS`). Otherwise (bound to pgredact's channel, or "y" that PostgreSQL on TLS
/// or pgredact's `-PLUS` offer makes a downgrade) finishes a mock exchange and refuses as
/// PostgreSQL refuses a wrong password.
async fn relay_or_refuse(
    user: &str,
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
    mechanisms: &[&str],
    own: Option<&[u8]>,
    hint: Option<&str>,
) -> Result<bool, FrameError> {
    send(client, &sasl_offer(mechanisms)).await?;
    let Some(f) = client_response(client).await? else {
        return Ok(false);
    };
    let (mechanism, data) = initial_response(&f)?;
    let upstream_tls = server.get_mut().is_tls();
    let flag = data.first().copied();
    let relayable =
        mechanism != SCRAM_SHA_256_PLUS && !(flag == Some(b'y') && (own.is_some() || upstream_tls));
    if relayable {
        send(server, &f).await?;
        return Ok(true);
    }
    tracing::info!(user = %user, "SCRAM login refused: pgredact has no verifier it may use for this role (unknown role, a superuser, no SCRAM password, or pgredact_admin.auth_verifier missing), and the client's answer cannot be relayed (bound to pgredact's TLS channel, or announcing channel binding that PostgreSQL would take for a downgrade); with channel_binding=disable PostgreSQL decides");
    let v = Verifier::mock(user);
    let ex = match ServerExchange::start(&mechanism, &data, own, &v) {
        Ok(ex) => ex,
        Err(e) => {
            send_fatal(client.get_mut(), e.code, &e.message, None).await;
            return Ok(false);
        }
    };
    send(
        client,
        &auth_message(AUTH_SASL_CONTINUE, ex.server_first().as_bytes()),
    )
    .await?;
    let Some(f) = client_response(client).await? else {
        return Ok(false);
    };
    if let Err(e) = ex.finish(SaslResponse::decode(&f)?.data, &v) {
        send_fatal(client.get_mut(), e.code, &e.message, None).await;
        return Ok(false);
    }
    send_fatal(
        client.get_mut(),
        "28P01",
        &format!("password authentication failed for user \"{user}\""),
        hint,
    )
    .await;
    Ok(false)
}

/// Relays the client's SASLInitialResponse to PostgreSQL.
async fn relay_initial(
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
) -> Result<bool, FrameError> {
    let Some(f) = client_response(client).await? else {
        return Ok(false);
    };
    send(server, &f).await?;
    Ok(true)
}

/// SCRAM terminated at pgredact: server towards the client, client towards PostgreSQL.
async fn terminate(
    shared: &Shared,
    user: &str,
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
    mechanisms: &[String],
    v: &Verifier,
) -> Result<bool, FrameError> {
    let Some((recovered, client_binding)) = client_leg(shared, client, v).await? else {
        return Ok(false);
    };
    // Server leg: -PLUS bound to PostgreSQL's certificate when offered. A wrong password gives
    // a wrong key: PostgreSQL refuses the proof and its error goes to the client.
    let upstream = server.get_mut().peer_end_point();
    let binding = match upstream {
        Some(d) if mechanisms.iter().any(|m| m == SCRAM_SHA_256_PLUS) => Binding::EndPoint(d),
        Some(_) => Binding::NotOffered,
        None => Binding::Unsupported,
    };
    let mut ce = ClientExchange::new(binding);
    send(
        server,
        &sasl_initial_response(ce.mechanism(), ce.client_first().as_bytes()),
    )
    .await?;
    let Some(data) = server_step(client, server, AUTH_SASL_CONTINUE).await? else {
        return Ok(false);
    };
    let client_final = match ce.client_final(&data, v, &recovered.client_key) {
        Ok(m) => m,
        Err(e) => {
            tracing::info!(user = %user, "SCRAM login refused: {}", e.message);
            return refuse(client, &e).await;
        }
    };
    send(server, &sasl_response(client_final.as_bytes())).await?;
    let Some(data) = server_step(client, server, AUTH_SASL_FINAL).await? else {
        return Ok(false);
    };
    if let Err(e) = ce.verify_server_final(&data, v) {
        tracing::warn!(user = %user, "{}", e.message);
        return refuse(client, &e).await;
    }
    if !recovered.proven {
        // PostgreSQL accepted a key whose hash is not the StoredKey pgredact read, with the
        // same salt: not expected to happen (a new password gets a new salt), and never a
        // reason to let the client in.
        send_fatal(
            client.get_mut(),
            "28P01",
            &format!("password authentication failed for user \"{user}\""),
            None,
        )
        .await;
        return Ok(false);
    }
    tracing::debug!(user = %user, client_binding, upstream_binding = ce.binding(), "SCRAM completed at pgredact");
    send(
        client,
        &auth_message(AUTH_SASL_FINAL, recovered.server_final.as_bytes()),
    )
    .await?;
    Ok(true)
}

/// The client leg of [`terminate`]: pgredact as the SCRAM server, -PLUS bound to its own
/// certificate when the client came over TLS. Returns what the client's proof recovered and the
/// binding it used (None: refused or gone; the client was told).
async fn client_leg(
    shared: &Shared,
    client: &mut FrameReader<ClientStream>,
    v: &Verifier,
) -> Result<Option<(Recovered, &'static str)>, FrameError> {
    // Client leg: -PLUS bound to pgredact's certificate when the client came over TLS.
    let own = own_offer(shared, client);
    send(client, &sasl_offer(offer_for(own))).await?;
    let Some(f) = client_response(client).await? else {
        return Ok(None);
    };
    let (mechanism, data) = initial_response(&f)?;
    let ex = match ServerExchange::start(&mechanism, &data, own, v) {
        Ok(ex) => ex,
        Err(e) => {
            send_fatal(client.get_mut(), e.code, &e.message, None).await;
            return Ok(None);
        }
    };
    let client_binding = if mechanism == SCRAM_SHA_256_PLUS {
        CB_TYPE
    } else {
        "none"
    };
    send(
        client,
        &auth_message(AUTH_SASL_CONTINUE, ex.server_first().as_bytes()),
    )
    .await?;
    let Some(f) = client_response(client).await? else {
        return Ok(None);
    };
    let recovered = match ex.finish(SaslResponse::decode(&f)?.data, v) {
        Ok(r) => r,
        Err(e) => {
            send_fatal(client.get_mut(), e.code, &e.message, None).await;
            return Ok(None);
        }
    };
    Ok(Some((recovered, client_binding)))
}

/// PostgreSQL's next SASL message, which must be `want`: its data, or None after relaying its
/// ErrorResponse (a refused login) to the client.
async fn server_step(
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
    want: i32,
) -> Result<Option<Vec<u8>>, FrameError> {
    loop {
        let Some(f) = server.next().await? else {
            return Ok(None);
        };
        match f[0] {
            b'E' => {
                send(client, &f).await?;
                return Ok(None);
            }
            // A NoticeResponse may come at any time.
            b'N' => send(client, &f).await?,
            b'R' => match auth_request(&f) {
                Some((code, data)) if code == want => return Ok(Some(data.to_vec())),
                _ => {
                    return Err(FrameError::Protocol(
                        "unexpected authentication message from PostgreSQL during SCRAM".into(),
                    ))
                }
            },
            _ => {
                return Err(FrameError::Protocol(
                    "unexpected message from PostgreSQL during SCRAM".into(),
                ))
            }
        }
    }
}
