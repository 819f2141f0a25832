//! The etcd v3 backend of `KvStore`, over `etcd-client`.
//!
//! etcd's gRPC streams do not survive a member restart or a network cut: this module supervises
//! them. Watches are re-opened from the next unseen revision (continuity kept, `Resync` sent when
//! etcd compacted past it); lease keep-alive streams are re-opened on the next refresh. Unary
//! calls go through the client's balanced channel, so a dead member is skipped; idempotent calls
//! are retried within the operation timeout, writes are not (their outcome is unknown).

use crate::kv::{
    Compare, KeyValue, KvError, KvStore, LeaseId, OpResult, RangeResponse, Revision, Txn, TxnOp, TxnResponse,
    WatchEvent, WatchReceiver,
};
use async_trait::async_trait;
use etcd_client as ec;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};

/// How an `EtcdStore` talks to etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Upper bound for one request, retries included.
    pub op_timeout: Duration,
    /// Upper bound for establishing a TCP connection to one member.
    pub connect_timeout: Duration,
    /// TLS toward `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// etcd's user authentication (`etcdctl auth enable`): the client logs in with these, and
    /// logs in again when its token expires.
    pub user: Option<EtcdUser>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            tls: None,
            user: None,
        }
    }
}

/// An etcd user name and its password; the password never shows in `Debug`.
#[derive(Clone, PartialEq)]
pub struct EtcdUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdUser").field("name", &self.name).field("password", &"<hidden>").finish()
    }
}

/// TLS toward etcd (Patroni's `etcd3` `cacert`, `cert` and `key`): the CA that signed the
/// members' certificates, and a client certificate when etcd runs with `--client-cert-auth`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EtcdTls {
    pub ca_file: std::path::PathBuf,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

impl EtcdTls {
    /// The client's TLS settings, from the files (an unreadable one is named).
    fn load(&self) -> Result<ec::TlsOptions, KvError> {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path)
                .map_err(|e| KvError::Rejected(format!("cannot read the etcd {what} {}: {e}", path.display())))
        };
        let mut tls = ec::TlsOptions::new().ca_certificate(ec::Certificate::from_pem(read(&self.ca_file, "CA file")?));
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(ec::Identity::from_pem(read(cert, "client certificate")?, read(key, "client key")?));
            }
            (None, None) => {}
            _ => {
                return Err(KvError::Rejected(
                    "an etcd client certificate needs both its certificate and its key file".into(),
                ))
            }
        }
        Ok(tls)
    }
}

type Keeper = (ec::LeaseKeeper, ec::LeaseKeepAliveStream);

pub struct EtcdStore {
    client: ec::Client,
    options: EtcdOptions,
    keepers: Mutex<HashMap<LeaseId, Keeper>>,
}

impl EtcdStore {
    /// Connects to the given client URLs. Connections are made lazily: an unreachable cluster
    /// shows up as `Unavailable` on the first request, not here.
    pub async fn connect(endpoints: &[String], options: EtcdOptions) -> Result<EtcdStore, KvError> {
        let connect = ec::ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.op_timeout)
            // gRPC pings find a silently dead member; etcd refuses pings more often than every 5 s.
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from the quorum fails requests instead of serving stale data.
            .with_require_leader(true);
        let https = endpoints.iter().any(|e| e.starts_with("https://"));
        let connect = match (&options.tls, https) {
            (Some(tls), true) => connect.with_tls(tls.load()?),
            (None, true) => {
                return Err(KvError::Rejected(
                    "https:// etcd endpoints need the CA file that signed the members' certificates".into(),
                ))
            }
            (Some(_), false) => {
                return Err(KvError::Rejected("etcd TLS files are set: write the endpoints as https:// URLs".into()))
            }
            (None, false) => connect,
        };
        let connect = match &options.user {
            Some(user) => connect.with_user(&user.name, &user.password).with_auto_token_refresh(true),
            None => connect,
        };
        let client = ec::Client::connect(endpoints, Some(connect)).await.map_err(classify)?;
        Ok(EtcdStore { client, options, keepers: Mutex::new(HashMap::new()) })
    }

    /// Runs an idempotent request, retrying while etcd is unavailable, within the op timeout.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, KvError>
    where
        F: FnMut(ec::Client) -> Fut,
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.op_timeout;
        let mut last = KvError::Unavailable("no attempt made".into());
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, call(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => match classify(e) {
                    KvError::Unavailable(m) => last = KvError::Unavailable(m),
                    other => return Err(other),
                },
                Err(_) => last = KvError::Unavailable(format!("no answer within {:?}", self.options.op_timeout)),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last)
    }

    async fn keep_alive_once(
        &self,
        keepers: &mut HashMap<LeaseId, Keeper>,
        lease: LeaseId,
    ) -> Result<Duration, KvError> {
        let (keeper, stream) = match keepers.entry(lease) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(self.client.clone().lease_keep_alive(lease).await.map_err(classify)?)
            }
        };
        keeper.keep_alive().await.map_err(classify)?;
        match stream.message().await.map_err(classify)? {
            Some(resp) if resp.ttl() > 0 => Ok(Duration::from_secs(resp.ttl() as u64)),
            Some(_) => Err(KvError::LeaseNotFound(lease)),
            None => Err(KvError::Unavailable("lease keep-alive stream closed".into())),
        }
    }
}

/// Sorts etcd errors into what the caller can do about them.
fn classify(e: ec::Error) -> KvError {
    match e {
        ec::Error::GRpcStatus(status) => {
            // A bare "transport error" says nothing: its causes (a refused TLS handshake, a
            // missing client certificate) do.
            let mut msg = status.message().to_string();
            let mut cause = std::error::Error::source(&status);
            while let Some(c) = cause {
                let text = c.to_string();
                if !msg.contains(&text) {
                    msg.push_str(": ");
                    msg.push_str(&text);
                }
                cause = c.source();
            }
            match status.code() {
                tonic_code::NotFound if msg.contains("lease not found") => KvError::LeaseNotFound(0),
                tonic_code::Unavailable
                | tonic_code::DeadlineExceeded
                | tonic_code::Unknown
                | tonic_code::Aborted
                | tonic_code::Cancelled
                | tonic_code::Internal => KvError::Unavailable(format!("{:?}: {msg}", status.code())),
                code => KvError::Rejected(format!("{code:?}: {msg}")),
            }
        }
        ec::Error::LeaseKeepAliveError(m) if m.contains("lease not found") => KvError::LeaseNotFound(0),
        ec::Error::InvalidArgs(m) | ec::Error::EndpointError(m) => KvError::Rejected(m),
        ec::Error::InvalidUri(u) => KvError::Rejected(format!("invalid etcd URL: {u}")),
        other => KvError::Unavailable(other.to_string()),
    }
}

/// What a configuration file says of etcd's security: the agent's `[dcs.etcd]` (`cacert`, ...)
/// and the pooler's `[cluster]` (`etcd_cacert`, ...) both read into this.
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdSecurity<'a> {
    pub cacert: Option<&'a std::path::Path>,
    pub cert: Option<&'a std::path::Path>,
    pub key: Option<&'a std::path::Path>,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

impl EtcdSecurity<'_> {
    /// The settings fit together and fit the endpoints: `https://` ones need the CA, a CA needs
    /// `https://` ones, a client certificate needs its key, a user name its password. The keys
    /// named in an error are `prefix` followed by `cacert`, `cert`, `key`, `username`,
    /// `password` or `endpoints`.
    pub fn check(&self, endpoints: &[String], prefix: &str) -> Result<(), crate::config_file::Invalid> {
        use crate::config_file::Invalid;
        let https = endpoints.iter().filter(|u| u.starts_with("https://")).count();
        match (https, self.cacert) {
            (0, Some(ca)) => {
                return Err(Invalid::new(
                    format!("{prefix}cacert"),
                    format!("{:?}", ca.display().to_string()),
                    "TLS toward etcd needs https:// endpoints",
                ))
            }
            (1.., None) => {
                return Err(Invalid::missing(
                    format!("{prefix}cacert"),
                    "https:// endpoints need the CA file that signed the etcd members' certificates",
                ))
            }
            (n, _) if n > 0 && n < endpoints.len() => {
                return Err(Invalid::new(
                    format!("{prefix}endpoints"),
                    format!("{endpoints:?}"),
                    "all http:// or all https://",
                ))
            }
            _ => {}
        }
        let pair = |first: bool, second: bool, names: (&str, &str), what: &str| match (first, second) {
            (true, false) => Err(Invalid::missing(format!("{prefix}{}", names.1), what.to_owned())),
            (false, true) => Err(Invalid::missing(format!("{prefix}{}", names.0), what.to_owned())),
            _ => Ok(()),
        };
        pair(
            self.cert.is_some(),
            self.key.is_some(),
            ("cert", "key"),
            "a client certificate needs both its certificate and its key file",
        )?;
        pair(
            self.username.is_some(),
            self.password.is_some(),
            ("username", "password"),
            "etcd's user authentication needs both a user name and a password",
        )
    }

    /// The client's options: `base` with TLS when `cacert` is set, and the user when
    /// `username` and `password` are.
    pub fn options(&self, base: EtcdOptions) -> EtcdOptions {
        let tls = self.cacert.map(|ca| EtcdTls {
            ca_file: ca.to_path_buf(),
            cert_file: self.cert.map(std::path::Path::to_path_buf),
            key_file: self.key.map(std::path::Path::to_path_buf),
        });
        let user = self
            .username
            .zip(self.password)
            .map(|(name, password)| EtcdUser { name: name.to_owned(), password: password.to_owned() });
        EtcdOptions { tls, user, ..base }
    }
}

/// Whether the request failed before it was sent (no connection to the chosen member).
fn never_sent(e: &ec::Error) -> bool {
    match e {
        ec::Error::GRpcStatus(status) => {
            status.code() == tonic_code::Unavailable && status.message().contains("tcp connect error")
        }
        ec::Error::TransportError(_) => true,
        _ => false,
    }
}

/// gRPC status codes (etcd-client's transport is tonic).
use tonic::Code as tonic_code;

fn key_value(kv: &ec::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn to_etcd_compare(c: &Compare) -> ec::Compare {
    use ec::CompareOp::Equal;
    match c {
        Compare::CreateRevisionEq(k, r) => ec::Compare::create_revision(k.as_str(), Equal, *r),
        Compare::ModRevisionEq(k, r) => ec::Compare::mod_revision(k.as_str(), Equal, *r),
        Compare::ValueEq(k, v) => ec::Compare::value(k.as_str(), Equal, v.clone()),
        Compare::LeaseEq(k, l) => ec::Compare::lease(k.as_str(), Equal, *l),
    }
}

fn to_etcd_op(op: &TxnOp) -> ec::TxnOp {
    match op {
        TxnOp::Put { key, value, lease } => {
            let opts = (*lease != 0).then(|| ec::PutOptions::new().with_lease(*lease));
            ec::TxnOp::put(key.as_str(), value.clone(), opts)
        }
        TxnOp::Delete { key } => ec::TxnOp::delete(key.as_str(), None),
        TxnOp::Get { key } => ec::TxnOp::get(key.as_str(), None),
    }
}

fn header_revision(h: Option<&ec::ResponseHeader>) -> Revision {
    h.map_or(0, |h| h.revision())
}

#[async_trait]
impl KvStore for EtcdStore {
    async fn range_prefix(&self, prefix: &str) -> Result<RangeResponse, KvError> {
        let resp = self
            .retrying(|mut c| {
                let prefix = prefix.to_string();
                async move { c.get(prefix, Some(ec::GetOptions::new().with_prefix())).await }
            })
            .await?;
        Ok(RangeResponse { kvs: resp.kvs().iter().map(key_value).collect(), revision: header_revision(resp.header()) })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, KvError> {
        let branch = |ops: &[TxnOp]| ops.iter().map(to_etcd_op).collect::<Vec<_>>();
        let etcd_txn = ec::Txn::new()
            .when(txn.compares.iter().map(to_etcd_compare).collect::<Vec<_>>())
            .and_then(branch(&txn.success))
            .or_else(branch(&txn.failure));
        // Retried only when the request never reached etcd (the channel picked a dead member):
        // a write whose answer was lost may have been applied.
        let deadline = tokio::time::Instant::now() + self.options.op_timeout;
        let resp = loop {
            let attempt = tokio::time::timeout_at(deadline, self.client.clone().txn(etcd_txn.clone())).await;
            match attempt {
                Ok(Ok(resp)) => break resp,
                Ok(Err(e)) if never_sent(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(e)) => return Err(classify(e)),
                Err(_) => return Err(KvError::Unavailable(format!("no answer within {:?}", self.options.op_timeout))),
            }
        };
        let revision = header_revision(resp.header());
        let ran = if resp.succeeded() { &txn.success } else { &txn.failure };
        let results = resp
            .op_responses()
            .into_iter()
            .zip(ran)
            .map(|(r, _)| match r {
                ec::TxnOpResponse::Put(p) => OpResult::Put { revision: header_revision(p.header()).max(revision) },
                ec::TxnOpResponse::Delete(d) => OpResult::Delete { deleted: d.deleted() > 0 },
                ec::TxnOpResponse::Get(g) => OpResult::Get(g.kvs().first().map(key_value)),
                ec::TxnOpResponse::Txn(_) => OpResult::Delete { deleted: false },
            })
            .collect();
        Ok(TxnResponse { succeeded: resp.succeeded(), revision, results })
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, KvError> {
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        // Not retried: a lost answer leaves an orphan lease, which expires on its own.
        let resp = tokio::time::timeout(self.options.op_timeout, self.client.clone().lease_grant(secs, None))
            .await
            .map_err(|_| KvError::Unavailable("lease grant timed out".into()))?
            .map_err(classify)?;
        Ok(resp.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration, KvError> {
        let deadline = tokio::time::Instant::now() + self.options.op_timeout;
        let mut keepers = self.keepers.lock().await;
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.keep_alive_once(&mut keepers, lease)).await;
            match attempt {
                Ok(Ok(ttl)) => return Ok(ttl),
                Ok(Err(KvError::LeaseNotFound(_))) => {
                    keepers.remove(&lease);
                    return Err(KvError::LeaseNotFound(lease));
                }
                Ok(Err(KvError::Unavailable(m))) => {
                    // The stream died (member restarted, connection cut): open a new one.
                    keepers.remove(&lease);
                    if tokio::time::Instant::now() >= deadline {
                        return Err(KvError::Unavailable(m));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(other)) => {
                    keepers.remove(&lease);
                    return Err(other);
                }
                Err(_) => {
                    keepers.remove(&lease);
                    return Err(KvError::Unavailable(format!(
                        "lease keep-alive: no answer within {:?}",
                        self.options.op_timeout
                    )));
                }
            }
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), KvError> {
        self.keepers.lock().await.remove(&lease);
        let r = self.retrying(|mut c| async move { c.lease_revoke(lease).await }).await;
        match r {
            Ok(_) | Err(KvError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn watch_prefix(&self, prefix: &str, start_revision: Revision) -> Result<WatchReceiver, KvError> {
        // "From now" means from the store's revision at this call: pinned here, so a watch that must
        // be re-opened before etcd confirmed it still delivers every write made after this call.
        let start_revision = if start_revision > 0 {
            start_revision
        } else {
            let resp = self
                .retrying(|mut c| {
                    let prefix = prefix.to_string();
                    async move { c.get(prefix, Some(ec::GetOptions::new().with_prefix().with_count_only())).await }
                })
                .await?;
            header_revision(resp.header()) + 1
        };
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(supervise_watch(self.client.clone(), prefix.to_string(), start_revision, tx));
        Ok(rx)
    }
}

/// How often a watch asks etcd for a progress report, and how long it tolerates silence.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
const PROGRESS_DEADLINE: Duration = Duration::from_millis(1500);

/// Keeps one prefix watch alive for as long as its receiver exists.
async fn supervise_watch(client: ec::Client, prefix: String, start_revision: Revision, tx: mpsc::Sender<WatchEvent>) {
    let mut next = start_revision;
    let mut backoff = Duration::from_millis(50);
    while !tx.is_closed() {
        let opts = ec::WatchOptions::new().with_prefix().with_prev_key().with_start_revision(next.max(0));
        let (mut requests, mut stream) = match client.clone().watch(prefix.as_str(), Some(opts)).await {
            Ok(s) => s.split(),
            Err(e) => {
                tracing::debug!(error = %e, "etcd watch: could not open, retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // A stream can go silent without an error (a member killed mid-stream can leave the HTTP/2
        // connection half-open until keep-alive notices, seconds later). Ask etcd for a progress
        // report every PROGRESS_EVERY; if nothing at all arrives within PROGRESS_DEADLINE, re-open.
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = tx.closed() => return,
                _ = progress.tick() => {
                    if last_heard.elapsed() > PROGRESS_DEADLINE {
                        tracing::debug!("etcd watch silent for {:?}; re-opening from revision {next}", last_heard.elapsed());
                        break;
                    }
                    if requests.request_progress().await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            last_heard = tokio::time::Instant::now();
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "etcd watch stream broke; re-opening from revision {next}");
                    break;
                }
            };
            backoff = Duration::from_millis(50);
            if resp.compact_revision() > 0 {
                // History before the compaction is gone: the consumer must re-read everything.
                next = resp.compact_revision();
                if tx.send(WatchEvent::Resync { revision: next }).await.is_err() {
                    return;
                }
                break;
            }
            if resp.canceled() {
                tracing::debug!(reason = resp.cancel_reason(), "etcd cancelled the watch; re-opening");
                break;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let prev = ev.prev_kv().map(key_value);
                next = kv.mod_revision() + 1;
                let event = match ev.event_type() {
                    ec::EventType::Put => WatchEvent::Put { kv: key_value(kv), prev },
                    ec::EventType::Delete => WatchEvent::Delete {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        revision: kv.mod_revision(),
                        prev,
                    },
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::{EtcdOptions, EtcdSecurity};
    use std::path::Path;

    #[test]
    fn security_settings_must_fit_together_and_the_endpoints() {
        let plain = ["http://10.0.0.1:2379".to_owned()];
        let tls = ["https://10.0.0.1:2379".to_owned(), "https://10.0.0.2:2379".to_owned()];
        let mixed = ["https://10.0.0.1:2379".to_owned(), "http://10.0.0.2:2379".to_owned()];
        let ca = Some(Path::new("/etc/etcd/ca.crt"));
        let (cert, key) = (Some(Path::new("/etc/pgha/etcd.crt")), Some(Path::new("/etc/pgha/etcd.key")));
        let check = |endpoints: &[String], security: EtcdSecurity| {
            security.check(endpoints, "dcs.etcd.").map_err(|e| e.to_string())
        };
        let none = EtcdSecurity::default();
        assert_eq!(check(&plain, none), Ok(()));
        assert_eq!(check(&tls, EtcdSecurity { cacert: ca, ..none }), Ok(()));
        let full = EtcdSecurity { cacert: ca, cert, key, username: Some("root"), password: Some("pw") };
        assert_eq!(check(&tls, full), Ok(()));
        let errors = [
            check(&tls, none),
            check(&plain, EtcdSecurity { cacert: ca, ..none }),
            check(&mixed, EtcdSecurity { cacert: ca, ..none }),
            check(&tls, EtcdSecurity { cacert: ca, cert, ..none }),
            check(&tls, EtcdSecurity { cacert: ca, key, ..none }),
            check(&plain, EtcdSecurity { username: Some("root"), ..none }),
            check(&plain, EtcdSecurity { password: Some("pw"), ..none }),
        ];
        let keys: Vec<String> = errors
            .iter()
            .map(|e| e.clone().unwrap_err().split([':', ' ']).next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            keys,
            [
                "dcs.etcd.cacert",
                "dcs.etcd.cacert",
                "dcs.etcd.endpoints",
                "dcs.etcd.key",
                "dcs.etcd.cert",
                "dcs.etcd.password",
                "dcs.etcd.username"
            ]
        );
        assert!(errors[0].clone().unwrap_err().contains("https:// endpoints need the CA file"), "{errors:?}");
        assert!(errors[1].clone().unwrap_err().contains("TLS toward etcd needs https:// endpoints"), "{errors:?}");

        // The client's options carry what is set, and nothing that is not.
        let options = full.options(EtcdOptions::default());
        let tls = options.tls.expect("TLS with a CA");
        assert_eq!(
            (tls.ca_file.as_path(), tls.cert_file.as_deref(), tls.key_file.as_deref()),
            (Path::new("/etc/etcd/ca.crt"), cert, key)
        );
        assert_eq!(options.user.map(|u| (u.name, u.password)), Some(("root".into(), "pw".into())));
        let bare = none.options(EtcdOptions::default());
        assert!(bare.tls.is_none() && bare.user.is_none());
    }
}
