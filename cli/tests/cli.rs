//! The `pgha` command line as a user meets it: help for every subcommand, config errors that name
//! file, key and allowed values, and unbuilt capabilities that say so and exit non-zero.

use std::process::{Command, Output};

fn pgha(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgha")).args(args).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn top_level_help_lists_every_subcommand_with_a_description() {
    let out = pgha(&["--help"]);
    assert!(out.status.success());
    let (stdout, _) = text(&out);
    let commands = stdout.split("Commands:").nth(1).unwrap_or_else(|| panic!("no Commands section:\n{stdout}"));
    for (cmd, phrase) in [
        ("agent", "Run the agent for one database node"),
        ("pooler", "Run the connection pooler"),
        ("ctl", "Operate a cluster"),
        ("backup", "Base backups"),
        ("archive-push", "Archive one WAL file"),
        ("archive-get", "Fetch one WAL file"),
        ("demo", "Start a local demo cluster"),
    ] {
        let line = commands
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{cmd} ")))
            .unwrap_or_else(|| panic!("{cmd} missing:\n{stdout}"));
        assert!(line.contains(phrase), "{cmd}: {line}");
    }
}

#[test]
fn every_subcommand_has_its_own_help() {
    for (args, phrase) in [
        (&["agent", "--help"][..], "--validate-config"),
        (&["pooler", "--help"][..], "--config <CONFIG>"),
        (&["ctl", "--help"][..], "switchover"),
        (&["ctl", "switchover", "--help"][..], "--candidate"),
        (&["backup", "--help"][..], "restore"),
        (&["backup", "restore", "--help"][..], "--target-time"),
        (&["archive-push", "--help"][..], "archive_command"),
        (&["archive-get", "--help"][..], "restore_command"),
        (&["demo", "--help"][..], "--dcs"),
    ] {
        let out = pgha(args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stdout.contains(phrase), "{args:?} help lacks {phrase:?}:\n{stdout}");
    }
}

#[test]
fn misspelt_pool_mode_is_reported_with_file_key_and_allowed_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pooler.toml");
    std::fs::write(&file, "auth_type = \"trust\"\npool_mode = \"transactoin\"\n").unwrap();
    let out = pgha(&["pooler", "--config", file.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    let expected =
        format!("{}: pool_mode = \"transactoin\": expected one of session, transaction, statement", file.display());
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn unknown_key_in_agent_config_lists_the_allowed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "name = \"n1\"\nscoep = \"main\"\n[postgresql]\ndata_dir = \"/d\"\n[dcs]\nbackend = \"etcd\"\n",
    )
    .unwrap();
    let out = pgha(&["agent", "--config", file.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("agent.toml: scoep: unknown key: allowed keys here are name, scope, namespace"),
        "{stderr}"
    );
}

#[test]
fn validate_config_accepts_a_good_file_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "name = \"n1\"\n[postgresql]\ndata_dir = \"/d\"\nsuperuser = { username = \"postgres\", password = \"x\" }\n\
         replication = { username = \"replicator\", password = \"y\" }\n[dcs]\nbackend = \"etcd\"\n[dcs.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
    )
    .unwrap();
    let out = pgha(&["agent", "--config", file.to_str().unwrap(), "--validate-config"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("OK: member n1 of cluster main (Etcd DCS)"), "{stdout}");
    assert!(stdout.contains("REST API http://127.0.0.1:8008"), "{stdout}");
    // The API's certificate and key are read as at start: a missing one is named.
    let with_tls = std::fs::read_to_string(&file).unwrap().replace(
        "[dcs]",
        &format!("[api]\ncertfile = \"{0}/nope.crt\"\nkeyfile = \"{0}/nope.key\"\n[dcs]", dir.path().display()),
    );
    std::fs::write(&file, with_tls).unwrap();
    let out = pgha(&["agent", "--config", file.to_str().unwrap(), "--validate-config"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains(&format!("api.certfile: cannot read {}/nope.crt", dir.path().display())), "{stderr}");
}

#[test]
fn missing_config_file_says_which_and_why() {
    let out = pgha(&["pooler", "--config", "/nonexistent/pooler.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/pooler.toml: cannot read the config file"), "{stderr}");
}

#[test]
fn restore_cluster_needs_one_target_and_a_reachable_api() {
    let out = pgha(&["ctl", "--api", "http://127.0.0.1:1", "restore-cluster", "--force"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("--target-time") && stderr.contains("--immediate"), "{stderr}");
    let out = pgha(&["ctl", "--api", "http://127.0.0.1:1", "restore-cluster", "--immediate", "--target-xid", "7"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    let args =
        &["ctl", "--api", "http://127.0.0.1:1", "restore-cluster", "--target-time", "2026-01-01 00:00:00+00"][..];
    let out = pgha(args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    assert!(stderr.contains("cannot reach the agent's REST API"), "{args:?}: {stderr}");
    assert!(stdout.is_empty(), "{args:?} printed output as if it worked: {stdout}");
}

#[test]
fn bad_log_level_is_a_clear_error() {
    let out = pgha(&["--log-level", "loud!!", "ctl", "list"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("--log-level \"loud!!\""), "{stderr}");
}

#[test]
fn backup_commands_need_a_config_and_say_so() {
    // archive-get exits 126 on anything but "not in the archive" (1), so that recovery stops
    // instead of ending early; with --soft-errors (what standbys run) it exits 1.
    for (args, code) in [
        (&["backup", "list"][..], 1),
        (&["archive-push", "/x"][..], 1),
        (&["archive-get", "a", "b"][..], 126),
        (&["archive-get", "--soft-errors", "a", "b"][..], 1),
    ] {
        let out = pgha(args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(stderr.contains("no config file: pass --config FILE"), "{args:?}: {stderr}");
    }
}

#[test]
fn archive_get_of_a_missing_file_exits_1_quietly() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let config = dir.path().join("backup.toml");
    let repo = dir.path().join("repo");
    std::fs::write(&config, format!("scope = \"main\"\n[repository]\npath = \"{}\"\n", repo.display()))
        .unwrap_or_else(|e| panic!("writing config: {e}"));
    let config = config.display().to_string();
    let dest = dir.path().join("out").display().to_string();
    let out = pgha(&["archive-get", "--config", &config, "000000010000000000000001", &dest]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty() && stderr.is_empty(), "{stdout}{stderr}");
    // A history file that is not there either: PostgreSQL asks for these routinely.
    let out = pgha(&["archive-get", "--config", &config, "00000002.history", &dest]);
    assert_eq!(out.status.code(), Some(1));
}
