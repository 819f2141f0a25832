//! `backup list`, `info` and `verify`: what each backup holds, how long it took, its WAL range
//! and the time range it can restore to; verify re-reads every stored byte and walks the WAL
//! from each backup to the newest segment, naming each corrupt file and each gap.

use crate::catalog::{self, Archive};
use crate::codec;
use crate::config::BackupConfig;
use crate::error::{BackupError, Result};
use crate::manifest::{BackupKind, Manifest};
use crate::repo::{chunk_object, Repository};
use crate::wal_name::{segment_name, segno_of, Lsn};
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub label: String,
    pub kind: BackupKind,
    pub parent: Option<String>,
    pub from_standby: bool,
    pub start_time: String,
    pub stop_time: String,
    pub duration_secs: f64,
    /// Bytes of the data directory the backup represents.
    pub size: u64,
    /// Bytes this backup stored (its own files, compressed).
    pub stored: u64,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub start_wal: String,
    pub stop_wal: String,
    pub corrupt_pages: usize,
    /// Restorable to any time from `stop_time` to this (≈ arrival of the last continuous WAL segment).
    pub restorable_until: Option<String>,
    /// The timeline recovery ends on.
    pub latest_timeline: u32,
    /// A break in the WAL after this backup.
    pub wal_gap: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub repository: String,
    pub backups: Vec<BackupSummary>,
    /// Backups without a manifest: interrupted (or running now); `expire` removes them.
    pub interrupted: Vec<String>,
}

pub fn summarize(m: &Manifest, archive: &Archive) -> BackupSummary {
    let seg = m.segment_size;
    let stop_seg = segno_of(Lsn(m.stop_lsn.0.saturating_sub(1)), seg);
    let c = archive.index.check(m.timeline, m.start_lsn);
    let consistent = c.last.is_some_and(|(_, s)| s >= stop_seg);
    let restorable_until = c.last.filter(|_| consistent).and_then(|k| archive.arrived.get(&k)).map(|t| t.to_rfc3339());
    let wal_gap = c.gap.map(|g| {
        let range = if g.first_missing == g.last_missing {
            g.first_missing.clone()
        } else {
            format!("{}..{}", g.first_missing, g.last_missing)
        };
        let from_time = match &restorable_until {
            Some(t) => format!("after about {t}"),
            None => "at all (the WAL needed for consistency is missing)".to_string(),
        };
        match g.resumes_at {
            Some(r) => format!("WAL {range} missing (archive resumes at {r}): this backup cannot restore {from_time}"),
            None => format!("WAL {range} not archived yet"),
        }
    });
    BackupSummary {
        label: m.label.clone(),
        kind: m.kind,
        parent: m.parent.clone(),
        from_standby: m.from_standby,
        start_time: m.start_time.clone(),
        stop_time: m.stop_time.clone(),
        duration_secs: m.duration_secs,
        size: m.total_size(),
        stored: m.stored_size(),
        timeline: m.timeline,
        start_lsn: m.start_lsn,
        stop_lsn: m.stop_lsn,
        start_wal: segment_name(m.timeline, segno_of(m.start_lsn, seg), seg),
        stop_wal: segment_name(m.timeline, stop_seg, seg),
        corrupt_pages: m.corrupt_page_count(),
        restorable_until,
        latest_timeline: c.timeline,
        wal_gap,
    }
}

pub async fn list(config: &BackupConfig) -> Result<Listing> {
    let repo = Repository::open(config)?;
    let backups = catalog::manifests(&repo).await?;
    let archive = catalog::archive(&repo).await?;
    let complete: Vec<String> = backups.iter().map(|m| m.label.clone()).collect();
    Ok(Listing {
        repository: repo.location().to_string(),
        backups: backups.iter().map(|m| summarize(m, &archive)).collect(),
        interrupted: catalog::leftovers(&repo).await?.into_iter().filter(|l| !complete.contains(l)).collect(),
    })
}

pub async fn info(config: &BackupConfig, label: &str) -> Result<(Manifest, BackupSummary)> {
    let repo = Repository::open(config)?;
    let m = catalog::manifest(&repo, label).await?.ok_or_else(|| {
        BackupError::Refused(format!(
            "there is no complete backup {label} in {}; see `pgha backup list`",
            repo.location()
        ))
    })?;
    let archive = catalog::archive(&repo).await?;
    let s = summarize(&m, &archive);
    Ok((m, s))
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub repository: String,
    pub backups_checked: usize,
    pub chunks_checked: usize,
    pub wal_files_checked: usize,
    /// One line per problem: which object, what is wrong, what it means.
    pub problems: Vec<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub async fn verify(config: &BackupConfig, jobs: usize) -> Result<Verification> {
    let repo = Repository::open(config)?;
    let backups = catalog::manifests(&repo).await?;
    let archive = catalog::archive(&repo).await?;
    let mut problems = Vec::new();
    // Each stored chunk once, with every (backup, file) that needs it.
    let mut chunks: BTreeMap<String, (u64, String, Vec<String>)> = BTreeMap::new();
    for m in &backups {
        for (path, f) in &m.files {
            for (i, c) in f.chunks.iter().enumerate() {
                let object = chunk_object(f.data_label(&m.label), path, i);
                let e = chunks.entry(object).or_insert_with(|| (c.size, c.sha256.clone(), Vec::new()));
                e.2.push(format!("{} (file {path})", m.label));
            }
        }
    }
    let chunks_checked = chunks.len();
    let bad: Vec<Option<String>> = futures::stream::iter(chunks)
        .map(|(object, (size, sha, users))| {
            let repo = repo.clone();
            async move {
                let why = match repo.get(&object).await {
                    Ok(None) => Some("missing".to_string()),
                    Err(e) => Some(e.to_string()),
                    Ok(Some(stored)) => {
                        tokio::task::spawn_blocking(move || match codec::decompress(&stored, size as usize) {
                            Err(e) => Some(e),
                            Ok(raw) => {
                                let got = codec::hex(&codec::sha256(&raw));
                                (got != sha).then(|| format!("SHA-256 is {got}, the manifest says {sha}"))
                            }
                        })
                        .await
                        .unwrap_or_else(|e| Some(e.to_string()))
                    }
                };
                why.map(|w| format!("corrupt: {object}: {w}; needed by backup {}", users.join(", ")))
            }
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    problems.extend(bad.into_iter().flatten());
    let wal: Vec<Option<String>> = futures::stream::iter(archive.objects.clone())
        .map(|(path, _)| {
            let repo = repo.clone();
            async move {
                match repo.get(&path).await {
                    Ok(Some(stored)) => tokio::task::spawn_blocking(move || codec::decode_wal(&stored).err())
                        .await
                        .unwrap_or_else(|e| Some(e.to_string()))
                        .map(|w| format!("corrupt: {path}: {w}")),
                    Ok(None) => None,
                    Err(e) => Some(format!("unreadable: {path}: {e}")),
                }
            }
        })
        .buffer_unordered(jobs.max(1) * 2)
        .collect()
        .await;
    problems.extend(wal.into_iter().flatten());
    for (i, m) in backups.iter().enumerate() {
        let s = summarize(m, &archive);
        if let Some(gap) = &s.wal_gap {
            if gap.contains("missing") {
                let next = backups[i + 1..].iter().find(|n| n.start_lsn > m.stop_lsn);
                let unrestorable = format!(
                    "unrestorable from {} to {}",
                    s.restorable_until.as_deref().unwrap_or(&m.stop_time),
                    next.map_or("now".to_string(), |n| format!("{} (backup {} ends)", n.stop_time, n.label))
                );
                problems.push(format!("gap after backup {}: {gap}; {unrestorable}", m.label));
            }
        }
        if s.corrupt_pages > 0 {
            problems.push(format!(
                "backup {} holds {} page(s) that failed their checksum when read (see `pgha backup info {}`)",
                m.label, s.corrupt_pages, m.label
            ));
        }
    }
    Ok(Verification {
        repository: repo.location().to_string(),
        backups_checked: backups.len(),
        chunks_checked,
        wal_files_checked: archive.objects.len(),
        problems,
    })
}
