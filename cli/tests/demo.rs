//! `pgha demo` as a newcomer runs it: it prints DSNs that work, and Ctrl-C leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_on_the_built_in_raft_prints_a_working_read_write_dsn_and_ctrl_c_cleans_up() {
    demo_works(&[]);
}

#[test]
fn demo_on_etcd_prints_a_working_read_write_dsn_and_ctrl_c_cleans_up() {
    demo_works(&["--dcs", "etcd"]);
}

/// Runs `pgha demo <extra> --dir D` as the README says and checks what a newcomer relies on.
fn demo_works(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .arg("demo")
        .args(extra)
        .arg("--dir")
        .arg(&demo_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut dsn = None;
    let mut pooled = None;
    let mut read_only = None;
    let mut backup = None;
    let mut following = 0;
    let mut seen = Vec::new();
    while Instant::now() < deadline && (dsn.is_none() || pooled.is_none() || read_only.is_none() || following < 2) {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else { continue };
        if let Some(d) = line.split("read-write DSN (any libpq client): ").nth(1) {
            dsn = Some(d.trim().to_string());
        }
        if let Some(d) = line.split("a switchover is a pause): ").nth(1) {
            pooled = d.split_whitespace().next().map(str::to_owned);
        }
        if let Some(d) = line.split("the primary while there is none): ").nth(1) {
            read_only = d.split_whitespace().next().map(str::to_owned);
        }
        if let Some(cmd) = line.split("): pgha ").nth(1).filter(|_| line.contains("backups (WAL is archived")) {
            backup = cmd.split("   then").next().map(|c| c.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
        }
        if line.contains("following the leader") {
            following += 1;
        }
        seen.push(line);
    }
    // The read-write DSN reaches the primary (psql picks the writable host).
    let answer = dsn.as_ref().map(|dsn| {
        let out = Command::new("psql").arg(dsn).args(["-Atc", "select pg_is_in_recovery()"]).output().unwrap();
        (String::from_utf8_lossy(&out.stdout).trim().to_string(), String::from_utf8_lossy(&out.stderr).into_owned())
    });
    // The pooler's DSN reaches the primary too (it follows the leader through the DCS).
    let through_pooler = pooled.as_ref().map(|dsn| psql_until(dsn, "f"));
    // The pooler's read-only DSN reaches a standby once the replicas stream.
    let through_read_only = read_only.as_ref().map(|dsn| psql_until(dsn, "t"));
    // The printed backup command works: the agents archive into the demo's repository.
    let backup_out = backup.as_ref().map(|args| {
        let out = Command::new(env!("CARGO_BIN_EXE_pgha")).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    });
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT);
    let (backed_up, backup_text) =
        backup_out.unwrap_or_else(|| (false, format!("no backup command printed:\n{}", seen.join("\n"))));
    assert!(backed_up && backup_text.contains("complete"), "{backup_text}");
    assert!(dsn.is_some(), "no DSN printed:\n{}", seen.join("\n"));
    assert!(pooled.is_some(), "no pooler DSN printed:\n{}", seen.join("\n"));
    let (pooled_answer, pooled_err) = through_pooler.unwrap_or_default();
    assert_eq!(pooled_answer, "f", "psql via the pooler: {pooled_err}\n{}", seen.join("\n"));
    assert!(following >= 2, "replicas never followed:\n{}", seen.join("\n"));
    let (read_only_answer, read_only_err) = through_read_only.unwrap_or_default();
    assert_eq!(read_only_answer, "t", "psql via the pooler's read-only DSN: {read_only_err}\n{}", seen.join("\n"));
    let (answer, psql_err) = answer.unwrap_or_default();

    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(answer, "f", "psql via the read-write DSN: {psql_err}");
    assert!(status.is_some_and(|s| s.success()), "demo did not exit cleanly after Ctrl-C: {status:?}");
    // Nothing of the demo keeps running: no process has the demo dir on its command line.
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .filter(|c| c.contains(demo_dir.to_str().unwrap()))
        .collect();
    assert!(leftovers.is_empty(), "processes left behind: {leftovers:?}");
}

/// `select pg_is_in_recovery()` through `dsn` until it answers `want` (15 s at most): the last
/// (answer, stderr).
fn psql_until(dsn: &str, want: &str) -> (String, String) {
    let mut last = (String::new(), String::new());
    for _ in 0..30 {
        let out = Command::new("psql").arg(dsn).args(["-Atc", "select pg_is_in_recovery()"]).output().unwrap();
        last = (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        if last.0 == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    last
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    None
}
