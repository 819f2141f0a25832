//! Prometheus `/metrics` over HTTP on metrics_listen (off when empty): per pool the clients
//! (active, waiting) and servers by state, the wait-time histogram and the totals, plus the
//! process-wide client counters and errors. Names follow pgbouncer_exporter where it has one
//! (`pgbouncer_pools_*`, `pgbouncer_stats_*`); the rest are `pgha_pooler_*`. Reads the
//! counters of `stats` and the pools; counts nothing itself.

use crate::pool::{Pool, ServerStates};
use crate::runtime::Shared;
use crate::stats::WAIT_BUCKETS;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Starts the HTTP listener when `listen` is set; the task serves until aborted.
/// After `--takeover`, the old process's listener of the same metrics_listen is served.
pub async fn serve(
    listen: &str,
    shared: Arc<Shared>,
    taken: Option<&mut crate::takeover::Taken>,
) -> std::io::Result<Option<tokio::task::JoinHandle<()>>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let named = |e: std::io::Error| std::io::Error::new(e.kind(), format!("metrics_listen = {listen:?}: {e}"));
    let name = crate::takeover::SocketName::Metrics(listen.to_owned());
    let listener = match crate::takeover::take_listener(taken, &name).map_err(named)? {
        Some(listener) => listener,
        None => tokio::net::TcpListener::bind(listen).await.map_err(named)?.into_std().map_err(named)?,
    };
    shared.handover.keep(name, &listener).map_err(named)?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let shared = shared.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(&shared)) }
        }),
    );
    tracing::info!(listen, "serving Prometheus metrics on /metrics");
    // On the housekeeping thread (`crate::clock`): the HTTP library may arm timers.
    Ok(Some(crate::clock::handle().spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!("metrics listener stopped: {e}");
                return;
            }
        };
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics listener stopped: {e}");
        }
    })))
}

/// A label value in the exposition format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(pool: &Pool) -> String {
    format!("database=\"{}\",user=\"{}\"", escape(&pool.key.database), escape(&pool.key.user))
}

/// One metric family: HELP, TYPE, then one sample per pool.
fn family(out: &mut String, name: &str, kind: &str, help: &str, pools: &[Arc<Pool>], value: impl Fn(&Pool) -> f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for pool in pools {
        let _ = writeln!(out, "{name}{{{}}} {}", labels(pool), value(pool));
    }
}

/// The whole exposition text.
pub fn render(shared: &Shared) -> String {
    let mut pools = shared.pools.all();
    pools.sort_by(|a, b| (&a.key.database, &a.key.user).cmp(&(&b.key.database, &b.key.user)));
    let mut out = String::with_capacity(4096);
    let _ = writeln!(out, "# HELP pgbouncer_up The pooler answers.\n# TYPE pgbouncer_up gauge\npgbouncer_up 1");
    let stats = &shared.stats;
    let _ = writeln!(
        out,
        "# HELP pgha_pooler_client_connections Client connections open (logging in or logged in).\n\
         # TYPE pgha_pooler_client_connections gauge\npgha_pooler_client_connections {}",
        stats.client_connections.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP pgha_pooler_clients_parked Idle client connections parked without a task.\n\
         # TYPE pgha_pooler_clients_parked gauge\npgha_pooler_clients_parked {}",
        shared.parking.parked()
    );
    let _ = writeln!(
        out,
        "# HELP pgha_pooler_clients_on_ring Logged-in clients relayed on the io_uring thread (relay_engine).\n\
         # TYPE pgha_pooler_clients_on_ring gauge\npgha_pooler_clients_on_ring {}",
        stats.clients_on_ring.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP pgbouncer_config_max_client_connections max_client_conn.\n\
         # TYPE pgbouncer_config_max_client_connections gauge\npgbouncer_config_max_client_connections {}",
        shared.config().max_client_conn
    );
    let _ = writeln!(
        out,
        "# HELP pgha_pooler_client_errors_total Client errors before a pool is chosen, by kind.\n\
         # TYPE pgha_pooler_client_errors_total counter"
    );
    let mut client_errors = stats.errors();
    *client_errors.entry("max_client_conn").or_default() += stats.refused_max_client_conn.load(Ordering::Relaxed);
    for (kind, n) in client_errors {
        let _ = writeln!(out, "pgha_pooler_client_errors_total{{kind=\"{}\"}} {n}", escape(kind));
    }

    if shared.config().cluster.is_some() {
        let (primary, standbys, held) = shared.cluster_state().unwrap_or((false, 0, 0));
        let _ = writeln!(
            out,
            "# HELP pgha_pooler_cluster_primary 1 while the cluster's primary is known and in use (0 before the \
             first reading of the DCS, with no leader, or while a switchover holds clients).\n\
             # TYPE pgha_pooler_cluster_primary gauge\npgha_pooler_cluster_primary {}\n\
             # HELP pgha_pooler_cluster_standbys The cluster's healthy standbys.\n\
             # TYPE pgha_pooler_cluster_standbys gauge\npgha_pooler_cluster_standbys {standbys}\n\
             # HELP pgha_pooler_cluster_held_pools Pools paused because their cluster_role has no member.\n\
             # TYPE pgha_pooler_cluster_held_pools gauge\npgha_pooler_cluster_held_pools {held}",
            u8::from(primary)
        );
    }

    let now = crate::tick::Tick::now();
    let states: Vec<_> = pools.iter().map(|p| (p.clone(), p.server_states(now))).collect();
    let sv =
        |pool: &Pool| states.iter().find(|(p, _)| std::ptr::eq(&**p, pool)).map_or_else(Default::default, |(_, s)| *s);
    family(
        &mut out,
        "pgbouncer_pools_client_active_connections",
        "gauge",
        "Client connections logged in and not waiting for a server connection.",
        &pools,
        |p| p.stats.clients.load(Ordering::Relaxed).saturating_sub(sv(p).waiting) as f64,
    );
    // (name, help, which count)
    type Gauge = (&'static str, &'static str, fn(&ServerStates) -> u32);
    let gauges: [Gauge; 6] = [
        ("pgbouncer_pools_client_waiting_connections", "Client connections waiting for a server connection.", |s| {
            s.waiting
        }),
        ("pgbouncer_pools_server_active_connections", "Server connections in use by a client.", |s| s.active),
        ("pgbouncer_pools_server_idle_connections", "Server connections idle in the pool.", |s| s.idle),
        (
            "pgbouncer_pools_server_used_connections",
            "Server connections idle past server_check_delay, to run server_check_query before reuse.",
            |s| s.used,
        ),
        ("pgbouncer_pools_server_testing_connections", "Server connections running server_check_query.", |s| s.tested),
        ("pgbouncer_pools_server_login_connections", "Server connections being opened and logged in.", |s| s.login),
    ];
    for (name, help, value) in gauges {
        family(&mut out, name, "gauge", help, &pools, |p| value(&sv(p)) as f64);
    }
    let counter = |name: &str, help: &str, out: &mut String, value: &dyn Fn(&Pool) -> u64| {
        family(out, name, "counter", help, &pools, |p| value(p) as f64);
    };
    counter("pgbouncer_stats_sql_transactions_pooled_total", "Transactions pooled.", &mut out, &|p| {
        p.stats.xact_count.load(Ordering::Relaxed)
    });
    counter("pgbouncer_stats_queries_pooled_total", "Queries pooled.", &mut out, &|p| {
        p.stats.query_count.load(Ordering::Relaxed)
    });
    counter("pgbouncer_stats_received_bytes_total", "Bytes received from clients.", &mut out, &|p| {
        p.stats.bytes_received.load(Ordering::Relaxed)
    });
    counter("pgbouncer_stats_sent_bytes_total", "Bytes sent to clients.", &mut out, &|p| {
        p.stats.bytes_sent.load(Ordering::Relaxed)
    });
    counter(
        "pgbouncer_stats_client_parses_total",
        "Prepared statement Parse messages received from clients.",
        &mut out,
        &|p| p.stats.client_parse_count.load(Ordering::Relaxed),
    );
    counter(
        "pgbouncer_stats_server_parses_total",
        "Prepared statement Parse messages sent to PostgreSQL.",
        &mut out,
        &|p| p.stats.server_parse_count.load(Ordering::Relaxed),
    );
    counter(
        "pgbouncer_stats_binds_total",
        "Prepared statements readied for execution with a Bind message.",
        &mut out,
        &|p| p.stats.bind_count.load(Ordering::Relaxed),
    );
    // Times the pool counts in microseconds, exported in seconds.
    let seconds = |name: &str, help: &str, out: &mut String, micros: &dyn Fn(&Pool) -> u64| {
        family(out, name, "counter", help, &pools, |p| micros(p) as f64 / 1e6);
    };
    seconds(
        "pgbouncer_stats_queries_duration_seconds_total",
        "Time spent executing queries on PostgreSQL.",
        &mut out,
        &|p| p.stats.query_time_us.load(Ordering::Relaxed),
    );
    seconds(
        "pgbouncer_stats_server_in_transaction_seconds_total",
        "Time server connections spent in transactions of clients.",
        &mut out,
        &|p| p.stats.xact_time_us.load(Ordering::Relaxed),
    );
    seconds(
        "pgbouncer_stats_client_wait_seconds_total",
        "Time clients spent waiting for a server connection.",
        &mut out,
        &|p| p.stats.wait_time_us.load(Ordering::Relaxed),
    );

    let name = "pgha_pooler_client_wait_seconds";
    let _ = writeln!(out, "# HELP {name} Time a client waited for a server connection.\n# TYPE {name} histogram");
    for pool in &pools {
        let l = labels(pool);
        let mut cumulative = 0;
        for (le, n) in WAIT_BUCKETS.iter().zip(pool.stats.wait_buckets()) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {cumulative}");
        }
        let count = pool.stats.wait_count.load(Ordering::Relaxed);
        let sum = pool.stats.wait_time_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{{l},le=\"+Inf\"}} {count}\n{name}_sum{{{l}}} {sum}\n{name}_count{{{l}}} {count}"
        );
    }

    let name = "pgha_pooler_errors_total";
    let _ = writeln!(out, "# HELP {name} Errors in a pool, by kind.\n# TYPE {name} counter");
    for pool in &pools {
        let l = labels(pool);
        for (kind, n) in pool.stats.errors() {
            let _ = writeln!(out, "{name}{{{l},kind=\"{}\"}} {n}", escape(kind));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn an_idle_pooler_renders_the_process_families() {
        let config = crate::config::PoolerConfig { auth_type: crate::config::AuthType::Trust, ..Default::default() };
        let shared = Shared::new(config, None).unwrap();
        shared.stats.count_error("auth_failed");
        let text = render(&shared);
        assert!(text.contains("pgbouncer_up 1\n"), "{text}");
        assert!(text.contains("pgha_pooler_client_errors_total{kind=\"auth_failed\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE pgha_pooler_client_wait_seconds histogram\n"), "{text}");
        // No [cluster]: no cluster families.
        assert!(!text.contains("pgha_pooler_cluster_"), "{text}");
    }

    #[test]
    fn a_pooler_following_a_cluster_reports_what_it_follows() {
        let text = "auth_type = \"trust\"\n[databases.app]\ncluster_role = \"primary\"\n\
                    [cluster]\nscope = \"s\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n";
        let config: crate::config::PoolerConfig =
            consensus::config_file::parse(std::path::Path::new("pooler.toml"), text).unwrap();
        let shared = Shared::new(config, None).unwrap();
        assert!(render(&shared).contains("pgha_pooler_cluster_primary 0\n"));
        let at = |port| crate::topology::ServerAddr { host: "10.0.0.1".into(), port };
        let standby = |port| crate::topology::Standby { addr: at(port), lag: None };
        shared.follow_cluster(crate::topology::ClusterServers {
            primary: Some(at(1)),
            replicas: vec![standby(2), standby(3)],
        });
        let text = render(&shared);
        assert!(text.contains("pgha_pooler_cluster_primary 1\n"), "{text}");
        assert!(text.contains("pgha_pooler_cluster_standbys 2\n"), "{text}");
        assert!(text.contains("pgha_pooler_cluster_held_pools 0\n"), "{text}");
        shared.follow_cluster(crate::topology::ClusterServers { primary: None, replicas: vec![standby(2)] });
        assert!(render(&shared).contains("pgha_pooler_cluster_primary 0\n"));
    }

    /// Every reading of the DCS brings the standbys' new lag; only a change in where a
    /// database goes replaces the topology (and moves pools), and `_standbys` counts those
    /// within `[cluster] max_replica_lag`.
    #[test]
    fn a_standby_s_lag_moves_nothing_until_it_crosses_a_limit() {
        let text = "auth_type = \"trust\"\n[databases.reads]\ncluster_role = \"replica\"\n\
                    [cluster]\nscope = \"s\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nmax_replica_lag = 1000\n";
        let config: crate::config::PoolerConfig =
            consensus::config_file::parse(std::path::Path::new("pooler.toml"), text).unwrap();
        let shared = Shared::new(config, None).unwrap();
        let at = |port| crate::topology::ServerAddr { host: "10.0.0.1".into(), port };
        let reading = |lag2, lag3| crate::topology::ClusterServers {
            primary: Some(at(1)),
            replicas: vec![
                crate::topology::Standby { addr: at(2), lag: Some(lag2) },
                crate::topology::Standby { addr: at(3), lag: Some(lag3) },
            ],
        };
        let servers =
            |shared: &Shared| shared.topology().target("reads").map(|t| t.servers.to_vec()).unwrap_or_default();
        shared.follow_cluster(reading(10, 20));
        let first = shared.topology();
        assert_eq!(servers(&shared), [at(2), at(3)]);
        shared.follow_cluster(reading(300, 900));
        assert!(Arc::ptr_eq(&first, &shared.topology()), "a lag within the limit replaced the topology");
        assert!(render(&shared).contains("pgha_pooler_cluster_standbys 2\n"));
        shared.follow_cluster(reading(300, 5000));
        assert_eq!(servers(&shared), [at(2)]);
        assert!(render(&shared).contains("pgha_pooler_cluster_standbys 1\n"));
    }
}
