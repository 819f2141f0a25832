//! WAL archiving into a `pgha backup` repository: with `[backup] config = FILE` in the agent
//! config, every member runs with archive_mode = on (only a primary archives; a promoted replica
//! starts archiving on its new timeline, history file included), archive_command = `pgha
//! archive-push` and restore_command = `pgha archive-get --soft-errors` (a standby that cannot
//! read the repository keeps streaming instead of stopping), both running this very binary.

use backup::commands::{archive_command, conf_string, restore_command, OnRepositoryError};
use std::path::{Path, PathBuf};

/// The running pgha binary (after an in-place upgrade, the file now at the same path).
pub(crate) fn this_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the running pgha binary: {e}"))?;
    let text = exe.display().to_string();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// The parameters for the agent's managed configuration, after checking the backup config
/// parses; `backup_config` is made absolute (PostgreSQL runs the commands from its data directory).
pub fn parameters(backup_config: &Path) -> Result<Vec<(String, String)>, String> {
    let abs = std::fs::canonicalize(backup_config)
        .map_err(|e| format!("[backup] config = {}: {e}", backup_config.display()))?;
    let _: backup::BackupConfig = consensus::config_file::load(&abs).map_err(|e| format!("[backup] config: {e}"))?;
    let pgha = this_binary()?;
    Ok(vec![
        ("archive_mode".to_string(), "on".to_string()),
        ("archive_command".to_string(), conf_string(&archive_command(&pgha, &abs))),
        ("restore_command".to_string(), conf_string(&restore_command(&pgha, &abs, OnRepositoryError::Soft))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_broken_backup_config_is_named() {
        let e = parameters(Path::new("/nonexistent/backup.toml")).unwrap_err();
        assert!(e.starts_with("[backup] config = /nonexistent/backup.toml:"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b.toml");
        std::fs::write(&f, "scope = \"main\"\n").unwrap();
        let e = parameters(&f).unwrap_err();
        assert!(e.contains("repository"), "{e}");
    }

    #[test]
    fn commands_use_the_absolute_config_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.toml"), "scope = \"main\"\n[repository]\npath = \"/r\"\n").unwrap();
        let rel = dir.path().join(".").join("b.toml");
        let p = parameters(&rel).unwrap();
        let abs = std::fs::canonicalize(dir.path().join("b.toml")).unwrap();
        assert_eq!(p[0], ("archive_mode".to_string(), "on".to_string()));
        assert!(p[1].1.contains(&format!(" archive-push --config {} %p'", abs.display())), "{:?}", p[1]);
        assert!(
            p[2].1.contains(" archive-get --config ") && p[2].1.ends_with(" --soft-errors %f \"%p\"'"),
            "{:?}",
            p[2]
        );
    }
}
