//! Authentication, relayed to PostgreSQL until its first ReadyForQuery (SASL is completed at
//! pgredact by `scram`); the backend key is replaced by one pgredact issues.

use super::cancel::new_cancel_key;
use super::shared::Shared;
use crate::tls::{ClientStream, ServerStream};
use crate::wire::backend::{Authentication, AuthenticationSasl, BackendKeyData, ErrorFields};
use crate::wire::{FrameError, FrameReader};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

pub(crate) struct Keys {
    pub(crate) client_key: (i32, i32),
    /// The ReadyForQuery that ends startup, held back until the session is ready.
    pub(crate) ready: Bytes,
}

/// Relays authentication until PostgreSQL says ReadyForQuery (SASL is completed by
/// `scram::authenticate_sasl`, at pgredact when it can read the role's verifier). Replaces the
/// backend key with a proxy-issued one. Returns None when the session ended (auth failure,
/// disconnect).
pub(crate) async fn authenticate(
    shared: &Arc<Shared>,
    database: &str,
    user: &str,
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
) -> Result<Option<Keys>, FrameError> {
    let mut client_key = (0, 0);
    loop {
        let Some(f) = server.next().await? else {
            return Ok(None);
        };
        match f[0] {
            b'R' => {
                let code = Authentication::decode(&f)?.code;
                if code == AuthenticationSasl::CODE {
                    if !super::scram::authenticate_sasl(shared, database, user, client, server, &f)
                        .await?
                    {
                        return Ok(None);
                    }
                    continue;
                }
                write_raw(client, &f).await?;
                // 3 cleartext, 5 md5, 11 SASL continue (relayed SASL): the client answers.
                if matches!(code, 3 | 5 | 11) {
                    let Some(resp) = client.next().await? else {
                        return Ok(None);
                    };
                    if resp[0] != b'p' {
                        return Err(FrameError::Protocol("expected a password message".into()));
                    }
                    write_raw(server, &resp).await?;
                } else if code != 0 && code != 12 {
                    // GSS/SSPI and others are not relayed.
                    send_error(
                        client,
                        "28000",
                        "pgredact: this authentication method is not supported through pgredact",
                    )
                    .await;
                    return Ok(None);
                }
            }
            b'K' => {
                let upstream = BackendKeyData::decode(&f)?;
                client_key = new_cancel_key(shared, (upstream.pid, upstream.key));
                let mut out = BytesMut::with_capacity(13);
                BackendKeyData {
                    pid: client_key.0,
                    key: client_key.1,
                }
                .encode(&mut out);
                write_raw(client, &out).await?;
            }
            b'Z' => {
                return Ok(Some(Keys {
                    client_key,
                    ready: f,
                }))
            }
            b'E' => {
                write_raw(client, &f).await?;
                return Ok(None);
            }
            _ => write_raw(client, &f).await?,
        }
    }
}

pub(crate) async fn write_raw<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    r: &mut FrameReader<S>,
    b: &[u8],
) -> Result<(), FrameError> {
    r.get_mut().write_all(b).await.map_err(FrameError::Io)
}

pub(crate) async fn send_error<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    r: &mut FrameReader<S>,
    code: &str,
    msg: &str,
) {
    let mut out = BytesMut::new();
    ErrorFields::new("FATAL", code, msg).encode(b'E', &mut out);
    let _ = write_raw(r, &out).await;
}
