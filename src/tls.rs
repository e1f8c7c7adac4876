//! Client-side TLS: the `[tls]` certificate and key (rustls, ring provider), and the client
//! stream that is either plain TCP or TLS after an SSLRequest was answered `S`.

use crate::config::Tls;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Builds the acceptor from `[tls]` (paths relative to the config file's directory). Errors name
/// the file and the reason.
pub fn acceptor(tls: &Tls, base: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_path = base.join(&tls.cert);
    let key_path = base.join(&tls.key);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "{}: cannot read the TLS certificate: {e}",
                cert_path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        format!(
            "{}: cannot read the TLS private key: {e}",
            key_path.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{} / {}: the certificate and key do not make a usable pair: {e}",
                cert_path.display(),
                key_path.display()
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The `tls-server-end-point` channel-binding data (RFC 5929) of the first certificate in
/// `[tls] cert`, the one pgredact presents; None when it cannot be read or its signature
/// algorithm names no usable hash (clients are then offered no `-PLUS` mechanism).
pub fn cert_file_end_point(tls: &Tls, base: &Path) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let path = base.join(&tls.cert);
    let first = CertificateDer::pem_file_iter(&path).ok()?.next()?.ok()?;
    server_end_point(first.as_ref())
}

/// RFC 5929 `tls-server-end-point`: the hash of the DER certificate with the hash function of
/// its signature algorithm, SHA-256 for MD5 and SHA-1. None for algorithms without one
/// (RSASSA-PSS, Ed25519...), as in PostgreSQL and libpq, which then cannot bind either.
pub fn server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    /// One DER element: (tag, contents, rest).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, b) = b.split_first()?;
        let (len, b) = if first < 0x80 {
            (first as usize, b)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n]
                .iter()
                .fold(0usize, |acc, x| (acc << 8) | *x as usize);
            (len, &b[n..])
        };
        if b.len() < len {
            return None;
        }
        Some((tag, &b[..len], &b[len..]))
    }
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, _tbs, rest) = tlv(cert)? else {
        return None;
    };
    let (0x30, alg, _) = tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = tlv(alg)? else {
        return None;
    };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01]; // 1.2.840.113549.1.1
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04]; // 1.2.840.10045.4
    const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03]; // 1.2.840.10040.4.3
    const NIST_SIG: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03]; // 2.16.840.1.101.3.4.3
    enum H {
        S224,
        S256,
        S384,
        S512,
    }
    let h = if let Some(r) = oid.strip_prefix(RSA) {
        match r {
            [0x04] | [0x05] | [0x0b] => H::S256, // md5, sha1, sha256 WithRSAEncryption
            [0x0c] => H::S384,
            [0x0d] => H::S512,
            [0x0e] => H::S224,
            _ => return None,
        }
    } else if let Some(r) = oid.strip_prefix(ECDSA) {
        match r {
            [0x01] | [0x03, 0x02] => H::S256, // ecdsa-with-SHA1, -SHA256
            [0x03, 0x01] => H::S224,
            [0x03, 0x03] => H::S384,
            [0x03, 0x04] => H::S512,
            _ => return None,
        }
    } else if oid == DSA_SHA1 {
        H::S256
    } else if let Some(r) = oid.strip_prefix(NIST_SIG) {
        match r {
            [0x01] => H::S224, // dsa-with-sha224
            [0x02] => H::S256, // dsa-with-sha256
            _ => return None,
        }
    } else {
        return None;
    };
    Some(match h {
        H::S224 => sha2::Sha224::digest(der).to_vec(),
        H::S256 => sha2::Sha256::digest(der).to_vec(),
        H::S384 => sha2::Sha384::digest(der).to_vec(),
        H::S512 => sha2::Sha512::digest(der).to_vec(),
    })
}

/// A connection, before or after TLS (`T`: rustls' server or client stream).
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

/// A client connection, before or after an SSLRequest answered `S`.
pub type ClientStream = MaybeTls<TlsStream<TcpStream>>;
/// A connection to PostgreSQL, plain or TLS.
pub type ServerStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

impl<T> MaybeTls<T> {
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A stream the relays can split into owned halves (plain TCP without a lock).
pub trait SplitStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type R: AsyncRead + Unpin + Send + 'static;
    type W: AsyncWrite + Unpin + Send + 'static;
    fn split_owned(self) -> (Self::R, Self::W);
}

impl SplitStream for TcpStream {
    type R = OwnedReadHalf;
    type W = OwnedWriteHalf;
    fn split_owned(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

impl SplitStream for TlsStream<TcpStream> {
    type R = tokio::io::ReadHalf<TlsStream<TcpStream>>;
    type W = tokio::io::WriteHalf<TlsStream<TcpStream>>;
    fn split_owned(self) -> (Self::R, Self::W) {
        tokio::io::split(self)
    }
}

// ---------- towards PostgreSQL ----------

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// TLS from pgredact to PostgreSQL (`[upstream] sslmode = "require"` or `"verify-full"`), for
/// session connections (SSLRequest then a rustls handshake) and, through tokio-postgres, for the
/// control connections.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The sslmode it implements, for messages.
    pub mode: &'static str,
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamTls({}, {:?})", self.mode, self.server_name)
    }
}

/// Accepts any certificate but still checks the handshake signatures: libpq's `require`
/// (encryption without authentication of the server).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Builds the upstream TLS settings: None for `disable`.
pub fn upstream(cfg: &crate::config::Config) -> Result<Option<UpstreamTls>, String> {
    use rustls::pki_types::pem::PemObject;
    let u = &cfg.upstream;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let config = match u.sslmode.as_str() {
        "disable" => return Ok(None),
        "require" => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
        "verify-full" => {
            let Some(ca) = &u.ca else {
                return Err(
                    "upstream.sslmode = \"verify-full\" needs upstream.ca (PEM file of the CA that signed PostgreSQL's certificate)".into(),
                );
            };
            let path = cfg.base_dir.join(ca);
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: cannot read the CA certificate: {e}", path.display()))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "{}: no PEM certificate in the file",
                    path.display()
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        other => {
            return Err(format!(
                "upstream.sslmode = {other:?}: use \"disable\", \"require\" or \"verify-full\""
            ))
        }
    };
    let server_name = ServerName::try_from(u.host.clone()).map_err(|e| {
        format!(
            "upstream.host {:?} is not a DNS name or IP address: {e}",
            u.host
        )
    })?;
    Ok(Some(UpstreamTls {
        mode: if u.sslmode == "require" {
            "require"
        } else {
            "verify-full"
        },
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    }))
}

impl UpstreamTls {
    /// SSLRequest on a fresh connection to PostgreSQL, then the handshake.
    pub async fn start(&self, mut tcp: TcpStream) -> Result<ServerStream, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = crate::wire::startup::Startup::Ssl.to_bytes();
        tcp.write_all(&req).await.map_err(|e| e.to_string())?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        if answer[0] != b'S' {
            return Err("PostgreSQL does not accept TLS connections (ssl = off) but upstream.sslmode requires TLS".into());
        }
        let s = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake with PostgreSQL failed: {e}"))?;
        Ok(MaybeTls::Tls(Box::new(s)))
    }
}

impl ServerStream {
    /// The `tls-server-end-point` data of PostgreSQL's certificate on a TLS connection.
    pub fn peer_end_point(&self) -> Option<Vec<u8>> {
        match self {
            MaybeTls::Tls(s) => server_end_point(s.get_ref().1.peer_certificates()?.first()?),
            MaybeTls::Plain(_) => None,
        }
    }
}

impl SplitStream for tokio_rustls::client::TlsStream<TcpStream> {
    type R = tokio::io::ReadHalf<Self>;
    type W = tokio::io::WriteHalf<Self>;
    fn split_owned(self) -> (Self::R, Self::W) {
        tokio::io::split(self)
    }
}

// tokio-postgres (control connections) over the same rustls settings.

/// A rustls stream as tokio-postgres wants it, with `tls-server-end-point` channel binding to
/// PostgreSQL's certificate (tokio-postgres then uses `SCRAM-SHA-256-PLUS` when offered).
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        let hash = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| server_end_point(c));
        match hash {
            Some(h) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(h),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for UpstreamTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = UpstreamTls;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, _domain: &str) -> Result<UpstreamTls, std::io::Error> {
        Ok(self.clone())
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for UpstreamTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<PgTlsStream<S>, std::io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = self.connector.connect(self.server_name, stream).await?;
            Ok(PgTlsStream(s))
        })
    }
}

/// An error with its chain of causes (tokio-postgres hides the TLS reason in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Connects tokio-postgres with `tls` when set (sslmode require), plaintext otherwise, and
/// spawns the connection task.
pub async fn pg_connect(
    config: tokio_postgres::Config,
    tls: Option<&UpstreamTls>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_driven(config, tls, None).await
}

/// `pg_connect`, with a message on the receiver for every notification (LISTEN).
pub async fn pg_connect_notified(
    config: tokio_postgres::Config,
    tls: Option<&UpstreamTls>,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ),
    tokio_postgres::Error,
> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    Ok((connect_driven(config, tls, Some(tx)).await?, rx))
}

async fn connect_driven(
    mut config: tokio_postgres::Config,
    tls: Option<&UpstreamTls>,
    notify: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    match tls {
        Some(t) => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, conn) = config.connect(t.clone()).await?;
            tokio::spawn(drive(conn, notify));
            Ok(client)
        }
        None => {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(drive(conn, notify));
            Ok(client)
        }
    }
}

/// Runs a connection until it ends, forwarding notifications when asked.
async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    notify: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio_postgres::tls::TlsStream + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                if let Some(tx) = &notify {
                    let _ = tx.send(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!("control connection ended: {e}");
                return;
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER certificate skeleton signed with the algorithm `oid` (contents beyond the
    /// structure the hash choice reads do not matter).
    fn cert_with(oid: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let mut body = vec![0x30, 0x03, 0x02, 0x01, 0x01]; // tbsCertificate (a stand-in)
        body.push(0x30);
        body.push(alg.len() as u8);
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 0x02, 0x00, 0xff]);
        let mut der = vec![0x30, 0x81, body.len() as u8];
        der.extend_from_slice(&body);
        der
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        use sha2::Digest;
        let rsa = |last: u8| cert_with(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, last]);
        for (der, len) in [
            (rsa(0x05), 32), // sha1WithRSAEncryption: SHA-256
            (rsa(0x0b), 32),
            (rsa(0x0c), 48),
            (rsa(0x0d), 64),
            (
                cert_with(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]),
                48,
            ),
            (
                cert_with(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
                32,
            ),
        ] {
            let h = server_end_point(&der).expect("a hash");
            assert_eq!(h.len(), len);
        }
        assert_eq!(
            server_end_point(&rsa(0x0c)).unwrap(),
            sha2::Sha384::digest(rsa(0x0c)).to_vec()
        );
        // RSASSA-PSS and Ed25519 name no hash; truncated input is not a certificate.
        assert_eq!(server_end_point(&rsa(0x0a)), None);
        assert_eq!(server_end_point(&cert_with(&[0x2b, 0x65, 0x70])), None);
        let der = rsa(0x0b);
        assert_eq!(server_end_point(&der[..der.len() - 3]), None);
        assert_eq!(server_end_point(&[]), None);
    }
}
