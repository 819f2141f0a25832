//! The backup config file (TOML, unknown keys rejected): where the repository is (a local
//! directory or an S3-compatible bucket), the cluster scope, compression, parallelism, and how
//! to reach PostgreSQL for base backups. Secrets are read from files or the environment.

use consensus::config_file::{Invalid, Validate};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Name of the cluster: its backups and WAL live under `<repository>/<scope>/`.
    pub scope: String,
    pub repository: RepositoryConfig,
    /// zstd level for stored files and WAL (1 is fast and already ~3× smaller on pgbench data).
    #[serde(default = "default_level")]
    pub compression_level: i32,
    /// Files read, compressed and stored in parallel by backup and restore.
    #[serde(default = "default_jobs")]
    pub jobs: usize,
    /// How long `backup create` waits for the WAL its backup needs to be archived.
    #[serde(default = "default_archive_timeout")]
    pub archive_timeout_secs: u64,
    /// Segments `archive-get` fetches ahead into `pg_wal/pgha-prefetch` (0, the default: off).
    #[serde(default = "default_prefetch")]
    pub archive_get_prefetch: usize,
    #[serde(default)]
    pub postgresql: Option<PostgresConfig>,
    /// A standby to read files from with `backup create --from-standby`.
    #[serde(default)]
    pub standby: Option<PostgresConfig>,
}

fn default_level() -> i32 {
    1
}
fn default_jobs() -> usize {
    2
}
fn default_archive_timeout() -> u64 {
    120
}
fn default_prefetch() -> usize {
    0
}

/// Where the repository is: exactly one of `path` or `[repository.s3]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub s3: Option<S3Config>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:9000` for MinIO/moto.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Access key id; else AWS_ACCESS_KEY_ID.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// File holding the secret access key; else AWS_SECRET_ACCESS_KEY.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// Allow a plain-http endpoint (test servers only).
    #[serde(default)]
    pub allow_http: bool,
    /// Prefix inside the bucket.
    #[serde(default)]
    pub prefix: Option<String>,
}

fn default_region() -> String {
    "us-east-1".to_string()
}

/// How to reach one PostgreSQL server and where its data directory is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub data_dir: PathBuf,
    /// libpq-style key=value connection string without the password, e.g.
    /// `host=/var/run/postgresql port=5432 user=postgres dbname=postgres`.
    pub conninfo: String,
    /// File holding the password (else PGPASSWORD, else none).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl Validate for BackupConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.scope.is_empty() || self.scope.contains('/') || self.scope.starts_with('.') {
            return Err(Invalid::new("scope", &self.scope, "expected a non-empty name without `/`"));
        }
        match (&self.repository.path, &self.repository.s3) {
            (Some(_), Some(_)) => {
                return Err(Invalid::missing("repository", "set either path or [repository.s3], not both"))
            }
            (None, None) => return Err(Invalid::missing("repository", "set path or [repository.s3]")),
            (Some(p), None) if !p.is_absolute() => {
                return Err(Invalid::new("repository.path", p.display(), "expected an absolute path"))
            }
            _ => {}
        }
        if !(-7..=22).contains(&self.compression_level) {
            return Err(Invalid::new(
                "compression_level",
                self.compression_level,
                "expected a zstd level from -7 to 22",
            ));
        }
        if !(1..=64).contains(&self.jobs) {
            return Err(Invalid::new("jobs", self.jobs, "expected 1 to 64"));
        }
        if self.archive_get_prefetch > 64 {
            return Err(Invalid::new("archive_get_prefetch", self.archive_get_prefetch, "expected 0 (off) to 64"));
        }
        for (key, pg) in [("postgresql", &self.postgresql), ("standby", &self.standby)] {
            if let Some(pg) = pg {
                if pg.conninfo.contains("password") {
                    return Err(Invalid::new(
                        format!("{key}.conninfo"),
                        "(hidden)",
                        "keep the password out of conninfo: use password_file or PGPASSWORD",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl PostgresConfig {
    /// The connection string with the password from password_file or PGPASSWORD.
    pub fn connection_string(&self) -> Result<String, std::io::Error> {
        let password = match &self.password_file {
            Some(f) => Some(std::fs::read_to_string(f)?.trim_end_matches(['\n', '\r']).to_string()),
            None => std::env::var("PGPASSWORD").ok(),
        };
        Ok(match password {
            Some(p) => format!("{} password='{}'", self.conninfo, p.replace('\\', "\\\\").replace('\'', "\\'")),
            None => self.conninfo.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<BackupConfig, String> {
        consensus::config_file::parse(Path::new("backup.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_local_config_has_defaults() {
        let c = parse("scope = \"main\"\n[repository]\npath = \"/var/lib/pgha/repo\"\n");
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.compression_level, c.jobs), (1, 2));
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse("scope = \"main\"\n[repository]\npath = \"/r\"\nfoo = 1\n").err().unwrap_or_default();
        assert!(e.contains("repository.foo") && e.contains("allowed keys"), "{e}");
        let e = parse("scope = \"main\"\n[repository]\n").err().unwrap_or_default();
        assert!(e.contains("set path or [repository.s3]"), "{e}");
        let e = parse("scope = \"main\"\n[repository]\npath = \"r\"\n").err().unwrap_or_default();
        assert!(e.contains("absolute"), "{e}");
        let e = parse("scope = \"a/b\"\n[repository]\npath = \"/r\"\n").err().unwrap_or_default();
        assert!(e.contains("scope"), "{e}");
        let e = parse(
            "scope = \"m\"\n[repository]\npath = \"/r\"\n[postgresql]\ndata_dir = \"/d\"\nconninfo = \"password=x\"\n",
        )
        .err()
        .unwrap_or_default();
        assert!(e.contains("password_file") && !e.contains("password=x"), "{e}");
    }
}
