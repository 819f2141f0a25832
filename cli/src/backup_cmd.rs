//! `pgha backup ...`, `pgha archive-push` and `pgha archive-get`: argument handling and output
//! (human or --json) around the backup crate, which holds all the logic.

use crate::commands::{ArchiveGetArgs, ArchivePushArgs, BackupArgs, BackupVerb};
use anyhow::{bail, Context};
use backup::archive::{Fetched, Pushed};
use backup::manifest::BackupKind;
use backup::target::Target;
use backup::BackupConfig;
use std::path::PathBuf;
use std::process::ExitCode;

fn load(config: &Option<PathBuf>) -> anyhow::Result<(BackupConfig, PathBuf)> {
    let Some(path) = config else {
        bail!("no config file: pass --config FILE (or set PGHA_CONFIG); see docs/backup.md");
    };
    let cfg: BackupConfig = consensus::config_file::load(path)?;
    let abs = std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    Ok((cfg, abs))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// archive-push / archive-get run once per WAL file: one thread, no worker pool to start.
fn single_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn archive_push(args: ArchivePushArgs) -> anyhow::Result<ExitCode> {
    let (cfg, _) = load(&args.config)?;
    match single_thread_runtime()?.block_on(backup::archive::push(&cfg, &args.wal_path)) {
        Ok(Pushed::Stored) => Ok(ExitCode::SUCCESS),
        Ok(Pushed::AlreadyArchived) => {
            tracing::info!("{} was already archived with the same content", args.wal_path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!("archive-push {}: {e}", args.wal_path.display()),
    }
}

/// Exit 1 (quietly) when the file is not in the archive: PostgreSQL's "no more WAL here". A
/// repository that cannot be read exits 126, which makes PostgreSQL abort recovery instead of
/// ending it (and promoting) early; with --soft-errors it exits 1 so a standby streams instead.
pub fn archive_get(args: ArchiveGetArgs) -> anyhow::Result<ExitCode> {
    let failed = |e: &dyn std::fmt::Display| {
        let (code, consequence) = if args.soft_errors {
            (1, "reported as not in the archive (--soft-errors): the standby keeps streaming from its primary")
        } else {
            (126, "recovery stops here: fix the repository and start PostgreSQL again")
        };
        eprintln!("pgha: archive-get {}: {e}; {consequence}", args.wal_name);
        Ok(ExitCode::from(code))
    };
    let (cfg, config_path) = match load(&args.config) {
        Ok(loaded) => loaded,
        Err(e) => return failed(&format!("{e:#}")),
    };
    let rt = match single_thread_runtime() {
        Ok(rt) => rt,
        Err(e) => return failed(&e),
    };
    if args.prefetch_worker {
        let spool = backup::prefetch::spool_dir(&args.destination);
        let work = async {
            tokio::time::timeout(
                std::time::Duration::from_secs(600),
                backup::prefetch::fill(&cfg, &spool, &args.wal_name),
            )
            .await
        };
        match rt.block_on(work) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("archive-get prefetch after {}: {e}", args.wal_name),
            Err(_) => tracing::warn!("archive-get prefetch after {} gave up after 600 s", args.wal_name),
        }
        return Ok(ExitCode::SUCCESS);
    }
    match rt.block_on(backup::archive::get(&cfg, &args.wal_name, &args.destination)) {
        Ok(Fetched::Restored) => {
            start_prefetch(&cfg, &config_path, &args);
            Ok(ExitCode::SUCCESS)
        }
        Ok(Fetched::NotInArchive) => Ok(ExitCode::from(1)),
        Err(e) => failed(&e),
    }
}

/// The segments after `name` to prefetch (segment size from the file just restored).
fn prefetch_window(cfg: &BackupConfig, name: &str, destination: &std::path::Path) -> Vec<String> {
    if cfg.archive_get_prefetch == 0 {
        return Vec::new();
    }
    let mut head = [0u8; 40];
    let size = std::fs::File::open(destination)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .ok()
        .and_then(|()| backup::wal_name::segment_header(&head))
        .map_or(backup::wal_name::DEFAULT_SEGMENT_SIZE, |(_, s)| s as u64);
    backup::prefetch::window(name, cfg.archive_get_prefetch, size)
}

/// Starts a detached prefetch worker when the spool holds less than half of the next segments.
fn start_prefetch(cfg: &BackupConfig, config_path: &std::path::Path, args: &ArchiveGetArgs) {
    let wanted = prefetch_window(cfg, &args.wal_name, &args.destination);
    if wanted.is_empty() || !backup::prefetch::needs_worker(&args.destination, &wanted) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("archive-get").arg("--config").arg(config_path).arg("--prefetch-worker");
    cmd.arg(&args.wal_name).arg(&args.destination);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    // Its own process group, not waited for: PostgreSQL gets its answer now.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if let Err(e) = cmd.spawn() {
        tracing::warn!("cannot start the archive-get prefetch worker: {e}");
    }
}

pub fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let (mut cfg, config_path) = load(&args.config)?;
    let rt = runtime()?;
    match args.verb {
        BackupVerb::Create { kind, from_standby, jobs, data_dir, conninfo } => {
            if let (Some(data_dir), Some(conninfo)) = (data_dir, conninfo) {
                cfg.postgresql = Some(backup::config::PostgresConfig { data_dir, conninfo, password_file: None });
            }
            let kind = match kind.as_str() {
                "full" => BackupKind::Full,
                "incr" => BackupKind::Incr,
                other => bail!("--type {other}: expected full or incr"),
            };
            let opts = backup::create::CreateOptions { kind, jobs: jobs.unwrap_or(cfg.jobs), from_standby };
            let m = rt.block_on(backup::create::create(&cfg, opts))?;
            let secs = m.duration_secs.max(0.001);
            println!(
                "backup {} ({:?}) complete: {} of data, {} stored, {:.1} s ({:.0} MiB/s), WAL {} to {}{}",
                m.label,
                m.kind,
                mib(m.total_size()),
                mib(m.stored_size()),
                secs,
                m.total_size() as f64 / secs / (1024.0 * 1024.0),
                m.start_lsn,
                m.stop_lsn,
                match m.corrupt_page_count() {
                    0 => String::new(),
                    n => format!("; WARNING: {n} page(s) failed their checksum, see `pgha backup info {}`", m.label),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupVerb::List { json } => {
            let l = rt.block_on(backup::report::list(&cfg))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("repository {}", l.repository);
            if l.backups.is_empty() {
                println!("no complete backups");
            }
            for b in &l.backups {
                println!(
                    "{}  {:?}  {} -> {} ({:.1} s)  size {}  stored {}  tl {}  WAL {}..{}  restorable {} .. {}{}",
                    b.label,
                    b.kind,
                    b.start_time,
                    b.stop_time,
                    b.duration_secs,
                    mib(b.size),
                    mib(b.stored),
                    b.timeline,
                    b.start_wal,
                    b.stop_wal,
                    b.stop_time,
                    b.restorable_until.as_deref().unwrap_or("(WAL missing)"),
                    b.wal_gap.as_ref().map_or(String::new(), |g| format!("  [{g}]"))
                );
            }
            for i in &l.interrupted {
                println!("{i}  interrupted (no manifest; not restorable; removed by `pgha backup expire`)");
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupVerb::Info { label, json } => {
            let (m, s) = rt.block_on(backup::report::info(&cfg, &label))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "summary": s, "manifest": m }))?);
            } else {
                println!("{}", serde_json::to_string_pretty(&s)?);
                for (path, f) in m.files.iter().filter(|(_, f)| !f.corrupt_pages.is_empty()) {
                    println!("corrupt pages in {path}: {:?}", f.corrupt_pages);
                }
                println!(
                    "files: {}  referenced from earlier backups: {}",
                    m.files.len(),
                    m.files.values().filter(|f| f.reference.is_some()).count()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupVerb::Verify { json } => {
            let v = rt.block_on(backup::report::verify(&cfg, cfg.jobs))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for p in &v.problems {
                    println!("{p}");
                }
                println!(
                    "{}: {} backups, {} stored chunks, {} WAL files checked: {}",
                    v.repository,
                    v.backups_checked,
                    v.chunks_checked,
                    v.wal_files_checked,
                    if v.ok() { "all good".to_string() } else { format!("{} problem(s)", v.problems.len()) }
                );
            }
            Ok(if v.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        BackupVerb::Expire { dry_run, retention_full, retention_days } => {
            let r = backup::expire::Retention { full: retention_full, days: retention_days };
            let e = rt.block_on(backup::expire::expire(&cfg, r, dry_run))?;
            let verb = if dry_run { "would expire" } else { "expired" };
            println!("keeping backups: {}", e.plan.keep.join(", "));
            println!(
                "{verb} backups: {}",
                if e.plan.expire.is_empty() { "none".into() } else { e.plan.expire.join(", ") }
            );
            println!("{verb} {} WAL file(s) older than every kept backup", e.wal_files.len());
            if !e.interrupted.is_empty() {
                println!("{verb} interrupted backups: {}", e.interrupted.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupVerb::Restore {
            to_dir,
            target_time,
            target_lsn,
            target_xid,
            target_name,
            immediate,
            delta,
            set,
            jobs,
        } => {
            let given =
                [target_time.is_some(), target_lsn.is_some(), target_xid.is_some(), target_name.is_some(), immediate];
            if given.iter().filter(|g| **g).count() > 1 {
                bail!("give at most one of --target-time, --target-lsn, --target-xid, --target-name, --immediate");
            }
            let target = if let Some(t) = target_time {
                Target::Time(t)
            } else if let Some(l) = target_lsn {
                Target::Lsn(l.parse().map_err(anyhow::Error::msg)?)
            } else if let Some(x) = target_xid {
                Target::Xid(x.parse().with_context(|| format!("--target-xid {x}: expected a transaction id number"))?)
            } else if let Some(n) = target_name {
                Target::Name(n)
            } else if immediate {
                Target::Immediate
            } else {
                Target::EndOfArchive
            };
            let exe = std::env::current_exe().context("locating the pgha binary for restore_command")?;
            let restore_command =
                backup::commands::restore_command(&exe, &config_path, backup::commands::OnRepositoryError::Fatal);
            let opts = backup::restore::RestoreOptions {
                to_dir: to_dir.clone(),
                target: target.clone(),
                delta,
                set,
                jobs: jobs.unwrap_or(cfg.jobs),
                restore_command,
            };
            let started = std::time::Instant::now();
            let r = rt.block_on(backup::restore::restore(&cfg, &opts))?;
            println!(
                "restored backup {} into {} ({} chunks fetched, {} kept, {} written, {:.1} s); start PostgreSQL on it to \
                 recover to {}",
                r.label,
                to_dir.display(),
                r.chunks_fetched,
                r.chunks_kept,
                mib(r.bytes_written),
                started.elapsed().as_secs_f64(),
                target.describe()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
