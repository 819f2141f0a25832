//! The `archive_command` and `restore_command` values that make PostgreSQL run `pgha
//! archive-push` / `pgha archive-get`: paths quoted for `/bin/sh` and `%` doubled for PostgreSQL's
//! own placeholder expansion, then the whole value quoted for postgresql.conf. Pure.

use std::path::Path;

/// What `archive-get` does when the repository cannot be read (unreachable, unreadable, corrupt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRepositoryError {
    /// Exit 126: PostgreSQL aborts recovery with the message, so a point-in-time restore never
    /// ends early and promotes at the wrong point. Used by `pgha backup restore`.
    Fatal,
    /// Exit 1 ("not in the archive") after printing the message: a standby falls back to
    /// streaming from its primary. Used by the agent for the servers it manages.
    Soft,
}

/// Quotes one word for `/bin/sh` (kept bare when it has only safe characters).
pub fn shell_word(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,".contains(&b)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// A path as one shell word, with `%` doubled so PostgreSQL does not expand it.
fn path_word(path: &Path) -> String {
    shell_word(&path.display().to_string()).replace('%', "%%")
}

/// `<pgha> archive-push --config <file> %p`
pub fn archive_command(pgha: &Path, config: &Path) -> String {
    format!("{} archive-push --config {} %p", path_word(pgha), path_word(config))
}

/// `<pgha> archive-get --config <file> [--soft-errors] %f "%p"`
pub fn restore_command(pgha: &Path, config: &Path, on_error: OnRepositoryError) -> String {
    let soft = match on_error {
        OnRepositoryError::Fatal => "",
        OnRepositoryError::Soft => " --soft-errors",
    };
    format!("{} archive-get --config {}{soft} %f \"%p\"", path_word(pgha), path_word(config))
}

/// A value as a postgresql.conf string literal.
pub fn conf_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn plain_paths_stay_bare() {
        let c = archive_command(Path::new("/usr/bin/pgha"), Path::new("/etc/pgha/backup.toml"));
        assert_eq!(c, "/usr/bin/pgha archive-push --config /etc/pgha/backup.toml %p");
        let r = restore_command(Path::new("/usr/bin/pgha"), Path::new("/etc/b.toml"), OnRepositoryError::Soft);
        assert_eq!(r, "/usr/bin/pgha archive-get --config /etc/b.toml --soft-errors %f \"%p\"");
    }

    #[test]
    fn odd_paths_survive_the_shell_postgres_and_the_conf_file() {
        let cfg = PathBuf::from("/etc/my pgha/it's 100%.toml");
        let c = archive_command(Path::new("/opt/p g/pgha"), &cfg);
        assert_eq!(c, "'/opt/p g/pgha' archive-push --config '/etc/my pgha/it'\\''s 100%%.toml' %p");
        assert_eq!(
            conf_string(&c),
            "'''/opt/p g/pgha'' archive-push --config ''/etc/my pgha/it''\\''''s 100%%.toml'' %p'"
        );
    }
}
