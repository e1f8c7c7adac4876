//! The startup packet: the untagged first message of a connection (length, code, body), read by
//! [`read_startup`](super::frame::read_startup) and decoded once into a [`Startup`].

use super::frame::MAX_STARTUP;
use super::{put_cstr, take_cstr, FrameError};
use bytes::{BufMut, BytesMut};

pub const SSL_REQUEST: i32 = 80877103;
pub const GSSENC_REQUEST: i32 = 80877104;
pub const CANCEL_REQUEST: i32 = 80877102;
pub const PROTOCOL_3: i32 = 196608;
/// A cancel request forwarded by another pgredact (`proxy::peers`): same layout as
/// CancelRequest (length 16, code, process id, secret key), a code PostgreSQL does not use.
pub const PEER_CANCEL_REQUEST: i32 = (1234 << 16) | 5699;

/// A startup packet pgredact serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// SSLRequest.
    Ssl,
    /// GSSENCRequest.
    GssEnc,
    /// CancelRequest; `from_peer`: a [`PEER_CANCEL_REQUEST`], served and never forwarded again.
    Cancel { pid: i32, key: i32, from_peer: bool },
    /// A protocol 3.0 StartupMessage (the only version pgredact serves) and its parameters, in
    /// the order the client sent them.
    Startup { params: Vec<(String, String)> },
}

/// A startup packet pgredact does not serve.
#[derive(Debug)]
pub enum StartupError {
    /// A request code or protocol version pgredact does not serve, or a request of the wrong
    /// length (an SSLRequest of 12 bytes...).
    Unsupported(i32),
    /// A protocol 3.0 StartupMessage whose parameters cannot be read (a missing terminator, a
    /// string that is not UTF-8, bytes after the final terminator).
    Params(FrameError),
    /// Not a startup packet: its length field is not its size, or is out of bounds
    /// ([`read_startup`](super::frame::read_startup) never returns one).
    Malformed(FrameError),
}

impl Startup {
    /// Decodes a whole startup packet (length included).
    pub fn decode(pkt: &[u8]) -> Result<Startup, StartupError> {
        let (Some(len), Some(code)) = (pkt.first_chunk::<4>(), pkt.get(4..8)) else {
            return Err(StartupError::Malformed(FrameError::Protocol(format!(
                "invalid startup packet length {}",
                pkt.len()
            ))));
        };
        let n = i32::from_be_bytes(*len);
        if n as i64 != pkt.len() as i64 || pkt.len() > MAX_STARTUP {
            return Err(StartupError::Malformed(FrameError::Protocol(format!(
                "invalid startup packet length {n}"
            ))));
        }
        let code = i32::from_be_bytes([code[0], code[1], code[2], code[3]]);
        let int = |at: usize| i32::from_be_bytes([pkt[at], pkt[at + 1], pkt[at + 2], pkt[at + 3]]);
        match (code, pkt.len()) {
            (SSL_REQUEST, 8) => Ok(Startup::Ssl),
            (GSSENC_REQUEST, 8) => Ok(Startup::GssEnc),
            (CANCEL_REQUEST | PEER_CANCEL_REQUEST, 16) => Ok(Startup::Cancel {
                pid: int(8),
                key: int(12),
                from_peer: code == PEER_CANCEL_REQUEST,
            }),
            (PROTOCOL_3, _) => match params(&pkt[8..]) {
                Ok(params) => Ok(Startup::Startup { params }),
                Err(e) => Err(StartupError::Params(e)),
            },
            _ => Err(StartupError::Unsupported(code)),
        }
    }

    /// The request code or protocol version of this packet.
    pub fn code(&self) -> i32 {
        match self {
            Startup::Ssl => SSL_REQUEST,
            Startup::GssEnc => GSSENC_REQUEST,
            Startup::Cancel {
                from_peer: false, ..
            } => CANCEL_REQUEST,
            Startup::Cancel {
                from_peer: true, ..
            } => PEER_CANCEL_REQUEST,
            Startup::Startup { .. } => PROTOCOL_3,
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_i32(0);
        out.put_i32(self.code());
        match self {
            Startup::Ssl | Startup::GssEnc => {}
            Startup::Cancel { pid, key, .. } => {
                out.put_i32(*pid);
                out.put_i32(*key);
            }
            Startup::Startup { params } => {
                for (k, v) in params {
                    put_cstr(out, k);
                    put_cstr(out, v);
                }
                out.put_u8(0);
            }
        }
        let n = (out.len() - start) as i32;
        out[start..start + 4].copy_from_slice(&n.to_be_bytes());
    }

    /// The packet on its own.
    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out
    }
}

/// StartupMessage parameters: name/value pairs, then an empty name, then nothing.
fn params(mut body: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let mut out = Vec::new();
    loop {
        let k = take_cstr(&mut body)?;
        if k.is_empty() {
            break;
        }
        let v = take_cstr(&mut body)?;
        out.push((k, v));
    }
    if !body.is_empty() {
        return Err(FrameError::Protocol(
            "trailing bytes after startup parameters".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut p = ((8 + body.len()) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(body);
        p
    }

    fn params_error(pkt: &[u8]) -> String {
        match Startup::decode(pkt) {
            Err(StartupError::Params(e)) => e.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_trips() {
        let all = [
            Startup::Ssl,
            Startup::GssEnc,
            Startup::Cancel {
                pid: 0x0102_0304,
                key: -2,
                from_peer: false,
            },
            Startup::Cancel {
                pid: 7,
                key: i32::MIN,
                from_peer: true,
            },
            Startup::Startup {
                params: vec![
                    ("user".into(), "support".into()),
                    ("enable_indexonlyscan".into(), "off".into()),
                    ("application_name".into(), String::new()),
                ],
            },
            Startup::Startup { params: Vec::new() },
        ];
        for s in all {
            let pkt = s.to_bytes();
            let n = i32::from_be_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]) as usize;
            assert_eq!(n, pkt.len(), "{s:?}");
            assert_eq!(
                i32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]),
                s.code()
            );
            assert_eq!(Startup::decode(&pkt).unwrap(), s);
        }
    }

    #[test]
    fn cancel_layout() {
        let p = Startup::Cancel {
            pid: 0x0102_0304,
            key: -2,
            from_peer: true,
        }
        .to_bytes();
        assert_eq!(&p[..4], &16i32.to_be_bytes());
        assert_eq!(&p[4..8], &PEER_CANCEL_REQUEST.to_be_bytes());
        assert_eq!(&p[8..12], &[1, 2, 3, 4]);
        assert_eq!(&p[12..], &(-2i32).to_be_bytes());
        // The peer code is none of PostgreSQL's.
        for code in [CANCEL_REQUEST, SSL_REQUEST, GSSENC_REQUEST, PROTOCOL_3] {
            assert_ne!(PEER_CANCEL_REQUEST, code);
        }
    }

    #[test]
    fn requests_of_the_wrong_length_or_version_are_unsupported() {
        for (code, body) in [
            (SSL_REQUEST, &[0u8; 4][..]),
            (GSSENC_REQUEST, &[0u8; 1][..]),
            (CANCEL_REQUEST, &[0u8; 4][..]),
            (CANCEL_REQUEST, &[0u8; 12][..]),
            (PEER_CANCEL_REQUEST, &[0u8; 9][..]),
            (196610, &b"user\0a\0\0"[..]), // protocol 3.2
            (131072, &b"user\0a\0\0"[..]), // protocol 2.0
            (1234, &[][..]),
        ] {
            match Startup::decode(&packet(code, body)) {
                Err(StartupError::Unsupported(c)) => assert_eq!(c, code),
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_parameters_are_refused() {
        assert_eq!(
            params_error(&packet(PROTOCOL_3, b"")),
            "protocol error: missing string terminator"
        );
        assert_eq!(
            params_error(&packet(PROTOCOL_3, b"user\0support")),
            "protocol error: missing string terminator"
        );
        assert_eq!(
            params_error(&packet(PROTOCOL_3, b"user\0support\0")),
            "protocol error: missing string terminator"
        );
        assert_eq!(
            params_error(&packet(PROTOCOL_3, b"user\0\xe9\0\0")),
            "protocol error: string is not valid UTF-8"
        );
        assert_eq!(
            params_error(&packet(PROTOCOL_3, b"user\0a\0\0x")),
            "protocol error: trailing bytes after startup parameters"
        );
    }

    #[test]
    fn packets_whose_length_is_not_their_size_are_malformed() {
        let mut p = packet(SSL_REQUEST, b"");
        p.push(0);
        assert!(matches!(
            Startup::decode(&p),
            Err(StartupError::Malformed(_))
        ));
        assert!(matches!(
            Startup::decode(&p[..7]),
            Err(StartupError::Malformed(_))
        ));
        let big = packet(PROTOCOL_3, &vec![b'a'; MAX_STARTUP]);
        assert!(matches!(
            Startup::decode(&big),
            Err(StartupError::Malformed(_))
        ));
    }
}
