//! TLS on both sides with rustls (ring provider): the acceptor for clients built from
//! client_tls_sslmode/cert/key files and the answer to a client's SSLRequest ('S' then the
//! handshake, or 'N'); the connector toward servers from server_tls_sslmode (SSLRequest, then
//! TLS as the mode demands). Owns certificates and handshakes, not sockets or timeouts.

use crate::config::{PoolerConfig, TlsMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A TLS setting or handshake that failed. File errors name the file and the setting.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{setting} = {path}: cannot read the file: {source}")]
    Read { setting: &'static str, path: PathBuf, source: io::Error },
    #[error("{setting} = {path}: no PEM certificate found in it")]
    NoCertificate { setting: &'static str, path: PathBuf },
    #[error("{setting} = {path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found in it")]
    NoKey { setting: &'static str, path: PathBuf },
    #[error("{setting} is required when {mode_setting} is {mode}")]
    Missing { setting: &'static str, mode_setting: &'static str, mode: &'static str },
    #[error("client_tls_cert_file and client_tls_key_file do not make a usable pair: {0}")]
    BadPair(rustls::Error),
    #[error("server_tls_cert_file and server_tls_key_file do not make a usable pair: {0}")]
    BadClientPair(rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    #[error("client sent data after its SSLRequest before the TLS handshake (refused: it could be injected)")]
    PipelinedBeforeHandshake,
    #[error("the server does not accept TLS, but server_tls_sslmode = {0} requires it")]
    ServerRefusedTls(&'static str),
    #[error("the server answered the SSLRequest with {0:?} instead of 'S' or 'N'")]
    BadServerAnswer(char),
    #[error("{0:?} is not a valid TLS server name")]
    BadServerName(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("I/O error during TLS negotiation: {0}")]
    Io(io::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// client_tls_protocols / server_tls_protocols as PgBouncer spells them: `secure` (TLS 1.2 and
/// 1.3), `all` and `legacy` (every version), or a list of `tlsv1.0` ... `tlsv1.3` separated by
/// commas, colons or blanks. rustls has no TLS 1.0 or 1.1: they are dropped from a list, and a
/// list of nothing else is an error rather than a pooler that cannot talk TLS.
pub fn protocol_versions(text: &str) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let (mut v12, mut v13) = (false, false);
    let mut any = false;
    for word in text.split(|c: char| c == ',' || c == ':' || c.is_whitespace()).filter(|w| !w.is_empty()) {
        any = true;
        match word.to_ascii_lowercase().as_str() {
            "secure" | "all" | "legacy" => (v12, v13) = (true, true),
            "tlsv1.2" => v12 = true,
            "tlsv1.3" => v13 = true,
            "tlsv1.0" | "tlsv1.1" => {}
            other => {
                return Err(format!(
                    "unknown TLS protocol {other:?}: expected secure, all, legacy or a list of tlsv1.2, tlsv1.3"
                ))
            }
        }
    }
    if !any {
        return Err("expected secure, all, legacy or a list of tlsv1.2, tlsv1.3".into());
    }
    let mut versions = Vec::new();
    if v13 {
        versions.push(&rustls::version::TLS13);
    }
    if v12 {
        versions.push(&rustls::version::TLS12);
    }
    if versions.is_empty() {
        return Err("TLS 1.0 and 1.1 are not available (rustls speaks TLS 1.2 and 1.3): add tlsv1.2 or tlsv1.3".into());
    }
    Ok(versions)
}

fn versions_of(setting: &'static str, text: &str) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    protocol_versions(text).map_err(|why| TlsError::Config(rustls::Error::General(format!("{setting}: {why}"))))
}

fn mode_name(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Disable => "disable",
        TlsMode::Allow => "allow",
        TlsMode::Prefer => "prefer",
        TlsMode::Require => "require",
        TlsMode::VerifyCa => "verify-ca",
        TlsMode::VerifyFull => "verify-full",
    }
}

fn read_file(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { setting, path: path.to_path_buf(), source })
}

fn load_certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(setting, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice()).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { setting, path: path.to_path_buf() });
    }
    Ok(certs)
}

fn load_key(setting: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(setting, path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(key)) => Ok(key),
        _ => Err(TlsError::NoKey { setting, path: path.to_path_buf() }),
    }
}

/// TLS toward clients.
#[derive(Clone)]
pub struct ClientTls {
    mode: TlsMode,
    acceptor: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// What to do with a client's SSLRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslAnswer {
    /// Send 'S' and run the handshake.
    Accept,
    /// Send 'N' and go on in plain text.
    Refuse,
}

impl ClientTls {
    /// From client_tls_sslmode, client_tls_cert_file and client_tls_key_file.
    pub fn from_config(config: &PoolerConfig) -> Result<ClientTls, TlsError> {
        if config.client_tls_sslmode == TlsMode::Disable {
            return Ok(ClientTls { mode: TlsMode::Disable, acceptor: None });
        }
        let mode = mode_name(config.client_tls_sslmode);
        let missing = |setting| TlsError::Missing { setting, mode_setting: "client_tls_sslmode", mode };
        let cert = config.client_tls_cert_file.as_deref().ok_or_else(|| missing("client_tls_cert_file"))?;
        let key = config.client_tls_key_file.as_deref().ok_or_else(|| missing("client_tls_key_file"))?;
        let ca = match config.client_tls_sslmode {
            TlsMode::VerifyCa | TlsMode::VerifyFull => {
                Some(config.client_tls_ca_file.as_deref().ok_or_else(|| missing("client_tls_ca_file"))?)
            }
            _ => None,
        };
        let versions = versions_of("client_tls_protocols", &config.client_tls_protocols)?;
        let acceptor = acceptor(cert, key, ca, &versions)?;
        Ok(ClientTls { mode: config.client_tls_sslmode, acceptor: Some(acceptor) })
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// The answer to an SSLRequest: 'S' whenever a certificate is configured.
    pub fn ssl_answer(&self) -> SslAnswer {
        if self.acceptor.is_some() {
            SslAnswer::Accept
        } else {
            SslAnswer::Refuse
        }
    }

    /// Whether a client that did not ask for TLS may go on (client_tls_sslmode require and
    /// verify-* refuse it, as PgBouncer does).
    pub fn plain_allowed(&self) -> bool {
        !matches!(self.mode, TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull)
    }

    /// Answers an SSLRequest on `stream` ('S' + handshake, or 'N'). `pending` is what the
    /// caller read after the SSLRequest: it must be empty before a handshake (data sent before
    /// TLS could be injected by a man in the middle).
    pub async fn answer_ssl_request<S>(&self, mut stream: S, pending: &[u8]) -> Result<ClientStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match (&self.acceptor, self.ssl_answer()) {
            (Some(acceptor), SslAnswer::Accept) => {
                if !pending.is_empty() {
                    return Err(TlsError::PipelinedBeforeHandshake);
                }
                stream.write_all(b"S").await.map_err(TlsError::Io)?;
                stream.flush().await.map_err(TlsError::Io)?;
                let tls = acceptor.accept(stream).await.map_err(TlsError::Handshake)?;
                Ok(ClientStream::Tls(Box::new(tls)))
            }
            _ => {
                stream.write_all(b"N").await.map_err(TlsError::Io)?;
                stream.flush().await.map_err(TlsError::Io)?;
                Ok(ClientStream::Plain(stream))
            }
        }
    }
}

impl ClientTls {
    /// Answers a TCP client's SSLRequest when `ssl_answer` is `Accept`: 'S' and the handshake
    /// (a Unix-socket client always gets 'N', as from PostgreSQL and PgBouncer: the caller
    /// answers that). `pending` as in [`ClientTls::answer_ssl_request`].
    pub async fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
        pending: &[u8],
    ) -> Result<crate::stream::Stream, TlsError> {
        use crate::stream::Stream;
        Ok(match self.answer_ssl_request(tcp, pending).await? {
            ClientStream::Tls(tls) => Stream::TlsClient(tls),
            ClientStream::Plain(tcp) => Stream::Tcp(tcp),
        })
    }
}

/// The TLS acceptor for clients. `ca`: client certificates must chain to it
/// (client_tls_sslmode verify-ca / verify-full).
fn acceptor(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs("client_tls_cert_file", cert)?;
    let key = load_key("client_tls_key_file", key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(TlsError::Config)?;
    let builder = match ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs("client_tls_ca_file", ca)? {
                roots.add(cert).map_err(TlsError::Config)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(TlsError::BadPair)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A client connection, in plain text or TLS.
pub enum ClientStream<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
}

/// A server connection, in plain text or TLS.
pub enum ServerStream<S> {
    Plain(S),
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

macro_rules! either_stream {
    ($name:ident) => {
        impl<S> $name<S> {
            pub fn is_tls(&self) -> bool {
                matches!(self, $name::Tls(_))
            }

            /// `TLSv1.3/TLS_AES_256_GCM_SHA384` as SHOW CLIENTS/SERVERS print it; empty without TLS.
            pub fn tls_description(&self) -> String {
                match self {
                    $name::Plain(_) => String::new(),
                    $name::Tls(tls) => {
                        let conn = tls.get_ref().1;
                        let version = conn.protocol_version().and_then(|v| v.as_str()).unwrap_or("TLS");
                        let suite = conn.negotiated_cipher_suite().and_then(|s| s.suite().as_str()).unwrap_or("");
                        // rustls says TLSv1_3 / TLS13_AES_256_GCM_SHA384; PgBouncer (OpenSSL)
                        // prints TLSv1.3/TLS_AES_256_GCM_SHA384.
                        let suite = suite.strip_prefix("TLS13_").map_or(suite.to_string(), |s| format!("TLS_{s}"));
                        format!("{}/{suite}", version.replace('_', "."))
                    }
                }
            }
        }

        impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for $name<S> {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                }
            }
        }

        impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for $name<S> {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                }
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
                }
            }
            fn is_write_vectored(&self) -> bool {
                match self {
                    $name::Plain(s) => s.is_write_vectored(),
                    $name::Tls(s) => s.is_write_vectored(),
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_flush(cx),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $name::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                }
            }
        }
    };
}

either_stream!(ClientStream);
either_stream!(ServerStream);

/// TLS toward servers.
#[derive(Clone)]
pub struct ServerTls {
    mode: TlsMode,
    connector: Option<TlsConnector>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From server_tls_sslmode (and server_tls_ca_file for verify-ca / verify-full). `require`
    /// and `prefer` encrypt without checking the certificate, as libpq does; `allow` connects
    /// in plain text.
    pub fn from_config(config: &PoolerConfig) -> Result<ServerTls, TlsError> {
        let mode = config.server_tls_sslmode;
        let versions = versions_of("server_tls_protocols", &config.server_tls_protocols)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .map_err(TlsError::Config)?;
        let builder = match mode {
            TlsMode::Disable | TlsMode::Allow => return Ok(ServerTls { mode, connector: None }),
            TlsMode::Prefer | TlsMode::Require => {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(Unverified(provider())))
            }
            TlsMode::VerifyCa | TlsMode::VerifyFull => {
                let ca = config.server_tls_ca_file.as_deref().ok_or(TlsError::Missing {
                    setting: "server_tls_ca_file",
                    mode_setting: "server_tls_sslmode",
                    mode: mode_name(mode),
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in load_certs("server_tls_ca_file", ca)? {
                    roots.add(cert).map_err(TlsError::Config)?;
                }
                let roots = Arc::new(roots);
                if mode == TlsMode::VerifyFull {
                    builder.with_root_certificates(roots)
                } else {
                    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                        .build()
                        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
                    builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                }
            }
        };
        // server_tls_cert_file / server_tls_key_file: shown to servers that ask for a
        // certificate (PostgreSQL asks when it has ssl_ca_file).
        let client_config = match (&config.server_tls_cert_file, &config.server_tls_key_file) {
            (Some(cert), Some(key)) => {
                let certs = load_certs("server_tls_cert_file", cert)?;
                let key = load_key("server_tls_key_file", key)?;
                builder.with_client_auth_cert(certs, key).map_err(TlsError::BadClientPair)?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(TlsError::Missing {
                    setting: "server_tls_key_file",
                    mode_setting: "server_tls_cert_file",
                    mode: "set",
                })
            }
            (None, Some(_)) => {
                return Err(TlsError::Missing {
                    setting: "server_tls_cert_file",
                    mode_setting: "server_tls_key_file",
                    mode: "set",
                })
            }
        };
        Ok(ServerTls { mode, connector: Some(TlsConnector::from(Arc::new(client_config))) })
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Sends SSLRequest on a fresh server connection (unless the mode is disable/allow) and
    /// returns the stream to send the StartupMessage on. `host` is the name checked by
    /// verify-full (and sent as SNI when it is a name).
    pub async fn connect<S>(&self, mut stream: S, host: &str) -> Result<ServerStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(connector) = &self.connector else {
            return Ok(ServerStream::Plain(stream));
        };
        let mut request = bytes::BytesMut::new();
        crate::protocol::startup::write_ssl_request(&mut request);
        stream.write_all(&request).await.map_err(TlsError::Io)?;
        stream.flush().await.map_err(TlsError::Io)?;
        let answer = stream.read_u8().await.map_err(TlsError::Io)?;
        match answer {
            b'S' => {
                let name = ServerName::try_from(host.to_string()).map_err(|_| TlsError::BadServerName(host.into()))?;
                let tls = connector.connect(name, stream).await.map_err(TlsError::Handshake)?;
                Ok(ServerStream::Tls(Box::new(tls)))
            }
            b'N' if self.mode == TlsMode::Prefer => Ok(ServerStream::Plain(stream)),
            b'N' => Err(TlsError::ServerRefusedTls(mode_name(self.mode))),
            other => Err(TlsError::BadServerAnswer(char::from(other))),
        }
    }
}

impl ServerTls {
    /// [`ServerTls::connect`] on a server socket: TCP may become TLS, a Unix socket stays as it
    /// is (PostgreSQL offers no TLS there).
    pub async fn connect_stream(
        &self,
        stream: crate::stream::Stream,
        host: &str,
    ) -> Result<crate::stream::Stream, TlsError> {
        use crate::stream::Stream;
        match stream {
            Stream::Tcp(tcp) => match self.connect(tcp, host).await? {
                ServerStream::Tls(tls) => Ok(Stream::TlsServer(tls)),
                ServerStream::Plain(tcp) => Ok(Stream::Tcp(tcp)),
            },
            other => Ok(other),
        }
    }
}

/// Encrypts without checking who the server is (sslmode prefer/require); signatures are still
/// checked so the handshake itself is sound.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca: the chain must lead to the CA, the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
