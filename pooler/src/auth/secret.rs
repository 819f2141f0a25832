//! Stored passwords as PostgreSQL and PgBouncer keep them: plain text, `md5<32 hex>` or a
//! SCRAM-SHA-256 verifier `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`. Owns
//! parsing and the SCRAM/md5 primitives built on hmac, sha2 and md-5; it never does I/O.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use thiserror::Error;

/// Length of a SHA-256 digest: every SCRAM key.
pub const KEY_LEN: usize = 32;
/// Iterations PostgreSQL uses by default (`scram_iterations`); also used for verifiers the
/// pooler derives from plain-text passwords.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Upper bound accepted from an auth file, auth_query or a server: PBKDF2 cost is linear in it.
pub const MAX_ITERATIONS: u32 = 1_000_000;

pub type Key = [u8; KEY_LEN];

/// A SCRAM-SHA-256 verifier (RFC 5803 layout as PostgreSQL stores it in `pg_authid`).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Key,
    pub server_key: Key,
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// The verifier for `password` with `salt` and `iterations` (SASLprep applied as
    /// PostgreSQL and libpq do).
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let salted = salted_password(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Parses `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(text: &str) -> Result<ScramVerifier, SecretError> {
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or(SecretError::ScramLayout)?;
        let (params, keys) = rest.split_once('$').ok_or(SecretError::ScramLayout)?;
        let (iterations, salt) = params.split_once(':').ok_or(SecretError::ScramLayout)?;
        let (stored, server) = keys.split_once(':').ok_or(SecretError::ScramLayout)?;
        let iterations: u32 = iterations.parse().map_err(|_| SecretError::ScramIterations)?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(SecretError::ScramIterations);
        }
        let salt = B64.decode(salt).map_err(|_| SecretError::ScramBase64("salt"))?;
        if salt.is_empty() {
            return Err(SecretError::ScramBase64("salt"));
        }
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: decode_key(stored, "StoredKey")?,
            server_key: decode_key(server, "ServerKey")?,
        })
    }

    /// The textual form PostgreSQL stores.
    pub fn to_text(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

fn decode_key(text: &str, what: &'static str) -> Result<Key, SecretError> {
    let bytes = B64.decode(text).map_err(|_| SecretError::ScramBase64(what))?;
    bytes.try_into().map_err(|_| SecretError::ScramBase64(what))
}

/// A password as stored for one user.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredSecret {
    /// Plain text: any method works, and the pooler can log in to servers with it.
    Plain(String),
    /// `md5` + hex(md5(password || user)): md5 authentication only.
    Md5(String),
    /// A SCRAM verifier: SCRAM authentication only.
    Scram(ScramVerifier),
}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret.
        match self {
            StoredSecret::Plain(_) => f.write_str("Plain(..)"),
            StoredSecret::Md5(_) => f.write_str("Md5(..)"),
            StoredSecret::Scram(v) => v.fmt(f),
        }
    }
}

/// A stored password that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecretError {
    #[error("SCRAM secret is not of the form SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")]
    ScramLayout,
    #[error("SCRAM secret has an iteration count that is not a number from 1 to {MAX_ITERATIONS}")]
    ScramIterations,
    #[error("SCRAM secret has a {0} that is not valid base64 of the right length")]
    ScramBase64(&'static str),
}

impl StoredSecret {
    /// Classifies a password as PostgreSQL does: `md5` + 32 hex digits is an md5 hash, a
    /// `SCRAM-SHA-256$` prefix a verifier (which must then be well formed), anything else plain.
    pub fn parse(text: &str) -> Result<StoredSecret, SecretError> {
        if text.starts_with("SCRAM-SHA-256$") {
            return ScramVerifier::parse(text).map(StoredSecret::Scram);
        }
        if is_md5_hash(text) {
            return Ok(StoredSecret::Md5(text.to_ascii_lowercase()));
        }
        Ok(StoredSecret::Plain(text.to_string()))
    }
}

pub fn is_md5_hash(text: &str) -> bool {
    text.len() == 35 && text.starts_with("md5") && text[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// `md5` + hex(md5(password || user)), as stored in pg_authid (postgres-protocol's function).
pub fn md5_stored(password: &str, user: &str) -> String {
    postgres_protocol::password::md5(password.as_bytes(), user)
}

/// What a client sends for md5 authentication given the stored `md5...` hash and the salt:
/// `md5` + hex(md5(hex-part-of-stored || salt)).
pub fn md5_response_from_stored(stored: &str, salt: [u8; 4]) -> String {
    let mut md5 = md5::Md5::new();
    md5.update(stored.get(3..).unwrap_or_default().as_bytes());
    md5.update(salt);
    format!("md5{}", hex(&md5.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

pub fn hmac(key: &[u8], data: &[u8]) -> Key {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

/// RFC 5802 Hi(): PBKDF2-HMAC-SHA-256 with one output block, after SASLprep of the password.
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Key {
    let password = saslprep(password);
    let mut block = salt.to_vec();
    block.extend_from_slice(&[0, 0, 0, 1]);
    let mut prev = hmac(&password, &block);
    let mut out = prev;
    for _ in 1..iterations {
        prev = hmac(&password, &prev);
        for (o, p) in out.iter_mut().zip(prev) {
            *o ^= p;
        }
    }
    out
}

/// SASLprep as PostgreSQL applies it: a password that SASLprep rejects (or that is not UTF-8)
/// is used as raw bytes.
fn saslprep(password: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(password) {
        Ok(text) => match stringprep::saslprep(text) {
            Ok(prepped) => prepped.into_owned().into_bytes(),
            Err(_) => password.to_vec(),
        },
        Err(_) => password.to_vec(),
    }
}

/// XOR of two keys.
pub fn xor(a: &Key, b: &Key) -> Key {
    let mut out = *a;
    for (o, b) in out.iter_mut().zip(b) {
        *o ^= b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_matches_postgres_protocol_derivation() {
        // postgres-protocol picks its own salt; parse its output and re-derive with that salt.
        let text = postgres_protocol::password::scram_sha_256(b"s3cret pass");
        let parsed = ScramVerifier::parse(&text).unwrap();
        let ours = ScramVerifier::derive("s3cret pass", &parsed.salt, parsed.iterations);
        assert_eq!(ours, parsed);
        assert_eq!(ours.to_text(), text);
    }

    #[test]
    fn classifies_secrets_like_postgres() {
        assert!(matches!(StoredSecret::parse("hunter2").unwrap(), StoredSecret::Plain(_)));
        let md5 = md5_stored("pw", "alice");
        assert!(matches!(StoredSecret::parse(&md5).unwrap(), StoredSecret::Md5(_)));
        // 'md5' followed by something else is a plain password.
        assert!(matches!(StoredSecret::parse("md5notahash").unwrap(), StoredSecret::Plain(_)));
        assert_eq!(StoredSecret::parse("SCRAM-SHA-256$x"), Err(SecretError::ScramLayout));
        assert_eq!(StoredSecret::parse("SCRAM-SHA-256$0:AAAA$AA==:AA=="), Err(SecretError::ScramIterations));
        assert_eq!(StoredSecret::parse("SCRAM-SHA-256$10:AAAA$AA==:AA=="), Err(SecretError::ScramBase64("StoredKey")));
    }

    #[test]
    fn md5_response_matches_postgres_protocol() {
        let salt = [1, 2, 3, 4];
        let stored = md5_stored("pw", "alice");
        let expected = postgres_protocol::authentication::md5_hash(b"alice", b"pw", salt);
        assert_eq!(md5_response_from_stored(&stored, salt), expected);
    }

    #[test]
    fn debug_never_shows_a_password() {
        let s = format!("{:?}", StoredSecret::Plain("hunter2".into()));
        assert!(!s.contains("hunter2"));
    }
}
