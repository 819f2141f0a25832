//! Real etcd for tests: one member or a cluster of several, on free ports of 127.0.0.1, each with
//! its data in a scratch dir. Members can be killed and restarted on their own data.

use crate::process::ManagedProcess;
use crate::scratch::ScratchDir;
use crate::wait::wait_for;
use anyhow::{bail, Context};
use std::process::Command;
use std::time::Duration;

/// One etcd member's identity and process.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Clients reach it over TLS.
    tls: bool,
    process: Option<ManagedProcess>,
}

/// The files of an etcd that serves clients over TLS and asks for their certificates.
#[derive(Clone)]
struct ClientTls {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

impl EtcdMember {
    pub fn client_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    pub fn pgid(&self) -> Option<i32> {
        self.process.as_ref().map(|p| p.pgid().as_raw())
    }
}

/// A running etcd cluster owned by a test.
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    token: String,
    dir: ScratchDir,
    tls: Option<ClientTls>,
    /// `root:<password>` once `enable_auth` ran.
    root: Option<String>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one reports healthy.
    pub async fn start(size: usize) -> anyhow::Result<EtcdCluster> {
        Self::start_with(size, None).await
    }

    /// As `start`, serving clients over TLS only (`https://`) with `pki`'s server certificate,
    /// and refusing clients without a certificate signed by its CA (`--client-cert-auth`).
    pub async fn start_tls(size: usize, pki: &crate::pki::TestPki) -> anyhow::Result<EtcdCluster> {
        let tls = ClientTls {
            ca: pki.ca.clone(),
            server_cert: pki.server_cert.clone(),
            server_key: pki.server_key.clone(),
            client_cert: pki.client_cert.clone(),
            client_key: pki.client_key.clone(),
        };
        Self::start_with(size, Some(tls)).await
    }

    async fn start_with(size: usize, tls: Option<ClientTls>) -> anyhow::Result<EtcdCluster> {
        let dir = ScratchDir::new("etcd", None)?;
        let mut members = Vec::new();
        for i in 0..size {
            members.push(EtcdMember {
                name: format!("etcd{i}"),
                client_port: crate::ports::free_port()?,
                peer_port: crate::ports::free_port()?,
                tls: tls.is_some(),
                process: None,
            });
        }
        let token = format!("pgha-test-{}-{}", std::process::id(), members[0].client_port);
        let mut cluster = EtcdCluster { members, token, dir, tls, root: None };
        for i in 0..size {
            cluster.spawn_member(i, "new")?;
        }
        for i in 0..size {
            cluster.wait_healthy(i).await?;
        }
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",")
    }

    fn spawn_member(&mut self, i: usize, state: &str) -> anyhow::Result<()> {
        let initial_cluster = self.initial_cluster();
        let data = self.dir.join(&format!("{}.data", self.members[i].name));
        let log = self.dir.join(&format!("{}.log", self.members[i].name));
        let m = &mut self.members[i];
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(m.client_url())
            .arg("--advertise-client-urls")
            .arg(m.client_url())
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .args([
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "1000",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ])
            // With user authentication on, tokens expire after 2 s, so that tests see clients
            // log in again (etcd's default is 5 minutes); without it this does nothing.
            .args(["--auth-token-ttl", "2"])
            .env("ETCD_UNSUPPORTED_ARCH", "");
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(&tls.server_cert);
            cmd.arg("--key-file").arg(&tls.server_key);
            cmd.arg("--trusted-ca-file").arg(&tls.ca);
            cmd.arg("--client-cert-auth");
        }
        m.process =
            Some(ManagedProcess::spawn(&m.name, cmd, &log).context("starting etcd (apt-get install -y etcd-server)")?);
        Ok(())
    }

    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// Client URLs of all members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }

    /// Process groups of the running members.
    pub fn pgids(&self) -> Vec<i32> {
        self.members.iter().filter_map(EtcdMember::pgid).collect()
    }

    /// `etcdctl endpoint health` against member `i`: Ok(output) when healthy.
    pub async fn endpoint_health(&self, i: usize) -> anyhow::Result<String> {
        let out = self
            .etcdctl(i)
            .args(["--command-timeout=2s", "endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .kill_on_drop(true)
            .output()
            .await
            .context("running etcdctl (apt-get install -y etcd-client)")?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() && text.contains("is healthy") {
            Ok(text.trim().to_string())
        } else {
            bail!("etcdctl endpoint health on {}: {}", self.members[i].name, text.trim())
        }
    }

    /// etcdctl for member `i`, with the cluster's TLS files and root user.
    fn etcdctl(&self, i: usize) -> tokio::process::Command {
        let mut etcdctl = tokio::process::Command::new("etcdctl");
        if let Some(tls) = &self.tls {
            etcdctl.arg("--cacert").arg(&tls.ca).arg("--cert").arg(&tls.client_cert).arg("--key").arg(&tls.client_key);
        }
        if let Some(root) = &self.root {
            etcdctl.arg(format!("--user={root}"));
        }
        etcdctl.arg(format!("--endpoints={}", self.members[i].client_url()));
        etcdctl
    }

    /// Turns on etcd's user authentication with a `root` user of `password` (etcdctl's `user
    /// add` and `auth enable`); clients then need a user name and password.
    pub async fn enable_auth(&mut self, password: &str) -> anyhow::Result<()> {
        for args in [
            vec!["user".to_owned(), "add".to_owned(), format!("root:{password}")],
            vec!["auth".into(), "enable".into()],
        ] {
            let out = self.etcdctl(0).args(&args).env("ETCDCTL_API", "3").kill_on_drop(true).output().await?;
            if !out.status.success() {
                bail!("etcdctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        self.root = Some(format!("root:{password}"));
        Ok(())
    }

    pub async fn wait_healthy(&self, i: usize) -> anyhow::Result<String> {
        let what = format!("{} to report healthy", self.members[i].name);
        wait_for(&what, Duration::from_secs(30), || async { self.endpoint_health(i).await.map(Some) }).await
    }

    /// kill -9 of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(p) = self.members[i].process.as_mut() {
            p.kill_group();
        }
    }

    /// Starts member `i` again on its existing data directory.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn_member(i, "existing")?;
        self.wait_healthy(i).await.map(|_| ())
    }
}
