//! The command-line surface of `pgha`: every subcommand, its help text, and its dispatch.

use crate::logging::LogFormat;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "pgha",
    version,
    about = "PostgreSQL high availability in one binary",
    long_about = "PostgreSQL high availability in one binary.\n\n\
        One agent per database node manages the local PostgreSQL and, with its peers, keeps exactly \
        one primary through a distributed configuration store (etcd, or a Raft group built into the \
        agents). The pooler sends applications' writes to the primary and reads to healthy \
        standbys; the backup commands take base backups, archive WAL and restore to a point in \
        time; ctl is what a DBA types.",
    after_help = "Start with `pgha demo` for a local 3-node cluster. See README.md and docs/ for the rest."
)]
pub struct Cli {
    /// Log format: human-readable lines or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "human", env = "PGHA_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace) or a filter such as `pgha=debug`; RUST_LOG wins if set.
    #[arg(long, global = true, default_value = "info", env = "PGHA_LOG_LEVEL")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent for one database node: manage its PostgreSQL, take part in leader election,
    /// serve the Patroni-compatible REST API.
    Agent(ServiceArgs),
    /// Run the connection pooler (PgBouncer-compatible settings and admin console), following the
    /// cluster's primary and standbys.
    Pooler(PoolerArgs),
    /// Operate a cluster: list members, switch over, fail over, restart, reinitialize, pause.
    Ctl(CtlArgs),
    /// Base backups, verification, retention and point-in-time restore.
    Backup(BackupArgs),
    /// Archive one WAL file into the backup repository (use as PostgreSQL's archive_command: `pgha archive-push --config F %p`).
    ArchivePush(ArchivePushArgs),
    /// Fetch one WAL file from the backup repository (use as PostgreSQL's restore_command: `pgha archive-get --config F %f %p`).
    ArchiveGet(ArchiveGetArgs),
    /// Start a local demo cluster on this machine (agents on the built-in Raft, plus a pooler) and print its DSNs.
    Demo(DemoArgs),
    /// Run only a member of the built-in Raft DCS, without PostgreSQL (used by the test harness).
    #[command(hide = true)]
    DcsMember(ServiceArgs),
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The TOML config file (see docs/configuration.md).
    #[arg(short, long, env = "PGHA_CONFIG")]
    pub config: PathBuf,
    /// Check the config file, print a summary, and exit without starting anything.
    #[arg(long)]
    pub validate_config: bool,
}

#[derive(Debug, Args)]
pub struct PoolerArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Take over from the pooler running with this config: get its listening sockets over its
    /// takeover socket and serve them; the old process stops accepting and exits once its
    /// connected clients have left. No connection is refused in between (an upgrade without
    /// downtime; see docs/pooler.md). Where no pooler runs with this config, start as usual.
    #[arg(long)]
    pub takeover: bool,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// REST API URL of any agent of the cluster.
    #[arg(long, env = "PGHA_API", default_value = "http://127.0.0.1:8008")]
    pub api: String,
    /// User for the REST API's changing endpoints (the agents' [api] username).
    #[arg(long, env = "PGHA_API_USERNAME")]
    pub username: Option<String>,
    /// Password for the REST API's changing endpoints.
    #[arg(long, env = "PGHA_API_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// HTTPS: the CA (PEM) that signed the agents' API certificates (their api.certfile); the
    /// system's CAs when omitted.
    #[arg(long, env = "PGHA_API_CACERT")]
    pub cacert: Option<PathBuf>,
    /// HTTPS: client certificate (PEM) for agents with api.verify_client set; needs --key.
    #[arg(long, env = "PGHA_API_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "PGHA_API_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    #[command(subcommand)]
    pub verb: CtlVerb,
}

#[derive(Debug, Subcommand)]
pub enum CtlVerb {
    /// List the members: role, state, timeline, lag, and the leader's last decision.
    List {
        /// Print the list again every SECONDS until Ctrl-C (patronictl's -W), also while the
        /// agent asked is unreachable (say, during a switchover away from it).
        #[arg(short = 'W', long = "watch", value_name = "SECONDS")]
        watch: Option<u64>,
    },
    /// Planned handover of the primary role to a healthy standby (clients of the pooler see a pause).
    Switchover {
        /// The member to become primary; the healthiest standby when omitted.
        #[arg(long)]
        candidate: Option<String>,
        /// When to switch over (ISO 8601); now when omitted.
        #[arg(long)]
        scheduled: Option<String>,
    },
    /// Promote a standby now, whether or not the current primary is healthy.
    Failover {
        /// The member to promote.
        #[arg(long)]
        candidate: String,
    },
    /// Restart PostgreSQL on one member (or all, one at a time).
    Restart {
        /// Member name; all members when omitted.
        member: Option<String>,
    },
    /// Throw away a standby's data directory and clone it again from the primary.
    Reinit {
        /// The standby to rebuild.
        member: String,
    },
    /// Stop automatic failover (maintenance mode); PostgreSQL keeps running.
    Pause,
    /// Resume automatic failover.
    Resume,
    /// Reload the configuration of one member's PostgreSQL (or every member's).
    Reload {
        /// Member name; all members when omitted.
        member: Option<String>,
    },
    /// Cancel a scheduled switchover.
    Flush {
        /// What to cancel: `switchover` (a scheduled one).
        #[arg(value_parser = ["switchover"])]
        what: String,
    },
    /// Print a libpq connection string for the leader, or for a member.
    Dsn {
        /// Member name; the leader when omitted.
        member: Option<String>,
    },
    /// Take a base backup of the primary into the cluster's `[backup]` repository, through
    /// the leader's agent, and wait for it.
    Backup {
        /// full, or incr (only files changed since the previous backup are copied).
        #[arg(long = "type", default_value = "full", value_parser = ["full", "incr"])]
        kind: String,
    },
    /// Show the timeline history: each switch of the primary (failover, switchover, restore)
    /// with its WAL position, time and new leader.
    History,
    /// Show the cluster-wide dynamic configuration.
    ShowConfig,
    /// Change the cluster-wide dynamic configuration, e.g. `--set ttl=20 --set postgresql.parameters.work_mem=64MB`.
    EditConfig {
        /// key=value pairs to set.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// PostgreSQL parameters to set (patronictl's `-p`): `--pg work_mem=64MB` is
        /// `--set postgresql.parameters.work_mem=64MB`.
        #[arg(long = "pg", value_name = "NAME=VALUE")]
        pg: Vec<String>,
    },
    /// Show the pgha version of this ctl and of every member's agent (before and after an upgrade).
    Version,
    /// Restore the whole cluster to a point in time from the backup repository: the primary
    /// archives what it has, moves its data directory aside, restores and promotes at the target
    /// (keeping the leader lock); then every standby is cloned from it again.
    #[command(group(clap::ArgGroup::new("target").required(true).multiple(false)))]
    RestoreCluster {
        /// Target time, e.g. "2026-11-23 14:03:27+00".
        #[arg(long, group = "target")]
        target_time: Option<String>,
        /// Target WAL position, e.g. 0/3000060.
        #[arg(long, group = "target")]
        target_lsn: Option<String>,
        /// Target transaction id.
        #[arg(long, group = "target")]
        target_xid: Option<u64>,
        /// Target restore point (pg_create_restore_point).
        #[arg(long, group = "target")]
        target_name: Option<String>,
        /// Stop as soon as the backup is consistent.
        #[arg(long, group = "target")]
        immediate: bool,
        /// The backup to start from (`pgha backup list`); the newest before the target when omitted.
        #[arg(long)]
        set: Option<String>,
        /// Go ahead: without it, only say what would be done.
        #[arg(long)]
        force: bool,
    },
    /// Show the built-in Raft group: its leader, term, voters and learners.
    RaftStatus,
    /// Take a node gone for good out of the built-in Raft group (it stops counting toward the quorum).
    RaftRemove {
        /// The member's name.
        member: String,
    },
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The TOML config file with the [repository] section.
    #[arg(short, long, env = "PGHA_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub verb: BackupVerb,
}

#[derive(Debug, Subcommand)]
pub enum BackupVerb {
    /// Take a base backup (full or incremental), compressed and checksummed.
    Create {
        /// full, or incr (only files changed since the previous backup are copied).
        #[arg(long = "type", default_value = "full")]
        kind: String,
        /// Read the files from a standby instead of the primary.
        #[arg(long)]
        from_standby: bool,
        /// Files stored in parallel (default: `jobs` from the config).
        #[arg(long)]
        jobs: Option<usize>,
        /// The data directory to back up, in place of `[postgresql] data_dir` (needs --conninfo;
        /// what an agent passes for `pgha ctl backup`).
        #[arg(long, requires = "conninfo")]
        data_dir: Option<PathBuf>,
        /// Its connection string without a password, in place of `[postgresql] conninfo`
        /// (PGPASSWORD is used if set).
        #[arg(long, requires = "data_dir")]
        conninfo: Option<String>,
    },
    /// List the backups in the repository with sizes, WAL range and restorable time range.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one backup in detail.
    Info {
        label: String,
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum and the WAL continuity from each backup to the newest segment.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Apply retention: delete backups (and WAL no kept backup needs) beyond the limits.
    Expire {
        /// Print what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Full backups to keep (with their incrementals).
        #[arg(long)]
        retention_full: usize,
        /// Also keep what is needed to restore to any time within this many days.
        #[arg(long)]
        retention_days: Option<u64>,
    },
    /// Restore a backup into a directory, optionally to a point in time.
    Restore {
        /// The directory to restore into.
        #[arg(long)]
        to_dir: PathBuf,
        #[arg(long)]
        target_time: Option<String>,
        #[arg(long)]
        target_lsn: Option<String>,
        #[arg(long)]
        target_xid: Option<String>,
        #[arg(long)]
        target_name: Option<String>,
        /// Stop as soon as the backup is consistent.
        #[arg(long)]
        immediate: bool,
        /// Only fetch files that differ from what is already in --to-dir.
        #[arg(long)]
        delta: bool,
        /// Restore this backup instead of the one picked for the target.
        #[arg(long)]
        set: Option<String>,
        /// Files fetched in parallel (default: `jobs` from the config).
        #[arg(long)]
        jobs: Option<usize>,
    },
}

#[derive(Debug, Args)]
pub struct ArchivePushArgs {
    #[arg(short, long, env = "PGHA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Path of the WAL file, as PostgreSQL passes it in %p.
    pub wal_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct ArchiveGetArgs {
    #[arg(short, long, env = "PGHA_CONFIG")]
    pub config: Option<PathBuf>,
    /// When the repository cannot be read, exit 1 ("not in the archive", so a standby falls back
    /// to streaming) instead of 126 (PostgreSQL aborts recovery rather than end it early).
    #[arg(long)]
    pub soft_errors: bool,
    /// Internal: fill the prefetch spool for the segments after WAL_NAME, then exit.
    #[arg(long, hide = true)]
    pub prefetch_worker: bool,
    /// Name of the WAL file wanted (%f).
    pub wal_name: String,
    /// Where to write it (%p).
    pub destination: PathBuf,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of database nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u8,
    /// DCS to use: the agents' built-in Raft, or a local etcd started for the demo.
    #[arg(long, default_value = "raft", value_parser = ["raft", "etcd"])]
    pub dcs: String,
    /// Directory for the demo's data; a temporary one when omitted.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent(args) => {
            let config: agent::config::AgentConfig = load(&args.config)?;
            if args.validate_config {
                // The certificate and key are read as the agent would read them at start.
                agent::api::ApiTls::from_config(&config.api)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
                println!(
                    "{}: OK: member {} of cluster {} ({:?} DCS), PostgreSQL data in {}, REST API {}",
                    args.config.display(),
                    config.name,
                    config.scope,
                    config.dcs.backend,
                    config.postgresql.data_dir.display(),
                    config.api.base_url()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(agent::service::run(config, agent::service::termination_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pooler(PoolerArgs { service: args, takeover }) => {
            let config: pooler::config::PoolerConfig = load(&args.config)?;
            if args.validate_config {
                println!(
                    "{}: OK: listening on {}:{}, pool_mode {:?}, {} database entries",
                    args.config.display(),
                    config.listen_addr,
                    config.listen_port,
                    config.pool_mode,
                    config.databases.len()
                );
                return Ok(ExitCode::SUCCESS);
            }
            pooler::runtime::main(config, &args.config, takeover)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl(args) => crate::ctl::run(args),
        Command::Backup(args) => crate::backup_cmd::run(args),
        Command::ArchivePush(args) => crate::backup_cmd::archive_push(args),
        Command::ArchiveGet(args) => crate::backup_cmd::archive_get(args),
        Command::DcsMember(args) => {
            let config: agent::raft_dcs::DcsMemberConfig = load(&args.config)?;
            if args.validate_config {
                println!("{}: OK: raft member {}", args.config.display(), config.name);
                return Ok(ExitCode::SUCCESS);
            }
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime
                .block_on(agent::raft_dcs::run_member(config, agent::service::termination_signal()))
                .map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(crate::demo::run(crate::demo::DemoOptions {
                nodes: args.nodes,
                dcs: args.dcs,
                dir: args.dir,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load<T>(path: &Path) -> anyhow::Result<T>
where
    T: serde::de::DeserializeOwned + consensus::config_file::Validate,
{
    // The error already names the file, the key and what is allowed.
    Ok(consensus::config_file::load(path)?)
}
