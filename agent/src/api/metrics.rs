//! `GET /metrics`: the node status in Prometheus' text format, with Patroni's metric names
//! (`patroni_*`, labelled `{scope,name}`) so existing dashboards and alerts keep working.
//! Rendered by hand from `NodeStatus` on each scrape; nothing is kept between scrapes.

use super::status_doc::{epoch_secs, VERSION};
use super::ApiState;
use crate::status::{NodeRole, NodeStatus};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write;

/// Prometheus' exposition format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value with `\`, `"` and newlines escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `0.1.0` -> `000100`, as Patroni pads its semver.
fn padded_version(v: &str) -> String {
    v.split('.').map(|part| format!("{:0>2}", part)).collect()
}

/// The metrics text for one node.
pub(crate) fn render(s: &NodeStatus) -> String {
    let labels = format!("{{scope=\"{}\",name=\"{}\"}}", label_value(&s.scope), label_value(&s.name));
    let replica = s.role == NodeRole::Replica;
    let primary = s.role == NodeRole::Primary;
    let flag = |b: bool| u64::from(b).to_string();
    let lsn = |p: Option<crate::ha::Lsn>| p.map_or(0, |p| p.0).to_string();
    let secs = |ms: Option<i64>| ms.map_or("0".to_string(), |ms| format!("{:.3}", ms as f64 / 1000.0));
    let rows: [(&str, &str, &str, String); 21] = [
        ("version", "gauge", "Patroni semver without periods (pgha's version).", padded_version(VERSION)),
        ("postgres_running", "gauge", "Value is 1 if Postgres is running, 0 otherwise.", flag(s.pg_running)),
        (
            "postmaster_start_time",
            "gauge",
            "Epoch seconds since Postgres started.",
            secs(s.postmaster_start_ms.filter(|_| s.pg_running)),
        ),
        ("primary", "gauge", "Value is 1 if this node is the leader, 0 otherwise.", flag(primary)),
        (
            "xlog_location",
            "counter",
            "Current location of the Postgres transaction log, 0 if this node is not the leader.",
            lsn(s.wal_position.filter(|_| primary)),
        ),
        ("standby_leader", "gauge", "Value is 1 if this node is the standby_leader, 0 otherwise.", flag(false)),
        ("replica", "gauge", "Value is 1 if this node is a replica, 0 otherwise.", flag(replica)),
        (
            "sync_standby",
            "gauge",
            "Value is 1 if this node is a sync standby replica, 0 otherwise.",
            flag(replica && s.sync_standby),
        ),
        (
            "xlog_received_location",
            "counter",
            "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
            lsn(s.received_position.filter(|_| replica)),
        ),
        (
            "xlog_replayed_location",
            "counter",
            "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
            lsn(s.replayed_position.filter(|_| replica)),
        ),
        (
            "xlog_replayed_timestamp",
            "gauge",
            "Current timestamp of the replayed Postgres transaction log, 0 if null.",
            secs(s.replayed_xact_ms.filter(|_| replica)),
        ),
        ("xlog_paused", "gauge", "Value is 1 if the Postgres xlog is paused, 0 otherwise.", flag(s.replay_paused)),
        (
            "postgres_streaming",
            "gauge",
            "Value is 1 if Postgres is streaming, 0 otherwise.",
            flag(replica && s.pg_running && s.streaming),
        ),
        (
            "postgres_in_archive_recovery",
            "gauge",
            "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
            flag(replica && s.pg_running && !s.streaming),
        ),
        (
            "postgres_server_version",
            "gauge",
            "Version of Postgres (if running), 0 otherwise.",
            s.server_version.unwrap_or(0).to_string(),
        ),
        ("cluster_unlocked", "gauge", "Value is 1 if the cluster is unlocked, 0 if locked.", flag(s.leader.is_none())),
        (
            "postgres_timeline",
            "counter",
            "Postgres timeline of this node (if running), 0 otherwise.",
            s.timeline.unwrap_or(0).to_string(),
        ),
        (
            "dcs_last_seen",
            "gauge",
            "Epoch timestamp when DCS was last contacted successfully by Patroni.",
            s.dcs_last_seen.map_or(0, epoch_secs).to_string(),
        ),
        ("pending_restart", "gauge", "Value is 1 if the node needs a restart, 0 otherwise.", flag(s.pending_restart)),
        ("is_paused", "gauge", "Value is 1 if auto failover is disabled, 0 otherwise.", flag(s.paused)),
        ("failsafe_mode_is_active", "gauge", "Value is 1 if failsafe mode is active, 0 if inactive.", flag(false)),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in &rows {
        // Writing to a String cannot fail.
        let _ =
            writeln!(out, "# HELP patroni_{name} {help}\n# TYPE patroni_{name} {kind}\npatroni_{name}{labels} {value}");
    }
    out
}

/// `GET /metrics`.
pub(crate) async fn get_metrics(State(state): State<ApiState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&state.node()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::Lsn;

    fn sample(text: &str, metric: &str) -> Option<String> {
        let prefix = format!("{metric}{{");
        text.lines().find(|l| l.starts_with(&prefix)).and_then(|l| l.rsplit(' ').next()).map(str::to_string)
    }

    #[test]
    fn renders_patroni_names_with_scope_and_name_labels() {
        let mut s = NodeStatus::starting("pg\"1", "demo");
        s.role = NodeRole::Primary;
        s.pg_running = true;
        s.holds_lock = true;
        s.leader = Some("pg1".into());
        s.wal_position = Some(Lsn(22320573386952));
        s.timeline = Some(24);
        s.paused = true;
        let text = render(&s);
        assert!(text.contains("patroni_primary{scope=\"demo\",name=\"pg\\\"1\"} 1\n"), "{text}");
        assert_eq!(sample(&text, "patroni_xlog_location").as_deref(), Some("22320573386952"));
        assert_eq!(sample(&text, "patroni_replica").as_deref(), Some("0"));
        assert_eq!(sample(&text, "patroni_sync_standby").as_deref(), Some("0"));
        assert_eq!(sample(&text, "patroni_postgres_running").as_deref(), Some("1"));
        assert_eq!(sample(&text, "patroni_postgres_timeline").as_deref(), Some("24"));
        assert_eq!(sample(&text, "patroni_cluster_unlocked").as_deref(), Some("0"));
        assert_eq!(sample(&text, "patroni_is_paused").as_deref(), Some("1"));
        assert_eq!(sample(&text, "patroni_dcs_last_seen").as_deref(), Some("0"));
        assert_eq!(sample(&text, "patroni_pending_restart").as_deref(), Some("0"));
        assert_eq!(sample(&text, "patroni_xlog_received_location").as_deref(), Some("0"));
        assert_eq!(sample(&text, "patroni_xlog_replayed_location").as_deref(), Some("0"));
        assert!(text.contains("# TYPE patroni_xlog_location counter\n"));
        assert_eq!(sample(&text, "patroni_postmaster_start_time").as_deref(), Some("0"));
        s.postmaster_start_ms = Some(1_764_000_000_123);
        let text = render(&s);
        assert_eq!(sample(&text, "patroni_postmaster_start_time").as_deref(), Some("1764000000.123"));
        assert_eq!(sample(&text, "patroni_xlog_replayed_timestamp").as_deref(), Some("0"));
        assert_eq!(sample(&text, "patroni_postgres_in_archive_recovery").as_deref(), Some("0"));
        // A standby replaying from the archive, paused.
        s.role = NodeRole::Replica;
        s.replayed_xact_ms = Some(1_764_000_100_500);
        s.replay_paused = true;
        let text = render(&s);
        assert_eq!(sample(&text, "patroni_xlog_replayed_timestamp").as_deref(), Some("1764000100.500"));
        assert_eq!(sample(&text, "patroni_postgres_in_archive_recovery").as_deref(), Some("1"));
        assert_eq!(sample(&text, "patroni_xlog_paused").as_deref(), Some("1"));
        assert_eq!(sample(&text, "patroni_postgres_streaming").as_deref(), Some("0"));
        s.streaming = true;
        let text = render(&s);
        assert_eq!(sample(&text, "patroni_postgres_in_archive_recovery").as_deref(), Some("0"));
        assert_eq!(sample(&text, "patroni_postgres_streaming").as_deref(), Some("1"));
        // Every sample line has HELP and TYPE lines and a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn pads_the_version_like_patroni() {
        assert_eq!(padded_version("4.0.0"), "040000");
        assert_eq!(padded_version("0.1.0"), "000100");
    }
}
