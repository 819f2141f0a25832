//! Recovery targets: which backup serves a target (the newest one that ended before it), and
//! the recovery settings PostgreSQL needs to stop exactly there. Pure: no I/O.

use crate::create::parse_time;
use crate::manifest::Manifest;
use crate::wal_name::Lsn;

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Replay all archived WAL.
    EndOfArchive,
    /// Stop as soon as the backup is consistent.
    Immediate,
    /// Stop before the first commit after this time (the text is passed to PostgreSQL as given).
    Time(String),
    Lsn(Lsn),
    Xid(u64),
    /// A restore point made with pg_create_restore_point.
    Name(String),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::EndOfArchive => "the end of the archived WAL".into(),
            Target::Immediate => "the end of the backup (immediate)".into(),
            Target::Time(t) => format!("time {t}"),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Xid(x) => format!("transaction {x}"),
            Target::Name(n) => format!("restore point `{n}`"),
        }
    }
}

/// Picks the backup for `target`: `set` if given, else the newest backup that ended before the
/// target (for names, immediate and end of archive: the newest backup).
pub fn select<'a>(backups: &'a [Manifest], target: &Target, set: Option<&str>) -> Result<&'a Manifest, String> {
    if let Some(label) = set {
        return backups
            .iter()
            .find(|m| m.label == label)
            .ok_or_else(|| format!("there is no complete backup {label}; `pgha backup list` shows the backups"));
    }
    let newest_before = |ok: &dyn Fn(&Manifest) -> bool| backups.iter().rev().find(|m| ok(m));
    let found = match target {
        Target::EndOfArchive | Target::Immediate | Target::Name(_) => backups.last(),
        Target::Time(t) => {
            let t = parse_time(t).ok_or_else(|| {
                format!(
                    "target time `{t}` is not understood: write it like 2026-05-01 14:03:27+00 (an offset is required)"
                )
            })?;
            newest_before(&|m| parse_time(&m.stop_time).is_some_and(|s| s < t))
        }
        Target::Lsn(l) => newest_before(&|m| m.stop_lsn <= *l),
        Target::Xid(x) => newest_before(&|m| m.stop_next_xid <= *x),
    };
    found.ok_or_else(|| match backups.first() {
        None => "the repository has no complete backup yet: take one with `pgha backup create`".to_string(),
        Some(oldest) => format!(
            "no backup ended before {}: the oldest backup, {}, ended at {} (LSN {}); an earlier target cannot be \
             restored",
            target.describe(),
            oldest.label,
            oldest.stop_time,
            oldest.stop_lsn
        ),
    })
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The recovery settings to append to postgresql.auto.conf.
pub fn recovery_settings(restore_command: &str, target: &Target) -> String {
    let mut s = String::from("\n# Recovery settings written by pgha backup restore\n");
    s += &format!("restore_command = {}\n", quote(restore_command));
    match target {
        Target::EndOfArchive => {}
        Target::Immediate => s += "recovery_target = 'immediate'\n",
        Target::Time(t) => s += &format!("recovery_target_time = {}\n", quote(t)),
        Target::Lsn(l) => s += &format!("recovery_target_lsn = {}\n", quote(&l.to_string())),
        Target::Xid(x) => s += &format!("recovery_target_xid = {}\n", quote(&x.to_string())),
        Target::Name(n) => s += &format!("recovery_target_name = {}\n", quote(n)),
    }
    if *target != Target::EndOfArchive {
        s += "recovery_target_action = 'promote'\n";
    }
    s += "recovery_target_timeline = 'latest'\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::BackupKind;
    use std::collections::BTreeMap;

    fn backup(label: &str, stop: &str, lsn: u64, xid: u64) -> Manifest {
        Manifest {
            format: 1,
            label: label.into(),
            kind: BackupKind::Full,
            parent: None,
            system_identifier: 1,
            pg_version: 150000,
            segment_size: 16 << 20,
            timeline: 1,
            start_lsn: Lsn(lsn - 1),
            stop_lsn: Lsn(lsn),
            start_time: stop.into(),
            stop_time: stop.into(),
            stop_next_xid: xid,
            from_standby: false,
            compression_level: 1,
            data_checksums: true,
            backup_label: String::new(),
            tablespace_map: None,
            directories: BTreeMap::new(),
            files: BTreeMap::new(),
            duration_secs: 1.0,
        }
    }

    #[test]
    fn picks_the_newest_backup_that_ended_before_the_target() {
        let b = vec![
            backup("A", "2026-05-01T10:00:00+00:00", 100, 700),
            backup("B", "2026-05-01T12:00:00+00:00", 200, 800),
        ];
        let pick = |t: Target| select(&b, &t, None).map(|m| m.label.clone());
        assert_eq!(pick(Target::Time("2026-05-01 11:00:00+00".into())), Ok("A".into()));
        assert_eq!(pick(Target::Time("2026-05-01 14:00:00+02".into())), Ok("A".into()), "offsets count");
        assert_eq!(pick(Target::Time("2026-05-01 12:00:00.5+00".into())), Ok("B".into()));
        assert!(pick(Target::Time("2026-05-01 09:00:00+00".into())).is_err_and(|e| e.contains("oldest backup, A")));
        assert!(pick(Target::Time("yesterday".into())).is_err_and(|e| e.contains("offset")));
        assert_eq!(pick(Target::Lsn(Lsn(150))), Ok("A".into()));
        assert_eq!(pick(Target::Xid(800)), Ok("B".into()));
        assert_eq!(pick(Target::Name("x".into())), Ok("B".into()));
        assert_eq!(select(&b, &Target::Immediate, Some("A")).map(|m| m.label.clone()), Ok("A".into()));
        assert!(select(&b, &Target::Immediate, Some("C")).is_err());
    }

    #[test]
    fn settings_quote_values() {
        let s = recovery_settings("pgha archive-get %f \"%p\"", &Target::Name("it's".into()));
        assert!(s.contains("recovery_target_name = 'it''s'"), "{s}");
        assert!(s.contains("recovery_target_action = 'promote'"));
        assert!(s.contains("recovery_target_timeline = 'latest'"));
    }
}
