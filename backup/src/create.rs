//! `backup create`: pg_backup_start on a held session, the data directory read, page-checked,
//! compressed, checksummed and stored in parallel chunks, pg_backup_stop, then a wait until the
//! WAL needed for consistency is archived, and the manifest written last. A backup killed at any
//! point before the manifest is written is not listed; the next one starts afresh.

use crate::catalog;
use crate::codec;
use crate::config::{BackupConfig, PostgresConfig};
use crate::error::{io, pg, BackupError, Result};
use crate::manifest::{plan_incremental, BackupKind, Chunk, FileEntry, FilePlan, Manifest, MANIFEST_FORMAT};
use crate::page_checksum::{corrupt_pages, relation_file, PAGE_SIZE};
use crate::pgdata;
use crate::repo::{chunk_object, manifest_object, wal_object, RepoInfo, Repository};
use crate::wal_name::{segment_name, segno_of, Lsn};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Raw bytes per stored chunk: large files are split so one file is stored by several jobs.
pub const CHUNK_SIZE: u64 = 32 << 20;

#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub kind: BackupKind,
    pub jobs: usize,
    pub from_standby: bool,
}

async fn connect(pg_config: &PostgresConfig, what: &str) -> Result<Client> {
    let dsn = pg_config
        .connection_string()
        .map_err(|e| BackupError::Refused(format!("cannot read the password file of [{what}]: {e}")))?;
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(30), tokio_postgres::connect(&dsn, tokio_postgres::NoTls))
            .await
            .map_err(|_| {
                BackupError::Refused(format!("connecting to the {what} ({}) timed out after 30 s", pg_config.conninfo))
            })?
            .map_err(pg(format!("connecting to the {what} ({})", pg_config.conninfo)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn one_text(client: &Client, sql: &str) -> Result<String> {
    let row = client.query_one(sql, &[]).await.map_err(pg(sql))?;
    row.try_get::<_, String>(0).map_err(pg(sql))
}

fn backup_label_field<'a>(label: &'a str, key: &str) -> Option<&'a str> {
    label.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// Takes a base backup and returns its manifest (already written to the repository).
pub async fn create(config: &BackupConfig, opts: CreateOptions) -> Result<Manifest> {
    let began = Instant::now();
    let primary_cfg = config.postgresql.as_ref().ok_or_else(|| {
        BackupError::Refused("the config has no [postgresql] section (data_dir, conninfo): backups need it".into())
    })?;
    let source_cfg = if opts.from_standby {
        config.standby.as_ref().ok_or_else(|| {
            BackupError::Refused("--from-standby needs a [standby] section (data_dir, conninfo) in the config".into())
        })?
    } else {
        primary_cfg
    };
    let repo = Repository::open(config)?;
    let client = connect(primary_cfg, "primary").await?;
    let in_recovery: bool =
        client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(pg("checking the role"))?.get(0);
    if in_recovery {
        return Err(BackupError::Refused(format!(
            "[postgresql] ({}) is a standby; point it at the primary (use --from-standby with [standby] to read files \
             from a standby)",
            primary_cfg.conninfo
        )));
    }
    let archive_mode = one_text(&client, "SELECT current_setting('archive_mode')").await?;
    let archive_command = one_text(&client, "SELECT current_setting('archive_command')").await?;
    if archive_mode == "off" || archive_command.trim().is_empty() {
        return Err(BackupError::Refused(format!(
            "WAL archiving is off on the primary (archive_mode = {archive_mode}): a backup without archived WAL \
             cannot be restored. Set archive_mode = on and archive_command = 'pgha archive-push --config <file> %p', \
             restart PostgreSQL, then retry"
        )));
    }
    let sysid: i64 = client
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .map_err(pg("reading the system identifier"))?
        .get(0);
    let sysid = sysid as u64;
    let segment_size: u64 = one_text(&client, "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        .await?
        .parse()
        .map_err(|_| BackupError::Refused("wal_segment_size is not a number".into()))?;
    let pg_version: u32 = one_text(&client, "SELECT current_setting('server_version_num')")
        .await?
        .parse()
        .map_err(|_| BackupError::Refused("server_version_num is not a number".into()))?;
    let data_checksums = one_text(&client, "SELECT current_setting('data_checksums')").await? == "on";
    repo.claim(&RepoInfo { system_identifier: sysid, segment_size }, "this PostgreSQL server").await?;

    let standby_client = if opts.from_standby {
        let c = connect(source_cfg, "standby").await?;
        let s: i64 = c
            .query_one("SELECT system_identifier FROM pg_control_system()", &[])
            .await
            .map_err(pg("reading the standby's system identifier"))?
            .get(0);
        if s as u64 != sysid {
            return Err(BackupError::Refused(format!(
                "[standby] ({}) belongs to another cluster (system identifier {s}, primary {sysid})",
                source_cfg.conninfo
            )));
        }
        Some(c)
    } else {
        None
    };

    let (parent, kind) = match opts.kind {
        BackupKind::Full => (None, BackupKind::Full),
        BackupKind::Incr => match catalog::manifests(&repo).await?.into_iter().last() {
            Some(p) => (Some(p), BackupKind::Incr),
            None => {
                tracing::warn!(
                    "no earlier backup in {}: taking a full backup instead of an incremental",
                    repo.location()
                );
                (None, BackupKind::Full)
            }
        },
    };
    let label = new_label(&repo, kind).await?;
    tracing::info!(label, "backup starting (checkpoint requested)");

    let start_row = client
        .query_one("SELECT pg_backup_start($1, true)::text, clock_timestamp()::text", &[&label])
        .await
        .map_err(pg("pg_backup_start"))?;
    let start_lsn: Lsn = start_row.get::<_, String>(0).parse().map_err(BackupError::Refused)?;
    let start_time = pg_time(&start_row.get::<_, String>(1))?;
    if let Some(sc) = &standby_client {
        wait_replayed(sc, start_lsn).await?;
    }

    let data_dir = source_cfg.data_dir.clone();
    let scan = tokio::task::spawn_blocking({
        let d = data_dir.clone();
        move || pgdata::scan(&d)
    })
    .await
    .map_err(|e| BackupError::Refused(format!("scan task failed: {e}")))??;
    let parent_start = parent.as_ref().map_or(0, |p| parse_time(&p.start_time).map_or(0, |t| t.timestamp()));
    let plan = plan_incremental(parent.as_ref(), parent_start, &scan.files);
    let files = copy_files(
        &repo,
        &label,
        &data_dir,
        &plan,
        &scan.files,
        opts.jobs,
        config.compression_level,
        data_checksums.then_some(start_lsn.0),
    )
    .await?;

    let stop_row = client
        .query_one(
            "SELECT lsn::text, labelfile, spcmapfile, clock_timestamp()::text, \
             txid_snapshot_xmax(txid_current_snapshot())::text FROM pg_backup_stop(false)",
            &[],
        )
        .await
        .map_err(pg("pg_backup_stop"))?;
    let stop_lsn: Lsn = stop_row.get::<_, String>(0).parse().map_err(BackupError::Refused)?;
    let backup_label: String = stop_row.get(1);
    let spcmap: Option<String> = stop_row.get(2);
    let stop_time = pg_time(&stop_row.get::<_, String>(3))?;
    let stop_next_xid: u64 = stop_row.get::<_, String>(4).parse().unwrap_or(0);
    let timeline: u32 = backup_label_field(&backup_label, "START TIMELINE:")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| BackupError::Refused(format!("backup_label has no START TIMELINE:\n{backup_label}")))?;

    let first = segno_of(start_lsn, segment_size);
    let last = segno_of(Lsn(stop_lsn.0.saturating_sub(1)), segment_size).max(first);
    wait_archived(&repo, timeline, first, last, segment_size, Duration::from_secs(config.archive_timeout_secs)).await?;

    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        label: label.clone(),
        kind,
        parent: parent.map(|p| p.label),
        system_identifier: sysid,
        pg_version,
        segment_size,
        timeline,
        start_lsn,
        stop_lsn,
        start_time,
        stop_time,
        stop_next_xid,
        from_standby: opts.from_standby,
        compression_level: config.compression_level,
        data_checksums,
        backup_label,
        tablespace_map: spcmap.filter(|s| !s.is_empty()),
        directories: scan.directories,
        files,
        duration_secs: began.elapsed().as_secs_f64(),
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Refused(e.to_string()))?;
    repo.put(&manifest_object(&label), Bytes::from(text)).await?;
    for (path, f) in &manifest.files {
        if !f.corrupt_pages.is_empty() {
            tracing::warn!(file = path, pages = ?f.corrupt_pages, "page checksum failures: the file was backed up as read");
        }
    }
    Ok(manifest)
}

async fn new_label(repo: &Repository, kind: BackupKind) -> Result<String> {
    let existing = repo.list_dirs("backups").await?;
    loop {
        let suffix = if kind == BackupKind::Full { 'F' } else { 'I' };
        let label = format!("{}{suffix}", chrono::Utc::now().format("%Y%m%d-%H%M%S"));
        if !existing.iter().any(|e| e[..e.len().saturating_sub(1)] == label[..label.len() - 1]) {
            return Ok(label);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// PostgreSQL's `timestamptz::text` (`2026-05-01 12:00:00.123456+00`) as RFC 3339.
pub fn pg_time(text: &str) -> Result<String> {
    parse_time(text).map(|t| t.to_rfc3339()).ok_or_else(|| BackupError::Refused(format!("cannot parse time `{text}`")))
}

/// Parses RFC 3339 or PostgreSQL's timestamptz text; a time without offset is refused (None).
pub fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let t = text.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(d.to_utc());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(d) = chrono::DateTime::parse_from_str(t, fmt) {
            return Some(d.to_utc());
        }
    }
    None
}

async fn wait_replayed(standby: &Client, lsn: Lsn) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let replayed: Option<String> = standby
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await
            .map_err(pg("reading the standby's replay position"))?
            .get(0);
        let replayed: Option<Lsn> = replayed.and_then(|s| s.parse().ok());
        if replayed.is_some_and(|r| r >= lsn) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BackupError::Refused(format!(
                "the standby has not replayed up to the backup start {lsn} within 120 s (it is at {}): is it \
                 streaming? Take the backup from the primary instead",
                replayed.map_or("nothing".into(), |r| r.to_string())
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_archived(
    repo: &Repository,
    tl: u32,
    first: u64,
    last: u64,
    seg_size: u64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut seg = first;
    while seg <= last {
        let name = segment_name(tl, seg, seg_size);
        if repo.exists(&wal_object(tl, &name)).await? {
            seg += 1;
            continue;
        }
        if Instant::now() > deadline {
            return Err(BackupError::Refused(format!(
                "WAL segment {name}, needed to make this backup consistent, was not archived within {} s; the \
                 backup is not listed. Check archive_command (pgha archive-push) and the PostgreSQL log for archive \
                 failures, then take the backup again",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

struct Piece {
    path: String,
    index: usize,
    offset: u64,
    len: u64,
}

struct Stored {
    path: String,
    index: usize,
    chunk: Option<Chunk>,
    corrupt: Vec<u32>,
}

#[allow(clippy::too_many_arguments)]
async fn copy_files(
    repo: &Repository,
    label: &str,
    data_dir: &std::path::Path,
    plan: &BTreeMap<String, FilePlan>,
    scanned: &BTreeMap<String, crate::manifest::ScannedFile>,
    jobs: usize,
    level: i32,
    check_pages_before: Option<u64>,
) -> Result<BTreeMap<String, FileEntry>> {
    let mut out = BTreeMap::new();
    let mut pieces = Vec::new();
    for (path, p) in plan {
        match p {
            FilePlan::Reference(e) => {
                out.insert(path.clone(), e.clone());
            }
            FilePlan::Copy => {
                let size = scanned[path].size;
                let n = size.div_ceil(CHUNK_SIZE).max(1);
                for i in 0..n {
                    let offset = i * CHUNK_SIZE;
                    pieces.push(Piece {
                        path: path.clone(),
                        index: i as usize,
                        offset,
                        len: CHUNK_SIZE.min(size - offset),
                    });
                }
            }
        }
    }
    // Big pieces first so the tail of the backup is not one job copying a large file alone.
    pieces.sort_by_key(|p| std::cmp::Reverse(p.len));
    // `jobs` pieces are read, checked and compressed at a time; writing and fsyncing a compressed
    // piece holds no permit, so storage I/O overlaps the next pieces' compression.
    let cpu = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let results: Vec<Result<Stored>> = futures::stream::iter(pieces)
        .map(|piece| {
            let repo = repo.clone();
            let file = data_dir.join(&piece.path);
            let label = label.to_string();
            let cpu = cpu.clone();
            async move {
                let path = piece.path.clone();
                let index = piece.index;
                let permit =
                    cpu.acquire_owned().await.map_err(|e| BackupError::Refused(format!("copy task failed: {e}")))?;
                let work = tokio::task::spawn_blocking(move || {
                    let r = read_piece(&file, &piece, level, check_pages_before);
                    drop(permit);
                    r
                })
                .await
                .map_err(|e| BackupError::Refused(format!("copy task failed: {e}")))??;
                let Some((raw_len, sum, stored, corrupt)) = work else {
                    return Ok(Stored { path, index, chunk: None, corrupt: vec![] });
                };
                let stored_len = stored.len() as u64;
                repo.put_unlisted(&chunk_object(&label, &path, index), Bytes::from(stored)).await?;
                Ok(Stored {
                    path,
                    index,
                    chunk: Some(Chunk { size: raw_len, sha256: codec::hex(&sum), stored: stored_len }),
                    corrupt,
                })
            }
        })
        .buffer_unordered(jobs.max(1) * 2 + 1)
        .collect()
        .await;
    repo.sync_dirs(&format!("backups/{label}")).await?;
    let mut chunks: BTreeMap<String, Vec<(usize, Option<Chunk>)>> = BTreeMap::new();
    let mut corrupt: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for r in results {
        let s = r?;
        chunks.entry(s.path.clone()).or_default().push((s.index, s.chunk));
        corrupt.entry(s.path).or_default().extend(s.corrupt);
    }
    for (path, mut parts) in chunks {
        parts.sort_by_key(|(i, _)| *i);
        // A file that vanished (dropped table) is left out; WAL replay removes it anyway.
        let Some(parts): Option<Vec<Chunk>> = parts.into_iter().map(|(_, c)| c).collect() else { continue };
        // Stop at the first short chunk: the file was truncated while being read.
        let mut kept = Vec::new();
        for c in parts {
            let short = c.size < CHUNK_SIZE;
            kept.push(c);
            if short {
                break;
            }
        }
        let s = &scanned[&path];
        let mut pages = corrupt.remove(&path).unwrap_or_default();
        pages.sort_unstable();
        out.insert(
            path,
            FileEntry {
                size: kept.iter().map(|c| c.size).sum(),
                mtime: s.mtime,
                mode: s.mode,
                chunks: kept,
                reference: None,
                corrupt_pages: pages,
            },
        );
    }
    Ok(out)
}

type PieceResult = Option<(u64, [u8; 32], Vec<u8>, Vec<u32>)>;

/// Bytes read at a time: a multiple of the page size, small enough that page checks, SHA-256 and
/// zstd work on data still in the CPU cache.
const READ_BLOCK: usize = 256 << 10;

thread_local! {
    /// Each blocking worker keeps its read buffer: no fresh pages to fault in per piece.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// And its zstd context (level, compressor) and frame buffer, reused from piece to piece.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>, Vec<u8>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Appends `block` to `stored` as one zstd frame (content size and checksum included), so a
/// restore decompresses each block straight into its buffer.
fn compress_block(block: &[u8], level: i32, stored: &mut Vec<u8>) -> std::io::Result<()> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _, _)| *l != level) {
            let mut c = zstd::bulk::Compressor::new(level)?;
            c.include_checksum(true)?;
            c.include_contentsize(true)?;
            *slot = Some((level, c, Vec::new()));
        }
        let Some((_, c, frame)) = slot.as_mut() else { return Ok(()) };
        frame.clear();
        frame.reserve(zstd::zstd_safe::compress_bound(block.len()));
        let n = c.compress_to_buffer(block, frame)?;
        stored.extend_from_slice(&frame[..n]);
        Ok(())
    })
}

/// Reads one piece block by block, checking pages, hashing and compressing each block as it is
/// read. A file shorter than expected (truncated during the backup) gives a short piece.
fn read_piece(file: &PathBuf, piece: &Piece, level: i32, check_pages_before: Option<u64>) -> Result<PieceResult> {
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(file)(e)),
    };
    let first_blkno = check_pages_before.and_then(|lsn| relation_file(&piece.path).map(|b| (lsn, b)));
    let mut hasher = Sha256::new();
    let mut stored = Vec::new();
    let mut corrupt = Vec::new();
    let mut done = 0u64;
    READ_BUF.with(|cell| -> Result<()> {
        let mut buf = cell.borrow_mut();
        if buf.len() < READ_BLOCK {
            buf.resize(READ_BLOCK, 0);
        }
        while done < piece.len {
            let want = (piece.len - done).min(READ_BLOCK as u64) as usize;
            let n = read_at_most(&f, &mut buf[..want], piece.offset + done).map_err(io(file))?;
            let block = &buf[..n];
            if let Some((start_lsn, first)) = first_blkno {
                let blkno = first + ((piece.offset + done) / PAGE_SIZE as u64) as u32;
                corrupt.extend(corrupt_pages(block, blkno, start_lsn));
            }
            hasher.update(block);
            compress_block(block, level, &mut stored).map_err(io(file))?;
            done += n as u64;
            if n < want {
                break;
            }
        }
        Ok(())
    })?;
    if done == 0 {
        compress_block(&[], level, &mut stored).map_err(io(file))?;
    }
    Ok(Some((done, hasher.finalize().into(), stored, corrupt)))
}

/// Fills `buf` from `offset` unless the file ends first; returns the bytes read.
fn read_at_most(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
