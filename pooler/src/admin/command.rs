//! Admin console commands in PgBouncer's syntax: `WORD [WORD] [;]`, case-insensitive, a word
//! being `[0-9a-z_]+` or a double-quoted name (`""` for a quote), and `SET key = value` (`=` or
//! `TO`, value a word or a single-quoted string with `''`). Owns parsing only.

use thiserror::Error;

/// PgBouncer's buffer sizes: longer names are "bad arguments".
const MAX_CMD: usize = 15;
const MAX_ARG: usize = 63;
const MAX_VALUE: usize = 255;

/// What SHOW can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Help,
    Pools,
    Stats,
    StatsTotals,
    StatsAverages,
    Totals,
    Servers,
    Clients,
    Databases,
    Users,
    Config,
    Lists,
    Version,
    State,
    Mem,
    Fds,
    Peers,
    PeerPools,
    DnsHosts,
    DnsZones,
}

impl Show {
    fn from_word(word: &str) -> Option<Show> {
        Some(match word {
            "help" => Show::Help,
            "pools" => Show::Pools,
            "stats" => Show::Stats,
            "stats_totals" => Show::StatsTotals,
            "stats_averages" => Show::StatsAverages,
            "totals" => Show::Totals,
            "servers" => Show::Servers,
            "clients" => Show::Clients,
            "databases" => Show::Databases,
            "users" => Show::Users,
            "config" => Show::Config,
            "lists" => Show::Lists,
            "version" => Show::Version,
            "state" => Show::State,
            "mem" => Show::Mem,
            "fds" => Show::Fds,
            "peers" => Show::Peers,
            "peer_pools" => Show::PeerPools,
            "dns_hosts" => Show::DnsHosts,
            "dns_zones" => Show::DnsZones,
            _ => return None,
        })
    }
}

/// How SHUTDOWN ends the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Exit now.
    Immediate,
    /// Stop accepting, pause, exit once every server connection is released.
    WaitForServers,
    /// Stop accepting, exit once every client has disconnected (also SIGTERM).
    WaitForClients,
}

/// One admin console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    Pause(Option<String>),
    Resume(Option<String>),
    Disable(String),
    Enable(String),
    Reconnect(Option<String>),
    Kill(Option<String>),
    KillClient(u64),
    WaitClose(Option<String>),
    Reload,
    Suspend,
    Shutdown(ShutdownMode),
    Set { key: String, value: String },
}

impl Command {
    /// Whether a stats_users member may run it (SHOW only).
    pub fn is_read_only(&self) -> bool {
        matches!(self, Command::Show(_))
    }
}

/// A query the console cannot run; the text is what PgBouncer answers.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("invalid command '{0}', use SHOW HELP;")]
    Invalid(String),
    #[error("bad arguments")]
    BadArguments,
    #[error("a database is required")]
    DatabaseRequired,
}

/// One lexical token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `[0-9a-z_]+` as written; `quoted` if it was a double-quoted name.
    Word {
        text: String,
        quoted: bool,
    },
    /// A single-quoted string.
    Str(String),
    Equals,
    Semicolon,
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn lex(query: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = query.char_indices().peekable();
    while let Some(&(_, c)) = chars.peek() {
        if is_space(c) {
            chars.next();
        } else if c == ';' {
            chars.next();
            tokens.push(Token::Semicolon);
        } else if c == '=' {
            chars.next();
            tokens.push(Token::Equals);
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut text = String::new();
            loop {
                let (_, ch) = chars.next()?;
                if ch == c {
                    if chars.peek().map(|&(_, n)| n) == Some(c) {
                        chars.next();
                        text.push(c);
                        continue;
                    }
                    break;
                }
                text.push(ch);
            }
            if c == '"' {
                if text.is_empty() {
                    return None;
                }
                tokens.push(Token::Word { text, quoted: true });
            } else {
                tokens.push(Token::Str(text));
            }
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let mut text = String::new();
            while let Some(&(_, ch)) = chars.peek() {
                if ch.is_ascii_alphanumeric() || ch == '_' {
                    text.push(ch);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(Token::Word { text, quoted: false });
        } else {
            return None;
        }
    }
    Some(tokens)
}

/// Parses one console query.
pub fn parse(query: &str) -> Result<Command, ParseError> {
    let invalid = || ParseError::Invalid(query.to_string());
    let mut tokens = lex(query).ok_or_else(invalid)?;
    // One optional trailing `;`, nothing after it.
    if tokens.last() == Some(&Token::Semicolon) {
        tokens.pop();
    }
    if tokens.contains(&Token::Semicolon) {
        return Err(invalid());
    }
    let word = |t: &Token| match t {
        Token::Word { text, .. } => Some(text.clone()),
        _ => None,
    };
    match tokens.as_slice() {
        [Token::Word { text: set, quoted: false }, key, eq, value] if set.eq_ignore_ascii_case("set") => {
            let key = word(key).ok_or_else(invalid)?.to_ascii_lowercase();
            let is_eq = matches!(eq, Token::Equals)
                || matches!(eq, Token::Word { text, quoted: false } if text.eq_ignore_ascii_case("to"));
            if !is_eq {
                return Err(invalid());
            }
            let value = match value {
                Token::Word { text, .. } | Token::Str(text) => text.clone(),
                _ => return Err(invalid()),
            };
            if key.len() > MAX_ARG || value.len() > MAX_VALUE {
                return Err(ParseError::BadArguments);
            }
            Ok(Command::Set { key, value })
        }
        [cmd] => command(&word(cmd).ok_or_else(invalid)?, None, query),
        [cmd, arg] => {
            let arg = word(arg).ok_or_else(invalid)?;
            command(&word(cmd).ok_or_else(invalid)?, Some(arg), query)
        }
        _ => Err(invalid()),
    }
}

fn command(cmd: &str, arg: Option<String>, query: &str) -> Result<Command, ParseError> {
    let invalid = || ParseError::Invalid(query.to_string());
    if cmd.len() > MAX_CMD || arg.as_ref().is_some_and(|a| a.len() > MAX_ARG) {
        return Err(ParseError::BadArguments);
    }
    let no_arg = |c: Command| if arg.is_some() { Err(invalid()) } else { Ok(c) };
    let db = |arg: Option<String>| arg.ok_or(ParseError::DatabaseRequired);
    match cmd.to_ascii_lowercase().as_str() {
        // PgBouncer treats SELECT like SHOW.
        "show" | "select" => {
            let what = arg.as_deref().map(str::to_ascii_lowercase).ok_or_else(invalid)?;
            Show::from_word(&what).map(Command::Show).ok_or_else(invalid)
        }
        "pause" => Ok(Command::Pause(arg)),
        "resume" => Ok(Command::Resume(arg)),
        "disable" => Ok(Command::Disable(db(arg)?)),
        "enable" => Ok(Command::Enable(db(arg)?)),
        "reconnect" => Ok(Command::Reconnect(arg)),
        "kill" => Ok(Command::Kill(arg)),
        "kill_client" => {
            let id = arg.as_deref().and_then(|a| a.parse().ok()).ok_or(ParseError::BadArguments)?;
            Ok(Command::KillClient(id))
        }
        "wait_close" => Ok(Command::WaitClose(arg)),
        "reload" => no_arg(Command::Reload),
        "suspend" => no_arg(Command::Suspend),
        "shutdown" => match arg.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None => Ok(Command::Shutdown(ShutdownMode::Immediate)),
            Some("wait_for_servers") => Ok(Command::Shutdown(ShutdownMode::WaitForServers)),
            Some("wait_for_clients") => Ok(Command::Shutdown(ShutdownMode::WaitForClients)),
            Some(_) => Err(invalid()),
        },
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shows_in_any_case_with_optional_semicolon_and_spaces() {
        assert_eq!(parse("SHOW POOLS"), Ok(Command::Show(Show::Pools)));
        assert_eq!(parse("  show\tstats_totals ;  "), Ok(Command::Show(Show::StatsTotals)));
        assert_eq!(parse("Show Stats_Averages;"), Ok(Command::Show(Show::StatsAverages)));
        assert_eq!(parse("select version"), Ok(Command::Show(Show::Version)));
        assert_eq!(parse("show \"pools\""), Ok(Command::Show(Show::Pools)));
    }

    #[test]
    fn verbs_with_and_without_databases() {
        assert_eq!(parse("PAUSE"), Ok(Command::Pause(None)));
        assert_eq!(parse("pause app;"), Ok(Command::Pause(Some("app".into()))));
        // Database names keep their case, as in PgBouncer.
        assert_eq!(parse("PAUSE App"), Ok(Command::Pause(Some("App".into()))));
        assert_eq!(parse("RESUME \"My \"\"Db\""), Ok(Command::Resume(Some("My \"Db".into()))));
        assert_eq!(parse("kill app"), Ok(Command::Kill(Some("app".into()))));
        assert_eq!(parse("kill_client 42"), Ok(Command::KillClient(42)));
        assert_eq!(parse("RECONNECT"), Ok(Command::Reconnect(None)));
        assert_eq!(parse("wait_close app"), Ok(Command::WaitClose(Some("app".into()))));
        assert_eq!(parse("DISABLE app"), Ok(Command::Disable("app".into())));
        assert_eq!(parse("enable app"), Ok(Command::Enable("app".into())));
        assert_eq!(parse("disable"), Err(ParseError::DatabaseRequired));
        assert_eq!(parse("RELOAD;"), Ok(Command::Reload));
        assert_eq!(parse("suspend"), Ok(Command::Suspend));
        assert_eq!(parse("SHUTDOWN"), Ok(Command::Shutdown(ShutdownMode::Immediate)));
        assert_eq!(parse("shutdown wait_for_clients"), Ok(Command::Shutdown(ShutdownMode::WaitForClients)));
        assert_eq!(parse("SHUTDOWN WAIT_FOR_SERVERS;"), Ok(Command::Shutdown(ShutdownMode::WaitForServers)));
    }

    #[test]
    fn set_with_equals_or_to_and_quoted_values() {
        let set = |k: &str, v: &str| Ok(Command::Set { key: k.into(), value: v.into() });
        assert_eq!(parse("SET default_pool_size = 30"), set("default_pool_size", "30"));
        assert_eq!(parse("set server_check_query to 'select ''2'''"), set("server_check_query", "select '2'"));
        assert_eq!(parse("SET default_pool_size=30;"), set("default_pool_size", "30"));
    }

    #[test]
    fn unknown_commands_get_pgbouncers_text() {
        let text = |q: &str| parse(q).unwrap_err().to_string();
        assert_eq!(text("FOO"), "invalid command 'FOO', use SHOW HELP;");
        assert_eq!(text("select 1"), "invalid command 'select 1', use SHOW HELP;");
        assert_eq!(text("SHOW POOLS; SHOW STATS"), "invalid command 'SHOW POOLS; SHOW STATS', use SHOW HELP;");
        assert_eq!(text("show"), "invalid command 'show', use SHOW HELP;");
        assert_eq!(text("reload now"), "invalid command 'reload now', use SHOW HELP;");
        assert_eq!(text("shutdown later"), "invalid command 'shutdown later', use SHOW HELP;");
        assert_eq!(text("pause a b"), "invalid command 'pause a b', use SHOW HELP;");
        assert_eq!(text("pause 'a'"), "invalid command 'pause 'a'', use SHOW HELP;");
        assert_eq!(text("show \"unterminated"), "invalid command 'show \"unterminated', use SHOW HELP;");
        assert_eq!(parse(&format!("pause {}", "d".repeat(64))), Err(ParseError::BadArguments));
    }

    #[test]
    fn only_show_is_read_only() {
        assert!(parse("show pools").unwrap().is_read_only());
        assert!(!parse("pause").unwrap().is_read_only());
        assert!(!parse("set a = b").unwrap().is_read_only());
    }

    proptest! {
        #[test]
        fn any_text_parses_or_errs_without_panicking(q in "\\PC{0,80}") {
            let _ = parse(&q);
        }

        #[test]
        fn case_never_matters(cmd in prop::sample::select(vec!["show pools", "pause app", "resume", "kill_client 7", "set a = 'B c'"]), flips in prop::collection::vec(any::<bool>(), 16)) {
            let flipped: String = cmd.chars().zip(flips.iter().cycle()).map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c }).collect();
            // Quoted SET values keep their case; everything else is case-insensitive.
            let expected = parse(cmd).unwrap();
            let got = parse(&flipped).unwrap();
            match (expected, got) {
                (Command::Set { key: k1, value: v1 }, Command::Set { key: k2, value: v2 }) => {
                    prop_assert_eq!(k1, k2);
                    prop_assert_eq!(v1.to_lowercase(), v2.to_lowercase());
                }
                (Command::Pause(Some(a)), Command::Pause(Some(b))) => prop_assert_eq!(a.to_lowercase(), b.to_lowercase()),
                (e, g) => prop_assert_eq!(e, g),
            }
        }
    }
}
