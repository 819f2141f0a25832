//! HTTPS for the REST API (Patroni's `restapi.certfile`, `keyfile`, `cafile`, `verify_client`):
//! loads the PEM files into a rustls server config, and accepts connections with each TLS
//! handshake in its own task, so that a slow or silent client delays no other. Owns the API's
//! TLS only; who may do what is `auth`'s.

use crate::config::{ApiConfig, VerifyClient};
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the API's certificate, key or CA could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error("api.{setting}: cannot read {path}: {source}")]
    Read { setting: &'static str, path: String, source: std::io::Error },
    #[error("api.{setting}: {path} holds no {what} in PEM form")]
    Missing { setting: &'static str, path: String, what: &'static str },
    #[error("api.certfile / api.keyfile: {0}")]
    Certificate(rustls::Error),
    #[error("api.cafile: {0}")]
    Ca(String),
}

/// The API's TLS server side, ready to accept.
#[derive(Clone)]
pub struct ApiTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiTls")
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, ApiTlsError> {
    std::fs::read(path).map_err(|source| ApiTlsError::Read { setting, path: path.display().to_string(), source })
}

fn load_certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ApiTlsError> {
    let pem = read(setting, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice()).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(ApiTlsError::Missing { setting, path: path.display().to_string(), what: "certificate" });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ApiTlsError> {
    let pem = read("keyfile", path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(key)) => Ok(key),
        _ => Err(ApiTlsError::Missing { setting: "keyfile", path: path.display().to_string(), what: "private key" }),
    }
}

impl ApiTls {
    /// None when `api.certfile` is not set (plain HTTP).
    pub fn from_config(api: &ApiConfig) -> Result<Option<ApiTls>, ApiTlsError> {
        let (Some(cert), Some(key)) = (&api.certfile, &api.keyfile) else { return Ok(None) };
        let certs = load_certs("certfile", cert)?;
        let key = load_key(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ApiTlsError::Certificate)?;
        let builder = match (api.verify_client, &api.cafile) {
            (VerifyClient::None, _) | (_, None) => builder.with_no_client_auth(),
            (mode, Some(ca)) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in load_certs("cafile", ca)? {
                    roots.add(c).map_err(|e| ApiTlsError::Ca(e.to_string()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if mode == VerifyClient::Optional { verifier.allow_unauthenticated() } else { verifier };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| ApiTlsError::Ca(e.to_string()))?)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(ApiTlsError::Certificate)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(ApiTls { acceptor: TlsAcceptor::from(Arc::new(config)) }))
    }
}

/// The other end of an API connection: its address, and whether it showed a client certificate
/// that chains to `api.cafile` (a certificate that does not fails the handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiPeer {
    pub addr: SocketAddr,
    pub client_certificate: bool,
}

impl Connected<IncomingStream<'_, TcpListener>> for ApiPeer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        ApiPeer { addr: *stream.remote_addr(), client_certificate: false }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for ApiPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}

/// Connections that finished their TLS handshake, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, ApiPeer)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, tls: ApiTls) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (handed, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(listener, tls.acceptor, handed));
        Ok(TlsListener { ready, local, accepting })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handed: mpsc::Sender<(TlsStream<TcpStream>, ApiPeer)>,
) {
    while !handed.is_closed() {
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "REST API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, handed) = (acceptor.clone(), handed.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let client_certificate = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                    let _ = handed.send((stream, ApiPeer { addr, client_certificate })).await;
                }
                Ok(Err(e)) => tracing::info!(client = %addr, error = %e, "REST API: TLS handshake failed"),
                Err(_) => {
                    tracing::info!(client = %addr, "REST API: TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}")
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = ApiPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop is gone (only when the listener is dropped): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ApiPeer { addr: self.local, client_certificate: false })
    }
}
