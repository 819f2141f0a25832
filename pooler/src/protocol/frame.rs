//! Header-only framing of tagged v3 messages, as PgBouncer's sbuf does it: look at the 5-byte
//! header, then either wait for the whole message (to inspect it) or pass its bytes on as they
//! arrive. Owns message boundaries and length limits; it never copies or allocates, and it does
//! not decide where bytes go.

use thiserror::Error;

/// Tag byte plus the 4-byte length word.
pub const HEADER_LEN: usize = 5;

/// The largest length word PostgreSQL accepts for any message (`PQ_LARGE_MESSAGE_LIMIT`,
/// one byte under 1 GiB).
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 0x3fff_fffe;

/// The largest message the pooler buffers whole to look inside (a Parse with its query text,
/// an ErrorResponse). Larger ones are refused with an error instead of growing a buffer.
pub const DEFAULT_MAX_INSPECTED_LEN: u32 = 16 * 1024 * 1024;

/// Size limits applied to every declared message length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Upper bound for any message's length word (PgBouncer's `max_packet_size`).
    pub max_message_len: u32,
    /// Upper bound for a message that must be read whole.
    pub max_inspected_len: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits { max_message_len: DEFAULT_MAX_MESSAGE_LEN, max_inspected_len: DEFAULT_MAX_INSPECTED_LEN }
    }
}

/// How much of a message its reader needs before deciding what to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspect {
    /// The header is enough; the body is passed on in pieces as it arrives.
    Stream,
    /// The whole message is needed (bounded by `max_inspected_len`).
    Whole,
    /// The whole message if it is small and already here, else its first bytes as they arrive;
    /// the reader asks for more until the part it needs is present (Bind's statement name).
    Prefix,
}

/// A message header: its tag and its declared length (which counts the length word itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    pub len: u32,
}

impl Header {
    /// Bytes of the whole message on the wire, tag included.
    pub fn total_len(self) -> usize {
        self.len as usize + 1
    }

    /// Bytes after the header.
    pub fn body_len(self) -> usize {
        (self.len as usize).saturating_sub(4)
    }
}

/// A declared length that cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("message '{}' declares length {len}, below the minimum of 4", char::from(*tag))]
    LengthTooShort { tag: u8, len: i32 },
    #[error("message '{}' declares length {len}, above the limit of {max} bytes", char::from(*tag))]
    TooLong { tag: u8, len: u32, max: u32 },
    #[error(
        "message '{}' of {len} bytes must be read whole but exceeds the inspection limit of {max} bytes",
        char::from(*tag)
    )]
    TooLargeToInspect { tag: u8, len: u32, max: u32 },
}

/// Reads the header at the start of `buf`, if all five bytes are there, and checks its length.
pub fn read_header(buf: &[u8], limits: &FrameLimits) -> Result<Option<Header>, FrameError> {
    let Some(&[tag, a, b, c, d]) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([a, b, c, d]);
    if len < 4 {
        return Err(FrameError::LengthTooShort { tag, len });
    }
    let len = len.unsigned_abs();
    if len > limits.max_message_len {
        return Err(FrameError::TooLong { tag, len, max: limits.max_message_len });
    }
    Ok(Some(Header { tag, len }))
}

/// The body of a whole message (everything after its header).
pub fn body(message: &[u8]) -> &[u8] {
    message.get(HEADER_LEN..).unwrap_or_default()
}

/// What the front of the buffer holds, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Nothing can be decided until the buffer holds at least `needed` bytes.
    Incomplete { needed: usize },
    /// A complete message (header included) that its reader wants to inspect.
    Whole { header: Header, message: &'a [u8] },
    /// The first bytes of a message, header included, to be passed on as a piece; the rest
    /// follows as `Continue` frames. `chunk` may already be the complete message.
    Start { header: Header, chunk: &'a [u8] },
    /// More bytes of the message started earlier; `rest` bytes of it are still to come.
    Continue { chunk: &'a [u8], rest: usize },
}

impl Frame<'_> {
    /// Bytes of the buffer this frame covers.
    pub fn len(&self) -> usize {
        match self {
            Frame::Incomplete { .. } => 0,
            Frame::Whole { message, .. } => message.len(),
            Frame::Start { chunk, .. } | Frame::Continue { chunk, .. } => chunk.len(),
        }
    }

    /// True for `Incomplete`.
    pub fn is_empty(&self) -> bool {
        matches!(self, Frame::Incomplete { .. })
    }

    /// True if a message ends with this frame.
    pub fn ends_message(&self) -> bool {
        match self {
            Frame::Incomplete { .. } => false,
            Frame::Whole { .. } => true,
            Frame::Start { header, chunk } => chunk.len() == header.total_len(),
            Frame::Continue { rest, .. } => *rest == 0,
        }
    }
}

/// Cuts one direction of a connection into messages. It remembers only how much of a
/// message that was passed on in pieces is still to come.
#[derive(Debug, Clone)]
pub struct Framer {
    limits: FrameLimits,
    /// Bytes of the current message still to come. u32: a message's length word is one (a
    /// session holds two framers, and a parked client its session).
    remaining: u32,
}

impl Framer {
    pub fn new(limits: FrameLimits) -> Self {
        Framer { limits, remaining: 0 }
    }

    pub fn limits(&self) -> &FrameLimits {
        &self.limits
    }

    /// True between messages (nothing of a streamed message is still to come).
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Looks at the front of `buf` (which starts where the last advanced frame ended) without
    /// consuming anything. `inspect` says, per tag, how much of a message is needed.
    #[inline(always)]
    pub fn peek<'a>(&self, buf: &'a [u8], inspect: impl Fn(u8) -> Inspect) -> Result<Frame<'a>, FrameError> {
        if self.remaining > 0 {
            if buf.is_empty() {
                return Ok(Frame::Incomplete { needed: 1 });
            }
            let remaining = self.remaining as usize;
            let take = remaining.min(buf.len());
            return Ok(Frame::Continue { chunk: &buf[..take], rest: remaining - take });
        }
        let Some(header) = read_header(buf, &self.limits)? else {
            return Ok(Frame::Incomplete { needed: HEADER_LEN });
        };
        let total = header.total_len();
        let max_inspected = self.limits.max_inspected_len;
        let fits = header.len <= max_inspected;
        match inspect(header.tag) {
            Inspect::Whole if !fits => {
                Err(FrameError::TooLargeToInspect { tag: header.tag, len: header.len, max: max_inspected })
            }
            Inspect::Whole | Inspect::Prefix if fits && buf.len() >= total => {
                Ok(Frame::Whole { header, message: &buf[..total] })
            }
            Inspect::Whole => Ok(Frame::Incomplete { needed: total }),
            Inspect::Prefix | Inspect::Stream => Ok(Frame::Start { header, chunk: &buf[..total.min(buf.len())] }),
        }
    }

    /// At a message boundary: the bytes of the whole messages at the front of `buf` whose
    /// tags `passes`, up to the first other or incomplete one (0 mid-message). A reader that
    /// only passes such messages on skips them in one step. A bad length word is the error
    /// `peek` would return for it.
    pub fn whole_run(&self, buf: &[u8], passes: impl Fn(u8) -> bool) -> Result<usize, FrameError> {
        if self.remaining > 0 {
            return Ok(0);
        }
        let mut run = 0;
        while let Some(header) = read_header(buf.get(run..).unwrap_or_default(), &self.limits)? {
            let end = run + header.total_len();
            if !passes(header.tag) || end > buf.len() {
                break;
            }
            run = end;
        }
        Ok(run)
    }

    /// Records that the bytes of `frame` (as returned by `peek`) were consumed.
    pub fn advance(&mut self, frame: &Frame<'_>) {
        match frame {
            Frame::Incomplete { .. } | Frame::Whole { .. } => {}
            // Less than the length word (the chunk holds at least the header), so it fits.
            Frame::Start { header, chunk } => {
                self.remaining = u32::try_from(header.total_len().saturating_sub(chunk.len())).unwrap_or(u32::MAX)
            }
            Frame::Continue { rest, .. } => self.remaining = u32::try_from(*rest).unwrap_or(u32::MAX),
        }
    }

    /// Forgets a partly passed-on message (the connection is being reused from scratch).
    pub fn reset(&mut self) {
        self.remaining = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn header_needs_five_bytes() {
        let framer = Framer::new(FrameLimits::default());
        assert_eq!(framer.peek(b"Q\0\0", |_| Inspect::Stream), Ok(Frame::Incomplete { needed: 5 }));
    }

    #[test]
    fn a_run_of_passing_whole_messages_ends_at_another_tag_or_an_incomplete_one() {
        let framer = Framer::new(FrameLimits::default());
        let (d1, d2, c) = (message(b'D', b"row one"), message(b'D', b"2"), message(b'C', b"SELECT 2\0"));
        let rows = [d1.clone(), d2.clone()].concat();
        let is_row = |tag| tag == b'D';
        assert_eq!(framer.whole_run(&[rows.clone(), c.clone()].concat(), is_row), Ok(rows.len()));
        assert_eq!(framer.whole_run(&[c.clone(), d1.clone()].concat(), is_row), Ok(0), "starts with another tag");
        assert_eq!(framer.whole_run(&[d1.clone(), d2[..3].to_vec()].concat(), is_row), Ok(d1.len()), "half a row");
        assert_eq!(framer.whole_run(&rows[..2], is_row), Ok(0), "half a header");
        let mut bad = d1.clone();
        bad.extend_from_slice(b"D\0\0\0\x02");
        assert_eq!(framer.whole_run(&bad, is_row), Err(FrameError::LengthTooShort { tag: b'D', len: 2 }));
        // Mid-message nothing is a run: the rest of the message comes first.
        let mut streaming = Framer::new(FrameLimits::default());
        let start = streaming.peek(&d1[..7], |_| Inspect::Stream).unwrap();
        streaming.advance(&start);
        assert_eq!(streaming.whole_run(&rows, is_row), Ok(0));
    }

    #[test]
    fn length_below_four_is_an_error() {
        let framer = Framer::new(FrameLimits::default());
        for len in [-1i32, 0, 3, i32::MIN] {
            let mut m = vec![b'Q'];
            m.extend_from_slice(&len.to_be_bytes());
            assert_eq!(framer.peek(&m, |_| Inspect::Stream), Err(FrameError::LengthTooShort { tag: b'Q', len }));
        }
    }

    #[test]
    fn length_above_limit_is_an_error_before_any_body_arrives() {
        let limits = FrameLimits { max_message_len: 1000, max_inspected_len: 100 };
        let framer = Framer::new(limits);
        let mut m = vec![b'd'];
        m.extend_from_slice(&1001i32.to_be_bytes());
        assert_eq!(framer.peek(&m, |_| Inspect::Stream), Err(FrameError::TooLong { tag: b'd', len: 1001, max: 1000 }));
        let mut m = vec![b'P'];
        m.extend_from_slice(&101i32.to_be_bytes());
        assert_eq!(
            framer.peek(&m, |_| Inspect::Whole),
            Err(FrameError::TooLargeToInspect { tag: b'P', len: 101, max: 100 })
        );
        // The same length is fine for a streamed message.
        assert!(matches!(framer.peek(&m, |_| Inspect::Stream), Ok(Frame::Start { .. })));
    }

    #[test]
    fn default_limit_matches_postgres() {
        let framer = Framer::new(FrameLimits::default());
        let mut m = vec![b'd'];
        m.extend_from_slice(&0x3fff_ffffi32.to_be_bytes());
        assert!(matches!(framer.peek(&m, |_| Inspect::Stream), Err(FrameError::TooLong { .. })));
        let mut m = vec![b'd'];
        m.extend_from_slice(&0x3fff_fffei32.to_be_bytes());
        assert!(matches!(framer.peek(&m, |_| Inspect::Stream), Ok(Frame::Start { .. })));
    }

    #[test]
    fn whole_message_waits_for_all_its_bytes() {
        let framer = Framer::new(FrameLimits::default());
        let m = message(b'Z', b"I");
        assert_eq!(framer.peek(&m[..5], |_| Inspect::Whole), Ok(Frame::Incomplete { needed: 6 }));
        let header = Header { tag: b'Z', len: 5 };
        assert_eq!(framer.peek(&m, |_| Inspect::Whole), Ok(Frame::Whole { header, message: &m[..] }));
    }

    #[test]
    fn streamed_message_larger_than_the_buffer_passes_in_pieces() {
        let mut framer = Framer::new(FrameLimits::default());
        let m = message(b'D', &[7u8; 100]);
        let frame = framer.peek(&m[..40], |_| Inspect::Stream).unwrap();
        let header = Header { tag: b'D', len: 104 };
        assert_eq!(frame, Frame::Start { header, chunk: &m[..40] });
        assert!(!frame.ends_message());
        framer.advance(&frame);
        assert!(!framer.at_boundary());
        let frame = framer.peek(&m[40..70], |_| Inspect::Stream).unwrap();
        assert_eq!(frame, Frame::Continue { chunk: &m[40..70], rest: 35 });
        framer.advance(&frame);
        let mut tail = m[70..].to_vec();
        tail.extend_from_slice(&message(b'C', b"SELECT 1\0"));
        let frame = framer.peek(&tail, |_| Inspect::Stream).unwrap();
        assert_eq!(frame, Frame::Continue { chunk: &tail[..35], rest: 0 });
        assert!(frame.ends_message());
        framer.advance(&frame);
        assert!(framer.at_boundary());
        assert!(matches!(framer.peek(&tail[35..], |_| Inspect::Whole), Ok(Frame::Whole { .. })));
    }

    #[test]
    fn prefix_is_whole_when_small_and_present_else_a_piece() {
        let framer = Framer::new(FrameLimits { max_message_len: 1 << 20, max_inspected_len: 64 });
        let small = message(b'B', b"\0s1\0rest");
        assert!(matches!(framer.peek(&small, |_| Inspect::Prefix), Ok(Frame::Whole { .. })));
        assert!(matches!(framer.peek(&small[..7], |_| Inspect::Prefix), Ok(Frame::Start { .. })));
        let big = message(b'B', &[1u8; 100]);
        assert!(matches!(framer.peek(&big, |_| Inspect::Prefix), Ok(Frame::Start { .. })));
    }
}
