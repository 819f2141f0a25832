//! SHOW CONFIG rows from pooler.toml's settings: value, default and whether RELOAD can change
//! it, rendered as PgBouncer prints them (booleans 0/1, seconds without a fraction when whole,
//! lists comma-separated, unset values NULL). Keep the list in sync with config.rs.

use super::rows::ConfigRow;
use crate::config::{AuthType, PoolMode, PoolerConfig, TlsMode};

fn secs(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn pool_mode(m: PoolMode) -> String {
    match m {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
        PoolMode::Statement => "statement",
    }
    .into()
}

fn auth_type(a: AuthType) -> String {
    match a {
        AuthType::Trust => "trust",
        AuthType::Plain => "plain",
        AuthType::Md5 => "md5",
        AuthType::ScramSha256 => "scram-sha-256",
        AuthType::Hba => "hba",
        AuthType::Cert => "cert",
    }
    .into()
}

fn tls_mode(t: TlsMode) -> String {
    match t {
        TlsMode::Disable => "disable",
        TlsMode::Allow => "allow",
        TlsMode::Prefer => "prefer",
        TlsMode::Require => "require",
        TlsMode::VerifyCa => "verify-ca",
        TlsMode::VerifyFull => "verify-full",
    }
    .into()
}

/// Every setting as (key, rendered value, changeable without restart).
fn settings(c: &PoolerConfig) -> Vec<(&'static str, Option<String>, bool)> {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    vec![
        ("listen_addr", Some(c.listen_addr.clone()), false),
        ("listen_port", Some(c.listen_port.to_string()), false),
        ("unix_socket_dir", Some(c.unix_socket_dir.clone()), false),
        ("unix_socket_mode", Some(format!("{:04o}", c.unix_socket_mode)), false),
        ("unix_socket_group", c.unix_socket_group.clone(), false),
        ("pool_mode", Some(pool_mode(c.pool_mode)), true),
        ("default_pool_size", Some(c.default_pool_size.to_string()), true),
        ("min_pool_size", Some(c.min_pool_size.to_string()), true),
        ("reserve_pool_size", Some(c.reserve_pool_size.to_string()), true),
        ("reserve_pool_timeout", Some(secs(c.reserve_pool_timeout)), true),
        ("max_client_conn", Some(c.max_client_conn.to_string()), true),
        ("max_db_connections", Some(c.max_db_connections.to_string()), true),
        ("max_user_connections", Some(c.max_user_connections.to_string()), true),
        ("max_db_client_connections", Some(c.max_db_client_connections.to_string()), true),
        ("max_user_client_connections", Some(c.max_user_client_connections.to_string()), true),
        ("max_prepared_statements", Some(c.max_prepared_statements.to_string()), true),
        ("server_lifetime", Some(secs(c.server_lifetime)), true),
        ("server_idle_timeout", Some(secs(c.server_idle_timeout)), true),
        ("autodb_idle_timeout", Some(secs(c.autodb_idle_timeout)), true),
        ("server_round_robin", Some(u8::from(c.server_round_robin).to_string()), true),
        ("server_fast_close", Some(u8::from(c.server_fast_close).to_string()), true),
        ("load_balance_hosts", Some(c.load_balance_hosts.name().to_owned()), true),
        ("server_connect_timeout", Some(secs(c.server_connect_timeout)), true),
        ("server_login_retry", Some(secs(c.server_login_retry)), true),
        ("query_timeout", Some(secs(c.query_timeout)), true),
        ("query_wait_timeout", Some(secs(c.query_wait_timeout)), true),
        ("query_wait_notify", Some(secs(c.query_wait_notify)), true),
        ("idle_transaction_timeout", Some(secs(c.idle_transaction_timeout)), true),
        ("transaction_timeout", Some(secs(c.transaction_timeout)), true),
        ("client_idle_timeout", Some(secs(c.client_idle_timeout)), true),
        ("client_login_timeout", Some(secs(c.client_login_timeout)), true),
        ("server_reset_query", Some(c.server_reset_query.clone()), true),
        ("server_reset_query_always", Some(u8::from(c.server_reset_query_always).to_string()), true),
        ("server_check_query", Some(c.server_check_query.clone()), true),
        ("server_check_delay", Some(secs(c.server_check_delay)), true),
        ("auth_type", Some(auth_type(c.auth_type)), true),
        ("auth_file", path(&c.auth_file), true),
        ("auth_hba_file", path(&c.auth_hba_file), true),
        ("auth_user", c.auth_user.clone(), true),
        ("auth_query", Some(c.auth_query.clone()), true),
        ("auth_dbname", c.auth_dbname.clone(), true),
        ("track_extra_parameters", Some(c.track_extra_parameters.join(",")), false),
        ("admin_users", Some(c.admin_users.join(",")), true),
        ("stats_users", Some(c.stats_users.join(",")), true),
        ("client_tls_sslmode", Some(tls_mode(c.client_tls_sslmode)), true),
        ("client_tls_cert_file", path(&c.client_tls_cert_file), true),
        ("client_tls_key_file", path(&c.client_tls_key_file), true),
        ("client_tls_protocols", Some(c.client_tls_protocols.clone()), true),
        ("server_tls_sslmode", Some(tls_mode(c.server_tls_sslmode)), true),
        ("server_tls_ca_file", path(&c.server_tls_ca_file), true),
        ("server_tls_cert_file", path(&c.server_tls_cert_file), true),
        ("server_tls_key_file", path(&c.server_tls_key_file), true),
        ("server_tls_protocols", Some(c.server_tls_protocols.clone()), true),
        ("max_packet_size", Some(c.max_packet_size.to_string()), true),
        ("ignore_startup_parameters", Some(c.ignore_startup_parameters.join(",")), true),
        ("worker_threads", Some(c.worker_threads.to_string()), false),
        ("relay_engine", Some(c.relay_engine.name().to_owned()), false),
        ("stats_period", Some(secs(c.stats_period)), true),
        ("log_connections", Some(u8::from(c.log_connections).to_string()), true),
        ("log_stats", Some(u8::from(c.log_stats).to_string()), true),
        ("log_disconnections", Some(u8::from(c.log_disconnections).to_string()), true),
        ("application_name_add_host", Some(u8::from(c.application_name_add_host).to_string()), true),
        ("disable_pqexec", Some(u8::from(c.disable_pqexec).to_string()), true),
        ("tcp_keepalive", Some(u8::from(c.tcp_keepalive).to_string()), true),
        ("tcp_keepidle", Some(c.tcp_keepidle.to_string()), true),
        ("tcp_keepintvl", Some(c.tcp_keepintvl.to_string()), true),
        ("tcp_keepcnt", Some(c.tcp_keepcnt.to_string()), true),
        ("tcp_user_timeout", Some(c.tcp_user_timeout.to_string()), true),
        ("tcp_defer_accept", Some(c.tcp_defer_accept.to_string()), false),
        ("client_close_reset", Some(u8::from(c.client_close_reset).to_string()), true),
        ("takeover_socket", Some(c.takeover_socket.clone()), false),
    ]
}

/// Whether `key` is a setting, and whether it can change without a restart (SET, RELOAD).
pub fn changeable(key: &str) -> Option<bool> {
    settings(&PoolerConfig::default()).into_iter().find(|(k, _, _)| *k == key).map(|(_, _, changeable)| changeable)
}

/// SHOW CONFIG for `current`, sorted by key like PgBouncer's.
pub fn config_rows(current: &PoolerConfig) -> Vec<ConfigRow> {
    let defaults = settings(&PoolerConfig::default());
    let mut rows: Vec<ConfigRow> = settings(current)
        .into_iter()
        .zip(defaults)
        .map(|((key, value, changeable), (_, default, _))| ConfigRow { key: key.into(), value, default, changeable })
        .collect();
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::config_file::parse;
    use std::path::Path;

    #[test]
    fn every_listed_key_is_a_pooler_toml_setting() {
        // deny_unknown_fields: a key that config.rs lacks fails to parse.
        let defaults = config_rows(&PoolerConfig::default());
        let mut text = String::from("auth_type = \"trust\"\n");
        for row in &defaults {
            let value = match row.key.as_str() {
                "admin_users" | "stats_users" | "ignore_startup_parameters" | "track_extra_parameters" => {
                    "[]".to_string()
                }
                "auth_file"
                | "client_tls_cert_file"
                | "client_tls_key_file"
                | "server_tls_ca_file"
                | "auth_user"
                | "server_tls_cert_file"
                | "server_tls_key_file"
                | "unix_socket_group"
                | "auth_hba_file" => "\"x\"".to_string(),
                _ => continue,
            };
            text.push_str(&format!("{} = {value}\n", row.key));
        }
        parse::<PoolerConfig>(Path::new("pooler.toml"), &text).unwrap();
        for key in defaults.iter().map(|r| r.key.as_str()) {
            let probe = format!("auth_type = \"trust\"\n{key} = 0\n");
            let err = parse::<PoolerConfig>(Path::new("pooler.toml"), &probe).err().map(|e| e.to_string());
            assert!(!err.unwrap_or_default().contains("unknown"), "{key} is not a setting in config.rs");
        }
    }

    #[test]
    fn renders_like_pgbouncer() {
        let c =
            PoolerConfig { admin_users: vec!["a".into(), "b".into()], query_wait_timeout: 2.5, ..Default::default() };
        let rows = config_rows(&c);
        let get = |k: &str| rows.iter().find(|r| r.key == k).unwrap().clone();
        assert_eq!(get("admin_users").value.as_deref(), Some("a,b"));
        assert_eq!(get("admin_users").default.as_deref(), Some(""));
        assert_eq!(get("query_wait_timeout").value.as_deref(), Some("2.5"));
        assert_eq!(get("query_wait_timeout").default.as_deref(), Some("120"));
        assert_eq!(get("server_reset_query_always").value.as_deref(), Some("0"));
        assert_eq!(get("auth_user").value, None);
        assert!(!get("listen_port").changeable);
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
    }
}
