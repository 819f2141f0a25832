//! Where a user's stored password comes from: the auth file, then auth_query run through
//! auth_user's server connection (PgBouncer's order). The pool side provides the query runner;
//! this module only defines the lookup and interprets the query's row.

use super::secret::{SecretError, StoredSecret};
use super::userlist::AuthFile;
use async_trait::async_trait;
use std::sync::Arc;
use thiserror::Error;

/// A lookup that could not be answered (as opposed to "no such user", which is `Ok(None)`).
#[derive(Debug, Error)]
pub enum LookupError {
    #[error("auth_query failed: {0}")]
    Query(String),
    #[error("auth_query returned an unusable password for user {user:?}: {error}")]
    BadSecret { user: String, error: SecretError },
}

/// A source of stored passwords.
#[async_trait]
pub trait CredentialSource: Send + Sync {
    /// The stored password of `user`, `None` if the user is unknown or may not log in.
    async fn lookup(&self, user: &str) -> Result<Option<StoredSecret>, LookupError>;
}

#[async_trait]
impl CredentialSource for AuthFile {
    async fn lookup(&self, user: &str) -> Result<Option<StoredSecret>, LookupError> {
        Ok(self.snapshot().get(user).cloned())
    }
}

/// Runs auth_query for one user through auth_user's connection to the server. The pool side
/// implements it (with a pooled connection, or tokio-postgres, see the impl below).
#[async_trait]
pub trait AuthQueryRunner: Send + Sync {
    /// Runs `query` with `$1` bound to `user`; returns the second column of the first row
    /// (`Some(None)` for NULL), or `None` when there is no row.
    async fn password_of(&self, query: &str, user: &str) -> Result<Option<Option<String>>, LookupError>;
}

#[async_trait]
impl AuthQueryRunner for tokio_postgres::Client {
    async fn password_of(&self, query: &str, user: &str) -> Result<Option<Option<String>>, LookupError> {
        let rows = self.query(query, &[&user]).await.map_err(|e| LookupError::Query(e.to_string()))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        row.try_get::<_, Option<String>>(1).map(Some).map_err(|e| LookupError::Query(e.to_string()))
    }
}

/// PgBouncer's auth_query: `SELECT usename, passwd FROM pg_shadow WHERE usename=$1` by default.
pub struct AuthQuery {
    query: String,
    runner: Arc<dyn AuthQueryRunner>,
}

impl AuthQuery {
    pub fn new(query: impl Into<String>, runner: Arc<dyn AuthQueryRunner>) -> AuthQuery {
        AuthQuery { query: query.into(), runner }
    }
}

#[async_trait]
impl CredentialSource for AuthQuery {
    async fn lookup(&self, user: &str) -> Result<Option<StoredSecret>, LookupError> {
        match self.runner.password_of(&self.query, user).await? {
            // No row, a NULL password (no password set, or expired in PgBouncer's newer query)
            // or an empty one: the user cannot log in with a password.
            None | Some(None) => Ok(None),
            Some(Some(p)) if p.is_empty() => Ok(None),
            Some(Some(p)) => StoredSecret::parse(&p)
                .map(Some)
                .map_err(|error| LookupError::BadSecret { user: user.to_string(), error }),
        }
    }
}

/// The auth file first, then auth_query for users the file does not list.
#[derive(Clone, Default)]
pub struct Credentials {
    pub file: Option<Arc<AuthFile>>,
    pub query: Option<Arc<AuthQuery>>,
}

impl Credentials {
    /// The sources pooler.toml names: auth_file if set (loaded now: a broken file is an error
    /// at start), auth_query through `runner` if auth_user is set and a runner is given.
    pub fn from_config(
        config: &crate::config::PoolerConfig,
        runner: Option<Arc<dyn AuthQueryRunner>>,
    ) -> Result<Credentials, super::userlist::UserlistError> {
        let file = match &config.auth_file {
            Some(path) => Some(Arc::new(AuthFile::open(path)?)),
            None => None,
        };
        let query = match (&config.auth_user, runner) {
            (Some(_), Some(runner)) => Some(Arc::new(AuthQuery::new(config.auth_query.clone(), runner))),
            _ => None,
        };
        Ok(Credentials { file, query })
    }
}

impl Credentials {
    /// The user's password from the auth file, without waiting: what a `trust` login passes
    /// on to the server when the file lists the user.
    pub fn in_file(&self, user: &str) -> Option<StoredSecret> {
        self.file.as_ref().and_then(|file| file.snapshot().get(user).cloned())
    }
}

#[async_trait]
impl CredentialSource for Credentials {
    async fn lookup(&self, user: &str) -> Result<Option<StoredSecret>, LookupError> {
        if let Some(file) = &self.file {
            if let Some(secret) = file.lookup(user).await? {
                return Ok(Some(secret));
            }
        }
        match &self.query {
            Some(query) => query.lookup(user).await,
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Table(HashMap<&'static str, Option<&'static str>>);

    #[async_trait]
    impl AuthQueryRunner for Table {
        async fn password_of(&self, _query: &str, user: &str) -> Result<Option<Option<String>>, LookupError> {
            if user == "boom" {
                return Err(LookupError::Query("connection refused".into()));
            }
            Ok(self.0.get(user).map(|p| p.map(str::to_string)))
        }
    }

    #[tokio::test]
    async fn from_config_loads_the_file_and_wires_auth_query_only_with_auth_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("userlist.txt");
        std::fs::write(&path, "\"alice\" \"pw\"\n").unwrap();
        let runner: Arc<dyn AuthQueryRunner> = Arc::new(Table(HashMap::from([("bob", Some("bob-pw"))])));
        let mut config = crate::config::PoolerConfig { auth_file: Some(path.clone()), ..Default::default() };
        let creds = Credentials::from_config(&config, Some(Arc::clone(&runner))).unwrap();
        assert!(creds.lookup("alice").await.unwrap().is_some());
        assert_eq!(creds.lookup("bob").await.unwrap(), None, "no auth_user: no auth_query");
        config.auth_user = Some("pgbouncer".into());
        let creds = Credentials::from_config(&config, Some(runner)).unwrap();
        assert_eq!(creds.lookup("bob").await.unwrap(), Some(StoredSecret::Plain("bob-pw".into())));
        config.auth_file = Some(dir.path().join("missing.txt"));
        let err = Credentials::from_config(&config, None).err().unwrap().to_string();
        assert!(err.contains("missing.txt: cannot read it"), "{err}");
    }

    #[tokio::test]
    async fn file_first_then_query_and_nulls_mean_no_login() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("userlist.txt");
        std::fs::write(&path, "\"alice\" \"from-file\"\n").unwrap();
        let table = Table(HashMap::from([
            ("alice", Some("from-query")),
            ("bob", Some("md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")),
            ("nopw", None),
            ("empty", Some("")),
            ("bad", Some("SCRAM-SHA-256$nope")),
        ]));
        let creds = Credentials {
            file: Some(Arc::new(AuthFile::open(&path).unwrap())),
            query: Some(Arc::new(AuthQuery::new("q", Arc::new(table)))),
        };
        assert_eq!(creds.lookup("alice").await.unwrap(), Some(StoredSecret::Plain("from-file".into())));
        assert!(matches!(creds.lookup("bob").await.unwrap(), Some(StoredSecret::Md5(_))));
        assert_eq!(creds.lookup("nopw").await.unwrap(), None);
        assert_eq!(creds.lookup("empty").await.unwrap(), None);
        assert_eq!(creds.lookup("ghost").await.unwrap(), None);
        assert!(matches!(creds.lookup("bad").await, Err(LookupError::BadSecret { .. })));
        assert!(matches!(creds.lookup("boom").await, Err(LookupError::Query(_))));
    }
}
