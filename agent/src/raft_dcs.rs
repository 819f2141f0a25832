//! The built-in Raft DCS as a node runs it: checks `[dcs.raft]`, resolves the shared secret, and
//! starts this node's Raft member in-process with a `RaftStore` that prefers it. Also runs a member
//! on its own (`pgha dcs-member`, used by the test harness to run a Raft group without PostgreSQL).

use crate::config::RaftConfig;
use consensus::config_file::{Invalid, Validate};
use consensus::raft::{SharedSecret, MIN_SECRET_LEN};
use consensus::raft_member::{RaftMember, RaftMemberConfig, RaftTiming};
use consensus::raft_store::{RaftStore, RaftStoreOptions};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Checks a `[dcs.raft]` section for member `name`.
pub fn validate(name: &str, r: &RaftConfig) -> Result<(), Invalid> {
    if let Some((peer, addr)) = r.peers.iter().find(|(_, a)| a.parse::<SocketAddr>().is_err()) {
        return Err(Invalid::new(
            format!("dcs.raft.peers.{peer}"),
            format!("{addr:?}"),
            "expected \"host:port\" with an IP address",
        ));
    }
    if !r.peers.contains_key(name) && r.listen.ip().is_unspecified() {
        return Err(Invalid::new(
            "dcs.raft.listen",
            r.listen,
            format!("listen binds every address, so list this member under [dcs.raft.peers] as {name} = \"<address others reach it at>\""),
        ));
    }
    match (&r.secret, &r.secret_file) {
        (None, None) => {
            return Err(Invalid::missing("dcs.raft.secret", "set secret or secret_file (the same on every member)"))
        }
        (Some(_), Some(_)) => {
            return Err(Invalid::new("dcs.raft.secret_file", "…", "set secret or secret_file, not both"))
        }
        (Some(s), None) if s.len() < MIN_SECRET_LEN => {
            return Err(Invalid::new(
                "dcs.raft.secret",
                "<redacted>",
                format!(
                    "the secret is {} bytes long; use at least {MIN_SECRET_LEN}, e.g. 32 random bytes in base64",
                    s.len()
                ),
            ))
        }
        _ => {}
    }
    if r.join && !r.peers.keys().any(|p| p != name) {
        return Err(Invalid::new(
            "dcs.raft.join",
            "true",
            "a joining member needs the running members under [dcs.raft.peers] to reach the group",
        ));
    }
    if r.heartbeat_ms == 0 || r.heartbeat_ms * 3 > r.election_timeout_ms {
        return Err(Invalid::new(
            "dcs.raft.heartbeat_ms",
            r.heartbeat_ms,
            format!("expected above 0 and at most a third of election_timeout_ms ({})", r.election_timeout_ms),
        ));
    }
    Ok(())
}

/// Every member, this one included, with the address the others reach it at.
pub fn all_members(name: &str, r: &RaftConfig) -> BTreeMap<String, String> {
    let mut peers = r.peers.clone();
    peers.entry(name.to_string()).or_insert_with(|| r.listen.to_string());
    peers
}

fn resolve_secret(r: &RaftConfig) -> Result<SharedSecret, String> {
    SharedSecret::from_config(
        r.secret.as_deref(),
        r.secret_file.as_deref(),
        ("dcs.raft.secret", "dcs.raft.secret_file"),
    )
}

/// This node's member and the client that prefers it (the DCS, and the REST API's group
/// status and membership changes).
pub struct Started {
    pub member: RaftMember,
    pub store: RaftStore,
}

/// Starts this node's member and a client that prefers it. `op_timeout` bounds each DCS request.
pub async fn start(name: &str, r: &RaftConfig, op_timeout: Duration) -> Result<Started, String> {
    let secret = resolve_secret(r)?;
    let peers = all_members(name, r);
    let n = peers.len();
    if n != 3 && n != 5 {
        tracing::warn!(members = n, "raft: a group of {n} members; 3 or 5 are recommended (an even size tolerates no more failures than one less)");
    }
    let config = RaftMemberConfig {
        name: name.to_string(),
        listen: r.listen.to_string(),
        data_dir: r.data_dir.clone(),
        peers: peers.clone(),
        secret: secret.clone(),
        timing: RaftTiming {
            heartbeat: Duration::from_millis(r.heartbeat_ms),
            election_min: Duration::from_millis(r.election_timeout_ms),
            election_max: Duration::from_millis(r.election_timeout_ms + r.election_timeout_ms / 4),
        },
        op_timeout,
        join: r.join,
    };
    let member = RaftMember::start(config).await.map_err(|e| e.to_string())?;
    if r.join {
        let others: Vec<String> = peers.iter().filter(|(n, _)| n.as_str() != name).map(|(_, a)| a.clone()).collect();
        let options = RaftStoreOptions { op_timeout, ..RaftStoreOptions::default() };
        let group = RaftStore::new(others, secret.clone(), options).map_err(|e| e.to_string())?;
        let (name, addr) = (name.to_string(), peers.get(name).cloned().unwrap_or_else(|| r.listen.to_string()));
        tokio::spawn(join_group(group, name, addr));
    }
    // Our own member first (reached on loopback when listening on every address), then the others.
    let local = member.local_addr();
    let local = if local.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], local.port())) } else { local };
    let mut addrs = vec![local.to_string()];
    addrs.extend(peers.iter().filter(|(n, _)| n.as_str() != name).map(|(_, a)| a.clone()));
    let options = RaftStoreOptions { op_timeout, ..RaftStoreOptions::default() };
    let store = RaftStore::new(addrs, secret, options).map_err(|e| e.to_string())?;
    Ok(Started { member, store })
}

/// `dcs.raft.join`: asks the running group, until it has, to make this member a voter (a
/// learner first, caught up by the Raft leader). Safe to repeat: a voter is left as it is.
async fn join_group(group: RaftStore, name: String, addr: String) {
    let mut attempt = 0u32;
    loop {
        match group.join(&name, &addr).await {
            Ok(status) => {
                tracing::info!(member = %name, voters = %status.voters.join(","), "raft: this member is a voter of the group");
                return;
            }
            Err(e) => {
                attempt += 1;
                // The first failures are expected while the group has no leader or is busy.
                if attempt % 5 == 1 {
                    tracing::warn!(member = %name, "raft: not in the group yet ({e}); asking again");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// The config file of `pgha dcs-member`: a Raft member without PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcsMemberConfig {
    pub name: String,
    /// Bound on one Raft write or read barrier, in seconds.
    #[serde(default = "default_op_timeout")]
    pub op_timeout: f64,
    pub raft: RaftConfig,
}

fn default_op_timeout() -> f64 {
    2.0
}

impl Validate for DcsMemberConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !(self.op_timeout.is_finite() && self.op_timeout > 0.0) {
            return Err(Invalid::new("op_timeout", self.op_timeout, "expected a number of seconds > 0"));
        }
        validate(&self.name, &self.raft).map_err(|mut e| {
            e.key = e.key.replacen("dcs.raft", "raft", 1);
            e
        })
    }
}

/// Runs one member until `shutdown` resolves.
pub async fn run_member(
    config: DcsMemberConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let Started { member, .. } = start(&config.name, &config.raft, Duration::from_secs_f64(config.op_timeout)).await?;
    shutdown.await;
    member.shutdown().await;
    Ok(())
}
