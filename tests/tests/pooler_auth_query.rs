//! auth_user + auth_query against a real PostgreSQL 15: a SCRAM user created in the test and
//! absent from the auth file logs in through `pgha pooler` with its password (looked up in
//! pg_shadow through auth_user's connection), a wrong password and an unknown user both get
//! PostgreSQL's 28P01 "password authentication failed", and a password change takes effect at
//! the next login; with auth_type = md5 an md5-stored role logs in with md5.

use harness::pooler::PoolerProcess;
use harness::{PgInstance, PgOptions};

/// (SQLSTATE, message) of a failed login through the pooler.
async fn login_error(pooler: &PoolerProcess, user: &str, password: &str) -> (String, String) {
    let dsn = format!("host=127.0.0.1 port={} user={user} password={password} dbname=postgres", pooler.port());
    let err = pooler.connect_dsn(&dsn).await.err().unwrap_or_else(|| panic!("{user} must be refused"));
    harness::pooler::refusal(err)
}

async fn current_user(pooler: &PoolerProcess, user: &str, password: &str) -> anyhow::Result<String> {
    let dsn = format!("host=127.0.0.1 port={} user={user} password={password} dbname=postgres", pooler.port());
    let client = pooler.connect_dsn(&dsn).await?;
    let row = client.query_one("SELECT current_user::text", &[]).await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scram_user_missing_from_the_auth_file_logs_in_through_auth_query() {
    let mut pg = PgInstance::init("pooler-authq", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    pg.sql("CREATE ROLE carol LOGIN PASSWORD 'carol-secret'").await.unwrap();
    let stored = pg.sql_value("SELECT passwd FROM pg_shadow WHERE usename = 'carol'").await.unwrap();
    assert!(stored.unwrap_or_default().starts_with("SCRAM-SHA-256$"), "the test needs a SCRAM verifier");
    // The auth file lists only the superuser, who is auth_user.
    let settings = "auth_type = \"scram-sha-256\"\nauth_user = \"postgres\"\npool_mode = \"transaction\"";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();

    assert_eq!(current_user(&pooler, "carol", "carol-secret").await.unwrap(), "carol");
    // A second login reuses auth_user's connection and still works.
    assert_eq!(current_user(&pooler, "carol", "carol-secret").await.unwrap(), "carol");

    let wrong = login_error(&pooler, "carol", "not-her-password").await;
    assert_eq!(wrong, ("28P01".to_owned(), "password authentication failed for user \"carol\"".to_owned()));
    let unknown = login_error(&pooler, "mallory", "anything").await;
    assert_eq!(unknown, ("28P01".to_owned(), "password authentication failed for user \"mallory\"".to_owned()));

    // Secrets are not cached: a new password works at the next login, the old one no longer.
    pg.sql("ALTER ROLE carol PASSWORD 'carol-new'").await.unwrap();
    assert_eq!(current_user(&pooler, "carol", "carol-new").await.unwrap(), "carol");
    assert_eq!(login_error(&pooler, "carol", "carol-secret").await.0, "28P01");
    // A role that may not log in with a password (NULL in pg_shadow) is refused the same way.
    pg.sql("CREATE ROLE dan LOGIN").await.unwrap();
    assert_eq!(login_error(&pooler, "dan", "x").await.0, "28P01");
}

/// PgBouncer's auth_type = md5 with auth_query: a role whose pg_shadow entry is an md5 hash
/// is asked for md5 and logs in (the pooler checks the client's answer against the hash), a
/// wrong password gets 28P01, and a role stored as SCRAM is asked for SCRAM, as PgBouncer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_md5_user_logs_in_through_auth_query_and_a_scram_one_still_with_scram() {
    let mut pg = PgInstance::init("pooler-authq-md5", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    // A server that still has md5 passwords says `md5` in pg_hba.conf (which answers a role
    // stored as SCRAM with SCRAM): with `scram-sha-256` an md5-stored role cannot log in at all.
    let hba = pg.data_dir().join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    assert!(text.contains("scram-sha-256"), "{text}");
    std::fs::write(&hba, text.replace("scram-sha-256", "md5")).unwrap();
    pg.sql("SELECT pg_reload_conf()").await.unwrap();
    pg.sql("SET password_encryption = 'md5'; CREATE ROLE erin LOGIN PASSWORD 'erin-secret'").await.unwrap();
    let stored = pg.sql_value("SELECT passwd FROM pg_shadow WHERE usename = 'erin'").await.unwrap();
    assert!(stored.unwrap_or_default().starts_with("md5"), "the test needs an md5 hash");
    pg.sql("CREATE ROLE frank LOGIN PASSWORD 'frank-secret'").await.unwrap();
    let settings = "auth_type = \"md5\"\nauth_user = \"postgres\"\npool_mode = \"transaction\"";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();

    assert_eq!(current_user(&pooler, "erin", "erin-secret").await.unwrap(), "erin");
    let wrong = login_error(&pooler, "erin", "not-her-password").await;
    assert_eq!(wrong, ("28P01".to_owned(), "password authentication failed for user \"erin\"".to_owned()));
    assert_eq!(current_user(&pooler, "frank", "frank-secret").await.unwrap(), "frank");
    assert_eq!(login_error(&pooler, "frank", "wrong").await.0, "28P01");
    // What each is asked for: AuthenticationMD5Password (5), AuthenticationSASL (10).
    assert_eq!(auth_request(&pooler, "erin").await, 5);
    assert_eq!(auth_request(&pooler, "frank").await, 10);
}

/// The authentication request code the pooler answers a startup packet for `user` with.
async fn auth_request(pooler: &PoolerProcess, user: &str) -> i32 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", pooler.port())).await.unwrap();
    let startup = harness::pooler::startup_packet(&[("user", user), ("database", "postgres")]);
    stream.write_all(&startup).await.unwrap();
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(header[0], b'R', "expected an authentication request, got {header:?}");
    i32::from_be_bytes([header[5], header[6], header[7], header[8]])
}

/// auth_type = "hba": auth_hba_file decides per connection, as pg_hba.conf does. Over TCP
/// the superuser logs in with SCRAM (a wrong password gets 28P01) and bob is rejected by his
/// line; on the Unix socket `peer` lets in the operating-system user the test runs as and
/// refuses another name; a TCP client without a matching line gets "no pg_hba.conf entry".
/// RELOAD re-reads the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_hba_file_picks_the_method_per_connection_and_reload_rereads_it() {
    let mut pg = PgInstance::init("pooler-hba", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let me = nix::unistd::User::from_uid(nix::unistd::getuid()).unwrap().expect("the test's own user").name;
    let dir = tempfile::tempdir().unwrap();
    let hba = dir.path().join("hba.conf");
    let rules = format!(
        "local all {me} peer\nlocal all postgres peer\nhost all bob 127.0.0.1/32 reject\n\
         host postgres,peerdb,pgbouncer all 127.0.0.1/32 scram-sha-256\n"
    );
    std::fs::write(&hba, &rules).unwrap();
    // peerdb logs in to PostgreSQL as the superuser whoever the client is.
    let settings = format!(
        "auth_type = \"hba\"\nauth_hba_file = \"{}\"\nadmin_users = [\"postgres\"]\n\
         [databases.peerdb]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"postgres\"\nuser = \"postgres\"",
        hba.display(),
        pg.port()
    );
    let mut pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    let port = pooler.port();
    let db_error = harness::pooler::refusal;

    assert_eq!(current_user(&pooler, "postgres", pg.password()).await.unwrap(), "postgres");
    assert_eq!(login_error(&pooler, "postgres", "wrong").await.0, "28P01");
    assert_eq!(
        login_error(&pooler, "bob", "x").await,
        (
            "28000".into(),
            "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"bob\", database \"postgres\", no encryption"
                .into()
        )
    );
    let other_db = format!("host=127.0.0.1 port={port} user=carol password=x dbname=reports");
    let (code, message) = db_error(refused_with(pooler.connect_dsn(&other_db).await, "no line for reports"));
    assert_eq!(
        (
            code.as_str(),
            message.starts_with("no pg_hba.conf entry for host \"127.0.0.1\", user \"carol\", database \"reports\"")
        ),
        ("28000", true),
        "{message}"
    );

    let socket = pooler.socket_dir().display().to_string();
    let peer = pooler.connect_dsn(&format!("host={socket} port={port} user={me} dbname=peerdb")).await.unwrap();
    let row = peer.query_one("SELECT current_user::text", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
    if me != "postgres" {
        let refused = pooler.connect_dsn(&format!("host={socket} port={port} user=postgres dbname=peerdb")).await;
        assert_eq!(
            db_error(refused_with(refused, "peer must refuse another user")),
            ("28000".into(), "Peer authentication failed for user \"postgres\"".into())
        );
    }

    // RELOAD re-reads the rules: the superuser is now rejected over TCP.
    let admin = pooler
        .connect_dsn(&format!("host=127.0.0.1 port={port} user=postgres password={} dbname=pgbouncer", pg.password()))
        .await
        .unwrap();
    std::fs::write(&hba, format!("host all postgres 127.0.0.1/32 reject\n{rules}")).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    assert_eq!(login_error(&pooler, "postgres", pg.password()).await.0, "28000", "{}", pooler.process().log());
}

/// The error of a login that must fail.
fn refused_with<T>(result: anyhow::Result<T>, why: &str) -> anyhow::Error {
    match result {
        Ok(_) => panic!("{why}"),
        Err(e) => e,
    }
}

/// auth_dbname: auth_query runs on another `[databases]` entry's server, as PgBouncer's
/// auth_dbname does, for a lookup function kept in one database only (here
/// `pgbouncer.get_auth` in authdb, SECURITY DEFINER over pg_shadow). With the global setting a
/// client of `postgres` logs in through authdb's function; without it the lookup runs in
/// `postgres`, where the function does not exist: the login fails and the pooler's log says
/// why. A database entry's own auth_dbname serves that entry's clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_dbname_runs_auth_query_on_another_database() {
    let mut pg = PgInstance::init("pooler-authdb", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    pg.sql("CREATE DATABASE authdb").await.unwrap();
    pg.sql("CREATE ROLE carol LOGIN PASSWORD 'carol-secret'").await.unwrap();
    let authdb = pg.connect_db("authdb").await.unwrap();
    authdb
        .batch_execute(
            "CREATE SCHEMA pgbouncer;
             CREATE FUNCTION pgbouncer.get_auth(p_usename text) RETURNS TABLE(usename name, passwd text)
             LANGUAGE sql SECURITY DEFINER AS
             $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = p_usename $$;",
        )
        .await
        .unwrap();
    let common = "auth_type = \"scram-sha-256\"\nauth_user = \"postgres\"\npool_mode = \"transaction\"\n\
                  auth_query = \"SELECT usename, passwd FROM pgbouncer.get_auth($1)\"\nadmin_users = [\"postgres\"]\n";
    let authdb_entry = format!("[databases.authdb]\nhost = \"127.0.0.1\"\nport = {}\n", pg.port());

    let global = format!("{common}auth_dbname = \"authdb\"\n{authdb_entry}");
    let pooler = PoolerProcess::start(&pg, &global).await.unwrap();
    assert_eq!(current_user(&pooler, "carol", "carol-secret").await.unwrap(), "carol");
    let wrong = login_error(&pooler, "carol", "not-her-password").await;
    assert_eq!(wrong, ("28P01".to_owned(), "password authentication failed for user \"carol\"".to_owned()));
    let admin_dsn = format!("{} password={}", pooler.dsn("pgbouncer"), pg.password());
    let admin = pooler.connect_dsn(&admin_dsn).await.unwrap();
    let config = harness::pooler::show(&admin, "CONFIG").await;
    let row = config.iter().find(|r| r["key"] == "auth_dbname").unwrap_or_else(|| panic!("{config:?}"));
    assert_eq!(row["value"], "authdb");
    drop(pooler);

    // Per database: `app` (the server's postgres database) looks users up in authdb; a client of
    // `postgres` has its lookup run in postgres, which has no pgbouncer.get_auth.
    let per_database = format!(
        "{common}{authdb_entry}[databases.app]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"postgres\"\n\
         auth_dbname = \"authdb\"\n",
        pg.port()
    );
    let pooler = PoolerProcess::start(&pg, &per_database).await.unwrap();
    let dsn = format!("host=127.0.0.1 port={} user=carol password=carol-secret dbname=app", pooler.port());
    let client = pooler.connect_dsn(&dsn).await.unwrap();
    let row = client.query_one("SELECT current_user::text, current_database()::text", &[]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("carol".to_owned(), "postgres".to_owned()));
    let refused = login_error(&pooler, "carol", "carol-secret").await;
    assert_eq!(
        refused,
        ("08006".to_owned(), "the pooler could not look up the password; see the pooler log".to_owned())
    );
    // The log line may follow the client's answer by a moment.
    let why = "auth_query failed: 3F000 schema \"pgbouncer\" does not exist";
    harness::wait_for("the pooler to log why", std::time::Duration::from_secs(5), || async {
        Ok(pooler.log().contains(why).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pooler.log()));
}
