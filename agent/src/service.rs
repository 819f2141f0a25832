//! `pgha agent`: assembles one node from its config (DCS session, local PostgreSQL, runtime loop)
//! and runs it until SIGTERM or SIGINT.

use crate::api::{ApiState, BasicAuth};
use crate::config::{AgentConfig, DcsBackend};
use crate::postgres::binaries::{BinDir, DEFAULT_MAJOR};
use crate::postgres::control::{Credentials, LocalPostgres, PgSettings};
use crate::postgres::os_user::RunAs;
use crate::runtime::Runtime;
use crate::status::NodeStatus;
use consensus::dcs::{Dcs, KvDcs};
use consensus::etcd::{EtcdOptions, EtcdStore};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Setup(String),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> ServiceError + '_ {
    move |e| ServiceError::Setup(format!("{what}: {e}"))
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(config: AgentConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), ServiceError> {
    let ha = config.ha.to_ha_config();
    // The built-in DCS member runs for as long as the agent does.
    let mut raft_member = None;
    let mut raft_admin = None;
    let dcs: Arc<dyn Dcs> = match config.dcs.backend {
        DcsBackend::Etcd => {
            let endpoints = config.dcs.etcd.as_ref().map(|e| e.endpoints.clone()).unwrap_or_default();
            let base = EtcdOptions { op_timeout: ha.retry_timeout, ..EtcdOptions::default() };
            let options = config.dcs.etcd.as_ref().map_or(base.clone(), |e| e.security().options(base));
            let store = EtcdStore::connect(&endpoints, options).await.map_err(setup("connecting to etcd"))?;
            Arc::new(KvDcs::new(Arc::new(store), &config.namespace, &config.scope, &config.name, ha.ttl))
        }
        DcsBackend::Raft => {
            let Some(raft) = config.dcs.raft.as_ref() else {
                return Err(ServiceError::Setup("backend = \"raft\" needs a [dcs.raft] section".into()));
            };
            let started =
                crate::raft_dcs::start(&config.name, raft, ha.retry_timeout).await.map_err(ServiceError::Setup)?;
            let store = Arc::new(started.store);
            raft_admin = Some(store.clone());
            raft_member = Some(started.member);
            Arc::new(KvDcs::new(store, &config.namespace, &config.scope, &config.name, ha.ttl))
        }
    };
    let bin = BinDir::locate(config.postgresql.bin_dir.as_deref(), DEFAULT_MAJOR).map_err(setup("PostgreSQL"))?;
    let run_as = RunAs::for_postgres(&config.postgresql.os_user).map_err(setup("OS user"))?;
    let superuser = Credentials {
        username: config.postgresql.superuser.username.clone(),
        password: config.postgresql.superuser.resolve_password().map_err(setup("postgresql.superuser"))?,
    };
    let replication = Credentials {
        username: config.postgresql.replication.username.clone(),
        password: config.postgresql.replication.resolve_password().map_err(setup("postgresql.replication"))?,
    };
    let mut run_dir = config.postgresql.data_dir.clone().into_os_string();
    run_dir.push(".run");
    let mut parameters: Vec<(String, String)> = config
        .postgresql
        .parameters
        .iter()
        .map(|(k, v)| {
            let v = match v {
                toml::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    if let Some(b) = &config.backup {
        // Written as local parameters: they win over the DCS (validation keeps the file's out).
        parameters.extend(crate::postgres::archiving::parameters(&b.config).map_err(ServiceError::Setup)?);
    }
    let pg = LocalPostgres::new(PgSettings {
        bin,
        data_dir: config.postgresql.data_dir.clone(),
        run_as,
        listen: config.postgresql.listen,
        run_dir: run_dir.into(),
        superuser,
        replication,
        parameters,
        basebackup_max_rate: config.postgresql.basebackup_max_rate.clone(),
    });
    pg.prepare_dirs().map_err(setup("preparing directories"))?;
    // Before PostgreSQL can be started on a half-restored directory.
    match crate::runtime::put_back_interrupted(&config.postgresql.data_dir) {
        Ok(None) => {}
        Ok(Some(target)) => tracing::error!(
            "a restore to {target} was interrupted (the agent stopped before it ended): the data directory from \
             before it is back in place"
        ),
        Err(e) => {
            return Err(ServiceError::Setup(format!(
                "a restore was interrupted and the data directory from before could not be put back ({e}); put it \
                 back by hand before starting the agent"
            )))
        }
    }
    let (status_tx, status_rx) = tokio::sync::watch::channel(NodeStatus::starting(&config.name, &config.scope));
    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(16);
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(setup(&format!("REST API: cannot listen on {}", config.api.listen)))?;
    let auth = match (&config.api.username, &config.api.password) {
        (Some(u), Some(p)) => Some(BasicAuth::new(u.clone(), p.clone())),
        _ => None,
    };
    let tls = crate::api::ApiTls::from_config(&config.api).map_err(setup("REST API TLS"))?;
    let api_state = ApiState::new(status_rx, dcs.clone(), commands_tx)
        .with_auth(auth)
        .with_raft(raft_admin)
        .with_client_certificates_for_changes(config.api.verify_client == crate::config::VerifyClient::Optional);
    let (api_stop_tx, api_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(crate::api::serve(listener, tls, api_state, async move {
        let _ = api_stop_rx.await;
    }));
    tracing::info!(member = %config.name, scope = %config.scope, "agent starting");
    Runtime::new(&config, dcs, pg, status_tx, commands_rx).run(shutdown).await;
    let _ = api_stop_tx.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), api).await;
    if let Some(member) = raft_member {
        member.shutdown().await;
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the agent runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
