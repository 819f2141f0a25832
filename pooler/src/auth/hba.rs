//! auth_hba_file (auth_type = "hba"): pg_hba.conf rules, as PgBouncer reads them, deciding
//! per connection which method authenticates it. Record types `local`, `host`, `hostssl`,
//! `hostnossl`; databases `all`, `sameuser`, names and `@file`; users `all`, names and
//! `@file`; IPv4/IPv6 addresses as CIDR or address and mask (or `all`); methods `trust`,
//! `reject`, `md5`, `password`, `scram-sha-256` and `peer`. The first matching line decides;
//! no match rejects, as in PostgreSQL. Parsing and matching only: the exchange is `client`'s.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HbaError {
    #[error("auth_hba_file {path}: cannot read it: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("auth_hba_file {path}, line {line}: {message}")]
    Line { path: PathBuf, line: usize, message: String },
}

/// How a matching line says to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaMethod {
    Trust,
    Reject,
    Md5,
    /// The clear-text password (pg_hba's `password`).
    Password,
    ScramSha256,
    /// Unix socket only: the connecting process's operating-system user must be the user.
    Peer,
    /// hostssl only: the common name of the client's certificate must be the user.
    Cert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    All,
    /// Listed names (from the line and its `@file`s); `sameuser` for databases.
    Some {
        names: Vec<String>,
        same_user: bool,
    },
}

impl Names {
    fn matches(&self, name: &str, user: &str) -> bool {
        match self {
            Names::All => true,
            Names::Some { names, same_user } => (*same_user && name == user) || names.iter().any(|n| n == name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    line: usize,
    kind: Kind,
    databases: Names,
    users: Names,
    /// None: any address (`local` lines, or `all`).
    network: Option<(IpAddr, u8)>,
    method: HbaMethod,
}

/// The connection being authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// Came in on the Unix socket.
    pub unix: bool,
    pub tls: bool,
    /// The client's address (TCP).
    pub addr: Option<IpAddr>,
    pub database: &'a str,
    pub user: &'a str,
}

/// The rules of one auth_hba_file.
#[derive(Debug, Clone, Default)]
pub struct HbaRules {
    rules: Vec<Rule>,
}

/// What the rules decide for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub method: HbaMethod,
    /// The deciding line, None when no line matched (rejected).
    pub line: Option<usize>,
}

impl HbaRules {
    pub fn load(path: &Path) -> Result<HbaRules, HbaError> {
        let text = std::fs::read_to_string(path).map_err(|source| HbaError::Read { path: path.into(), source })?;
        Self::parse(path, &text)
    }

    /// Parses the text of `path` (which names it in errors and anchors `@file` names).
    pub fn parse(path: &Path, text: &str) -> Result<HbaRules, HbaError> {
        let mut rules = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let at = |message: String| HbaError::Line { path: path.into(), line, message };
            let fields = tokens(raw).map_err(at)?;
            if fields.is_empty() {
                continue;
            }
            rules.push(rule(path, line, &fields).map_err(at)?);
        }
        Ok(HbaRules { rules })
    }

    /// The method for `conn`: the first matching line's, else reject.
    pub fn decide(&self, conn: &Connection<'_>) -> Decision {
        for rule in &self.rules {
            let kind = match rule.kind {
                Kind::Local => conn.unix,
                Kind::Host => !conn.unix,
                Kind::HostSsl => !conn.unix && conn.tls,
                Kind::HostNoSsl => !conn.unix && !conn.tls,
            };
            let address = match (rule.network, conn.addr) {
                (None, _) => true,
                (Some((net, bits)), Some(addr)) => in_network(addr, net, bits),
                (Some(_), None) => false,
            };
            if kind
                && address
                && rule.databases.matches(conn.database, conn.user)
                && rule.users.matches(conn.user, conn.user)
            {
                return Decision { method: rule.method, line: Some(rule.line) };
            }
        }
        Decision { method: HbaMethod::Reject, line: None }
    }
}

/// Whether `addr` is in `net`/`bits` (an IPv4-mapped IPv6 client matches IPv4 lines).
pub fn in_network(addr: IpAddr, net: IpAddr, bits: u8) -> bool {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    };
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits.min(32))) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits.min(128))) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A line's fields: blanks separate, `#` starts a comment, double quotes keep a field whole
/// (a quoted `all` is a name, not the keyword: the bool says it was quoted).
fn tokens(line: &str) -> Result<Vec<(String, bool)>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        if c == '#' {
            break;
        }
        let mut field = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if c == '"' {
                quoted = true;
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => field.push(c),
                        None => return Err("a quote is not closed".into()),
                    }
                }
            } else if c.is_whitespace() || c == '#' {
                break;
            } else {
                field.push(c);
                chars.next();
            }
        }
        fields.push((field, quoted));
    }
    Ok(fields)
}

fn rule(path: &Path, line: usize, fields: &[(String, bool)]) -> Result<Rule, String> {
    let word = |i: usize| fields.get(i).map(|(w, _)| w.as_str());
    let kind = match word(0) {
        Some("local") => Kind::Local,
        Some("host") => Kind::Host,
        Some("hostssl") => Kind::HostSsl,
        Some("hostnossl") => Kind::HostNoSsl,
        Some(other) => {
            return Err(format!("unknown connection type {other:?}: expected local, host, hostssl or hostnossl"))
        }
        None => return Err("empty line".into()),
    };
    let (Some(databases), Some(users)) = (fields.get(1), fields.get(2)) else {
        return Err("expected a database and a user after the connection type".into());
    };
    let databases = names(path, databases, true)?;
    let users = names(path, users, false)?;
    let mut next = 3;
    let network = if kind == Kind::Local {
        None
    } else {
        let Some((address, _)) = fields.get(3) else { return Err("expected an address".into()) };
        next = 4;
        if address == "all" {
            None
        } else if let Some((ip, bits)) = address.split_once('/') {
            let ip: IpAddr = ip.parse().map_err(|_| format!("{address:?} is not an IP address with a /prefix"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits.parse().ok().filter(|b| *b <= max).ok_or(format!("{address:?}: bad prefix length"))?;
            Some((ip, bits))
        } else {
            let ip: IpAddr = address.parse().map_err(|_| {
                format!("{address:?} is not an IP address (host names and domain suffixes are not supported)")
            })?;
            let Some((mask, _)) = fields.get(4) else {
                return Err(format!("{address:?} needs a /prefix or a mask"));
            };
            next = 5;
            Some((ip, prefix_of_mask(ip, mask)?))
        }
    };
    let method = match word(next) {
        Some("trust") => HbaMethod::Trust,
        Some("reject") => HbaMethod::Reject,
        Some("md5") => HbaMethod::Md5,
        Some("password") => HbaMethod::Password,
        Some("scram-sha-256") => HbaMethod::ScramSha256,
        Some("peer") if kind == Kind::Local => HbaMethod::Peer,
        Some("peer") => return Err("peer works on local lines only".into()),
        Some("cert") if kind == Kind::HostSsl => HbaMethod::Cert,
        Some("cert") => return Err("cert works on hostssl lines only".into()),
        Some(m @ ("ident" | "ldap" | "pam" | "radius" | "gss" | "sspi" | "any")) => {
            return Err(format!(
                "method {m} is not supported: use trust, reject, md5, password, scram-sha-256, peer or cert"
            ))
        }
        Some(other) => return Err(format!("unknown method {other:?}")),
        None => return Err("expected an authentication method".into()),
    };
    if let Some((option, _)) = fields.get(next + 1) {
        return Err(format!("option {option:?} is not supported (no options, such as map=, are)"));
    }
    Ok(Rule { line, kind, databases, users, network, method })
}

fn prefix_of_mask(ip: IpAddr, mask: &str) -> Result<u8, String> {
    let bad = || format!("{mask:?} is not a netmask for {ip}");
    let mask: IpAddr = mask.parse().map_err(|_| bad())?;
    let (bits, ones) = match (ip, mask) {
        (IpAddr::V4(_), IpAddr::V4(m)) => (u128::from(u32::from(m)) << 96, u32::from(m).count_ones()),
        (IpAddr::V6(_), IpAddr::V6(m)) => (u128::from(m), u128::from(m).count_ones()),
        _ => return Err(bad()),
    };
    // Contiguous ones from the top.
    if bits.leading_ones() != ones {
        return Err(bad());
    }
    u8::try_from(ones).map_err(|_| bad())
}

/// A database or user field: `all`, names separated by commas, `sameuser` (databases), and
/// `@file` (names from that file, relative to the HBA file's directory).
fn names(path: &Path, (field, quoted): &(String, bool), databases: bool) -> Result<Names, String> {
    if !quoted && field == "all" {
        return Ok(Names::All);
    }
    let mut names = Vec::new();
    let mut same_user = false;
    let parts: Vec<&str> =
        if *quoted { vec![field.as_str()] } else { field.split(',').filter(|n| !n.is_empty()).collect() };
    for name in parts {
        if *quoted {
            names.push(name.to_owned());
        } else if databases && name == "sameuser" {
            same_user = true;
        } else if let Some(file) = name.strip_prefix('@') {
            let file = path.parent().unwrap_or(Path::new(".")).join(file);
            let text = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("");
                names.extend(
                    line.split(|c: char| c == ',' || c.is_whitespace()).filter(|n| !n.is_empty()).map(str::to_owned),
                );
            }
        } else if name.starts_with('+') {
            return Err(format!("{name:?}: group membership (+group) is not supported"));
        } else if matches!(name, "replication" | "samerole" | "samegroup") && databases {
            return Err(format!("{name:?} is not supported in the database field"));
        } else {
            names.push(name.to_owned());
        }
    }
    if names.is_empty() && !same_user {
        return Err(format!("no names in {field:?}"));
    }
    Ok(Names::Some { names, same_user })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(text: &str) -> HbaRules {
        HbaRules::parse(Path::new("/nowhere/hba.conf"), text).unwrap()
    }

    fn tcp<'a>(addr: &str, tls: bool, database: &'a str, user: &'a str) -> Connection<'a> {
        Connection { unix: false, tls, addr: Some(addr.parse().unwrap()), database, user }
    }

    fn local<'a>(database: &'a str, user: &'a str) -> Connection<'a> {
        Connection { unix: true, tls: false, addr: None, database, user }
    }

    #[test]
    fn the_first_matching_line_decides_and_no_match_rejects() {
        let r = rules(
            "# comment\n\
             local   all        all                    peer\n\
             host    all        bob    127.0.0.1/32    reject   # trailing comment\n\
             hostssl app        all    10.0.0.0/8      scram-sha-256\n\
             hostnossl app      all    10.0.0.0 255.0.0.0  md5\n\
             host    sameuser   all    ::1/128         password\n\
             host    \"all\"    all    all             trust\n",
        );
        let method = |c: Connection<'_>| r.decide(&c).method;
        assert_eq!(method(local("app", "alice")), HbaMethod::Peer);
        assert_eq!(method(tcp("127.0.0.1", false, "app", "bob")), HbaMethod::Reject);
        assert_eq!(r.decide(&tcp("127.0.0.1", false, "app", "bob")).line, Some(3));
        assert_eq!(method(tcp("10.1.2.3", true, "app", "alice")), HbaMethod::ScramSha256);
        assert_eq!(method(tcp("10.1.2.3", false, "app", "alice")), HbaMethod::Md5);
        assert_eq!(method(tcp("::1", false, "alice", "alice")), HbaMethod::Password);
        // A quoted "all" is a database named all.
        assert_eq!(method(tcp("192.168.0.1", false, "all", "carol")), HbaMethod::Trust);
        let none = r.decide(&tcp("192.168.0.1", false, "app", "carol"));
        assert_eq!(none, Decision { method: HbaMethod::Reject, line: None });
        let cert = rules("hostssl all all 0.0.0.0/0 cert\n");
        assert_eq!(cert.decide(&tcp("10.1.2.3", true, "app", "alice")).method, HbaMethod::Cert);
        assert_eq!(cert.decide(&tcp("10.1.2.3", false, "app", "alice")).method, HbaMethod::Reject);
        // An IPv4-mapped IPv6 client matches IPv4 lines.
        assert_eq!(method(tcp("::ffff:10.9.9.9", true, "app", "x")), HbaMethod::ScramSha256);
    }

    #[test]
    fn name_lists_and_at_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admins"), "root, dba # the on-call\nops\n").unwrap();
        let path = dir.path().join("hba.conf");
        let r = HbaRules::parse(&path, "host app,reports @admins 0.0.0.0/0 trust\n").unwrap();
        for user in ["root", "dba", "ops"] {
            assert_eq!(r.decide(&tcp("1.2.3.4", false, "reports", user)).method, HbaMethod::Trust, "{user}");
        }
        assert_eq!(r.decide(&tcp("1.2.3.4", false, "reports", "web")).method, HbaMethod::Reject);
        assert_eq!(r.decide(&tcp("1.2.3.4", false, "other", "root")).method, HbaMethod::Reject);
    }

    #[test]
    fn bad_lines_name_the_line_and_what_is_wrong() {
        let err = |text: &str| HbaRules::parse(Path::new("hba.conf"), text).unwrap_err().to_string();
        assert_eq!(
            err("host all all 127.0.0.1/32 trust\nhost all all 10.0.0.0/33 md5\n"),
            "auth_hba_file hba.conf, line 2: \"10.0.0.0/33\": bad prefix length"
        );
        assert!(err("hots all all all trust").contains("unknown connection type \"hots\""));
        assert!(err("host all all db.example.com trust").contains("host names and domain suffixes are not supported"));
        assert!(err("host all all 10.0.0.0 255.0.255.0 md5").contains("not a netmask"));
        assert!(err("host all all all peer").contains("peer works on local lines only"));
        assert!(err("local all all cert").contains("cert works on hostssl lines only"));
        assert!(err("host all all all cert").contains("cert works on hostssl lines only"));
        assert!(err("local all all ident").contains("method ident is not supported"));
        assert!(err("local all all peer map=x").contains("option \"map=x\" is not supported"));
        assert!(err("local all +admins trust").contains("+group"));
        assert!(err("local replication all trust").contains("\"replication\" is not supported"));
        assert!(err("host all all 127.0.0.1/32").contains("expected an authentication method"));
        assert!(err("local \"all all trust").contains("quote is not closed"));
        assert!(err("host all all 10.0.0.0/8 trust\nhost all @missing all trust").contains("line 2: cannot read"));
    }

    proptest! {
        /// A prefix match is the comparison of the top `bits` bits, for any address.
        #[test]
        fn ipv4_networks_match_on_their_top_bits(a in any::<u32>(), n in any::<u32>(), bits in 0u8..=32) {
            let shift = 32 - u32::from(bits);
            let expected = bits == 0 || (a >> shift) == (n >> shift);
            let (a, n) = (IpAddr::V4(a.into()), IpAddr::V4(n.into()));
            prop_assert_eq!(in_network(a, n, bits), expected);
        }

        /// A mask written as an address gives the same network as its prefix length.
        #[test]
        fn a_mask_is_its_prefix_length(bits in 0u8..=32) {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            let mask = std::net::Ipv4Addr::from(mask).to_string();
            prop_assert_eq!(prefix_of_mask("10.0.0.0".parse().unwrap(), &mask), Ok(bits));
        }
    }
}
