//! `pgha demo`: a whole cluster on this machine for newcomers. It starts a DCS, N agents (this
//! same binary) with generated configs and a pooler that follows the primary through the DCS,
//! prints the DSNs and API URLs, forwards one line per agent event, and on Ctrl-C (or SIGTERM)
//! stops the agents gracefully and removes what it created.

use agent::postgres::os_user::{RunAs, DEFAULT_USER};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SUPERUSER_PASSWORD: &str = "pgha-demo";

pub struct DemoOptions {
    pub nodes: u8,
    pub dcs: String,
    pub dir: Option<PathBuf>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Children die with the demo, even if it is killed.
fn dies_with_parent(cmd: &mut Command, sig: i32) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn forward_output(name: String, child: &mut Child) {
    if let Some(err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("[{name}] {line}");
            }
        });
    }
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    if opts.nodes == 0 || opts.nodes > 9 {
        bail!("--nodes {}: expected 1 to 9", opts.nodes);
    }
    let dcs = match opts.dcs.as_str() {
        "raft" => DemoDcs::Raft,
        "etcd" => DemoDcs::Etcd,
        other => bail!("--dcs {other}: expected raft or etcd"),
    };
    let (dir, remove_dir) = match &opts.dir {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(format!("pgha-demo-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let owner = RunAs::for_postgres(DEFAULT_USER)?;
    let result = run_in(&opts, dcs, &dir, owner).await;
    if remove_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DemoDcs {
    Raft,
    Etcd,
}

/// The generated `[dcs]` section for every agent, and the etcd process when there is one.
struct DcsSetup {
    section: Vec<String>,
    /// The pooler's `[cluster]` keys that reach the same DCS.
    pooler_dcs: String,
    description: String,
    etcd: Option<Child>,
}

async fn start_dcs(dcs: DemoDcs, nodes: u8, dir: &Path) -> anyhow::Result<DcsSetup> {
    match dcs {
        DemoDcs::Raft => raft_sections(nodes, dir),
        DemoDcs::Etcd => start_etcd(nodes, dir),
    }
}

/// Every agent runs a member of the built-in Raft group; the members share a fresh random secret.
fn raft_sections(nodes: u8, dir: &Path) -> anyhow::Result<DcsSetup> {
    let mut secret = [0u8; 24];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("generating the Raft secret: {e}"))?;
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut ports = Vec::new();
    for _ in 1..=nodes {
        ports.push(free_port()?);
    }
    let peers: Vec<String> =
        ports.iter().enumerate().map(|(i, p)| format!("node{} = \"127.0.0.1:{p}\"", i + 1)).collect();
    let section = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "[dcs]\nbackend = \"raft\"\n[dcs.raft]\nlisten = \"127.0.0.1:{p}\"\ndata_dir = \"{}\"\n\
                 secret = \"{secret}\"\npeers = {{ {} }}\n",
                dir.join(format!("node{}", i + 1)).join("raft").display(),
                peers.join(", ")
            )
        })
        .collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let members: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    Ok(DcsSetup {
        section,
        pooler_dcs: format!("raft_members = [{}]\nraft_secret = \"{secret}\"\n", members.join(", ")),
        description: format!("the built-in Raft group ({})", addrs.join(", ")),
        etcd: None,
    })
}

fn start_etcd(nodes: u8, dir: &Path) -> anyhow::Result<DcsSetup> {
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let etcd_url = format!("http://127.0.0.1:{client_port}");
    let mut etcd = Command::new("etcd");
    etcd.args(["--name", "demo", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
        .args(["--initial-cluster", &format!("demo=http://127.0.0.1:{peer_port}")])
        .args(["--log-outputs", "stderr", "--logger", "zap"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log"))?)
        .kill_on_drop(true);
    dies_with_parent(&mut etcd, libc::SIGKILL);
    let etcd = etcd.spawn().context("starting etcd (apt-get install -y etcd-server, or run scripts/demo)")?;
    let section = format!("[dcs]\nbackend = \"etcd\"\n[dcs.etcd]\nendpoints = [\"{etcd_url}\"]\n");
    Ok(DcsSetup {
        section: vec![section; nodes as usize],
        pooler_dcs: format!("etcd_endpoints = [\"{etcd_url}\"]\n"),
        description: format!("etcd at {etcd_url}"),
        etcd: Some(etcd),
    })
}

async fn run_in(opts: &DemoOptions, dcs: DemoDcs, dir: &Path, owner: Option<RunAs>) -> anyhow::Result<()> {
    let DcsSetup { section, pooler_dcs, description, mut etcd } = start_dcs(dcs, opts.nodes, dir).await?;
    let exe = std::env::current_exe().context("locating the pgha binary")?;
    // A local backup repository: the agents archive WAL into it, and `pgha ctl backup` /
    // `restore-cluster` work out of the box.
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo)?;
    if let Some(o) = owner {
        o.chown(&repo)?;
    }
    let backup_config = dir.join("backup.toml");
    std::fs::write(&backup_config, format!("scope = \"demo\"\n[repository]\npath = \"{}\"\n", repo.display()))?;
    let mut agents = Vec::new();
    let mut table = Vec::new();
    for i in 1..=opts.nodes {
        let name = format!("node{i}");
        let node_dir = dir.join(&name);
        std::fs::create_dir_all(&node_dir)?;
        if let Some(o) = owner {
            o.chown(&node_dir)?;
        }
        let (pg, api) = (free_port()?, free_port()?);
        let config = format!(
            "name = \"{name}\"\nscope = \"demo\"\n[postgresql]\ndata_dir = \"{data}\"\nlisten = \"127.0.0.1:{pg}\"\n\
             superuser = {{ username = \"postgres\", password = \"{SUPERUSER_PASSWORD}\" }}\n\
             replication = {{ username = \"replicator\", password = \"pgha-demo-replication\" }}\n\
             parameters = {{ shared_buffers = \"32MB\" }}\n[api]\nlisten = \"127.0.0.1:{api}\"\n\
             [backup]\nconfig = \"{backup}\"\n{dcs}",
            data = node_dir.join("data").display(),
            backup = backup_config.display(),
            dcs = section[usize::from(i - 1)],
        );
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new(&exe);
        cmd.arg("agent")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.env("NO_COLOR", "1").kill_on_drop(true);
        dies_with_parent(&mut cmd, libc::SIGTERM);
        let mut child = cmd.spawn().context("starting an agent")?;
        forward_output(name.clone(), &mut child);
        agents.push(child);
        table.push((name, pg, api));
    }

    // A pooler in front of whichever node is primary, following it through the DCS.
    let pooler_port = free_port()?;
    std::fs::write(dir.join("userlist.txt"), format!("\"postgres\" \"{SUPERUSER_PASSWORD}\"\n"))?;
    let pooler_config = format!(
        "listen_addr = \"127.0.0.1\"\nlisten_port = {pooler_port}\nunix_socket_dir = \"\"\npool_mode = \"transaction\"\n\
         auth_type = \"scram-sha-256\"\nauth_file = \"{userlist}\"\nadmin_users = [\"postgres\"]\n\
         log_connections = false\nlog_disconnections = false\n\n[databases.postgres]\ncluster_role = \"primary\"\n\n\
         [databases.postgres_ro]\ndbname = \"postgres\"\ncluster_role = \"read-only\"\n\n[cluster]\nscope = \"demo\"\n{pooler_dcs}",
        userlist = dir.join("userlist.txt").display(),
    );
    let pooler_config_path = dir.join("pooler.toml");
    std::fs::write(&pooler_config_path, pooler_config)?;
    let mut cmd = Command::new(&exe);
    cmd.arg("pooler").arg("--config").arg(&pooler_config_path).stdin(Stdio::null()).stdout(Stdio::null());
    cmd.stderr(Stdio::piped()).env("NO_COLOR", "1").kill_on_drop(true);
    dies_with_parent(&mut cmd, libc::SIGTERM);
    let mut pooler = cmd.spawn().context("starting the pooler")?;
    forward_output("pooler".into(), &mut pooler);

    let hosts: Vec<String> = table.iter().map(|(_, pg, _)| format!("127.0.0.1:{pg}")).collect();
    println!("pgha demo: {} nodes on {description}, data in {}", opts.nodes, dir.display());
    for (name, pg, api) in &table {
        println!(
            "  {name}: postgresql://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{pg}/postgres   API http://127.0.0.1:{api}/patroni"
        );
    }
    println!(
        "  read-write DSN (any libpq client): postgresql://postgres:{SUPERUSER_PASSWORD}@{}/postgres?target_session_attrs=read-write",
        hosts.join(",")
    );
    println!(
        "  pooler (transaction mode, follows the primary; a switchover is a pause): \
         postgresql://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{pooler_port}/postgres   \
         console: postgresql://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{pooler_port}/pgbouncer"
    );
    println!(
        "  pooler, read-only (the healthy standbys in turn; the primary while there is none): \
         postgresql://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{pooler_port}/postgres_ro"
    );
    if let Some((_, _, api)) = table.first() {
        println!(
            "  backups (WAL is archived to {}): pgha ctl --api http://127.0.0.1:{api} backup   then e.g. \
             pgha ctl --api http://127.0.0.1:{api} restore-cluster --target-time \"<time>\" --force",
            repo.display()
        );
    }
    println!("Press Ctrl-C to stop the cluster and remove it.");

    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        status = etcd_exit(&mut etcd) => println!("pgha demo: etcd exited ({status:?}); stopping"),
    }
    println!("pgha demo: stopping the pooler and the agents");
    if let Some(pid) = pooler.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), pooler.wait()).await;
    let _ = pooler.kill().await;
    for a in &agents {
        if let Some(pid) = a.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
    }
    for a in &mut agents {
        let _ = tokio::time::timeout(Duration::from_secs(30), a.wait()).await;
        let _ = a.kill().await;
    }
    if let Some(e) = etcd.as_mut() {
        let _ = e.kill().await;
    }
    println!("pgha demo: stopped");
    Ok(())
}

/// Resolves when the demo's etcd exits; never when the DCS is the built-in Raft group.
async fn etcd_exit(etcd: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match etcd {
        Some(e) => e.wait().await,
        None => std::future::pending().await,
    }
}
