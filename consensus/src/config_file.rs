//! Loading pgha's TOML config files: parse, reject unknown keys, validate, and report problems
//! as `file: key = value: what is allowed`, the one line a DBA needs to fix the file.
//!
//! Each crate owns its config struct (with `#[serde(deny_unknown_fields)]`) and its `Validate`
//! impl; this module owns only the reading and the shape of the error.

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A config file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problem: Problem,
}

/// What is wrong with a config file.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// The file could not be read.
    Unreadable(String),
    /// The file is not valid TOML.
    Syntax { line: usize, column: usize, message: String },
    /// A key holds a value that is not allowed (or a key is missing or unknown).
    Invalid(Invalid),
}

/// One key with a bad value: `key = value: expected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted path of the key, e.g. `pool_mode` or `databases.app.pool_mode`.
    pub key: String,
    /// The value as written in the file, if there was one.
    pub value: Option<String>,
    /// What is allowed instead, e.g. `expected one of session, transaction`.
    pub expected: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, value: impl fmt::Display, expected: impl Into<String>) -> Self {
        Invalid { key: key.into(), value: Some(value.to_string()), expected: expected.into() }
    }
    pub fn missing(key: impl Into<String>, expected: impl Into<String>) -> Self {
        Invalid { key: key.into(), value: None, expected: expected.into() }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{} = {}: {}", self.key, v, self.expected),
            None => write!(f, "{}: {}", self.key, self.expected),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match &self.problem {
            Problem::Unreadable(e) => write!(f, "{file}: cannot read the config file: {e}"),
            Problem::Syntax { line, column, message } => {
                write!(f, "{file}:{line}:{column}: not valid TOML: {message}")
            }
            Problem::Invalid(inv) => write!(f, "{file}: {inv}"),
        }
    }
}

/// Checks that a parsed config makes sense as a whole (ranges, combinations of keys).
pub trait Validate {
    fn validate(&self) -> Result<(), Invalid>;
}

/// Reads, parses and validates the config file at `path`.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError { file: path.to_path_buf(), problem: Problem::Unreadable(e.to_string()) })?;
    parse(path, &text)
}

/// Parses and validates config text; `file` is only used in error messages.
pub fn parse<T: DeserializeOwned + Validate>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let err = |problem| ConfigError { file: file.to_path_buf(), problem };
    let de = toml::Deserializer::new(text);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| err(describe(text, &e)))?;
    value.validate().map_err(|inv| err(Problem::Invalid(inv)))?;
    Ok(value)
}

/// Turns a serde/toml error into a `Problem` that names the key and what is allowed.
fn describe(text: &str, e: &serde_path_to_error::Error<toml::de::Error>) -> Problem {
    let inner = e.inner();
    let message = inner.message().trim().to_string();
    let path = e.path().to_string();
    let span_text = inner.span().and_then(|s| text.get(s)).map(str::trim);
    let (line, column) = inner.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));

    if let Some(field) = between_backticks(&message, "unknown field `") {
        let allowed = backticked_list(after(&message, "expected"));
        let key = join_key(parent_of(&path, &field), &field);
        let expected = if allowed.is_empty() {
            "unknown key: this section takes no keys".to_string()
        } else {
            format!("unknown key: allowed keys here are {}", allowed.join(", "))
        };
        return Problem::Invalid(Invalid::missing(key, expected));
    }
    if let Some(field) = between_backticks(&message, "missing field `") {
        let key = join_key(if path == "." { "" } else { &path }, &field);
        return Problem::Invalid(Invalid::missing(key, "required key is missing"));
    }
    if message.starts_with("unknown variant `") {
        let allowed = backticked_list(after(&message, "expected"));
        return Problem::Invalid(Invalid {
            key: path,
            value: span_text.map(str::to_string),
            expected: format!("expected one of {}", allowed.join(", ")),
        });
    }
    if path != "." && !path.is_empty() && span_text.is_some() {
        return Problem::Invalid(Invalid { key: path, value: span_text.map(str::to_string), expected: message });
    }
    Problem::Syntax { line, column, message }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn between_backticks(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next().map(str::to_string)
}

fn after<'a>(message: &'a str, word: &str) -> &'a str {
    message.find(word).map_or("", |i| &message[i + word.len()..])
}

fn backticked_list(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// serde_path_to_error reports an unknown key with the key itself as the last path segment.
fn parent_of<'a>(path: &'a str, field: &str) -> &'a str {
    let p = path.strip_suffix(field).unwrap_or(path);
    let p = p.strip_suffix('.').unwrap_or(p);
    if p == "." {
        ""
    } else {
        p
    }
}

fn join_key(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        mode: Mode,
        #[serde(default)]
        size: u32,
        #[serde(default)]
        databases: BTreeMap<String, Db>,
    }
    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        #[default]
        Session,
        Transaction,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Db {
        host: String,
    }
    impl Validate for Sample {
        fn validate(&self) -> Result<(), Invalid> {
            if self.size > 100 {
                return Err(Invalid::new("size", self.size, "expected at most 100"));
            }
            Ok(())
        }
    }

    fn error_of(text: &str) -> String {
        match parse::<Sample>(Path::new("pooler.toml"), text) {
            Ok(v) => panic!("expected an error for {text:?}, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_enum_value_names_file_key_value_and_choices() {
        assert_eq!(
            error_of("mode = \"transactoin\"\n"),
            "pooler.toml: mode = \"transactoin\": expected one of session, transaction"
        );
    }

    #[test]
    fn unknown_key_in_a_table_names_its_path_and_the_allowed_keys() {
        assert_eq!(
            error_of("[databases.app]\nhost = \"x\"\nhots = \"y\"\n"),
            "pooler.toml: databases.app.hots: unknown key: allowed keys here are host"
        );
    }

    #[test]
    fn unknown_top_level_key() {
        let e = error_of("sise = 3\n");
        assert!(e.starts_with("pooler.toml: sise: unknown key: allowed keys here are "), "{e}");
        assert!(e.contains("size") && e.contains("mode"), "{e}");
    }

    #[test]
    fn missing_required_key() {
        assert_eq!(error_of("[databases.app]\n"), "pooler.toml: databases.app.host: required key is missing");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = error_of("size = \"ten\"\n");
        assert!(e.starts_with("pooler.toml: size = \"ten\": invalid type"), "{e}");
    }

    #[test]
    fn validation_error_is_reported_with_the_file() {
        assert_eq!(error_of("size = 1000\n"), "pooler.toml: size = 1000: expected at most 100");
    }

    #[test]
    fn toml_syntax_error_gives_line_and_column() {
        let e = error_of("size = 3\nmode = \n");
        assert!(e.starts_with("pooler.toml:2:"), "{e}");
        assert!(e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn good_file_parses() {
        let s: Sample =
            parse(Path::new("x.toml"), "mode = \"transaction\"\nsize = 5\n[databases.app]\nhost = \"h1\"\n").unwrap();
        assert!(matches!(s.mode, Mode::Transaction));
        assert_eq!(s.size, 5);
        assert_eq!(s.databases["app"].host, "h1");
    }

    #[test]
    fn unreadable_file_says_so() {
        let e = load::<Sample>(Path::new("/nonexistent/pgha.toml")).unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/pgha.toml: cannot read the config file"), "{e}");
    }
}
