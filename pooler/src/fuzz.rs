//! One entry point that feeds arbitrary bytes to every parser a client can reach: the startup
//! packet (and the session values and `options` settings a login reads from it), the framer
//! (cut into arbitrary reads, each inspection policy), the extended-protocol and
//! authentication messages, the SCRAM server, the admin command parser, the auth file and
//! stored secrets. Used by the proptest byte fuzzer (pooler/tests/fuzz_client_input.rs) and by
//! `cargo fuzz` (pooler/fuzz). It panics only when an invariant breaks.

use crate::admin::command;
use crate::auth::scram::ScramServer;
use crate::auth::secret::{ScramVerifier, StoredSecret};
use crate::auth::userlist::Userlist;
use crate::auth::wire;
use crate::protocol::extended::{bind_params_offset, BindPrefix, ParseMessage, Target};
use crate::protocol::frame::{body, Frame, FrameLimits, Framer, Inspect, HEADER_LEN};
use crate::protocol::message::{
    parse_command_tag, parse_ready_for_query, BackendKeyData, ErrorFields, ParameterStatus,
};
use crate::protocol::{option_settings, parse_startup_packet, StartupPacket};
use bytes::BytesMut;

/// What one run allocated at most for a message buffer, to check against the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuzzReport {
    /// The limit used for the run (max_packet_size for this input).
    pub max_message_len: u32,
    /// The largest capacity the simulated read buffer ever reserved.
    pub largest_reservation: usize,
}

/// Runs every client-facing parser on `data`. The first two bytes choose the limits and the
/// read sizes, so one input explores several configurations.
pub fn client_input(data: &[u8]) -> FuzzReport {
    let (config, data) = data.split_at(data.len().min(2));
    let max_message_len = 1024 + u32::from(config.first().copied().unwrap_or(0)) * 64;
    let max_inspected_len = 64 + u32::from(config.get(1).copied().unwrap_or(0)) * 16;
    let read_size = 1 + usize::from(config.get(1).copied().unwrap_or(7) % 97);
    let limits = FrameLimits { max_message_len, max_inspected_len };

    if let Ok(Some((StartupPacket::Startup(message), _))) = parse_startup_packet(data) {
        // The session values a login takes from it, `options` read or ignored whole.
        for ignored in [&[][..], &["options".to_owned(), "search_path".to_owned()][..]] {
            let _ = crate::client::session_values(&message, ignored);
        }
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(settings) = option_settings(&text) {
        for (name, _) in settings {
            assert!(!name.is_empty() && !name.contains('-'), "a setting name read from options: {name:?}");
        }
    }
    let mut largest = 0;
    for policy in [Inspect::Stream, Inspect::Whole, Inspect::Prefix] {
        largest = largest.max(frame_all(data, limits, read_size, |tag| match tag {
            b'P' | b'D' | b'C' | b'p' | b'Q' | b'X' | b'S' => Inspect::Whole,
            b'B' => Inspect::Prefix,
            _ => policy,
        }));
    }
    let _ = command::parse(&text);
    let _ = Userlist::parse(std::path::Path::new("fuzz"), &text);
    let _ = StoredSecret::parse(&text);
    scram(data);
    FuzzReport { max_message_len, largest_reservation: largest }
}

/// Drives the framer like a connection's read loop: bytes arrive `read_size` at a time, the
/// buffer grows only to what `Incomplete` asks for, and whole messages go to their parsers.
/// Returns the largest buffer capacity reserved.
fn frame_all(data: &[u8], limits: FrameLimits, read_size: usize, policy: impl Fn(u8) -> Inspect) -> usize {
    let mut framer = Framer::new(limits);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut largest = 0;
    loop {
        match framer.peek(&buf, &policy) {
            Err(_) => return largest,
            Ok(Frame::Incomplete { needed }) => {
                if fed == data.len() {
                    return largest;
                }
                // A reader reserves what the framer says it needs before reading more.
                if needed > buf.len() {
                    buf.reserve(needed - buf.len());
                    largest = largest.max(buf.capacity());
                }
                let take = read_size.min(data.len() - fed);
                buf.extend_from_slice(&data[fed..fed + take]);
                fed += take;
            }
            Ok(frame) => {
                if let Frame::Whole { header, message } = frame {
                    assert_eq!(message.len(), header.total_len());
                    assert!(header.len <= limits.max_inspected_len, "a whole message above the inspection limit");
                    message_parsers(header.tag, body(message));
                }
                if let Frame::Start { header, chunk } = frame {
                    assert!(chunk.len() >= HEADER_LEN && chunk.len() <= header.total_len());
                    if header.tag == b'B' {
                        if let Some(prefix) = BindPrefix::parse(&chunk[HEADER_LEN..]) {
                            let _ = bind_params_offset(&prefix);
                        }
                    }
                }
                let len = frame.len();
                assert!(len > 0, "a frame that consumes nothing would loop forever");
                framer.advance(&frame);
                let _ = buf.split_to(len);
            }
        }
    }
}

fn message_parsers(tag: u8, body: &[u8]) {
    match tag {
        b'P' => {
            if let Ok(parse) = ParseMessage::parse(body) {
                let _ = parse.query();
            }
        }
        b'B' => {
            if let Some(prefix) = BindPrefix::parse(body) {
                let offset = bind_params_offset(&prefix);
                assert!(offset <= body.len() + HEADER_LEN, "bind parameters start past the message");
            }
        }
        b'D' => drop(Target::parse(body, "Describe")),
        b'C' => drop(Target::parse(body, "Close")),
        b'p' => {
            let _ = wire::parse_password(body);
            let _ = wire::parse_sasl_initial(body);
        }
        b'Q' => {
            let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
            let _ = command::parse(&text);
        }
        _ => {
            // Server-message parsers also see client bytes in a pooler that forwards both ways.
            let _ = ErrorFields::parse(body);
            let _ = ParameterStatus::parse(body);
            let _ = BackendKeyData::parse(body);
            let _ = parse_ready_for_query(body);
            let _ = parse_command_tag(body);
        }
    }
}

fn scram(data: &[u8]) {
    // One fixed verifier: deriving one per input would spend the run in PBKDF2.
    static VERIFIER: std::sync::OnceLock<ScramVerifier> = std::sync::OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| ScramVerifier::derive("pw", b"fuzz salt", 1)).clone();
    let mut server = ScramServer::new(verifier);
    let (first, last) = data.split_at(data.len() / 2);
    if server.client_first(first).is_ok() {
        let _ = server.client_final(last);
    }
}
