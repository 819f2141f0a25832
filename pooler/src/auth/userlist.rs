//! PgBouncer's auth_file (userlist.txt): one `"user" "password"` pair per line, `""` inside
//! quotes for a literal quote, `;` (or `#`) comment lines, anything after the password ignored.
//! Passwords are plain, `md5<hex>` or SCRAM verifiers. Owns parsing with line-numbered errors
//! and a reload that keeps the old table when the new file is broken; no authentication here.

use super::secret::{SecretError, StoredSecret};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use thiserror::Error;

/// PgBouncer's limits (`MAX_USERNAME`, `MAX_PASSWORD`), bytes including the terminator.
pub const MAX_USERNAME: usize = 128;
pub const MAX_PASSWORD: usize = 65531;

/// Users and their stored passwords, as read from one auth file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Userlist {
    users: HashMap<String, StoredSecret, foldhash::fast::RandomState>,
}

/// What is wrong with one line of an auth file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LineError {
    #[error("expected a line starting with a double-quoted user name (\"user\" \"password\")")]
    NotQuoted,
    #[error("the user name's closing double quote is missing (write \"\" for a quote inside it)")]
    UnterminatedUser,
    #[error("expected a double-quoted password after the user name")]
    MissingPassword,
    #[error("the password's closing double quote is missing (write \"\" for a quote inside it)")]
    UnterminatedPassword,
    #[error("the user name is empty")]
    EmptyUser,
    #[error("the user name is longer than {} bytes", MAX_USERNAME - 1)]
    UserTooLong,
    #[error("the password is longer than {} bytes", MAX_PASSWORD - 1)]
    PasswordTooLong,
    #[error("{0}")]
    Secret(#[from] SecretError),
}

/// An auth file that cannot be used.
#[derive(Debug, Error)]
pub enum UserlistError {
    #[error("auth_file {path}: cannot read it: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("auth_file {path}, line {line}: {error}")]
    Line { path: PathBuf, line: usize, error: LineError },
}

impl Userlist {
    /// Parses the text of an auth file. `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Userlist, UserlistError> {
        let mut users = HashMap::default();
        for (index, line) in text.lines().enumerate() {
            let at = |error| UserlistError::Line { path: path.to_path_buf(), line: index + 1, error };
            match parse_line(line).map_err(at)? {
                Some((user, secret)) => {
                    // A user listed twice: the later line wins, as in PgBouncer.
                    users.insert(user, secret);
                }
                None => continue,
            }
        }
        Ok(Userlist { users })
    }

    pub fn load(path: &Path) -> Result<Userlist, UserlistError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| UserlistError::Read { path: path.to_path_buf(), source })?;
        Userlist::parse(path, &text)
    }

    pub fn get(&self, user: &str) -> Option<&StoredSecret> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// User names, sorted (for SHOW USERS).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// One line: `None` for blank and comment lines.
fn parse_line(line: &str) -> Result<Option<(String, StoredSecret)>, LineError> {
    let rest = line.trim_start();
    if rest.is_empty() || rest.starts_with(';') || rest.starts_with('#') {
        return Ok(None);
    }
    let rest = rest.strip_prefix('"').ok_or(LineError::NotQuoted)?;
    let (user, rest) = quoted(rest).ok_or(LineError::UnterminatedUser)?;
    if user.is_empty() {
        return Err(LineError::EmptyUser);
    }
    if user.len() >= MAX_USERNAME {
        return Err(LineError::UserTooLong);
    }
    let rest = rest.trim_start().strip_prefix('"').ok_or(LineError::MissingPassword)?;
    let (password, _ignored) = quoted(rest).ok_or(LineError::UnterminatedPassword)?;
    if password.len() >= MAX_PASSWORD {
        return Err(LineError::PasswordTooLong);
    }
    Ok(Some((user, StoredSecret::parse(&password)?)))
}

/// Reads a quoted value whose opening quote is already consumed: `""` is a literal quote, a
/// lone `"` ends it. Returns the value and what follows the closing quote.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut rest = text;
    loop {
        let end = rest.find('"')?;
        value.push_str(&rest[..end]);
        let after = &rest[end + 1..];
        match after.strip_prefix('"') {
            Some(more) => {
                value.push('"');
                rest = more;
            }
            None => return Some((value, after)),
        }
    }
}

/// An auth file shared by every login, re-read on RELOAD. A reload that fails keeps serving
/// the table loaded before, so a typo in the file never locks everybody out.
#[derive(Debug)]
pub struct AuthFile {
    path: PathBuf,
    current: RwLock<Arc<Userlist>>,
}

impl AuthFile {
    /// Loads the file; a broken file at start is an error.
    pub fn open(path: &Path) -> Result<AuthFile, UserlistError> {
        let list = Userlist::load(path)?;
        Ok(AuthFile { path: path.to_path_buf(), current: RwLock::new(Arc::new(list)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table in force.
    pub fn snapshot(&self) -> Arc<Userlist> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the file; on error the previous table stays in force and the error is returned.
    pub fn reload(&self) -> Result<usize, UserlistError> {
        let list = Userlist::load(&self.path)?;
        let count = list.len();
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(list);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::md5_stored;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Userlist, UserlistError> {
        Userlist::parse(Path::new("userlist.txt"), text)
    }

    fn line_error(text: &str) -> (usize, LineError) {
        match parse(text) {
            Err(UserlistError::Line { line, error, .. }) => (line, error),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn reads_plain_md5_and_scram_with_comments_and_escapes() {
        let md5 = md5_stored("pw", "bob");
        let scram = postgres_protocol::password::scram_sha_256(b"pw");
        let text = format!(
            "; a comment\n\n# another\n\"alice\" \"plain \"\"quoted\"\" pw\"\n  \"bob\"   \"{md5}\" extra ignored\n\"car\"\"ol\" \"{scram}\"\n"
        );
        let list = parse(&text).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list.get("alice"), Some(&StoredSecret::Plain("plain \"quoted\" pw".into())));
        assert!(matches!(list.get("bob"), Some(StoredSecret::Md5(_))));
        assert!(matches!(list.get("car\"ol"), Some(StoredSecret::Scram(_))));
        assert_eq!(list.names(), vec!["alice", "bob", "car\"ol"]);
    }

    #[test]
    fn later_line_wins_for_a_repeated_user() {
        let list = parse("\"a\" \"1\"\n\"a\" \"2\"\n").unwrap();
        assert_eq!(list.get("a"), Some(&StoredSecret::Plain("2".into())));
    }

    #[test]
    fn errors_name_the_line_and_what_to_do() {
        assert_eq!(line_error("\"a\" \"1\"\nalice pw\n"), (2, LineError::NotQuoted));
        assert_eq!(line_error("\"alice \"pw\"\n").1, LineError::MissingPassword);
        assert_eq!(line_error("\"alice\n").1, LineError::UnterminatedUser);
        assert_eq!(line_error("\"alice\" \"pw\n").1, LineError::UnterminatedPassword);
        assert_eq!(line_error("\"\" \"pw\"\n").1, LineError::EmptyUser);
        assert_eq!(line_error("\"alice\"\n").1, LineError::MissingPassword);
        assert_eq!(line_error("\n\n\"x\" \"SCRAM-SHA-256$4096:bad\"").0, 3);
        let long = format!("\"{}\" \"pw\"", "u".repeat(MAX_USERNAME));
        assert_eq!(line_error(&long).1, LineError::UserTooLong);
        let text = parse("\"a\" \"1\"\nalice pw\n").unwrap_err().to_string();
        assert_eq!(
            text,
            "auth_file userlist.txt, line 2: expected a line starting with a double-quoted user name (\"user\" \"password\")"
        );
    }

    #[test]
    fn reload_keeps_the_old_table_when_the_new_file_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("userlist.txt");
        std::fs::write(&path, "\"a\" \"1\"\n").unwrap();
        let file = AuthFile::open(&path).unwrap();
        std::fs::write(&path, "\"a\" \"1\"\n\"b\" \"2\"\n").unwrap();
        assert_eq!(file.reload().unwrap(), 2);
        std::fs::write(&path, "\"a\" \"1\"\nbroken\n").unwrap();
        assert!(matches!(file.reload(), Err(UserlistError::Line { line: 2, .. })));
        assert_eq!(file.snapshot().len(), 2);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(file.reload(), Err(UserlistError::Read { .. })));
        assert!(file.snapshot().get("b").is_some());
    }

    proptest! {
        #[test]
        fn quoting_round_trips(user in "[^\n\r\"]{0,5}(\"[^\n\r\"]{0,5}){0,3}", pw in "[^\n\r]{0,30}") {
            prop_assume!(!user.is_empty() && !pw.starts_with("SCRAM-SHA-256$"));
            let text = format!("\"{}\" \"{}\"\n", user.replace('"', "\"\""), pw.replace('"', "\"\""));
            let list = parse(&text).unwrap();
            prop_assert_eq!(list.get(&user), Some(&StoredSecret::parse(&pw).unwrap()));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }
    }
}
