//! TLS on both sides of a real `pgha pooler`: psql with sslmode=require (and verify-full
//! against the pooler's CA) gets TLS from the pooler, a plain-text client is refused with
//! PgBouncer's "SSL required" when client_tls_sslmode = require, and the pooler reaches a
//! PostgreSQL with ssl = on over TLS (verify-full), as PostgreSQL's own pg_stat_ssl shows.

use harness::pooler::PoolerProcess;
use harness::{PgInstance, PgOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A self-signed certificate for localhost and 127.0.0.1: (cert.pem, key.pem) in `dir`.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key)
}

/// PostgreSQL 15 with ssl = on and its own certificate; returns the instance and its CA file.
async fn postgres_with_ssl(dir: &Path) -> (PgInstance, PathBuf) {
    let mut pg = PgInstance::init("pooler-tls", PgOptions::default().param("ssl", "on")).await.unwrap();
    let (cert, key) = certificate(dir, "postgres");
    let data = pg.data_dir();
    let owner = std::fs::metadata(&data).unwrap();
    for (from, name) in [(&cert, "server.crt"), (&key, "server.key")] {
        let path = data.join(name);
        std::fs::copy(from, &path).unwrap();
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    pg.start().await.unwrap();
    (pg, cert)
}

/// Runs psql with `conninfo` and `commands` (each one `-c`), bounded by 20 s.
async fn psql(conninfo: &str, commands: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.arg(conninfo).args(["-X", "-A", "-t"]).env_remove("PGSSLMODE").kill_on_drop(true);
    for c in commands {
        cmd.args(["-c", c]);
    }
    tokio::time::timeout(Duration::from_secs(20), cmd.output()).await.expect("psql timed out").expect("running psql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_sslmode_require_gets_tls_from_the_pooler_and_the_pooler_uses_tls_to_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, pg_ca) = postgres_with_ssl(dir.path()).await;
    let (cert, key) = certificate(dir.path(), "pooler");
    let settings = format!(
        "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n\
         server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{}\"\nadmin_users = [\"postgres\"]",
        cert.display(),
        key.display(),
        pg_ca.display()
    );
    let pooler = PoolerProcess::start_probing_unix(&pg, &settings).await.unwrap();
    let port = pooler.port();
    let ssl_of_server_session = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

    let out = psql(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require"),
        &["\\conninfo", ssl_of_server_session],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "psql failed: {}\n{}", String::from_utf8_lossy(&out.stderr), pooler.log());
    assert!(stdout.contains("SSL connection (protocol: TLSv1.3"), "client side not TLS: {stdout}");
    assert!(stdout.trim_end().ends_with("\nt"), "server side not TLS (pg_stat_ssl): {stdout}");

    // The certificate served is the configured one: verify-full against it passes.
    let out = psql(
        &format!(
            "host=localhost hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
            cert.display()
        ),
        &["select 41 + 1"],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{}", String::from_utf8_lossy(&out.stderr));

    // SHOW CLIENTS and SHOW SERVERS say which connections use TLS (the console session itself
    // is a TLS client; the server connections left idle by the sessions above are TLS too).
    let out = psql(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=pgbouncer sslmode=require"),
        &["show clients", "show servers"],
    )
    .await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split('|').collect()).collect();
    // Column 17 is `tls` in both (PgBouncer's order).
    let console = rows.iter().find(|r| r.first() == Some(&"C") && r.get(2) == Some(&"pgbouncer"));
    assert!(console.and_then(|r| r.get(17)).is_some_and(|t| t.starts_with("TLSv1.3/")), "SHOW CLIENTS: {listed}");
    let servers: Vec<_> = rows.iter().filter(|r| r.first() == Some(&"S")).collect();
    assert!(!servers.is_empty(), "no server connection listed: {listed}");
    assert!(servers.iter().all(|r| r.get(17).is_some_and(|t| t.starts_with("TLSv1.3/"))), "SHOW SERVERS: {listed}");

    // A plain-text client is refused with PgBouncer's error.
    let out =
        psql(&format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable"), &["select 1"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SSL required"), "{}", String::from_utf8_lossy(&out.stderr));
    let Err(err) = pooler.connect().await else { panic!("tokio-postgres without TLS must be refused") };
    let db = harness::pooler::server_error(&err);
    assert_eq!(db.map(|d| (d.code().code(), d.message())), Some(("08P01", "SSL required")), "{err:#}");

    // The Unix socket stays open to plain-text clients, as in PgBouncer.
    let unix = pooler.connect_dsn(&pooler.unix_dsn("postgres")).await.unwrap();
    unix.simple_query("select 1").await.unwrap();
}

/// RELOAD applies changed server_tls_* settings to the pool's new server connections (a DBA
/// turning TLS on toward PostgreSQL, or rotating its CA): after RELOAD and RECONNECT the same
/// client's next transaction runs on a TLS connection, without the client reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_changed_server_tls_settings_to_new_server_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, pg_ca) = postgres_with_ssl(dir.path()).await;
    let settings = "pool_mode = \"transaction\"\nserver_tls_sslmode = \"disable\"\nadmin_users = [\"postgres\"]";
    let mut pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let admin = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();
    let client = pooler.connect().await.unwrap();
    let ssl = |messages: Vec<tokio_postgres::SimpleQueryMessage>| {
        messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
    };
    let ssl_of_server_session = "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()";
    assert_eq!(ssl(client.simple_query(ssl_of_server_session).await.unwrap()).as_deref(), Some("false"));

    let path = pooler.process().config_path().clone();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "server_tls_sslmode = \"disable\"",
        &format!("server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{}\"", pg_ca.display()),
    );
    std::fs::write(&path, text).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    admin.simple_query("RECONNECT").await.unwrap();
    assert_eq!(
        ssl(client.simple_query(ssl_of_server_session).await.unwrap()).as_deref(),
        Some("true"),
        "the server connection after RELOAD is not TLS:\n{}",
        pooler.log()
    );
}

/// client_tls_protocols limits what clients may negotiate: with "tlsv1.2" psql gets TLS 1.2,
/// and a psql that insists on TLS 1.3 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_protocols_limits_the_versions_clients_get() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = PgInstance::init("pooler-tls-versions", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let (cert, key) = certificate(dir.path(), "pooler");
    let settings = format!(
        "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n\
         client_tls_protocols = \"tlsv1.2\"",
        cert.display(),
        key.display(),
    );
    let pooler = PoolerProcess::start_probing_unix(&pg, &settings).await.unwrap();
    let conninfo = format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require", pooler.port());
    let out = psql(&conninfo, &["\\conninfo"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), pooler.log());
    assert!(stdout.contains("SSL connection (protocol: TLSv1.2"), "{stdout}");
    let out = psql(&format!("{conninfo} ssl_min_protocol_version=TLSv1.3"), &["select 1"]).await;
    assert!(!out.status.success(), "a TLS 1.3-only client got in: {}", String::from_utf8_lossy(&out.stdout));
}

/// A CA and a client certificate it signed for `user` (CN), in `dir`: (ca.crt, user.crt,
/// user.key).
fn client_certificate(dir: &Path, user: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, mut signed) = client_certificates(dir, &[user]);
    let (cert, key) = signed.remove(0);
    (ca, cert, key)
}

/// A CA and a client certificate it signed for each of `users` (CN), in `dir`: ca.crt and
/// (user.crt, user.key) per user.
fn client_certificates(dir: &Path, users: &[&str]) -> (PathBuf, Vec<(PathBuf, PathBuf)>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "pgha test client CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_path = dir.join("client-ca.crt");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let signed = users
        .iter()
        .map(|user| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, *user);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let signed = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            let paths = (dir.join(format!("{user}.crt")), dir.join(format!("{user}.key")));
            std::fs::write(&paths.0, signed.pem()).unwrap();
            std::fs::write(&paths.1, key.serialize_pem()).unwrap();
            std::fs::set_permissions(&paths.1, std::fs::Permissions::from_mode(0o600)).unwrap();
            paths
        })
        .collect();
    (ca_path, signed)
}

/// Client certificate authentication, as PgBouncer's auth_type = cert and pg_hba's `cert`:
/// the common name of the certificate a client presents (signed by client_tls_ca_file) must
/// be the user it logs in as. Through an auth_hba_file `hostssl ... cert` line: psql with
/// postgres's certificate is in as postgres without a password; with mallory's certificate it
/// is refused with PostgreSQL's words, and the pooler's log says which name the certificate
/// gave; without a certificate the TLS handshake fails. Then `SET auth_type = 'cert'` on the
/// console: certificates still let their users in, and a Unix-socket client (no TLS, no
/// certificate) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_with_a_certificate_that_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = PgInstance::init("pooler-client-cert", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let (ca, signed) = client_certificates(dir.path(), &["postgres", "mallory"]);
    let (pooler_cert, pooler_key) = certificate(dir.path(), "pooler");
    let hba = dir.path().join("hba.conf");
    std::fs::write(&hba, "local all all trust\nhostssl all all 127.0.0.1/32 cert\n").unwrap();
    let settings = format!(
        "client_tls_sslmode = \"verify-ca\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n\
         client_tls_ca_file = \"{}\"\nauth_type = \"hba\"\nauth_hba_file = \"{}\"\nadmin_users = [\"postgres\"]",
        pooler_cert.display(),
        pooler_key.display(),
        ca.display(),
        hba.display()
    );
    let pooler = PoolerProcess::start_probing_unix(&pg, &settings).await.unwrap();
    let port = pooler.port();
    let as_postgres_with = |(cert, key): &(PathBuf, PathBuf)| {
        format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require sslcert={} sslkey={}",
            cert.display(),
            key.display()
        )
    };
    let (own, mallorys) = (as_postgres_with(&signed[0]), as_postgres_with(&signed[1]));

    let out = psql(&own, &["select current_user"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psql with its certificate failed: {stderr}\n{}", pooler.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres");

    let out = psql(&mallorys, &["select current_user"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mallory's certificate let her in as postgres");
    assert!(stderr.contains("certificate authentication failed for user \"postgres\""), "{stderr}");
    // The log line may reach the harness a moment after psql's answer.
    let why = "provided user name (postgres) and authenticated user name (mallory) do not match";
    harness::wait_for("the pooler to log why", Duration::from_secs(5), || async {
        Ok(pooler.log().contains(why).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pooler.log()));

    let out =
        psql(&format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require"), &["select 1"]).await;
    assert!(!out.status.success(), "a client without a certificate was let in");

    // auth_type = "cert" for every client.
    let console = pooler.connect_dsn(&pooler.unix_dsn("pgbouncer")).await.unwrap();
    console.simple_query("SET auth_type = 'cert'").await.unwrap();
    let out = psql(&own, &["select current_user"]).await;
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), pooler.log());
    let unix = pooler.connect_dsn(&pooler.unix_dsn("postgres")).await.expect_err("no certificate on the socket");
    assert_eq!(
        harness::pooler::refusal(unix),
        ("28000".to_owned(), "connection requires a valid client certificate".to_owned())
    );
}

/// server_tls_cert_file / server_tls_key_file log the pooler in with PostgreSQL's `cert`
/// authentication (no password), and server_tls_protocols sets the version toward the server;
/// without the certificate the same PostgreSQL refuses the pooler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooler_logs_in_to_postgres_with_its_client_certificate_and_chosen_tls_version() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = client_certificate(dir.path(), "postgres");
    let mut pg = PgInstance::init("pooler-tls-cert", PgOptions::default().param("ssl", "on")).await.unwrap();
    let (server_cert, server_key) = certificate(dir.path(), "postgres-server");
    let data = pg.data_dir();
    let owner = std::fs::metadata(&data).unwrap();
    for (from, name) in [(&server_cert, "server.crt"), (&server_key, "server.key"), (&ca, "client-ca.crt")] {
        let path = data.join(name);
        std::fs::copy(from, &path).unwrap();
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("ssl_ca_file = 'client-ca.crt'\n");
    std::fs::write(&conf, text).unwrap();
    // TCP logins need a certificate whose CN is the user; the Unix socket stays trusted.
    let hba = data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all all trust\nhostssl all all 127.0.0.1/32 cert\n{rules}")).unwrap();
    pg.start().await.unwrap();

    let settings = format!(
        "server_tls_sslmode = \"require\"\nserver_tls_cert_file = \"{}\"\nserver_tls_key_file = \"{}\"\n\
         server_tls_protocols = \"tlsv1.2\"",
        cert.display(),
        key.display(),
    );
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    let client = pooler.connect().await.unwrap();
    let rows = client
        .simple_query("select version || ' ' || client_dn from pg_stat_ssl where pid = pg_backend_pid()")
        .await
        .unwrap();
    let seen = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(seen.as_deref(), Some("TLSv1.2 /CN=postgres"), "{}", pooler.log());

    // The same PostgreSQL refuses a pooler without the certificate.
    let port = harness::ports::free_port().unwrap();
    std::fs::write(dir.path().join("userlist.txt"), "").unwrap();
    let without = harness::pooler::pooler_config(
        &pg,
        port,
        dir.path(),
        "server_tls_sslmode = \"require\"\nauth_type = \"trust\"",
    );
    let process = harness::PghaProcess::start("pooler-no-cert", &["pooler"], &without).unwrap();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5");
    let refused = harness::wait_for("the pooler without a certificate to answer", Duration::from_secs(15), || async {
        match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
            Ok(_) => panic!("connected without a certificate"),
            Err(e) => match e.as_db_error() {
                Some(db) => Ok(Some(db.message().to_owned())),
                // Not listening yet.
                None => Err(anyhow::anyhow!("{e}")),
            },
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", process.log()));
    assert!(refused.contains("certificate"), "refused with: {refused}\n{}", process.log());
}

/// query_wait_notify over TLS: psql with sslmode=require, queued behind a transaction that
/// holds the only server connection, prints PgBouncer's NOTICE while it waits and gets its
/// answer once the transaction commits; a KILL of the TLS client that waits still ends its
/// wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_waiting_for_a_server_connection_is_told_it_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = PgInstance::init("pooler-tls-queued", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let (cert, key) = certificate(dir.path(), "pooler");
    let settings = format!(
        "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n\
         pool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_notify = 1\nquery_wait_timeout = 20\n\
         admin_users = [\"postgres\"]",
        cert.display(),
        key.display(),
    );
    let pooler = PoolerProcess::start_probing_unix(&pg, &settings).await.unwrap();
    let holder = pooler.connect_dsn(&pooler.unix_dsn("postgres")).await.unwrap();
    holder.batch_execute("begin; select 1").await.unwrap();
    let conninfo = format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require", pooler.port());
    let waiting = tokio::spawn({
        let conninfo = conninfo.clone();
        async move { psql(&conninfo, &["select 40 + 2"]).await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!waiting.is_finished(), "psql did not wait behind the holder's transaction");
    holder.batch_execute("commit").await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}\n{}", pooler.log());
    assert_eq!(stdout.trim(), "42");
    assert_eq!(
        stderr.matches("NOTICE:  No server connection available in postgres backend, client being queued").count(),
        1,
        "psql's stderr: {stderr}"
    );

    // The KILL watch still works on a TLS client that waits.
    holder.batch_execute("begin; select 1").await.unwrap();
    let waiting = tokio::spawn(async move { psql(&conninfo, &["select 1"]).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let console = pooler.connect_dsn(&pooler.unix_dsn("pgbouncer")).await.unwrap();
    let clients = harness::pooler::show(&console, "CLIENTS").await;
    let tls_client = clients
        .iter()
        .find(|c| c["state"] == "waiting" && !c["tls"].is_empty())
        .unwrap_or_else(|| panic!("no waiting TLS client: {clients:?}"));
    console.simple_query(&format!("KILL_CLIENT {}", tls_client["id"])).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert!(!out.status.success(), "the killed client's query ran");
    holder.batch_execute("commit").await.unwrap();
}
