//! A secured etcd, as production Patroni clusters run it: TLS with client certificates
//! (`--client-cert-auth`), reached with `cacert`, `cert` and `key`, and user authentication
//! (`etcdctl auth enable`), reached with `username` and `password`. Agents and the pooler work
//! through it; a client without the right certificate or password is refused.

use consensus::etcd::{EtcdOptions, EtcdStore, EtcdTls, EtcdUser};
use consensus::kv::KvStore;
use harness::agent_checks::healthy;
use harness::cluster::{PghaCluster, Timing, SUPERUSER_PASSWORD};
use harness::pki::TestPki;
use harness::{wait_for, PghaProcess};
use std::time::Duration;

fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// A pooler following `cluster`'s primary through its etcd, with `etcd_settings` in its
/// `[cluster]`, once a query through it runs on `primary`: the process and its scratch dir.
async fn pooler_reaching_the_primary(
    cluster: &PghaCluster,
    primary: usize,
    etcd_settings: &str,
) -> (PghaProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = harness::ports::free_port().unwrap();
    let endpoints = cluster.etcd.as_ref().unwrap().endpoints();
    let config = format!(
        "listen_addr = \"127.0.0.1\"\nlisten_port = {port}\nunix_socket_dir = \"\"\nauth_type = \"trust\"\n\
         auth_file = \"{dir}/userlist.txt\"\npool_mode = \"transaction\"\n\n[databases.postgres]\n\
         cluster_role = \"primary\"\n\n[cluster]\nscope = \"{scope}\"\netcd_endpoints = [\"{endpoint}\"]\n{etcd_settings}",
        dir = dir.path().display(),
        scope = cluster.scope,
        endpoint = endpoints[0],
    );
    std::fs::write(dir.path().join("userlist.txt"), format!("\"postgres\" \"{SUPERUSER_PASSWORD}\"\n")).unwrap();
    let pooler = PghaProcess::start("pooler-etcd", &["pooler"], &config).unwrap();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5");
    let port_seen = wait_for("the pooler to reach the primary", Duration::from_secs(30), || async {
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let rows = client.simple_query("select current_setting('port')").await?;
        Ok(first_value(&rows).and_then(|p| p.parse::<u16>().ok()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pooler.log()));
    assert_eq!(port_seen, cluster.nodes[primary].pg_port);
    (pooler, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_the_pooler_use_an_etcd_that_requires_tls_and_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let pki = TestPki::create(certs.path(), "pgha").unwrap();
    let cluster =
        PghaCluster::start_on_etcd_with_tls(2, Timing::default(), &pki).await.unwrap_or_else(|e| panic!("{e:#}"));
    let primary = healthy(&cluster).await;
    let endpoints = cluster.etcd.as_ref().unwrap().endpoints();
    assert!(endpoints.iter().all(|e| e.starts_with("https://")), "{endpoints:?}");

    // The pooler follows the primary through the same etcd.
    let etcd_settings = format!(
        "etcd_cacert = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\n",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let _pooler = pooler_reaching_the_primary(&cluster, primary, &etcd_settings).await;

    // Without a client certificate, or trusting another CA, a client is refused, and says why.
    let other = tempfile::tempdir().unwrap();
    let other = TestPki::create(other.path(), "stranger").unwrap();
    let attempt = |tls: EtcdTls| {
        let endpoints = endpoints.clone();
        async move {
            let options = EtcdOptions { tls: Some(tls), ..EtcdOptions::default() };
            let store = EtcdStore::connect(&endpoints, options).await?;
            store.range_prefix("/service/").await.map(|_| ())
        }
    };
    let no_cert = attempt(EtcdTls { ca_file: pki.ca.clone(), cert_file: None, key_file: None }).await;
    let wrong_ca = attempt(EtcdTls {
        ca_file: other.ca.clone(),
        cert_file: Some(other.client_cert.clone()),
        key_file: Some(other.client_key.clone()),
    })
    .await;
    let right = attempt(EtcdTls {
        ca_file: pki.ca.clone(),
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
    })
    .await;
    eprintln!("without a client certificate: {no_cert:?}\ntrusting another CA: {wrong_ca:?}");
    assert!(right.is_ok(), "{right:?}");
    assert!(no_cert.is_err() && wrong_ca.is_err(), "{no_cert:?} {wrong_ca:?}");
    let unreadable = attempt(EtcdTls { ca_file: "/nonexistent/ca.crt".into(), cert_file: None, key_file: None }).await;
    let message = unreadable.unwrap_err().to_string();
    assert!(message.contains("cannot read the etcd CA file /nonexistent/ca.crt"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_the_pooler_log_in_to_an_etcd_with_user_authentication() {
    let mut etcd = harness::etcd::EtcdCluster::start(1).await.unwrap();
    etcd.enable_auth("etcd-root-pw").await.unwrap();
    let endpoints = etcd.endpoints();
    let cluster = PghaCluster::start_on_this_etcd(
        2,
        Timing::default(),
        etcd,
        "username = \"root\"\npassword = \"etcd-root-pw\"\n",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let primary = healthy(&cluster).await;
    assert_eq!(cluster.primaries().await, vec![primary], "{}", cluster.logs());

    let (pooler, _dir) =
        pooler_reaching_the_primary(&cluster, primary, "etcd_username = \"root\"\netcd_password = \"etcd-root-pw\"\n")
            .await;
    assert!(
        !pooler.log().contains("etcd-root-pw") && !cluster.logs().contains("etcd-root-pw"),
        "a log shows the password"
    );

    // A client whose token expired (2 s unused) logs in again by itself.
    let root = EtcdUser { name: "root".into(), password: "etcd-root-pw".into() };
    let options = EtcdOptions { user: Some(root), ..EtcdOptions::default() };
    let store = EtcdStore::connect(&endpoints, options).await.unwrap();
    store.range_prefix("/service/").await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let again = store.range_prefix("/service/").await;
    assert!(again.is_ok(), "after the token expired: {again:?}");

    // A wrong password, or none, is refused.
    let attempt = |user: Option<EtcdUser>| {
        let endpoints = endpoints.clone();
        async move {
            let store = EtcdStore::connect(&endpoints, EtcdOptions { user, ..EtcdOptions::default() }).await?;
            store.range_prefix("/service/").await.map(|_| ())
        }
    };
    let wrong = attempt(Some(EtcdUser { name: "root".into(), password: "guess".into() })).await;
    let anonymous = attempt(None).await;
    eprintln!("wrong password: {wrong:?}\nno user: {anonymous:?}");
    assert!(wrong.unwrap_err().to_string().contains("authentication failed"));
    assert!(anonymous.is_err());
}
