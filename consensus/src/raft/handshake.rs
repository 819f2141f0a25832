//! Mutual authentication of a connection by the cluster-wide shared secret, without sending it:
//! each side sends a fresh random nonce and proves knowledge of the secret with HMAC-SHA256 over
//! both nonces; both then derive per-direction session keys that authenticate every later frame.
//! Owns the secret's handling; must never log, display or transmit the secret itself.
//!
//! Exchange (client = the side that connected):
//! 1. client -> server: `MAGIC | client_nonce`
//! 2. server -> client: `MAGIC | server_nonce | HMAC(secret, "server proof" | cn | sn)`
//! 3. client -> server: `HMAC(secret, "client proof" | cn | sn)` (only if the server's proof holds)
//! 4. server -> client: one byte, 1 = accepted, 0 = rejected (then the server closes)

use std::fmt;
use std::io;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type HmacSha256 = Hmac<Sha256>;

/// Protocol greeting and version: a connection that does not start with it is not a pgha peer.
const MAGIC: &[u8; 8] = b"PGHARFT1";
const NONCE_LEN: usize = 32;
pub(crate) const TAG_LEN: usize = 32;

const SERVER_PROOF: &[u8] = b"pgha raft v1 server proof";
const CLIENT_PROOF: &[u8] = b"pgha raft v1 client proof";
const CLIENT_TO_SERVER_KEY: &[u8] = b"pgha raft v1 client-to-server frame key";
const SERVER_TO_CLIENT_KEY: &[u8] = b"pgha raft v1 server-to-client frame key";

/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// The secret every member (and every DCS client such as poolers and ctl) shares. Cheap to clone;
/// its `Debug` output is redacted.
#[derive(Clone)]
pub struct SharedSecret(Arc<[u8]>);

/// A secret that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SharedSecretError {
    #[error(
        "the cluster secret is {len} bytes long; use at least {MIN_SECRET_LEN} (for example 32 random \
         bytes, base64-encoded), the same on every node"
    )]
    TooShort { len: usize },
}

impl SharedSecret {
    /// Wraps the secret bytes; at least [`MIN_SECRET_LEN`] of them.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, SharedSecretError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(SharedSecretError::TooShort { len: secret.len() });
        }
        Ok(Self(Arc::from(secret)))
    }
}

impl SharedSecret {
    /// The secret as a config file gives it: written out (`secret`), or in a file (`file`, its
    /// trailing newline dropped; the file wins). `keys` name the two settings in errors, e.g.
    /// (`dcs.raft.secret`, `dcs.raft.secret_file`).
    pub fn from_config(
        secret: Option<&str>,
        file: Option<&std::path::Path>,
        keys: (&str, &str),
    ) -> Result<Self, String> {
        let (secret_key, file_key) = keys;
        let text = match (secret, file) {
            (_, Some(f)) => std::fs::read_to_string(f)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("{file_key}: cannot read {}: {e}", f.display()))?,
            (Some(s), None) => s.to_string(),
            (None, None) => return Err(format!("set {secret_key} or {file_key}")),
        };
        SharedSecret::new(text).map_err(|e| format!("{secret_key}: {e}"))
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

/// Why a handshake failed. None of the messages contain secret material.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connection failed during the handshake: {0}")]
    Io(#[from] io::Error),
    #[error("the other side does not speak the pgha raft protocol (unexpected greeting)")]
    NotAPeer,
    #[error("the other side could not prove it knows the cluster secret")]
    PeerUnauthenticated,
    #[error("the other side rejected our proof of the cluster secret: is the secret the same on every node?")]
    Rejected,
    #[error("cannot draw a random nonce: {0}")]
    Random(String),
    #[error("cannot key HMAC-SHA256: {0}")]
    Key(String),
}

/// Per-direction keys for frame authentication, derived from the secret and both nonces.
pub(crate) struct SessionKeys {
    pub send: [u8; TAG_LEN],
    pub recv: [u8; TAG_LEN],
}

/// HMAC-SHA256 keyed with `key`.
pub(crate) fn keyed_mac(key: &[u8]) -> Result<HmacSha256, HandshakeError> {
    <HmacSha256 as KeyInit>::new_from_slice(key).map_err(|e| HandshakeError::Key(e.to_string()))
}

fn proof(secret: &SharedSecret, label: &[u8], client: &[u8], server: &[u8]) -> Result<HmacSha256, HandshakeError> {
    let mut mac = keyed_mac(&secret.0)?;
    mac.update(label);
    mac.update(&[0]);
    mac.update(client);
    mac.update(server);
    Ok(mac)
}

fn tag(mac: HmacSha256) -> [u8; TAG_LEN] {
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

fn nonce() -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| HandshakeError::Random(e.to_string()))?;
    Ok(nonce)
}

fn session_keys(
    secret: &SharedSecret,
    client: &[u8],
    server: &[u8],
) -> Result<([u8; TAG_LEN], [u8; TAG_LEN]), HandshakeError> {
    Ok((
        tag(proof(secret, CLIENT_TO_SERVER_KEY, client, server)?),
        tag(proof(secret, SERVER_TO_CLIENT_KEY, client, server)?),
    ))
}

/// Runs the connecting side of the handshake. The caller bounds it with a timeout.
pub(crate) async fn client_handshake<S>(stream: &mut S, secret: &SharedSecret) -> Result<SessionKeys, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let client_nonce = nonce()?;
    let mut hello = Vec::with_capacity(MAGIC.len() + NONCE_LEN);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&client_nonce);
    stream.write_all(&hello).await?;
    stream.flush().await?;

    let mut reply = [0u8; 8 + NONCE_LEN + TAG_LEN];
    stream.read_exact(&mut reply).await?;
    if &reply[..8] != MAGIC {
        return Err(HandshakeError::NotAPeer);
    }
    let server_nonce = &reply[8..8 + NONCE_LEN];
    let server_proof = &reply[8 + NONCE_LEN..];
    if proof(secret, SERVER_PROOF, &client_nonce, server_nonce)?.verify_slice(server_proof).is_err() {
        return Err(HandshakeError::PeerUnauthenticated);
    }

    stream.write_all(&tag(proof(secret, CLIENT_PROOF, &client_nonce, server_nonce)?)).await?;
    stream.flush().await?;
    let mut verdict = [0u8; 1];
    match stream.read_exact(&mut verdict).await {
        Ok(_) if verdict[0] == 1 => {}
        Ok(_) => return Err(HandshakeError::Rejected),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(HandshakeError::Rejected),
        Err(e) => return Err(e.into()),
    }
    let (to_server, to_client) = session_keys(secret, &client_nonce, server_nonce)?;
    Ok(SessionKeys { send: to_server, recv: to_client })
}

/// Runs the accepting side of the handshake. The caller bounds it with a timeout.
pub(crate) async fn server_handshake<S>(stream: &mut S, secret: &SharedSecret) -> Result<SessionKeys, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = [0u8; 8 + NONCE_LEN];
    stream.read_exact(&mut hello).await?;
    if &hello[..8] != MAGIC {
        return Err(HandshakeError::NotAPeer);
    }
    let client_nonce = &hello[8..];
    let server_nonce = nonce()?;
    let mut reply = Vec::with_capacity(8 + NONCE_LEN + TAG_LEN);
    reply.extend_from_slice(MAGIC);
    reply.extend_from_slice(&server_nonce);
    reply.extend_from_slice(&tag(proof(secret, SERVER_PROOF, client_nonce, &server_nonce)?));
    stream.write_all(&reply).await?;
    stream.flush().await?;

    let mut client_proof = [0u8; TAG_LEN];
    stream.read_exact(&mut client_proof).await?;
    if proof(secret, CLIENT_PROOF, client_nonce, &server_nonce)?.verify_slice(&client_proof).is_err() {
        // Best effort: tell an honest but misconfigured node why; the caller closes anyway.
        let _ = stream.write_all(&[0]).await;
        let _ = stream.flush().await;
        return Err(HandshakeError::PeerUnauthenticated);
    }
    stream.write_all(&[1]).await?;
    stream.flush().await?;
    let (to_server, to_client) = session_keys(secret, client_nonce, &server_nonce)?;
    Ok(SessionKeys { send: to_client, recv: to_server })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SharedSecret {
        SharedSecret::new(s).unwrap()
    }

    async fn run(
        client: &SharedSecret,
        server: &SharedSecret,
    ) -> (Result<SessionKeys, HandshakeError>, Result<SessionKeys, HandshakeError>) {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (c, s) = tokio::join!(
            async {
                let r = client_handshake(&mut a, client).await;
                drop(a);
                r
            },
            async {
                let r = server_handshake(&mut b, server).await;
                drop(b);
                r
            }
        );
        (c, s)
    }

    #[tokio::test]
    async fn same_secret_agrees_on_crossed_keys() {
        let s = secret("correct horse battery staple");
        let (c, srv) = run(&s, &s).await;
        let (c, srv) = (c.unwrap(), srv.unwrap());
        assert_eq!(c.send, srv.recv);
        assert_eq!(c.recv, srv.send);
        assert_ne!(c.send, c.recv);
    }

    #[tokio::test]
    async fn a_stranger_is_rejected_in_both_directions() {
        let good = secret("correct horse battery staple");
        let bad = secret("incorrect horse battery staple");
        // A stranger connecting to a member: the stranger cannot verify the member, and even a
        // stranger that skipped that check would be refused by the member.
        let (c, s) = run(&bad, &good).await;
        assert!(matches!(c, Err(HandshakeError::PeerUnauthenticated)), "{:?}", c.err());
        assert!(s.is_err());
        // A member connecting to a stranger's listener.
        let (c, _) = run(&good, &bad).await;
        assert!(matches!(c, Err(HandshakeError::PeerUnauthenticated)));
    }

    #[tokio::test]
    async fn a_stranger_that_ignores_the_servers_proof_is_still_refused() {
        let good = secret("correct horse battery staple");
        let (mut stranger, mut member) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { server_handshake(&mut member, &good).await });
        stranger.write_all(MAGIC).await.unwrap();
        stranger.write_all(&[7u8; NONCE_LEN]).await.unwrap();
        let mut reply = [0u8; 8 + NONCE_LEN + TAG_LEN];
        stranger.read_exact(&mut reply).await.unwrap();
        stranger.write_all(&[9u8; TAG_LEN]).await.unwrap();
        let mut verdict = [1u8; 1];
        stranger.read_exact(&mut verdict).await.unwrap();
        assert_eq!(verdict, [0]);
        assert!(matches!(server.await.unwrap(), Err(HandshakeError::PeerUnauthenticated)));
    }

    #[test]
    fn short_secrets_are_refused_and_debug_is_redacted() {
        assert!(SharedSecret::new("short").is_err());
        let s = secret("correct horse battery staple");
        assert_eq!(format!("{s:?}"), "SharedSecret(<redacted>)");
    }
}
