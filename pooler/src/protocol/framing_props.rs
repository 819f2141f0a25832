//! Property tests of the framer: any message sequence, cut anywhere, comes back as the same
//! messages; any bad length is an error and never a panic.

use super::frame::{Frame, FrameError, FrameLimits, Framer, Inspect, HEADER_LEN};
use bytes::{Buf, BytesMut};
use proptest::prelude::*;

fn encode(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Tags chosen so each policy is exercised: a few inspected whole, one by prefix, the rest streamed.
fn policy(tag: u8) -> Inspect {
    match tag {
        b'Z' | b'S' | b'E' => Inspect::Whole,
        b'B' => Inspect::Prefix,
        _ => Inspect::Stream,
    }
}

fn messages() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    let tag = prop::sample::select(vec![b'Z', b'S', b'E', b'B', b'D', b'd', b'C', b'T']);
    prop::collection::vec((tag, prop::collection::vec(any::<u8>(), 0..300)), 0..30)
}

/// Feeds `stream` in pieces of the given sizes and reassembles what the framer reports.
fn reassemble(stream: &[u8], cuts: &[usize], limits: FrameLimits) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut framer = Framer::new(limits);
    let mut buffer = BytesMut::new();
    let mut fed = 0;
    let mut cuts = cuts.iter().cycle();
    let mut out = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    loop {
        loop {
            let frame = framer.peek(&buffer, policy)?;
            match frame {
                Frame::Incomplete { needed } => {
                    assert!(needed > buffer.len() || !framer.at_boundary(), "Incomplete must ask for more");
                    break;
                }
                Frame::Whole { header, message } => {
                    assert!(current.is_empty());
                    assert_eq!(message.len(), header.total_len());
                    assert_ne!(policy(header.tag), Inspect::Stream);
                    out.push(message.to_vec());
                }
                Frame::Start { header, chunk } => {
                    assert!(current.is_empty());
                    assert_ne!(policy(header.tag), Inspect::Whole);
                    assert!(chunk.len() >= HEADER_LEN);
                    current.extend_from_slice(chunk);
                }
                Frame::Continue { chunk, .. } => {
                    assert!(!chunk.is_empty());
                    current.extend_from_slice(chunk);
                }
            }
            let (len, ends) = (frame.len(), frame.ends_message());
            framer.advance(&frame);
            buffer.advance(len);
            if ends && !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            assert_eq!(framer.at_boundary(), current.is_empty());
        }
        if fed == stream.len() {
            assert!(buffer.is_empty(), "bytes left over at the end of the stream");
            assert!(framer.at_boundary());
            return Ok(out);
        }
        let take = (*cuts.next().unwrap_or(&1)).clamp(1, stream.len() - fed);
        buffer.extend_from_slice(&stream[fed..fed + take]);
        fed += take;
    }
}

proptest! {
    #[test]
    fn any_cut_yields_the_original_messages(
        messages in messages(),
        cuts in prop::collection::vec(1usize..64, 1..20),
    ) {
        let encoded: Vec<Vec<u8>> = messages.iter().map(|(tag, body)| encode(*tag, body)).collect();
        let stream = encoded.concat();
        let limits = FrameLimits { max_message_len: 1 << 20, max_inspected_len: 1 << 20 };
        prop_assert_eq!(reassemble(&stream, &cuts, limits).unwrap(), encoded);
    }

    #[test]
    fn prefix_messages_above_the_inspection_limit_still_pass_in_pieces(
        body in prop::collection::vec(any::<u8>(), 100..400),
        cut in 1usize..50,
    ) {
        let message = encode(b'B', &body);
        let limits = FrameLimits { max_message_len: 1 << 20, max_inspected_len: 64 };
        prop_assert_eq!(reassemble(&message, &[cut], limits).unwrap(), vec![message.clone()]);
    }

    #[test]
    fn bad_lengths_are_errors_not_panics(
        tag in any::<u8>(),
        len in prop_oneof![i32::MIN..4, 0x4000_0000i32..=i32::MAX],
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&tail);
        let framer = Framer::new(FrameLimits::default());
        for inspect in [Inspect::Stream, Inspect::Whole, Inspect::Prefix] {
            let result = framer.peek(&bytes, |_| inspect);
            let is_length_error =
                matches!(result, Err(FrameError::LengthTooShort { .. } | FrameError::TooLong { .. }));
            prop_assert!(is_length_error);
        }
    }

    #[test]
    fn garbage_never_panics_the_framer(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let limits = FrameLimits { max_message_len: 4096, max_inspected_len: 128 };
        let mut framer = Framer::new(limits);
        let mut buffer = &bytes[..];
        while let Ok(frame) = framer.peek(buffer, policy) {
            if frame.is_empty() {
                break;
            }
            framer.advance(&frame);
            buffer = &buffer[frame.len()..];
        }
    }

    #[test]
    fn garbage_never_panics_the_startup_parser(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = super::startup::parse_startup_packet(&bytes);
    }
}
