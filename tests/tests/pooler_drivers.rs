//! Real drivers through the pooler in transaction mode, unchanged: psycopg 3, asyncpg, pgJDBC
//! and Perl's DBD::Pg (Debian's packages) and node-postgres (npm's `pg`), each program in
//! `tests/drivers/`. Eight clients share two server connections; each client uses named
//! prepared statements the way its driver does (psycopg with prepare_threshold=0, asyncpg's
//! statement cache and explicit prepare, pgJDBC with prepareThreshold=1, DBD::Pg's server-side
//! prepares and their DEALLOCATE, node-postgres's named queries, which it never prepares
//! twice on a connection), sets its own TimeZone and application_name, commits and rolls
//! back transactions, pipelines or queues, and copies in and out. A program checks every answer it gets
//! and exits 0 only if all were right; the test then checks what reached PostgreSQL and what
//! the pooler counted (statements prepared once per server connection, not once per client).

use harness::pooler::{show, PoolerProcess};
use harness::{PgInstance, PgOptions};
use std::path::PathBuf;
use std::time::Duration;

const CLIENTS: u32 = 8;
const ROUNDS: u32 = 20;

const SCHEMA: &str = "create table driver_rows (driver text not null, client int not null, round int not null);
create table driver_copy (client int not null, line text not null);
create table driver_many (client int not null, round int not null, k int not null);
create type driver_pair as (n int, label text);";

enum Driver {
    Psycopg,
    Asyncpg,
    Jdbc,
    DbdPg,
    NodePg,
}

/// Debian's PostgreSQL JDBC driver (libpostgresql-jdbc-java).
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";
/// Debian's Python, which sees python3-psycopg and python3-asyncpg (a python3 earlier on PATH
/// may be another installation without them).
const PYTHON: &str = "/usr/bin/python3";
/// Where node finds `pg`: npm's global folder (`npm install -g`, prefix /usr or /usr/local)
/// and Debian's (node-pg).
const NODE_PATH: &str = "/usr/lib/node_modules:/usr/local/lib/node_modules:/usr/share/nodejs";

impl Driver {
    fn name(&self) -> &'static str {
        match self {
            Driver::Psycopg => "psycopg",
            Driver::Asyncpg => "asyncpg",
            Driver::Jdbc => "jdbc",
            Driver::DbdPg => "dbdpg",
            Driver::NodePg => "nodepg",
        }
    }

    fn command(&self, port: u16) -> tokio::process::Command {
        let programs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("drivers");
        let (program, mut args) = match self {
            Driver::Psycopg => (PYTHON, vec![programs.join("psycopg_app.py").display().to_string()]),
            Driver::Asyncpg => (PYTHON, vec![programs.join("asyncpg_app.py").display().to_string()]),
            Driver::Jdbc => (
                "java",
                vec!["-cp".to_owned(), JDBC_JAR.to_owned(), programs.join("JdbcApp.java").display().to_string()],
            ),
            Driver::DbdPg => ("perl", vec![programs.join("dbdpg_app.pl").display().to_string()]),
            Driver::NodePg => ("node", vec![programs.join("node_pg_app.js").display().to_string()]),
        };
        args.extend(["127.0.0.1".to_owned(), port.to_string(), CLIENTS.to_string(), ROUNDS.to_string()]);
        let mut command = tokio::process::Command::new(program);
        command.args(args).env("NODE_PATH", NODE_PATH).kill_on_drop(true);
        command
    }

    /// What `setup-deps` installs for it, said when the driver is missing.
    fn missing(&self) -> Option<String> {
        let (check, package) = match self {
            Driver::Psycopg => {
                (std::process::Command::new(PYTHON).args(["-c", "import psycopg"]).output(), "python3-psycopg")
            }
            Driver::Asyncpg => {
                (std::process::Command::new(PYTHON).args(["-c", "import asyncpg"]).output(), "python3-asyncpg")
            }
            Driver::Jdbc => {
                if !std::path::Path::new(JDBC_JAR).exists() {
                    return Some(format!("{JDBC_JAR} is missing: scripts/setup-deps installs libpostgresql-jdbc-java"));
                }
                (std::process::Command::new("java").arg("-version").output(), "default-jre-headless")
            }
            Driver::DbdPg => {
                (std::process::Command::new("perl").args(["-MDBD::Pg", "-e", "1"]).output(), "libdbd-pg-perl")
            }
            Driver::NodePg => (
                std::process::Command::new("node").args(["-e", "require('pg')"]).env("NODE_PATH", NODE_PATH).output(),
                "nodejs and pg (npm install -g pg, or Debian's node-pg)",
            ),
        };
        match check {
            Ok(out) if out.status.success() => None,
            _ => Some(format!("{} is not usable here: scripts/setup-deps installs {package}", self.name())),
        }
    }

    /// Rows each client commits to driver_rows.
    fn rows_per_round(&self) -> u32 {
        match self {
            Driver::Jdbc => 5,
            Driver::Psycopg | Driver::Asyncpg | Driver::DbdPg | Driver::NodePg => 1,
        }
    }
}

async fn runs_unchanged(driver: Driver) {
    if let Some(missing) = driver.missing() {
        panic!("{missing}");
    }
    let mut pg = PgInstance::init(driver.name(), PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    pg.connect().await.unwrap().batch_execute(SCHEMA).await.unwrap();
    // pgJDBC sends extra_float_digits at login; PgBouncer users ignore it the same way.
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 2\nmax_client_conn = 100\n\
                    admin_users = [\"postgres\"]\nignore_startup_parameters = [\"extra_float_digits\"]";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();

    let run = tokio::time::timeout(Duration::from_secs(180), driver.command(pooler.port()).output()).await;
    let out = run
        .unwrap_or_else(|_| panic!("{} did not finish in 180 s; pooler log:\n{}", driver.name(), pooler.log()))
        .unwrap_or_else(|e| panic!("cannot run the {} program: {e}", driver.name()));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.starts_with("ok "),
        "{} failed ({}):\n{stdout}\n{stderr}\npooler log:\n{}",
        driver.name(),
        out.status,
        pooler.log()
    );

    // What the clients committed reached PostgreSQL, and nothing they rolled back did.
    let committed = pg
        .sql_value(&format!("select count(*) from driver_rows where driver = '{}' and round >= 0", driver.name()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(committed, (CLIENTS * ROUNDS * driver.rows_per_round()).to_string());
    let rolled_back = pg.sql_value("select count(*) from driver_rows where round < 0").await.unwrap().unwrap();
    assert_eq!(rolled_back, "0", "rows of failed transactions were committed");
    if !matches!(driver, Driver::Jdbc | Driver::NodePg) {
        // Every fifth round copied 20 lines per client.
        let copied = pg.sql_value("select count(*) from driver_copy").await.unwrap().unwrap();
        assert_eq!(copied, (CLIENTS * ROUNDS.div_ceil(5) * 20).to_string());
    }

    // Two server connections served them all, and the statements were prepared per server
    // connection: far fewer server Parses than client Parses, and every execution bound.
    let servers = pg.client_backends().await.unwrap();
    assert!((1..=2).contains(&servers), "{servers} server connections");
    let admin = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();
    let stats = show(&admin, "STATS").await;
    let stats = stats.iter().find(|row| row["database"] == "postgres").unwrap_or_else(|| panic!("{stats:?}"));
    let count = |key: &str| stats[key].parse::<u64>().unwrap_or_else(|_| panic!("{key}: {stats:?}"));
    let (client_parses, server_parses, binds) =
        (count("total_client_parse_count"), count("total_server_parse_count"), count("total_bind_count"));
    eprintln!("{}: {client_parses} client Parses, {server_parses} server Parses, {binds} Binds", driver.name());
    assert!(server_parses > 0, "no named statement reached a server: {stats:?}");
    assert!(
        server_parses * 2 < client_parses,
        "{server_parses} server Parses for {client_parses} client Parses: statements were not shared"
    );
    assert!(binds >= u64::from(CLIENTS * ROUNDS), "{binds} Binds of named statements: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_runs_unchanged_in_transaction_mode() {
    runs_unchanged(Driver::Psycopg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_runs_unchanged_in_transaction_mode() {
    runs_unchanged(Driver::Asyncpg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_runs_unchanged_in_transaction_mode() {
    runs_unchanged(Driver::Jdbc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perl_dbd_pg_runs_unchanged_in_transaction_mode() {
    runs_unchanged(Driver::DbdPg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_runs_unchanged_in_transaction_mode() {
    runs_unchanged(Driver::NodePg).await;
}
