//! auth_user + auth_query against a real PostgreSQL 15: a SCRAM user created in the test and
//! absent from the auth file logs in through `pgha pooler` with its password (looked up in
//! pg_shadow through auth_user's connection), a wrong password and an unknown user both get
//! PostgreSQL's 28P01 "password authentication failed", and a password change takes effect at
//! the next login.

use harness::pooler::PoolerProcess;
use harness::{PgInstance, PgOptions};

/// (SQLSTATE, message) of a failed login through the pooler.
async fn login_error(pooler: &PoolerProcess, user: &str, password: &str) -> (String, String) {
    let dsn = format!("host=127.0.0.1 port={} user={user} password={password} dbname=postgres", pooler.port());
    let err = pooler.connect_dsn(&dsn).await.err().unwrap_or_else(|| panic!("{user} must be refused"));
    let db = err.chain().find_map(|e| e.downcast_ref::<tokio_postgres::Error>()).and_then(|e| e.as_db_error());
    let db = db.unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:#}"));
    (db.code().code().to_owned(), db.message().to_owned())
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
