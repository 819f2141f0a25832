//! Authentication, generic over any `AsyncRead + AsyncWrite + Unpin` stream: stored secrets
//! and the auth file, the credential lookup (auth file, auth_query), the exchange toward
//! clients (SCRAM-SHA-256, md5, plain, trust, a client certificate's name) and the login toward
//! PostgreSQL servers.
//! Sockets, TLS and timeouts' configuration belong to the caller.

pub mod cert;
pub mod client;
pub mod credentials;
pub mod hba;
pub mod scram;
pub mod secret;
pub mod server;
pub mod userlist;
pub mod wire;

pub use client::{authenticate, ClientAuthError, ServerCredential};
pub use credentials::{AuthQuery, AuthQueryRunner, CredentialSource, Credentials, LookupError};
pub use scram::{ScramKeys, ScramServer};
pub use secret::{ScramVerifier, SecretError, StoredSecret};
pub use server::{login_to_server, ServerError, ServerLoginError};
pub use userlist::{AuthFile, Userlist, UserlistError};
