//! `pgha demo`: a whole cluster on this machine for newcomers. It starts a DCS, N agents (this
//! same binary) with generated configs, prints the DSNs and API URLs, forwards one line per agent
//! event, and on Ctrl-C (or SIGTERM) stops the agents gracefully and removes what it created.

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
    let dcs = if opts.dcs == "raft" {
        println!("pgha demo: the built-in Raft DCS is not built yet in this version; using a local etcd instead");
        "etcd"
    } else {
        opts.dcs.as_str()
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

async fn run_in(opts: &DemoOptions, dcs: &str, dir: &Path, owner: Option<RunAs>) -> anyhow::Result<()> {
    if dcs != "etcd" {
        bail!("--dcs {dcs}: expected raft or etcd");
    }
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
    let mut etcd = etcd.spawn().context("starting etcd (apt-get install -y etcd-server, or run scripts/demo)")?;

    let exe = std::env::current_exe().context("locating the pgha binary")?;
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
             [dcs]\nbackend = \"etcd\"\n[dcs.etcd]\nendpoints = [\"{etcd_url}\"]\n",
            data = node_dir.join("data").display()
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

    let hosts: Vec<String> = table.iter().map(|(_, pg, _)| format!("127.0.0.1:{pg}")).collect();
    println!("pgha demo: {} nodes on etcd at {etcd_url}, data in {}", opts.nodes, dir.display());
    for (name, pg, api) in &table {
        println!(
            "  {name}: postgresql://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{pg}/postgres   API http://127.0.0.1:{api}/patroni"
        );
    }
    println!(
        "  read-write DSN (any libpq client): postgresql://postgres:{SUPERUSER_PASSWORD}@{}/postgres?target_session_attrs=read-write",
        hosts.join(",")
    );
    println!("Press Ctrl-C to stop the cluster and remove it.");

    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        status = etcd.wait() => println!("pgha demo: etcd exited ({status:?}); stopping"),
    }
    println!("pgha demo: stopping the agents");
    for a in &agents {
        if let Some(pid) = a.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
    }
    for a in &mut agents {
        let _ = tokio::time::timeout(Duration::from_secs(30), a.wait()).await;
        let _ = a.kill().await;
    }
    let _ = etcd.kill().await;
    println!("pgha demo: stopped");
    Ok(())
}
