//! Startup-phase packets: the untagged first packet of a connection (StartupMessage, SSLRequest,
//! GSSENCRequest, CancelRequest). Owns their parsing under PostgreSQL's length limits and the
//! encoding of what the pooler sends to servers; it does not negotiate TLS or authenticate.

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`: larger first packets are refused.
pub const MAX_STARTUP_PACKET_LEN: u32 = 10_000;
/// Protocol 3.0 as the version word of a StartupMessage.
pub const PROTOCOL_VERSION_3_0: u32 = 3 << 16;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Protocol 3.2 lets servers use cancel keys of up to 256 bytes; 3.0 keys are 4 bytes.
pub const MAX_CANCEL_KEY_LEN: usize = 256;

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Startup(StartupMessage),
    SslRequest,
    GssEncRequest,
    Cancel(CancelRequest),
}

/// A StartupMessage: protocol 3.x and the client's parameters in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Minor protocol version the client asked for; above 0 the caller may answer with
    /// NegotiateProtocolVersion.
    pub protocol_minor: u16,
    /// The parameters as they came, `name\0value\0` pairs without the list's final NUL:
    /// one allocation per login instead of two strings per parameter. Valid UTF-8 with an
    /// even number of NUL-terminated fields (checked by `parse_startup` and `new`).
    params: Box<str>,
    /// Where the values of `user` and `database` are in `params` (the first of each), found
    /// once: a login asks for them several times.
    user: (u16, u16),
    database: Option<(u16, u16)>,
}

impl StartupMessage {
    /// A message with `params` (for logging in to a server, and tests). A name or value with
    /// a NUL byte, or an empty name (the list's terminator), is refused.
    pub fn new<'a>(
        protocol_minor: u16,
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<StartupMessage, StartupError> {
        let mut list = Vec::new();
        for (name, value) in params {
            if name.is_empty() || name.contains('\0') || value.contains('\0') {
                return Err(StartupError::Malformed("a startup parameter is empty or contains a NUL byte"));
            }
            for field in [name, value] {
                list.extend_from_slice(field.as_bytes());
                list.push(0);
            }
        }
        list.push(0);
        if list.len() > MAX_STARTUP_PACKET_LEN as usize {
            return Err(StartupError::Malformed("startup parameters longer than a startup packet may be"));
        }
        parse_params(protocol_minor, &list)
    }

    /// Parameters in the order sent, `user` among them; `_pq_.` protocol options included.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut rest: &str = &self.params;
        std::iter::from_fn(move || {
            let (name, after) = split_at_nul(rest)?;
            let (value, after) = split_at_nul(after).unwrap_or((after, ""));
            rest = after;
            Some((name, value))
        })
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params().find(|(key, _)| *key == name).map(|(_, value)| value)
    }

    fn slice(&self, (from, to): (u16, u16)) -> &str {
        self.params.get(from as usize..to as usize).unwrap_or_default()
    }

    /// The user name; parsing guarantees it is present.
    pub fn user(&self) -> &str {
        self.slice(self.user)
    }

    /// The database, which defaults to the user name as in PostgreSQL.
    pub fn database(&self) -> &str {
        match self.database.map(|at| self.slice(at)) {
            Some(database) if !database.is_empty() => database,
            _ => self.user(),
        }
    }

    /// Writes a protocol 3.0 StartupMessage toward a server (postgres-protocol's encoder).
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), StartupError> {
        let start = buf.len();
        postgres_protocol::message::frontend::startup_message(self.params(), buf).map_err(|_| {
            buf.truncate(start);
            StartupError::Malformed("a startup parameter contains a NUL byte")
        })
    }
}

/// The settings of a StartupMessage's `options` parameter (PostgreSQL's command-line
/// switches, as `PGOPTIONS` sends them), as (name, value): words split at whitespace, a
/// backslash taking the next character as it is, each setting `-c name=value`, `-cname=value`
/// or `--name=value`, with `-` in names read as `_` (PostgreSQL's `pg_split_opts` and
/// `ParseLongOption`). Other switches are refused: the pooler could not apply them to every
/// server connection a client uses.
pub fn option_settings(options: &str) -> Result<Vec<(String, String)>, OptionsError> {
    let mut settings = Vec::new();
    let mut words = split_option_words(options).into_iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next().ok_or(OptionsError::Syntax)?
        } else if let Some(rest) = word.strip_prefix("--").or_else(|| word.strip_prefix("-c")) {
            rest.to_owned()
        } else {
            return Err(OptionsError::Syntax);
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(OptionsError::NoValue(setting));
        };
        if name.is_empty() {
            return Err(OptionsError::Syntax);
        }
        settings.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(settings)
}

/// `pg_split_opts`: words separated by whitespace; a backslash takes the next character
/// literally.
fn split_option_words(options: &str) -> Vec<String> {
    let (mut words, mut word, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            if std::mem::take(&mut in_word) {
                words.push(std::mem::take(&mut word));
            }
            continue;
        }
        in_word = true;
        match c {
            '\\' => word.extend(chars.next()),
            c => word.push(c),
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Why an `options` startup parameter is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionsError {
    #[error("unsupported options startup parameter: only '-c option=value' and '--option=value' are allowed")]
    Syntax,
    #[error("options startup parameter: setting \"{0}\" has no value")]
    NoValue(String),
}

/// A CancelRequest: the target backend's process id and secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub process_id: i32,
    /// 4 bytes in protocol 3.0, up to 256 in 3.2.
    pub secret_key: Vec<u8>,
}

impl CancelRequest {
    /// Writes the request for a server. Ours rather than postgres-protocol's, which only knows
    /// 4-byte keys.
    pub fn encode(&self, buf: &mut BytesMut) {
        // 12 + at most 256 key bytes: always fits the length word.
        let len = 12 + self.secret_key.len().min(MAX_CANCEL_KEY_LEN);
        buf.put_u32(len as u32);
        buf.put_u32(CANCEL_REQUEST_CODE);
        buf.put_i32(self.process_id);
        buf.put_slice(&self.secret_key[..self.secret_key.len().min(MAX_CANCEL_KEY_LEN)]);
    }
}

/// Writes an SSLRequest for a server (postgres-protocol's encoder).
pub fn write_ssl_request(buf: &mut BytesMut) {
    postgres_protocol::message::frontend::ssl_request(buf);
}

/// A first packet that cannot be accepted; each maps to PostgreSQL's own refusal.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StartupError {
    #[error("invalid length of startup packet: {len} (must be 8 to {max} bytes)", max = MAX_STARTUP_PACKET_LEN)]
    InvalidLength { len: i64 },
    #[error("unsupported frontend protocol {major}.{minor}: the pooler speaks 3.x")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
    #[error("no user name specified in startup packet")]
    MissingUser,
}

impl StartupError {
    /// The SQLSTATE PostgreSQL reports for this refusal.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            StartupError::UnsupportedProtocol { .. } => "0A000",
            StartupError::MissingUser => "28000",
            StartupError::InvalidLength { .. } | StartupError::Malformed(_) => "08P01",
        }
    }
}

/// Parses the first packet at the start of `buf`. `Ok(None)` means more bytes are needed; an
/// out-of-range length is refused as soon as the length word is in, before any body.
/// On success also returns how many bytes the packet took.
pub fn parse_startup_packet(buf: &[u8]) -> Result<Option<(StartupPacket, usize)>, StartupError> {
    let Some(&[a, b, c, d]) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([a, b, c, d]);
    if !(8..=MAX_STARTUP_PACKET_LEN as i32).contains(&len) {
        return Err(StartupError::InvalidLength { len: len.into() });
    }
    let len = len.unsigned_abs() as usize;
    let Some(packet) = buf.get(..len) else {
        return Ok(None);
    };
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let rest = &packet[8..];
    let parsed = match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if !rest.is_empty() => {
            return Err(StartupError::Malformed("SSLRequest/GSSENCRequest carries extra bytes"));
        }
        SSL_REQUEST_CODE => StartupPacket::SslRequest,
        GSSENC_REQUEST_CODE => StartupPacket::GssEncRequest,
        CANCEL_REQUEST_CODE => StartupPacket::Cancel(parse_cancel(rest)?),
        version if version >> 16 == 3 => StartupPacket::Startup(parse_startup(version as u16, rest)?),
        version => {
            return Err(StartupError::UnsupportedProtocol { major: (version >> 16) as u16, minor: version as u16 });
        }
    };
    Ok(Some((parsed, len)))
}

fn parse_cancel(rest: &[u8]) -> Result<CancelRequest, StartupError> {
    let Some((&[a, b, c, d], key)) = rest.split_first_chunk::<4>() else {
        return Err(StartupError::Malformed("CancelRequest without a process id"));
    };
    if key.len() < 4 || key.len() > MAX_CANCEL_KEY_LEN {
        return Err(StartupError::Malformed("CancelRequest key must be 4 to 256 bytes"));
    }
    Ok(CancelRequest { process_id: i32::from_be_bytes([a, b, c, d]), secret_key: key.to_vec() })
}

fn parse_startup(protocol_minor: u16, rest: &[u8]) -> Result<StartupMessage, StartupError> {
    let message = parse_params(protocol_minor, rest)?;
    if message.user().is_empty() {
        return Err(StartupError::MissingUser);
    }
    Ok(message)
}

/// `name\0value\0 ... \0` (at most `MAX_STARTUP_PACKET_LEN` bytes): the structure, where the
/// first `user` and `database` values are, in one pass; then UTF-8 once over the whole list.
fn parse_params(protocol_minor: u16, list: &[u8]) -> Result<StartupMessage, StartupError> {
    let (mut at, mut user, mut database) = (0, None, None);
    let end = loop {
        let name_end = nul_after(list, at)?;
        if name_end == at {
            if name_end + 1 != list.len() {
                return Err(StartupError::Malformed("bytes after the parameter list's terminator"));
            }
            break at;
        }
        let value_end = nul_after(list, name_end + 1)?;
        let value = Some((name_end as u16 + 1, value_end as u16));
        match &list[at..name_end] {
            b"user" if user.is_none() => user = value,
            b"database" if database.is_none() => database = value,
            _ => {}
        }
        at = value_end + 1;
    };
    let text =
        std::str::from_utf8(&list[..end]).map_err(|_| StartupError::Malformed("parameter is not valid UTF-8"))?;
    Ok(StartupMessage { protocol_minor, params: text.into(), user: user.unwrap_or_default(), database })
}

/// The text before the first NUL and the text after it.
fn split_at_nul(text: &str) -> Option<(&str, &str)> {
    let at = first_nul(text.as_bytes())?;
    Some((text.get(..at)?, text.get(at + 1..)?))
}

/// The index of the first NUL at or after `from`.
fn nul_after(buf: &[u8], from: usize) -> Result<usize, StartupError> {
    buf.get(from..).and_then(first_nul).map(|i| from + i).ok_or(StartupError::Malformed("parameter not NUL-terminated"))
}

/// The first NUL byte of `bytes`, eight bytes at a time. Names and values are a few bytes
/// long: memchr's vector search costs more to set up than it saves there, and a byte loop
/// costs a compare and a bounds check per byte (a login looks for a dozen NULs, twice).
fn first_nul(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let w = u64::from_le_bytes(eight);
        // The high bit of each byte that is zero (and perhaps of bytes after it; the lowest
        // one set is exact).
        let zeros = w.wrapping_sub(ONES) & !w & HIGHS;
        if zeros != 0 {
            return Some(at + (zeros.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words.remainder().iter().position(|&b| b == 0).map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut p = ((rest.len() + 8) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn startup_message_round_trips_through_postgres_protocol_encoder() {
        let message = StartupMessage::new(0, [("user", "app"), ("database", "shop")]).unwrap();
        let mut buf = BytesMut::new();
        message.encode(&mut buf).unwrap();
        let (parsed, used) = parse_startup_packet(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(parsed, StartupPacket::Startup(message.clone()));
        assert_eq!(message.user(), "app");
        assert_eq!(message.database(), "shop");
    }

    #[test]
    fn database_defaults_to_user() {
        let p = packet(PROTOCOL_VERSION_3_0, b"user\0bob\0\0");
        let Some((StartupPacket::Startup(m), _)) = parse_startup_packet(&p).unwrap() else { panic!() };
        assert_eq!(m.database(), "bob");
    }

    #[test]
    fn ssl_gss_and_cancel_requests() {
        assert_eq!(parse_startup_packet(&packet(SSL_REQUEST_CODE, b"")), Ok(Some((StartupPacket::SslRequest, 8))));
        assert_eq!(
            parse_startup_packet(&packet(GSSENC_REQUEST_CODE, b"")),
            Ok(Some((StartupPacket::GssEncRequest, 8)))
        );
        let cancel = CancelRequest { process_id: 4242, secret_key: vec![1, 2, 3, 4] };
        let mut buf = BytesMut::new();
        cancel.encode(&mut buf);
        let mut reference = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(4242, 0x0102_0304, &mut reference);
        assert_eq!(buf, reference);
        assert_eq!(parse_startup_packet(&buf), Ok(Some((StartupPacket::Cancel(cancel), 16))));
        // Protocol 3.2: a longer key.
        let long = CancelRequest { process_id: 1, secret_key: vec![9; 32] };
        let mut buf = BytesMut::new();
        long.encode(&mut buf);
        assert_eq!(parse_startup_packet(&buf), Ok(Some((StartupPacket::Cancel(long), 44))));
    }

    #[test]
    fn incomplete_packets_wait() {
        let p = packet(PROTOCOL_VERSION_3_0, b"user\0bob\0\0");
        for cut in 0..p.len() {
            assert_eq!(parse_startup_packet(&p[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn lengths_out_of_range_are_refused_before_the_body() {
        for len in [0i32, 7, -1, 10_001, i32::MAX] {
            let mut p = len.to_be_bytes().to_vec();
            p.extend_from_slice(&PROTOCOL_VERSION_3_0.to_be_bytes());
            assert_eq!(parse_startup_packet(&p), Err(StartupError::InvalidLength { len: len.into() }));
        }
    }

    #[test]
    fn malformed_startup_packets_are_errors() {
        let cases: &[(&[u8], StartupError)] = &[
            (b"user\0bob\0", StartupError::Malformed("parameter not NUL-terminated")),
            (b"user\0bob", StartupError::Malformed("parameter not NUL-terminated")),
            (b"database\0x\0\0", StartupError::MissingUser),
            (b"user\0\0\0", StartupError::MissingUser),
            (b"user\0bob\0\0junk", StartupError::Malformed("bytes after the parameter list's terminator")),
            (b"user\0\xff\0\0", StartupError::Malformed("parameter is not valid UTF-8")),
        ];
        for (rest, error) in cases {
            assert_eq!(parse_startup_packet(&packet(PROTOCOL_VERSION_3_0, rest)), Err(error.clone()));
        }
        assert_eq!(
            parse_startup_packet(&packet(2 << 16, b"")),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        assert!(parse_startup_packet(&packet(CANCEL_REQUEST_CODE, &[0; 6])).is_err());
        assert!(parse_startup_packet(&packet(SSL_REQUEST_CODE, b"x")).is_err());
    }

    #[test]
    fn minor_versions_are_reported_for_negotiation() {
        let p = packet(PROTOCOL_VERSION_3_0 | 2, b"user\0bob\0_pq_.x\0y\0\0");
        let Some((StartupPacket::Startup(m), _)) = parse_startup_packet(&p).unwrap() else { panic!() };
        assert_eq!(m.protocol_minor, 2);
        assert_eq!(m.param("_pq_.x"), Some("y"));
        assert_eq!(m.params().collect::<Vec<_>>(), [("user", "bob"), ("_pq_.x", "y")]);
    }

    #[test]
    fn empty_values_and_names_with_nul_bytes() {
        let p = packet(PROTOCOL_VERSION_3_0, b"user\0bob\0options\0\0application_name\0a\0\0");
        let Some((StartupPacket::Startup(m), _)) = parse_startup_packet(&p).unwrap() else { panic!() };
        assert_eq!(m.params().collect::<Vec<_>>(), [("user", "bob"), ("options", ""), ("application_name", "a")]);
        assert_eq!(m.param("options"), Some(""));
        assert!(StartupMessage::new(0, [("us\0er", "x")]).is_err());
        assert!(StartupMessage::new(0, [("user", "x\0")]).is_err());
        assert!(StartupMessage::new(0, [("", "x")]).is_err());
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn options_settings_in_the_three_spellings_with_escapes() {
        assert_eq!(option_settings(""), Ok(vec![]));
        assert_eq!(option_settings("  "), Ok(vec![]));
        assert_eq!(
            option_settings("-c DateStyle=SQL,\\ DMY -cTimeZone=UTC --application-name=a=b"),
            Ok(pairs(&[("DateStyle", "SQL, DMY"), ("TimeZone", "UTC"), ("application_name", "a=b")]))
        );
        assert_eq!(option_settings("-c search_path=a\\\\b"), Ok(pairs(&[("search_path", "a\\b")])));
        assert_eq!(option_settings("-c x="), Ok(pairs(&[("x", "")])));
    }

    #[test]
    fn options_other_than_settings_are_refused() {
        for bad in ["-B 100", "-c", "-c=", "-c =x", "--=x", "x=y", "-d 5"] {
            assert_eq!(option_settings(bad), Err(OptionsError::Syntax), "{bad}");
        }
        assert_eq!(option_settings("-c statement_timeout"), Err(OptionsError::NoValue("statement_timeout".into())));
    }

    proptest::proptest! {
        /// Settings written as PGOPTIONS would carry them (spaces and backslashes escaped)
        /// come back as they were.
        #[test]
        fn escaped_option_settings_round_trip(
            list in proptest::collection::vec(("[a-z_]{1,10}", "[ a-zA-Z0-9,\\\\=._-]{0,12}"), 0..5),
        ) {
            let escape = |v: &str| v.replace('\\', "\\\\").replace(' ', "\\ ");
            let options: Vec<String> = list.iter().map(|(n, v)| format!("-c {n}={}", escape(v))).collect();
            proptest::prop_assert_eq!(option_settings(&options.join(" ")), Ok(list));
        }

        /// The word-at-a-time search finds what a byte loop finds.
        #[test]
        fn the_first_nul_is_found_at_any_place(
            // NULs often, and the bytes a word-at-a-time search could mistake for one.
            bytes in proptest::collection::vec(
                proptest::prop_oneof![3 => proptest::prelude::any::<u8>(), 1 => proptest::strategy::Just(0u8),
                    1 => proptest::strategy::Just(1u8), 1 => proptest::strategy::Just(0x80u8)],
                0..40,
            ),
        ) {
            proptest::prop_assert_eq!(first_nul(&bytes), bytes.iter().position(|&b| b == 0));
        }

        /// Any parameter list survives encode and parse unchanged, in order.
        #[test]
        fn parameter_lists_round_trip(
            params in proptest::collection::vec(("[a-zA-Z_.]{1,12}", "[^\u{0}]{0,12}"), 0..8),
        ) {
            let mut all = vec![("user".to_string(), "u".to_string())];
            all.extend(params);
            let message = StartupMessage::new(0, all.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
            let mut buf = BytesMut::new();
            message.encode(&mut buf).unwrap();
            let (parsed, used) = parse_startup_packet(&buf).unwrap().unwrap();
            proptest::prop_assert_eq!(used, buf.len());
            let StartupPacket::Startup(parsed) = parsed else { panic!("a startup message") };
            let got: Vec<(String, String)> = parsed.params().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            proptest::prop_assert_eq!(got, all);
        }
    }
}
