//! agent.toml: who this node is, where its PostgreSQL lives, where its REST API listens and
//! which DCS it uses. Parsed with unknown keys rejected and validated as a whole.

use consensus::config_file::{Invalid, Validate};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This member's name: unique in the cluster, used in DCS keys and replication slot names.
    pub name: String,
    /// The cluster's name (Patroni's `scope`).
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Prefix of every DCS key (Patroni's `namespace`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub postgresql: PostgresqlConfig,
    #[serde(default)]
    pub api: ApiConfig,
    pub dcs: DcsConfig,
    #[serde(default)]
    pub ha: HaTiming,
    #[serde(default)]
    pub tags: TagsConfig,
    /// WAL archiving into a `pgha backup` repository, when set.
    #[serde(default)]
    pub backup: Option<BackupSection>,
    /// How the first member makes a new cluster's data directory.
    #[serde(default)]
    pub bootstrap: BootstrapSection,
}

/// `[bootstrap]`: how the member that wins the `initialize` race of a new cluster makes its data
/// directory: `initdb`, or `restore` from a `pgha backup` repository to a point in time (Patroni's
/// custom bootstrap with a backup tool). The other members then clone it as usual.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapSection {
    #[serde(default)]
    pub method: BootstrapMethod,
    /// The backup config (TOML with `[repository]`) to restore from; `[backup] config` when
    /// absent. Readable by the PostgreSQL OS user.
    #[serde(default)]
    pub backup_config: Option<PathBuf>,
    /// Recovery target, at most one; none replays all archived WAL.
    #[serde(default)]
    pub target_time: Option<String>,
    #[serde(default)]
    pub target_lsn: Option<String>,
    #[serde(default)]
    pub target_xid: Option<u64>,
    #[serde(default)]
    pub target_name: Option<String>,
    /// Stop as soon as the backup is consistent.
    #[serde(default)]
    pub immediate: bool,
    /// The backup to restore (a label from `pgha backup list`); the newest that ended before the
    /// target when absent.
    #[serde(default)]
    pub set: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapMethod {
    #[default]
    Initdb,
    Restore,
}

impl AgentConfig {
    /// The backup config a `restore` bootstrap reads.
    pub fn bootstrap_backup_config(&self) -> Option<&std::path::Path> {
        self.bootstrap.backup_config.as_deref().or(self.backup.as_ref().map(|b| b.config.as_path()))
    }
}

impl BootstrapSection {
    /// `pgha backup restore`'s target arguments.
    pub fn target_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut add = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(flag.to_string());
                args.push(v);
            }
        };
        add("--target-time", self.target_time.clone());
        add("--target-lsn", self.target_lsn.clone());
        add("--target-xid", self.target_xid.map(|x| x.to_string()));
        add("--target-name", self.target_name.clone());
        add("--set", self.set.clone());
        if self.immediate {
            args.push("--immediate".into());
        }
        args
    }

    pub fn targets(&self) -> usize {
        [
            self.target_time.is_some(),
            self.target_lsn.is_some(),
            self.target_xid.is_some(),
            self.target_name.is_some(),
            self.immediate,
        ]
        .into_iter()
        .filter(|t| *t)
        .count()
    }
}

/// `[backup]`: the repository config file `pgha backup` and `pgha archive-push/get` read. With it
/// the agent sets archive_mode, archive_command and restore_command itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    /// The backup config (TOML with `[repository]`), readable by the PostgreSQL OS user.
    pub config: PathBuf,
}

/// Parameters the agent writes itself when `[backup]` is set.
pub const ARCHIVE_PARAMETERS: [&str; 3] = ["archive_mode", "archive_command", "restore_command"];

/// HA timing (Patroni's names). Must be the same on every member.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaTiming {
    /// Lease of the leader lock and member keys, seconds.
    pub ttl: f64,
    /// Seconds between HA ticks.
    pub loop_wait: f64,
    /// Upper bound for one DCS or PostgreSQL operation, seconds.
    pub retry_timeout: f64,
    /// A replica further behind the last leader position (bytes) does not race.
    pub maximum_lag_on_failover: u64,
    /// How long a crashed primary may take to restart in place before the lock is given up.
    pub primary_start_timeout: f64,
    /// Seconds the primary keeps the slot of a member that left the DCS (0: drop at once).
    pub member_slots_ttl: f64,
}

impl Default for HaTiming {
    fn default() -> Self {
        HaTiming {
            ttl: 6.0,
            loop_wait: 1.0,
            retry_timeout: 2.0,
            maximum_lag_on_failover: 1 << 20,
            primary_start_timeout: 20.0,
            member_slots_ttl: 1800.0,
        }
    }
}

impl HaTiming {
    pub fn to_ha_config(&self) -> crate::ha::HaConfig {
        let d = |s: f64| std::time::Duration::from_secs_f64(s.max(0.0));
        crate::ha::HaConfig {
            ttl: d(self.ttl),
            loop_wait: d(self.loop_wait),
            retry_timeout: d(self.retry_timeout),
            maximum_lag_on_failover: self.maximum_lag_on_failover,
            primary_start_timeout: d(self.primary_start_timeout),
            member_slots_ttl: d(self.member_slots_ttl),
            // Dynamic configuration only (`synchronous_mode`), as in Patroni.
            synchronous_mode: false,
            synchronous_node_count: 1,
            synchronous_mode_strict: false,
            maximum_lag_on_syncnode: None,
        }
    }
}

/// Patroni's tags for this member.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagsConfig {
    pub nofailover: bool,
    pub noloadbalance: bool,
    pub nosync: bool,
    pub clonefrom: bool,
    pub failover_priority: Option<i32>,
}

/// A database user and its password (inline, or read from a file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl UserConfig {
    /// The password, from the file when one is named (trailing newline removed).
    pub fn resolve_password(&self) -> Result<String, String> {
        match (&self.password, &self.password_file) {
            (_, Some(f)) => std::fs::read_to_string(f)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("cannot read password_file {}: {e}", f.display())),
            (Some(p), None) => Ok(p.clone()),
            (None, None) => Err(format!("user {} needs password or password_file", self.username)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresqlConfig {
    pub data_dir: PathBuf,
    /// Directory with initdb/pg_ctl/postgres; found automatically when absent.
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// Address PostgreSQL listens on.
    #[serde(default = "default_pg_listen")]
    pub listen: SocketAddr,
    /// OS user that runs PostgreSQL when the agent runs as root.
    #[serde(default = "default_os_user")]
    pub os_user: String,
    /// Local parameter overrides (on top of the cluster-wide dynamic configuration).
    #[serde(default)]
    pub parameters: BTreeMap<String, toml::Value>,
    /// The superuser the agent connects as (and that initdb creates).
    pub superuser: UserConfig,
    /// The user standbys stream with.
    pub replication: UserConfig,
    /// Address other members and clients use to reach this PostgreSQL; `listen` when absent.
    #[serde(default)]
    pub connect_address: Option<SocketAddr>,
    /// pg_basebackup's `--max-rate` when this node clones the leader (e.g. "50M"), to spare the
    /// leader's disk and network (Patroni's `basebackup: max-rate`); unlimited when absent.
    #[serde(default)]
    pub basebackup_max_rate: Option<String>,
    /// Scripts run on PostgreSQL's events (Patroni's `postgresql.callbacks`).
    #[serde(default)]
    pub callbacks: CallbacksConfig,
}

/// `[postgresql.callbacks]`: a program (absolute path, no arguments) for each event, run as
/// `<program> <event> <role> <scope>`, e.g. `on_role_change primary main`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksConfig {
    #[serde(default)]
    pub on_start: Option<PathBuf>,
    #[serde(default)]
    pub on_stop: Option<PathBuf>,
    #[serde(default)]
    pub on_restart: Option<PathBuf>,
    #[serde(default)]
    pub on_reload: Option<PathBuf>,
    #[serde(default)]
    pub on_role_change: Option<PathBuf>,
}

impl CallbacksConfig {
    fn all(&self) -> [(&'static str, &Option<PathBuf>); 5] {
        [
            ("on_start", &self.on_start),
            ("on_stop", &self.on_stop),
            ("on_restart", &self.on_restart),
            ("on_reload", &self.on_reload),
            ("on_role_change", &self.on_role_change),
        ]
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// HTTP Basic credentials required by the endpoints that change things.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// HTTPS: the certificate chain (PEM) the API presents (Patroni's `restapi.certfile`). With
    /// `keyfile`, the API speaks HTTPS only.
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to (Patroni's `restapi.cafile`).
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// Client certificates: `none`, `optional` (asked for; the endpoints that change things
    /// need one), `required` (no connection without one). Patroni's `restapi.verify_client`.
    #[serde(default)]
    pub verify_client: VerifyClient,
}

/// Which API clients must show a certificate signed by `api.cafile`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyClient {
    #[default]
    None,
    /// Asked for at every connection; POST, PUT, PATCH and DELETE are refused without one.
    Optional,
    /// The TLS handshake fails without one.
    Required,
}

impl ApiConfig {
    /// True when the API serves HTTPS.
    pub fn tls(&self) -> bool {
        self.certfile.is_some()
    }

    /// `http://` or `https://` and the listen address: the base of the member's `api_url`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.listen)
    }

    fn validate(&self) -> Result<(), Invalid> {
        match (&self.certfile, &self.keyfile) {
            (Some(_), None) => return Err(Invalid::missing("api.keyfile", "api.certfile is set: set the key too")),
            (None, Some(_)) => {
                return Err(Invalid::missing("api.certfile", "api.keyfile is set: set the certificate too"))
            }
            _ => {}
        }
        if self.verify_client != VerifyClient::None {
            if !self.tls() {
                return Err(Invalid::missing(
                    "api.certfile",
                    "api.verify_client needs HTTPS: set api.certfile and api.keyfile",
                ));
            }
            if self.cafile.is_none() {
                return Err(Invalid::missing(
                    "api.cafile",
                    "api.verify_client needs the CA that client certificates chain to",
                ));
            }
        }
        if self.cafile.is_some() && self.verify_client == VerifyClient::None {
            return Err(Invalid::new(
                "api.verify_client",
                "none",
                "api.cafile is set: expected optional or required (or remove api.cafile)",
            ));
        }
        Ok(())
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            username: None,
            password: None,
            certfile: None,
            keyfile: None,
            cafile: None,
            verify_client: VerifyClient::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DcsBackend {
    Raft,
    Etcd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcsConfig {
    pub backend: DcsBackend,
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
    #[serde(default)]
    pub raft: Option<RaftConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, e.g. `["http://10.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// The CA that signed the members' certificates, for `https://` endpoints.
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    /// A client certificate and its key, for etcd's `--client-cert-auth`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// etcd's user authentication (Patroni's `etcd3.username` and `password`).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

impl EtcdConfig {
    /// Its TLS and user settings.
    pub fn security(&self) -> consensus::etcd::EtcdSecurity<'_> {
        consensus::etcd::EtcdSecurity {
            cacert: self.cacert.as_deref(),
            cert: self.cert.as_deref(),
            key: self.key.as_deref(),
            username: self.username.as_deref(),
            password: self.password.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftConfig {
    /// Address this member's Raft and DCS-client traffic listens on.
    pub listen: SocketAddr,
    /// Directory for the Raft log, vote and snapshots.
    pub data_dir: PathBuf,
    /// The members of the Raft group: `name = "host:port"`. This member may be listed (with the
    /// address the others reach it at) or left out (then the others reach it at `listen`).
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    /// The cluster-wide shared secret (at least 16 bytes), the same on every member and client.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (trailing newline ignored); instead of `secret`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Raft heartbeat interval in milliseconds.
    #[serde(default = "default_raft_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for between this and 1.25 times this many milliseconds
    /// starts an election (and refuses to vote for another while it still hears one).
    #[serde(default = "default_raft_election_timeout_ms")]
    pub election_timeout_ms: u64,
    /// This node joins a running Raft group (a node added to a cluster): its member waits to
    /// be added and the agent asks the group to make it a voter. `peers` lists the running
    /// members it reaches first.
    #[serde(default)]
    pub join: bool,
}

fn default_raft_heartbeat_ms() -> u64 {
    100
}
fn default_raft_election_timeout_ms() -> u64 {
    300
}

fn default_scope() -> String {
    "main".into()
}
fn default_namespace() -> String {
    "/service".into()
}
fn default_os_user() -> String {
    crate::postgres::os_user::DEFAULT_USER.into()
}
fn default_pg_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5432))
}
fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8008))
}

/// Member names become DCS keys and replication slot names: keep them to what both accept.
fn valid_member_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

impl Validate for AgentConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !valid_member_name(&self.name) {
            return Err(Invalid::new(
                "name",
                format!("{:?}", self.name),
                "expected 1-63 characters of letters, digits, '_', '-' or '.'",
            ));
        }
        if !valid_member_name(&self.scope) {
            return Err(Invalid::new(
                "scope",
                format!("{:?}", self.scope),
                "expected 1-63 characters of letters, digits, '_', '-' or '.'",
            ));
        }
        if !self.namespace.starts_with('/') {
            return Err(Invalid::new(
                "namespace",
                format!("{:?}", self.namespace),
                "expected a path starting with '/'",
            ));
        }
        for (key, user) in [
            ("postgresql.superuser", &self.postgresql.superuser),
            ("postgresql.replication", &self.postgresql.replication),
        ] {
            if user.password.is_none() && user.password_file.is_none() {
                return Err(Invalid::missing(format!("{key}.password"), "set password or password_file"));
            }
        }
        if self.backup.is_some() {
            if let Some(k) = self.postgresql.parameters.keys().find(|k| ARCHIVE_PARAMETERS.contains(&k.as_str())) {
                return Err(Invalid::new(
                    format!("postgresql.parameters.{k}"),
                    "...",
                    "[backup] is set, so the agent writes archive_mode, archive_command and restore_command \
                     itself: remove this parameter (or [backup])",
                ));
            }
        }
        self.api.validate()?;
        for (event, script) in self.postgresql.callbacks.all() {
            if let Some(path) = script.as_ref().filter(|p| !p.is_absolute()) {
                return Err(Invalid::new(
                    format!("postgresql.callbacks.{event}"),
                    format!("{:?}", path.display().to_string()),
                    "expected the absolute path of a program (it is run without a shell, with no arguments of its own)",
                ));
            }
        }
        let bootstrap = &self.bootstrap;
        let chosen = bootstrap.targets() > 0 || bootstrap.set.is_some() || bootstrap.backup_config.is_some();
        match bootstrap.method {
            BootstrapMethod::Initdb if chosen => {
                return Err(Invalid::new(
                    "bootstrap.method",
                    "initdb",
                    "a backup or recovery target is set: expected method = \"restore\"",
                ))
            }
            BootstrapMethod::Initdb => {}
            BootstrapMethod::Restore => {
                if self.bootstrap_backup_config().is_none() {
                    return Err(Invalid::missing(
                        "bootstrap.backup_config",
                        "method = \"restore\" needs the backup config to restore from (or a [backup] section)",
                    ));
                }
                if bootstrap.targets() > 1 {
                    return Err(Invalid::new(
                        "bootstrap",
                        "several targets",
                        "at most one of target_time, target_lsn, target_xid, target_name, immediate",
                    ));
                }
            }
        }
        let ha = self.ha.to_ha_config();
        for (key, v) in
            [("ha.ttl", self.ha.ttl), ("ha.loop_wait", self.ha.loop_wait), ("ha.retry_timeout", self.ha.retry_timeout)]
        {
            if !(v.is_finite() && v > 0.0) {
                return Err(Invalid::new(key, v, "expected a number of seconds > 0"));
            }
        }
        if let Err(rule) = ha.check() {
            return Err(Invalid::new("ha.ttl", self.ha.ttl, rule));
        }
        match self.dcs.backend {
            DcsBackend::Etcd => match &self.dcs.etcd {
                None => {
                    return Err(Invalid::missing(
                        "dcs.etcd",
                        "backend = \"etcd\" needs a [dcs.etcd] section with endpoints",
                    ))
                }
                Some(e) if e.endpoints.is_empty() => {
                    return Err(Invalid::new("dcs.etcd.endpoints", "[]", "expected at least one etcd client URL"))
                }
                Some(e) => {
                    if let Some(bad) =
                        e.endpoints.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
                    {
                        return Err(Invalid::new(
                            "dcs.etcd.endpoints",
                            format!("{bad:?}"),
                            "expected URLs like \"http://127.0.0.1:2379\"",
                        ));
                    }
                    e.security().check(&e.endpoints, "dcs.etcd.")?;
                }
            },
            DcsBackend::Raft => match &self.dcs.raft {
                None => {
                    return Err(Invalid::missing(
                        "dcs.raft",
                        "backend = \"raft\" needs a [dcs.raft] section with listen and data_dir",
                    ))
                }
                Some(r) => crate::raft_dcs::validate(&self.name, r)?,
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::config_file::parse;
    use std::path::Path;

    const GOOD: &str = r#"
name = "node1"
[postgresql]
data_dir = "/var/lib/pgha/node1"
superuser = { username = "postgres", password = "s3cret" }
replication = { username = "replicator", password = "r3pl" }
[dcs]
backend = "raft"
[dcs.raft]
listen = "127.0.0.1:7001"
data_dir = "/var/lib/pgha/raft1"
peers = { node2 = "127.0.0.1:7002", node3 = "127.0.0.1:7003" }
secret = "0123456789abcdef0123"
"#;

    fn err(text: &str) -> String {
        match parse::<AgentConfig>(Path::new("agent.toml"), text) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn good_config_gets_defaults() {
        let c: AgentConfig = parse(Path::new("agent.toml"), GOOD).unwrap();
        assert_eq!(c.scope, "main");
        assert_eq!(c.namespace, "/service");
        assert_eq!(c.api.listen.port(), 8008);
        assert_eq!(c.dcs.raft.unwrap().peers.len(), 2);
    }

    #[test]
    fn unknown_backend_lists_the_choices() {
        assert_eq!(
            err(&GOOD.replace("backend = \"raft\"", "backend = \"zookeeper\"")),
            "agent.toml: dcs.backend = \"zookeeper\": expected one of raft, etcd"
        );
    }

    #[test]
    fn etcd_security_settings_are_checked() {
        let base = "name = \"n\"\n[postgresql]\ndata_dir = \"/d\"\nsuperuser = { username = \"p\", password = \"x\" }\nreplication = { username = \"r\", password = \"y\" }\n[dcs]\nbackend = \"etcd\"\n[dcs.etcd]\n";
        let with = |lines: &str| err(&format!("{base}{lines}"));
        assert_eq!(
            with("endpoints = [\"http://e:2379\"]\nusername = \"root\"\n"),
            "agent.toml: dcs.etcd.password: etcd's user authentication needs both a user name and a password"
        );
        assert_eq!(
            with("endpoints = [\"https://e:2379\"]\n"),
            "agent.toml: dcs.etcd.cacert: https:// endpoints need the CA file that signed the etcd members' certificates"
        );
        assert_eq!(
            with("endpoints = [\"https://e:2379\"]\ncacert = \"/ca\"\ncert = \"/c\"\n"),
            "agent.toml: dcs.etcd.key: a client certificate needs both its certificate and its key file"
        );
    }

    #[test]
    fn etcd_backend_without_endpoints_is_rejected() {
        let text = "name = \"n\"\n[postgresql]\ndata_dir = \"/d\"\nsuperuser = { username = \"p\", password = \"x\" }\nreplication = { username = \"r\", password = \"y\" }\n[dcs]\nbackend = \"etcd\"\n";
        assert_eq!(err(text), "agent.toml: dcs.etcd: backend = \"etcd\" needs a [dcs.etcd] section with endpoints");
    }

    #[test]
    fn bad_member_name_is_rejected() {
        assert!(err(&GOOD.replace("node1", "node 1")).starts_with("agent.toml: name = \"node 1\": expected"));
    }

    #[test]
    fn unsafe_timing_is_refused_with_the_rule() {
        let e = err(&format!("{GOOD}[ha]\nttl = 4\nloop_wait = 2\nretry_timeout = 2\n"));
        assert!(
            e.starts_with("agent.toml: ha.ttl = 4: ttl (4s) must be larger than loop_wait + 2 x retry_timeout"),
            "{e}"
        );
    }

    #[test]
    fn missing_password_is_named() {
        let e = err(&GOOD
            .replace("password = \"r3pl\"", "password_file = \"/nonexistent\"")
            .replace(", password = \"s3cret\"", ""));
        assert_eq!(e, "agent.toml: postgresql.superuser.password: set password or password_file");
    }

    #[test]
    fn raft_secret_is_required_and_long_enough() {
        let e = err(&GOOD.replace("secret = \"0123456789abcdef0123\"\n", ""));
        assert_eq!(e, "agent.toml: dcs.raft.secret: set secret or secret_file (the same on every member)");
        let e = err(&GOOD.replace("0123456789abcdef0123", "short"));
        assert!(e.starts_with("agent.toml: dcs.raft.secret = <redacted>: the secret is 5 bytes long"), "{e}");
        assert!(!e.contains("short"));
    }

    #[test]
    fn api_tls_settings_come_as_a_whole() {
        let api = |lines: &str| format!("{GOOD}[api]\n{lines}");
        let c: AgentConfig =
            parse(Path::new("agent.toml"), &api("certfile = \"/c.pem\"\nkeyfile = \"/k.pem\"\n")).unwrap();
        assert_eq!(c.api.base_url(), "https://127.0.0.1:8008");
        assert_eq!(c.api.verify_client, VerifyClient::None);
        let c: AgentConfig = parse(Path::new("agent.toml"), GOOD).unwrap();
        assert_eq!(c.api.base_url(), "http://127.0.0.1:8008");
        assert_eq!(
            err(&api("certfile = \"/c.pem\"\n")),
            "agent.toml: api.keyfile: api.certfile is set: set the key too"
        );
        assert_eq!(
            err(&api("keyfile = \"/k.pem\"\n")),
            "agent.toml: api.certfile: api.keyfile is set: set the certificate too"
        );
        assert_eq!(
            err(&api("verify_client = \"required\"\ncafile = \"/ca.pem\"\n")),
            "agent.toml: api.certfile: api.verify_client needs HTTPS: set api.certfile and api.keyfile"
        );
        let tls = "certfile = \"/c.pem\"\nkeyfile = \"/k.pem\"\n";
        assert_eq!(
            err(&api(&format!("{tls}verify_client = \"optional\"\n"))),
            "agent.toml: api.cafile: api.verify_client needs the CA that client certificates chain to"
        );
        assert_eq!(
            err(&api(&format!("{tls}cafile = \"/ca.pem\"\n"))),
            "agent.toml: api.verify_client = none: api.cafile is set: expected optional or required (or remove api.cafile)"
        );
        assert!(err(&api(&format!("{tls}verify_client = \"sometimes\"\n")))
            .contains("expected one of none, optional, required"));
        let c: AgentConfig =
            parse(Path::new("agent.toml"), &api(&format!("{tls}cafile = \"/ca.pem\"\nverify_client = \"required\"\n")))
                .unwrap();
        assert_eq!(c.api.verify_client, VerifyClient::Required);
    }

    #[test]
    fn bootstrap_from_a_backup_is_checked_as_a_whole() {
        let c: AgentConfig = parse(Path::new("agent.toml"), GOOD).unwrap();
        assert_eq!(c.bootstrap.method, BootstrapMethod::Initdb);
        let with = |lines: &str| format!("{GOOD}[bootstrap]\n{lines}");
        let c: AgentConfig = parse(
            Path::new("agent.toml"),
            &with("method = \"restore\"\nbackup_config = \"/b.toml\"\ntarget_time = \"2026-05-01 14:03:27+00\"\nset = \"L1\"\n"),
        )
        .unwrap();
        assert_eq!(c.bootstrap_backup_config(), Some(Path::new("/b.toml")));
        assert_eq!(c.bootstrap.target_args(), ["--target-time", "2026-05-01 14:03:27+00", "--set", "L1"]);
        assert_eq!(
            err(&with("method = \"restore\"\n")),
            "agent.toml: bootstrap.backup_config: method = \"restore\" needs the backup config to restore from (or a [backup] section)"
        );
        assert_eq!(
            err(&with("backup_config = \"/b.toml\"\nimmediate = true\n")),
            "agent.toml: bootstrap.method = initdb: a backup or recovery target is set: expected method = \"restore\""
        );
        assert!(err(&with("method = \"restore\"\nbackup_config = \"/b\"\nimmediate = true\ntarget_xid = 5\n"))
            .contains("at most one of target_time"));
        assert!(err(&with("method = \"pg_basebackup\"\n")).contains("expected one of initdb, restore"));
        // [backup] config serves as the source too.
        let c: AgentConfig = parse(
            Path::new("agent.toml"),
            &format!("{GOOD}[backup]\nconfig = \"/a.toml\"\n[bootstrap]\nmethod = \"restore\"\nimmediate = true\n"),
        )
        .unwrap();
        assert_eq!(c.bootstrap_backup_config(), Some(Path::new("/a.toml")));
        assert_eq!(c.bootstrap.target_args(), ["--immediate"]);
    }

    #[test]
    fn callbacks_are_absolute_program_paths() {
        let with = |line: &str| {
            GOOD.replace(
                "replication = { username = \"replicator\", password = \"r3pl\" }\n",
                &format!(
                    "replication = {{ username = \"replicator\", password = \"r3pl\" }}\ncallbacks = {{ {line} }}\n"
                ),
            )
        };
        let c: AgentConfig =
            parse(Path::new("agent.toml"), &with("on_role_change = \"/usr/local/bin/vip.sh\"")).unwrap();
        assert_eq!(c.postgresql.callbacks.on_role_change.as_deref(), Some(Path::new("/usr/local/bin/vip.sh")));
        let e = err(&with("on_stop = \"vip.sh stop\""));
        assert!(
            e.starts_with("agent.toml: postgresql.callbacks.on_stop = \"vip.sh stop\": expected the absolute path"),
            "{e}"
        );
        assert!(err(&with("on_promote = \"/x\"")).contains("unknown key"));
    }

    #[test]
    fn raft_members_include_this_one() {
        let c: AgentConfig = parse(Path::new("agent.toml"), GOOD).unwrap();
        let all = crate::raft_dcs::all_members(&c.name, c.dcs.raft.as_ref().unwrap());
        assert_eq!(all.get("node1").map(String::as_str), Some("127.0.0.1:7001"));
        assert_eq!(all.len(), 3);
        let e = err(&GOOD.replace("127.0.0.1:7001", "0.0.0.0:7001"));
        assert!(e.starts_with("agent.toml: dcs.raft.listen = 0.0.0.0:7001: listen binds every address"), "{e}");
    }

    #[test]
    fn backup_section_owns_the_archive_parameters() {
        let c: AgentConfig =
            parse(Path::new("agent.toml"), &format!("{GOOD}[backup]\nconfig = \"/etc/b.toml\"\n")).unwrap();
        assert_eq!(c.backup.map(|b| b.config), Some(PathBuf::from("/etc/b.toml")));
        let text = GOOD.replace("replication = {", "parameters = { archive_mode = \"on\" }\nreplication = {");
        assert!(parse::<AgentConfig>(Path::new("agent.toml"), &text).is_ok());
        let e = err(&format!("{text}[backup]\nconfig = \"/etc/b.toml\"\n"));
        assert!(e.starts_with("agent.toml: postgresql.parameters.archive_mode = ...: [backup] is set"), "{e}");
        assert!(err(&format!("{GOOD}[backup]\nconfig = \"/b\"\nmode = 1\n")).contains("backup.mode"));
    }

    #[test]
    fn bad_peer_address_names_the_peer() {
        let e = err(&GOOD.replace("\"127.0.0.1:7003\"", "\"nowhere\""));
        assert_eq!(e, "agent.toml: dcs.raft.peers.node3 = \"nowhere\": expected \"host:port\" with an IP address");
    }
}
