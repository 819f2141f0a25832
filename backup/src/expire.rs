//! Retention: which backups `expire` keeps (the newest N full backups with their incrementals,
//! plus what is needed to restore to any time within the last D days) and which WAL may go
//! (only segments older than the oldest kept backup's start). Pure plan, then a small executor.

use crate::catalog;
use crate::config::BackupConfig;
use crate::create::parse_time;
use crate::error::Result;
use crate::manifest::{BackupKind, Manifest};
use crate::repo::Repository;
use crate::wal_name::{segno_of, SegNo, WalFile};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Full backups to keep (at least 1).
    pub full: usize,
    /// Also keep what restores to any time within this many days.
    pub days: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExpirePlan {
    pub keep: Vec<String>,
    pub expire: Vec<String>,
    /// WAL segments below this number (on every timeline) are no longer needed.
    pub wal_below: Option<SegNo>,
}

pub fn plan(backups: &[Manifest], r: Retention, now: chrono::DateTime<chrono::Utc>) -> ExpirePlan {
    let fulls: Vec<&Manifest> = backups.iter().filter(|m| m.kind == BackupKind::Full).collect();
    let mut kept_fulls: BTreeSet<&str> = fulls.iter().rev().take(r.full.max(1)).map(|m| m.label.as_str()).collect();
    if let Some(days) = r.days {
        let cutoff = now - chrono::Duration::days(days as i64);
        let ended = |m: &Manifest| parse_time(&m.stop_time).unwrap_or(now);
        kept_fulls.extend(fulls.iter().filter(|m| ended(m) >= cutoff).map(|m| m.label.as_str()));
        if let Some(m) = fulls.iter().rev().find(|m| ended(m) < cutoff) {
            kept_fulls.insert(m.label.as_str());
        }
    }
    // A backup is kept if it is a kept full or descends from one; then everything a kept backup
    // references is kept too.
    let mut keep: BTreeSet<String> = BTreeSet::new();
    for m in backups {
        let root_kept = match m.kind {
            BackupKind::Full => kept_fulls.contains(m.label.as_str()),
            BackupKind::Incr => m.parent.as_ref().is_some_and(|p| keep.contains(p)),
        };
        if root_kept {
            keep.insert(m.label.clone());
        }
    }
    loop {
        let more: Vec<String> = backups
            .iter()
            .filter(|m| keep.contains(&m.label))
            .flat_map(|m| m.references().into_iter().chain(m.parent.clone()))
            .filter(|l| !keep.contains(l))
            .collect();
        if more.is_empty() {
            break;
        }
        keep.extend(more);
    }
    let wal_below =
        backups.iter().filter(|m| keep.contains(&m.label)).map(|m| segno_of(m.start_lsn, m.segment_size)).min();
    ExpirePlan {
        keep: backups.iter().filter(|m| keep.contains(&m.label)).map(|m| m.label.clone()).collect(),
        expire: backups.iter().filter(|m| !keep.contains(&m.label)).map(|m| m.label.clone()).collect(),
        wal_below,
    }
}

/// What expire deleted (or, with dry_run, would delete).
#[derive(Debug, Clone, Default)]
pub struct Expired {
    pub plan: ExpirePlan,
    pub wal_files: Vec<String>,
    pub interrupted: Vec<String>,
}

pub async fn expire(config: &BackupConfig, r: Retention, dry_run: bool) -> Result<Expired> {
    let repo = Repository::open(config)?;
    let backups = catalog::manifests(&repo).await?;
    let plan = plan(&backups, r, chrono::Utc::now());
    let newest = backups.last().map(|m| m.label.clone()).unwrap_or_default();
    // Leftovers of interrupted backups older than the newest complete one (a newer one may be running).
    let interrupted: Vec<String> = catalog::leftovers(&repo)
        .await?
        .into_iter()
        .filter(|l| l[..l.len() - 1] < newest[..newest.len().saturating_sub(1)])
        .collect();
    let mut wal_files = Vec::new();
    if let Some(below) = plan.wal_below {
        let archive = catalog::archive(&repo).await?;
        let seg_size = archive.index.segment_size;
        for (path, file) in &archive.objects {
            let name = path.rsplit('/').next().and_then(|n| n.strip_suffix(".zst")).unwrap_or_default();
            let segno = match file {
                WalFile::Segment { segno, .. } => Some(*segno),
                WalFile::Other { .. } => WalFile::parse(&name[..24.min(name.len())], seg_size).and_then(|f| match f {
                    WalFile::Segment { segno, .. } => Some(segno),
                    _ => None,
                }),
                WalFile::History { .. } => None,
            };
            if segno.is_some_and(|s| s < below) {
                wal_files.push(path.clone());
            }
        }
    }
    if !dry_run {
        for label in plan.expire.iter().chain(&interrupted) {
            repo.delete_all(&format!("backups/{label}")).await?;
        }
        for path in &wal_files {
            repo.delete(path).await?;
        }
    }
    Ok(Expired { plan, wal_files, interrupted })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Chunk, FileEntry};
    use crate::wal_name::Lsn;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn backup(i: usize, incr: bool, parent: Option<String>, refs: Vec<String>) -> Manifest {
        let mut files = BTreeMap::new();
        for (n, r) in refs.into_iter().enumerate() {
            files.insert(
                format!("f{n}"),
                FileEntry {
                    size: 1,
                    mtime: 0,
                    mode: 0o600,
                    chunks: vec![Chunk { size: 1, sha256: "x".into(), stored: 1 }],
                    reference: Some(r),
                    corrupt_pages: vec![],
                },
            );
        }
        let t = format!("2026-05-{:02}T00:00:00+00:00", i + 1);
        Manifest {
            format: 1,
            label: format!("B{i:02}"),
            kind: if incr { BackupKind::Incr } else { BackupKind::Full },
            parent,
            system_identifier: 1,
            pg_version: 150000,
            segment_size: 16 << 20,
            timeline: 1,
            start_lsn: Lsn((i as u64 + 1) * 3 * (16 << 20)),
            stop_lsn: Lsn((i as u64 + 1) * 3 * (16 << 20) + 100),
            start_time: t.clone(),
            stop_time: t,
            stop_next_xid: 0,
            from_standby: false,
            compression_level: 1,
            data_checksums: true,
            backup_label: String::new(),
            tablespace_map: None,
            directories: BTreeMap::new(),
            files,
            duration_secs: 1.0,
        }
    }

    /// A history of backups: each incremental's parent is the previous backup and it references
    /// files of some earlier backups of its chain.
    fn arb_backups() -> impl Strategy<Value = Vec<Manifest>> {
        prop::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..12).prop_map(|spec| {
            let mut out: Vec<Manifest> = Vec::new();
            let mut chain_start = 0;
            for (i, (incr, pick)) in spec.into_iter().enumerate() {
                let incr = incr && i > 0;
                if !incr {
                    chain_start = i;
                    out.push(backup(i, false, None, vec![]));
                } else {
                    let r = chain_start + pick.index(i - chain_start);
                    out.push(backup(i, true, Some(format!("B{:02}", i - 1)), vec![format!("B{r:02}")]));
                }
            }
            out
        })
    }

    proptest! {
        #[test]
        fn kept_backups_are_complete_and_their_wal_stays(backups in arb_backups(), n in 1usize..4, days in prop::option::of(0u64..15)) {
            let now = parse_time("2026-05-14T00:00:00+00:00").unwrap_or_default();
            let p = plan(&backups, Retention { full: n, days }, now);
            let keep: BTreeSet<&String> = p.keep.iter().collect();
            prop_assert_eq!(p.keep.len() + p.expire.len(), backups.len());
            // The newest backup and the newest n fulls are always kept.
            prop_assert!(keep.contains(&backups[backups.len() - 1].label));
            let fulls: Vec<_> = backups.iter().filter(|m| m.kind == BackupKind::Full).collect();
            for f in fulls.iter().rev().take(n) { prop_assert!(keep.contains(&f.label)); }
            for m in backups.iter().filter(|m| keep.contains(&m.label)) {
                for r in m.references().iter().chain(&m.parent) { prop_assert!(keep.contains(r), "{} needs {}", m.label, r); }
                prop_assert!(p.wal_below.is_some_and(|w| w <= segno_of(m.start_lsn, m.segment_size)));
            }
            // Retention by days: every time within the window has a kept backup that ended before it
            // (or no backup at all ended before it).
            if let Some(d) = days {
                let cutoff = now - chrono::Duration::days(d as i64);
                let before: Vec<_> = backups.iter().filter(|m| parse_time(&m.stop_time).is_some_and(|t| t < cutoff)).collect();
                if let Some(last) = before.iter().rev().find(|m| m.kind == BackupKind::Full) {
                    prop_assert!(keep.contains(&last.label));
                }
            }
        }
    }
}
