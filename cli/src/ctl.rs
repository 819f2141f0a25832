//! `pgha ctl`: what a DBA types, as a client of the agents' Patroni-compatible REST API (any
//! agent for cluster-wide verbs, the member's own agent for restart and reinit). Each verb is
//! one or a few HTTP calls; the API's own message is printed when it refuses.

use crate::commands::{CtlArgs, CtlVerb};
use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Runs one ctl verb.
pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let api = Api::new(&args)?;
        match args.verb {
            CtlVerb::List { watch: None } => list(&api).await,
            CtlVerb::List { watch: Some(secs) } => loop {
                println!("{}", consensus::cluster::timestamp::Timestamp::now());
                if let Err(e) = list(&api).await {
                    println!("{e:#}");
                }
                println!();
                tokio::time::sleep(Duration::from_secs(secs.max(1))).await;
            },
            CtlVerb::Switchover { candidate, scheduled } => switchover(&api, candidate, scheduled).await,
            CtlVerb::Failover { candidate } => {
                let (_, body) =
                    api.send("POST", &api.url("/failover"), Some(json!({ "candidate": candidate }))).await?;
                println!("{}", body.trim());
                Ok(ExitCode::SUCCESS)
            }
            CtlVerb::Restart { member } => restart(&api, member).await,
            CtlVerb::Reinit { member } => {
                let target = member_api(&api, &member).await?;
                let (_, body) = api.send("POST", &format!("{target}/reinitialize"), Some(json!({}))).await?;
                println!("{member}: {}", body.trim());
                Ok(ExitCode::SUCCESS)
            }
            CtlVerb::Pause => pause(&api, true).await,
            CtlVerb::Resume => pause(&api, false).await,
            CtlVerb::History => history(&api).await,
            CtlVerb::Backup { kind } => take_backup(&api, &kind).await,
            CtlVerb::Reload { member } => reload(&api, member).await,
            CtlVerb::Flush { .. } => {
                let (_, answer) = api.send("DELETE", &api.url("/switchover"), None).await?;
                println!("{}", answer.trim());
                Ok(ExitCode::SUCCESS)
            }
            CtlVerb::Dsn { member } => dsn(&api, member).await,
            CtlVerb::ShowConfig => {
                let config = api.get_json("/config").await?;
                println!("{}", serde_json::to_string_pretty(&config)?);
                Ok(ExitCode::SUCCESS)
            }
            CtlVerb::EditConfig { mut set, pg } => {
                set.extend(pg.iter().map(|p| format!("postgresql.parameters.{p}")));
                edit_config(&api, &set).await
            }
            CtlVerb::Version => version(&api).await,
            CtlVerb::RestoreCluster { target_time, target_lsn, target_xid, target_name, immediate, set, force } => {
                let target = json!({
                    "target_time": target_time, "target_lsn": target_lsn, "target_xid": target_xid,
                    "target_name": target_name, "immediate": immediate, "set": set,
                });
                restore_cluster(&api, target, force).await
            }
            CtlVerb::RaftStatus => {
                let status = api.get_json("/raft").await?;
                print_raft(&status);
                Ok(ExitCode::SUCCESS)
            }
            CtlVerb::RaftRemove { member } => {
                let (_, body) = api.send("DELETE", &api.url(&format!("/raft/members/{member}")), None).await?;
                let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                println!("{member} is no longer a member of the Raft group");
                print_raft(&status);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// The REST API of one agent, with the credentials for its mutating endpoints.
struct Api {
    base: String,
    client: reqwest::Client,
    username: Option<String>,
    password: Option<String>,
}

impl Api {
    fn new(args: &CtlArgs) -> anyhow::Result<Api> {
        let mut builder =
            reqwest::Client::builder().timeout(Duration::from_secs(60)).connect_timeout(Duration::from_secs(5));
        if let Some(path) = &args.cacert {
            let pem = std::fs::read(path).with_context(|| format!("--cacert: cannot read {}", path.display()))?;
            let cas = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--cacert: {} is not a PEM certificate bundle", path.display()))?;
            if cas.is_empty() {
                bail!("--cacert: {} holds no certificate in PEM form", path.display());
            }
            builder = builder.tls_certs_only(cas);
        }
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            let mut pem = std::fs::read(cert).with_context(|| format!("--cert: cannot read {}", cert.display()))?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).with_context(|| format!("--key: cannot read {}", key.display()))?);
            let identity = reqwest::Identity::from_pem(&pem).with_context(|| {
                format!("--cert/--key: {} and {} are not a PEM certificate and its key", cert.display(), key.display())
            })?;
            builder = builder.identity(identity);
        }
        let client = builder.build().context("building the HTTP client")?;
        Ok(Api {
            base: args.api.trim_end_matches('/').to_string(),
            client,
            username: args.username.clone(),
            password: args.password.clone(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let (_, body) = self.send("GET", &self.url(path), None).await?;
        serde_json::from_str(&body).with_context(|| format!("{} did not answer JSON: {body}", self.url(path)))
    }

    /// One request; a non-2xx answer is an error carrying the API's message.
    async fn send(&self, method: &str, url: &str, body: Option<Value>) -> anyhow::Result<(u16, String)> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).context("HTTP method")?;
        let mut request = self.client.request(method.clone(), url);
        if let Some(user) = &self.username {
            request = request.basic_auth(user, self.password.as_deref());
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.map_err(|e| unreachable(url, &e))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match status {
            200..=299 => Ok((status, text)),
            401 => bail!(
                "{method} {url}: the REST API wants credentials: pass --username and --password \
                 (PGHA_API_USERNAME, PGHA_API_PASSWORD), as in the agents' [api] section"
            ),
            _ => bail!("{method} {url}: {status}: {}", text.trim()),
        }
    }
}

/// Why a request got no answer, with what to check: TLS problems are named as such.
fn unreachable(url: &str, e: &reqwest::Error) -> anyhow::Error {
    let mut chain = format!("{e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(&format!(": {s}"));
        source = s.source();
    }
    let lower = chain.to_lowercase();
    let hint = if lower.contains("certificate") || lower.contains("unknownissuer") {
        "the agent's HTTPS certificate is not trusted: pass its CA with --cacert (PGHA_API_CACERT)"
    } else if lower.contains("handshake") || lower.contains("alert") {
        "the TLS handshake failed: if the agents set api.verify_client, pass --cert and --key"
    } else if url.starts_with("http://")
        && ["invalid http version", "connection closed", "reset"].iter().any(|s| lower.contains(s))
    {
        "the agent closed the connection: if it serves HTTPS (api.certfile), use an https:// URL"
    } else {
        "is the agent running? (--api or PGHA_API)"
    };
    anyhow::anyhow!("cannot reach the agent's REST API at {url}: {hint} ({chain})")
}

fn members(cluster: &Value) -> Vec<&Map<String, Value>> {
    cluster["members"].as_array().map(|m| m.iter().filter_map(Value::as_object).collect()).unwrap_or_default()
}

fn text<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Like `patronictl list`: one row per member, the leader first.
async fn list(api: &Api) -> anyhow::Result<ExitCode> {
    let cluster = api.get_json("/cluster").await?;
    let mut rows =
        vec![["Member", "Host", "Role", "State", "TL", "Lag in MB", "Pending restart"].map(String::from).to_vec()];
    let mut all = members(&cluster);
    all.sort_by_key(|m| (text(m, "role") != "leader", text(m, "name").to_string()));
    for m in all {
        let host = match m.get("port").and_then(Value::as_u64) {
            Some(port) => format!("{}:{port}", text(m, "host")),
            None => text(m, "host").to_string(),
        };
        let role = match text(m, "role") {
            "leader" => "Leader",
            "sync_standby" => "Sync Standby",
            _ => "Replica",
        };
        let lag = match m.get("lag") {
            Some(Value::Number(n)) => format!("{}", n.as_u64().unwrap_or(0) / (1024 * 1024)),
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let tl = m.get("timeline").and_then(Value::as_u64).map(|t| t.to_string()).unwrap_or_default();
        let pending = if m.get("pending_restart").and_then(Value::as_bool) == Some(true) { "*" } else { "" };
        rows.push(vec![text(m, "name").into(), host, role.into(), text(m, "state").into(), tl, lag, pending.into()]);
    }
    // As patronictl: the "Pending restart" column only when a member needs a restart.
    if rows.iter().skip(1).all(|r| r[6].is_empty()) {
        rows.iter_mut().for_each(|r| {
            r.pop();
        });
    }
    println!("Cluster: {}", cluster["scope"].as_str().unwrap_or("?"));
    print_table(&rows);
    if cluster["pause"].as_bool() == Some(true) {
        println!("Maintenance mode: on (automatic failover is paused; `pgha ctl resume` ends it)");
    }
    if let Some(s) = cluster.get("scheduled_switchover") {
        println!(
            "Switchover scheduled at {} from {} to {}",
            s["at"].as_str().unwrap_or("?"),
            s["from"].as_str().unwrap_or("the leader"),
            s["to"].as_str().unwrap_or("the healthiest standby")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
}

async fn switchover(api: &Api, candidate: Option<String>, scheduled: Option<String>) -> anyhow::Result<ExitCode> {
    let cluster = api.get_json("/cluster").await?;
    let Some(leader) = leader_of(&cluster) else {
        bail!("the cluster has no leader now: a switchover needs one (use `pgha ctl failover --candidate`)");
    };
    let mut body = json!({ "leader": leader });
    if let Some(c) = candidate {
        body["candidate"] = json!(c);
    }
    if let Some(at) = scheduled {
        body["scheduled_at"] = json!(at);
    }
    let (_, answer) = api.send("POST", &api.url("/switchover"), Some(body)).await?;
    println!("{}", answer.trim());
    Ok(ExitCode::SUCCESS)
}

/// The leader's name in a `/cluster` document.
fn leader_of(cluster: &Value) -> Option<String> {
    members(cluster).iter().find(|m| text(m, "role") == "leader").map(|m| text(m, "name").to_string())
}

/// The REST API URL a member's own agent publishes.
async fn member_api(api: &Api, name: &str) -> anyhow::Result<String> {
    api_url_of(&api.get_json("/cluster").await?, name)
}

/// The REST API URL member `name` publishes in a `/cluster` document.
fn api_url_of(cluster: &Value, name: &str) -> anyhow::Result<String> {
    let all = members(cluster);
    let Some(m) = all.iter().find(|m| text(m, "name") == name) else {
        let names: Vec<&str> = all.iter().map(|m| text(m, "name")).collect();
        bail!("{name} is not a member of the cluster (members: {})", names.join(", "));
    };
    let url = text(m, "api_url");
    if url.is_empty() {
        bail!("{name} publishes no REST API URL");
    }
    Ok(url.trim_end_matches('/').trim_end_matches("/patroni").to_string())
}

/// Restarts one member, or every member one at a time (replicas first, the leader last), each
/// time waiting until its PostgreSQL runs again.
async fn restart(api: &Api, member: Option<String>) -> anyhow::Result<ExitCode> {
    let cluster = api.get_json("/cluster").await?;
    let names: Vec<String> = match member {
        Some(m) => vec![m],
        None => {
            let mut all = members(&cluster);
            all.sort_by_key(|m| (text(m, "role") == "leader", text(m, "name").to_string()));
            all.iter().map(|m| text(m, "name").to_string()).collect()
        }
    };
    for name in names {
        let target = member_api(api, &name).await?;
        let before = api.send("GET", &format!("{target}/patroni"), None).await?.1;
        let started_before = serde_json::from_str::<Value>(&before)?["postmaster_start_time"].clone();
        let (_, answer) = api.send("POST", &format!("{target}/restart"), Some(json!({}))).await?;
        println!("{name}: {}", answer.trim());
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok((_, doc)) = api.send("GET", &format!("{target}/patroni"), None).await {
                let doc: Value = serde_json::from_str(&doc).unwrap_or(Value::Null);
                if doc["state"] == "running" && doc["postmaster_start_time"] != started_before {
                    println!("{name}: running again");
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("{name} did not run again within 5 minutes; see its agent's log");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `restore-cluster`: the leader restores to the target (`POST /restore`), then every other
/// member is cloned from it again (`POST /reinitialize`), each step waited for.
async fn restore_cluster(api: &Api, target: Value, force: bool) -> anyhow::Result<ExitCode> {
    let cluster = api.get_json("/cluster").await?;
    let all = members(&cluster);
    let Some(leader) = leader_of(&cluster) else {
        bail!("the cluster has no leader: a restore needs a running primary (bootstrap from a backup instead: docs/operations.md)");
    };
    let standbys: Vec<String> = all.iter().map(|m| text(m, "name").to_string()).filter(|n| *n != leader).collect();
    let shown: Vec<String> = target
        .as_object()
        .map(|o| {
            o.iter().filter(|(_, v)| !v.is_null() && **v != json!(false)).map(|(k, v)| format!("{k} {v}")).collect()
        })
        .unwrap_or_default();
    if !force {
        eprintln!(
            "This rolls the whole cluster back to {}: {leader} (the primary) archives its WAL, moves its data \
             directory aside and restores the backup there, then {} cloned from it again. Every change after \
             the target is gone from the running cluster. Add --force to go ahead.",
            shown.join(", "),
            if standbys.is_empty() { "no standby is".to_string() } else { format!("{} are", standbys.join(", ")) }
        );
        return Ok(ExitCode::FAILURE);
    }
    let leader_api = api_url_of(&cluster, &leader)?;
    let (_, answer) = api.send("POST", &format!("{leader_api}/restore"), Some(target)).await?;
    println!("{leader}: {}", answer.trim());
    let doc = match wait_for_job(api, &leader, &leader_api, "restore", Duration::from_secs(1)).await? {
        (true, doc) => doc,
        (false, _) => return Ok(ExitCode::FAILURE),
    };
    let timeline = doc["timeline"].as_u64();
    let mut left_out = Vec::new();
    for name in &standbys {
        let asked = async {
            let url = member_api(api, name).await?;
            api.send("POST", &format!("{url}/reinitialize"), Some(json!({}))).await
        };
        match asked.await {
            Ok((_, answer)) => println!("{name}: {}", answer.trim()),
            Err(e) => {
                println!("{name}: not reinitialized ({e:#}); run `pgha ctl reinit {name}` once its agent answers");
                left_out.push(name.clone());
            }
        }
    }
    let waiting: Vec<&String> = standbys.iter().filter(|n| !left_out.contains(n)).collect();
    let deadline = Instant::now() + Duration::from_secs(6 * 3600);
    loop {
        let cluster = api.get_json("/cluster").await.unwrap_or(Value::Null);
        let all = members(&cluster);
        let streaming = |name: &str| {
            all.iter().any(|m| {
                text(m, "name") == name
                    && text(m, "state") == "streaming"
                    && (timeline.is_none() || m.get("timeline").and_then(Value::as_u64) == timeline)
            })
        };
        if waiting.iter().all(|n| streaming(n)) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the standbys do not all stream from {leader} after 6 hours; see `pgha ctl list` and their agents' logs");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    list(api).await?;
    if !left_out.is_empty() {
        println!("Restored; still to reinitialize: {}", left_out.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "Restored {} to {}; the data directory from before is kept on {leader} until you remove it",
        cluster["scope"].as_str().unwrap_or("the cluster"),
        shown.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// `backup`: the leader's agent runs `pgha backup create` (`POST /backup`); waits for it and
/// prints its report.
async fn take_backup(api: &Api, kind: &str) -> anyhow::Result<ExitCode> {
    let cluster = api.get_json("/cluster").await?;
    let Some(leader) = leader_of(&cluster) else {
        bail!("the cluster has no leader now: a backup needs a running primary");
    };
    let leader_api = api_url_of(&cluster, &leader)?;
    let (_, answer) = api.send("POST", &format!("{leader_api}/backup"), Some(json!({ "type": kind }))).await?;
    println!("{leader}: {}", answer.trim());
    let (done, _) = wait_for_job(api, &leader, &leader_api, "backup", Duration::from_millis(500)).await?;
    Ok(if done { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Polls a member's `/patroni` until the job it shows under `field` (`restore`, `backup`) is
/// `done` (true) or `failed` (false), printing each new state and detail; the last document.
async fn wait_for_job(
    api: &Api,
    member: &str,
    member_api: &str,
    field: &str,
    every: Duration,
) -> anyhow::Result<(bool, Value)> {
    let mut last = String::new();
    let mut silent_since = None::<Instant>;
    loop {
        tokio::time::sleep(every).await;
        let doc = match api.send("GET", &format!("{member_api}/patroni"), None).await {
            Ok((_, body)) => serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
            Err(e) => {
                if silent_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(120) {
                    bail!("{member}'s API has not answered for 2 minutes ({e}); see its agent's log");
                }
                continue;
            }
        };
        silent_since = None;
        let job = &doc[field];
        let (state, detail) = (job["state"].as_str().unwrap_or(""), job["detail"].as_str().unwrap_or(""));
        if detail != last {
            println!("{member}: {state}: {detail}");
            last = detail.to_string();
        }
        match state {
            "done" => return Ok((true, doc)),
            "failed" => return Ok((false, doc)),
            _ => {}
        }
    }
}

/// Asks one member, or every member, to reload its configuration (`POST /reload`).
async fn reload(api: &Api, member: Option<String>) -> anyhow::Result<ExitCode> {
    let names: Vec<String> = match member {
        Some(m) => vec![m],
        None => members(&api.get_json("/cluster").await?).iter().map(|m| text(m, "name").to_string()).collect(),
    };
    for name in names {
        let target = member_api(api, &name).await?;
        let (_, answer) = api.send("POST", &format!("{target}/reload"), Some(json!({}))).await?;
        println!("{name}: {}", answer.trim());
    }
    Ok(ExitCode::SUCCESS)
}

/// Like `patronictl dsn`: `host=... port=...` of the leader, or of the member named.
async fn dsn(api: &Api, member: Option<String>) -> anyhow::Result<ExitCode> {
    let cluster = api.get_json("/cluster").await?;
    let all = members(&cluster);
    let found = match &member {
        Some(name) => all.iter().find(|m| text(m, "name") == name.as_str()),
        None => all.iter().find(|m| text(m, "role") == "leader"),
    };
    let Some(m) = found else {
        match member {
            Some(name) => bail!("{name} is not a member of the cluster"),
            None => bail!("the cluster has no leader now"),
        }
    };
    let mut dsn = format!("host={}", text(m, "host"));
    if let Some(port) = m.get("port").and_then(Value::as_u64) {
        dsn.push_str(&format!(" port={port}"));
    }
    println!("{dsn}");
    Ok(ExitCode::SUCCESS)
}

/// Like `patronictl history`: one row per timeline switch, oldest first.
async fn history(api: &Api) -> anyhow::Result<ExitCode> {
    let history = api.get_json("/history").await?;
    let mut rows = vec![["TL", "LSN", "Reason", "Timestamp", "New Leader"].map(String::from).to_vec()];
    for entry in history.as_array().into_iter().flatten() {
        let field = |i: usize| match entry.get(i) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        rows.push((0..5).map(field).collect());
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

async fn pause(api: &Api, on: bool) -> anyhow::Result<ExitCode> {
    api.send("PATCH", &api.url("/config"), Some(json!({ "pause": on }))).await?;
    println!("{}", if on { "Maintenance mode on: automatic failover is paused" } else { "Maintenance mode off" });
    Ok(ExitCode::SUCCESS)
}

/// `--set a.b.c=value` pairs as one JSON merge patch: values are JSON when they parse as JSON
/// (numbers, true/false, null to remove a key), strings otherwise.
pub(crate) fn config_patch(pairs: &[String]) -> anyhow::Result<Value> {
    let mut patch = Value::Object(Map::new());
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--set {pair:?}: expected KEY=VALUE, e.g. ttl=30 or postgresql.parameters.work_mem=64MB");
        };
        let value = serde_json::from_str(value.trim()).unwrap_or_else(|_| Value::String(value.to_string()));
        let path: Vec<&str> = key.trim().split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            bail!("--set {pair:?}: empty part in the key");
        }
        let mut at = &mut patch;
        for part in &path[..path.len() - 1] {
            let object = at.as_object_mut().context("conflicting keys")?;
            at = object.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
            if !at.is_object() {
                bail!("--set {pair:?}: {part} is set to a value and used as a section");
            }
        }
        let object = at.as_object_mut().context("conflicting keys")?;
        object.insert(path[path.len() - 1].to_string(), value);
    }
    Ok(patch)
}

/// Like `patronictl version`: this ctl's version, then each member's agent's (from `/patroni`).
async fn version(api: &Api) -> anyhow::Result<ExitCode> {
    println!("pgha ctl version {}", env!("CARGO_PKG_VERSION"));
    let cluster = api.get_json("/cluster").await?;
    for m in members(&cluster) {
        let name = text(m, "name");
        let answer = match member_api(api, name).await {
            Ok(url) => api.send("GET", &format!("{url}/patroni"), None).await.map(|(_, body)| body),
            Err(e) => Err(e),
        };
        match answer.map(|body| serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)) {
            Ok(doc) => println!("{name}: pgha {}", doc["patroni"]["version"].as_str().unwrap_or("?")),
            Err(e) => println!("{name}: no answer ({e:#})"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn edit_config(api: &Api, set: &[String]) -> anyhow::Result<ExitCode> {
    if set.is_empty() {
        bail!("nothing to change: give --set KEY=VALUE or --pg NAME=VALUE (repeatable)");
    }
    let patch = config_patch(set)?;
    let (_, body) = api.send("PATCH", &api.url("/config"), Some(patch)).await?;
    let config: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    println!("{}", serde_json::to_string_pretty(&config)?);
    Ok(ExitCode::SUCCESS)
}

fn print_raft(status: &Value) {
    let list = |key: &str| {
        status[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    println!("Raft leader: {}  term: {}", status["leader"].as_str().unwrap_or("none"), status["term"]);
    println!("Voters: {}", list("voters"));
    let learners = list("learners");
    if !learners.is_empty() {
        println!("Learners (catching up): {learners}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_pairs_become_one_nested_patch_with_json_values() {
        let patch = config_patch(&[
            "ttl=30".into(),
            "postgresql.parameters.work_mem=64MB".into(),
            "postgresql.parameters.max_connections=200".into(),
            "pause=false".into(),
            "master_start_timeout=null".into(),
        ])
        .unwrap();
        assert_eq!(
            patch,
            json!({
                "ttl": 30,
                "postgresql": { "parameters": { "work_mem": "64MB", "max_connections": 200 } },
                "pause": false,
                "master_start_timeout": null
            })
        );
        assert!(config_patch(&["ttl".into()]).unwrap_err().to_string().contains("expected KEY=VALUE"));
        assert!(config_patch(&["a=1".into(), "a.b=2".into()]).unwrap_err().to_string().contains("used as a section"));
        assert!(config_patch(&["a..b=1".into()]).unwrap_err().to_string().contains("empty part"));
    }
}
