//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) without I/O: the server side that checks clients, and
//! the client side that logs in to PostgreSQL with the ClientKey/ServerKey pair recovered from
//! a client's proof (for a password, postgres-protocol's `ScramSha256` is used instead).
//! Channel binding is not offered: a client that insists on it (`p=`) is refused.

use super::secret::{hmac, sha256, xor, Key, ScramVerifier, KEY_LEN, MAX_ITERATIONS};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use subtle::ConstantTimeEq;
use thiserror::Error;

const NONCE_BYTES: usize = 18;

/// The keys a successful SCRAM proof reveals, enough to log in to a server that stores the
/// same verifier (same salt and iteration count) without knowing the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: Key,
    pub server_key: Key,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramKeys").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

impl ScramKeys {
    /// The keys for a password, salt and iteration count (what a client would derive).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = super::secret::salted_password(password.as_bytes(), salt, iterations);
        ScramKeys {
            client_key: hmac(&salted, b"Client Key"),
            server_key: hmac(&salted, b"Server Key"),
            salt: salt.to_vec(),
            iterations,
        }
    }
}

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported by the pooler: connect with channel_binding=prefer or disable")]
    ChannelBindingRequired,
    #[error("SCRAM nonce does not match")]
    NonceMismatch,
    #[error("SCRAM channel binding data does not match the header")]
    BindingMismatch,
    #[error("SCRAM proof is wrong")]
    WrongProof,
    #[error("the server's SCRAM signature is wrong: it is not the server the keys came from")]
    WrongServerSignature,
    #[error("the server uses a different SCRAM salt or iteration count than the stored secret")]
    KeysDoNotMatchServer,
    #[error("the server sent a SCRAM error: {0}")]
    ServerError(String),
}

fn random_nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness is a broken host; a nonce from time and address is still unique.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed = sha256(format!("{:?}{:p}", t, &bytes).as_bytes());
        bytes.copy_from_slice(&seed[..NONCE_BYTES]);
    }
    B64.encode(bytes)
}

/// Splits `k=value` attributes; `value` may contain `=`.
fn attr<'a>(part: Option<&'a str>, key: char, what: &'static str) -> Result<&'a str, ScramError> {
    let part = part.ok_or(ScramError::Malformed(what))?;
    let mut chars = part.chars();
    if chars.next() != Some(key) || chars.next() != Some('=') {
        return Err(ScramError::Malformed(what));
    }
    Ok(&part[2..])
}

/// The server side of one exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    /// Whether the user exists; an unknown user runs the exchange against a made-up verifier
    /// and always fails at the proof, so user names cannot be probed.
    real: bool,
    state: ServerState,
}

enum ServerState {
    AwaitClientFirst,
    AwaitClientFinal { gs2_header: String, nonce: String, client_first_bare: String, server_first: String },
    Done,
}

impl ScramServer {
    pub fn new(verifier: ScramVerifier) -> ScramServer {
        ScramServer { verifier, real: true, state: ServerState::AwaitClientFirst }
    }

    /// An exchange for a user that does not exist or may not log in: indistinguishable on the
    /// wire (a salt stable per user name), failing at the proof.
    pub fn for_unknown_user(user: &str) -> ScramServer {
        let salt = sha256(&[mock_key().as_slice(), user.as_bytes()].concat())[..16].to_vec();
        let mut keys = [0u8; KEY_LEN];
        let _ = getrandom::fill(&mut keys);
        let verifier =
            ScramVerifier { iterations: super::secret::DEFAULT_ITERATIONS, salt, stored_key: keys, server_key: keys };
        ScramServer { verifier, real: false, state: ServerState::AwaitClientFirst }
    }

    /// Takes the client-first message and returns server-first.
    pub fn client_first(&mut self, message: &[u8]) -> Result<String, ScramError> {
        if !matches!(self.state, ServerState::AwaitClientFirst) {
            return Err(ScramError::Malformed("unexpected client-first message"));
        }
        self.state = ServerState::Done;
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = text.splitn(3, ',');
        let cbind = parts.next().ok_or(ScramError::Malformed("empty message"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBindingRequired),
            _ => return Err(ScramError::Malformed("unknown channel binding flag")),
        }
        let authzid = parts.next().ok_or(ScramError::Malformed("missing authzid"))?;
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return Err(ScramError::Malformed("bad authzid"));
        }
        let bare = parts.next().ok_or(ScramError::Malformed("missing client-first-message-bare"))?;
        let mut fields = bare.split(',');
        let first = fields.next();
        if first.is_some_and(|f| f.starts_with("m=")) {
            return Err(ScramError::Malformed("mandatory extensions are not supported"));
        }
        // The user name in SCRAM is ignored, as PostgreSQL does: the startup packet's counts.
        attr(first, 'n', "missing user name")?;
        let client_nonce = attr(fields.next(), 'r', "missing client nonce")?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
            return Err(ScramError::Malformed("invalid client nonce"));
        }
        let nonce = format!("{client_nonce}{}", random_nonce());
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&self.verifier.salt), self.verifier.iterations);
        self.state = ServerState::AwaitClientFinal {
            gs2_header: format!("{cbind},{authzid},"),
            nonce,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
        };
        Ok(server_first)
    }

    /// Takes client-final; on a right proof returns server-final and the client's keys.
    pub fn client_final(&mut self, message: &[u8]) -> Result<(String, ScramKeys), ScramError> {
        let ServerState::AwaitClientFinal { gs2_header, nonce, client_first_bare, server_first } =
            std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(ScramError::Malformed("unexpected client-final message"));
        };
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(ScramError::Malformed("missing proof"))?;
        let mut fields = without_proof.split(',');
        let binding = attr(fields.next(), 'c', "missing channel binding")?;
        if B64.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) {
            return Err(ScramError::BindingMismatch);
        }
        if attr(fields.next(), 'r', "missing nonce")? != nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof: Key = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("proof is not base64 of 32 bytes"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        let matches: bool = sha256(&client_key).ct_eq(&self.verifier.stored_key).into();
        if !matches || !self.real {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        let keys = ScramKeys {
            client_key,
            server_key: self.verifier.server_key,
            salt: self.verifier.salt.clone(),
            iterations: self.verifier.iterations,
        };
        Ok((format!("v={}", B64.encode(server_signature)), keys))
    }
}

/// A per-process random key that makes an unknown user's salt stable but unpredictable.
fn mock_key() -> &'static [u8; 32] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        let _ = getrandom::fill(&mut key);
        key
    })
}

/// The client side with known keys (no password), for logging in to PostgreSQL.
pub struct ScramKeysClient {
    keys: ScramKeys,
    client_first_bare: String,
    nonce: String,
    expected_server_signature: Option<Key>,
}

impl ScramKeysClient {
    pub fn new(keys: ScramKeys) -> ScramKeysClient {
        let nonce = random_nonce();
        ScramKeysClient { keys, client_first_bare: format!("n=,r={nonce}"), nonce, expected_server_signature: None }
    }

    /// The client-first message (gs2 header `n,,`: no channel binding).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Takes server-first and returns client-final.
    pub fn server_first(&mut self, message: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut fields = text.split(',');
        let nonce = attr(fields.next(), 'r', "missing nonce")?;
        let salt = attr(fields.next(), 's', "missing salt")?;
        let iterations = attr(fields.next(), 'i', "missing iteration count")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = B64.decode(salt).map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = iterations.parse().map_err(|_| ScramError::Malformed("bad iteration count"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(ScramError::Malformed("iteration count out of range"));
        }
        if salt != self.keys.salt || iterations != self.keys.iterations {
            return Err(ScramError::KeysDoNotMatchServer);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let stored_key = sha256(&self.keys.client_key);
        let proof = xor(&self.keys.client_key, &hmac(&stored_key, auth_message.as_bytes()));
        self.expected_server_signature = Some(hmac(&self.keys.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final.
    pub fn server_final(&self, message: &[u8]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(ScramError::ServerError(error.to_string()));
        }
        let signature = text.strip_prefix("v=").ok_or(ScramError::Malformed("missing verifier"))?;
        let signature = signature.split(',').next().unwrap_or_default();
        let expected =
            self.expected_server_signature.ok_or(ScramError::Malformed("server-final before server-first"))?;
        let got = B64.decode(signature).map_err(|_| ScramError::Malformed("verifier is not base64"))?;
        if got.ct_eq(&expected).into() {
            Ok(())
        } else {
            Err(ScramError::WrongServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn verifier(password: &str) -> ScramVerifier {
        ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(password.as_bytes())).unwrap()
    }

    /// Runs postgres-protocol's client against our server.
    fn exchange(stored: &ScramVerifier, password: &str, binding: ChannelBinding) -> Result<ScramKeys, ScramError> {
        let mut server = ScramServer::new(stored.clone());
        let mut client = ScramSha256::new(password.as_bytes(), binding);
        let server_first = server.client_first(client.message())?;
        client.update(server_first.as_bytes()).unwrap();
        let (server_final, keys) = server.client_final(client.message())?;
        client.finish(server_final.as_bytes()).expect("the client accepts our server signature");
        Ok(keys)
    }

    #[test]
    fn right_password_passes_and_reveals_the_clients_keys() {
        let stored = verifier("correct horse");
        let keys = exchange(&stored, "correct horse", ChannelBinding::unsupported()).unwrap();
        assert_eq!(keys, ScramKeys::from_password("correct horse", &stored.salt, stored.iterations));
        // 'y': the client could bind but we did not offer it: fine.
        exchange(&stored, "correct horse", ChannelBinding::unrequested()).unwrap();
    }

    #[test]
    fn wrong_password_fails() {
        let stored = verifier("correct horse");
        assert_eq!(exchange(&stored, "battery", ChannelBinding::unsupported()), Err(ScramError::WrongProof));
    }

    #[test]
    fn channel_binding_is_refused_politely() {
        let stored = verifier("pw");
        let got = exchange(&stored, "pw", ChannelBinding::tls_server_end_point(vec![1, 2, 3]));
        assert_eq!(got, Err(ScramError::ChannelBindingRequired));
    }

    #[test]
    fn unknown_user_fails_at_the_proof_with_a_stable_salt() {
        let mut a = ScramServer::for_unknown_user("ghost");
        let mut b = ScramServer::for_unknown_user("ghost");
        let fa = a.client_first(b"n,,n=,r=abc").unwrap();
        let fb = b.client_first(b"n,,n=,r=abc").unwrap();
        assert_eq!(fa.split(',').nth(1), fb.split(',').nth(1));
        let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
        let mut server = ScramServer::for_unknown_user("ghost");
        let first = server.client_first(client.message()).unwrap();
        client.update(first.as_bytes()).unwrap();
        assert_eq!(server.client_final(client.message()).map(|_| ()), Err(ScramError::WrongProof));
    }

    #[test]
    fn tampered_messages_are_refused() {
        let stored = verifier("pw");
        let mut server = ScramServer::new(stored.clone());
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let first = server.client_first(client.message()).unwrap();
        client.update(first.as_bytes()).unwrap();
        let final_msg = String::from_utf8(client.message().to_vec()).unwrap();
        let tampered = final_msg.replacen("r=", "r=x", 1);
        assert_eq!(server.client_final(tampered.as_bytes()).map(|_| ()), Err(ScramError::NonceMismatch));
        for bad in ["", "x", "n", "n,,", "n,,n=", "n,,n=,r=", "m=1,,n=,r=a", "n,,m=x,n=,r=a", "n,b,n=,r=a"] {
            let mut s = ScramServer::new(stored.clone());
            assert!(s.client_first(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_client_logs_in_to_our_server_and_checks_its_signature() {
        let stored = verifier("pw");
        let keys = ScramKeys::from_password("pw", &stored.salt, stored.iterations);
        let mut server = ScramServer::new(stored.clone());
        let mut client = ScramKeysClient::new(keys.clone());
        let first = server.client_first(client.client_first().as_bytes()).unwrap();
        let fin = client.server_first(first.as_bytes()).unwrap();
        let (server_final, got) = server.client_final(fin.as_bytes()).unwrap();
        assert_eq!(got, keys);
        client.server_final(server_final.as_bytes()).unwrap();
        assert_eq!(client.server_final(b"v=AAAA"), Err(ScramError::WrongServerSignature));
        assert_eq!(client.server_final(b"e=invalid-proof"), Err(ScramError::ServerError("invalid-proof".into())));
    }

    #[test]
    fn keys_client_refuses_a_server_with_another_salt() {
        let keys = ScramKeys::from_password("pw", b"salt-one", 4096);
        let mut client = ScramKeysClient::new(keys);
        let nonce = client.client_first()["n,,n=,r=".len()..].to_string();
        let first = format!("r={nonce}xyz,s={},i=4096", B64.encode(b"salt-two"));
        assert_eq!(client.server_first(first.as_bytes()), Err(ScramError::KeysDoNotMatchServer));
    }
}
