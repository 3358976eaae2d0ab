//! What must hold for any bytes a client or an upstream sends: shared by the fuzz target
//! (`fuzz/fuzz_targets/protocol.rs`) and the normal test suite (`tests/proptest_protocol.rs`
//! includes this file), so every input the fuzzer ever found is re-checked by `cargo test`.
//!
//! - The request parser never panics, never reports a length beyond the bytes it was
//!   given, and never an argument outside its request; fed the same bytes in any chunks
//!   (resuming after `Incomplete`, with the caller's argument vector cleared between
//!   calls, as a session does), it yields exactly the same commands and the same final
//!   error as when fed everything at once. An inline command's re-encoding parses back
//!   to the same arguments.
//! - The reply scanner never panics, never reports a reply longer than its input, and
//!   finds the same replies whatever the chunking; wherever the `redis-protocol` crate
//!   decodes a complete RESP2 or RESP3 frame, the scanner finds that same frame.
//! - The command lookup never panics and only finds a command by its own name, with key
//!   positions inside the arguments.

#![allow(dead_code)]

use bytes::BytesMut;
use respite::command;
use respite::resp::{Arg, Limits, Parsed, ProtocolError, ReplyScanner, RequestParser};

/// Tight limits, so that the fuzzer reaches every limit check with short inputs.
pub const LIMITS: Limits = Limits { max_bulk: 64, max_array: 8, max_inline: 128, unauthenticated: false };

/// The first bytes of a fuzz input choose the split points; the rest is the stream.
pub fn check(data: &[u8]) {
    let (seed, input) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => (0, data),
    };
    let cuts = cuts_from(seed, input.len());
    check_requests(input, &cuts, &LIMITS);
    check_requests(input, &cuts, &Limits::default());
    check_replies(input, &cuts);
    check_against_redis_protocol(input);
    for word in input.split(|b| b.is_ascii_whitespace() || *b == b'\r') {
        check_lookup(word, 3);
    }
}

/// Split points from a seed: up to 15 cuts, a xorshift sequence. Every 16th seed cuts
/// after every byte instead (short inputs only).
pub fn cuts_from(seed: u16, len: usize) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    if seed % 16 == 15 && len <= 512 {
        return (1..len).collect();
    }
    let mut x = seed as u32 | 1;
    let mut cuts: Vec<usize> = (0..seed % 16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as usize % len
        })
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// How a client stream parsed: its commands (arguments as bytes) and how it ended
/// (`None`: the rest, if any, is an incomplete request).
#[derive(Debug, PartialEq, Eq)]
pub struct Requests {
    pub commands: Vec<Vec<Vec<u8>>>,
    pub end: Option<ProtocolError>,
}

/// Parses `input` delivered in chunks ending at `cuts`, as a session reads it.
pub fn parse_requests(input: &[u8], cuts: &[usize], limits: &Limits) -> Requests {
    let mut parser = RequestParser::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut ends = cuts.iter().copied().filter(|&c| c > 0 && c < input.len()).chain([input.len()]);
    let mut fed = 0;
    let mut commands = Vec::new();
    let mut args: Vec<Arg> = Vec::new();
    let mut encoded = BytesMut::new();
    loop {
        // The session clears its argument vector between reads: the parser must keep a
        // partial request's arguments itself.
        args.clear();
        let parsed = parser.parse(&buf, limits, &mut args, &mut encoded);
        match parsed {
            Ok(Parsed::Incomplete) => {
                assert!(args.is_empty(), "arguments handed out for an incomplete request");
                match ends.next() {
                    Some(end) => {
                        assert!(end >= fed);
                        buf.extend_from_slice(&input[fed..end]);
                        fed = end;
                    }
                    None => return Requests { commands, end: None },
                }
            }
            Ok(Parsed::Request { len }) => {
                assert!(len > 0 && len <= buf.len(), "request of {len} bytes in a buffer of {}", buf.len());
                assert!(!args.is_empty(), "a request without arguments");
                assert!(args.len() <= limits.max_array);
                let cmd = take(&buf[..len], &args, limits);
                commands.push(cmd);
                buf.drain(..len);
            }
            Ok(Parsed::Inline { len }) => {
                assert!(len > 0 && len <= buf.len(), "inline of {len} bytes in a buffer of {}", buf.len());
                assert!(args.len() <= limits.max_array);
                if !args.is_empty() {
                    let cmd = take(&encoded, &args, &Limits::default());
                    // The re-encoding that goes upstream says the same thing.
                    let mut again = Vec::new();
                    let mut p = RequestParser::default();
                    let mut scratch = BytesMut::new();
                    assert_eq!(
                        p.parse(&encoded, &Limits::default(), &mut again, &mut scratch),
                        Ok(Parsed::Request { len: encoded.len() })
                    );
                    assert_eq!(take(&encoded, &again, &Limits::default()), cmd);
                    commands.push(cmd);
                }
                buf.drain(..len);
            }
            Err(e) => return Requests { commands, end: Some(e) },
        }
    }
}

fn take(base: &[u8], args: &[Arg], limits: &Limits) -> Vec<Vec<u8>> {
    args.iter()
        .map(|&(start, len)| {
            let (start, len) = (start as usize, len as usize);
            assert!(start + len <= base.len(), "argument {start}+{len} outside a request of {}", base.len());
            assert!(len <= limits.max_bulk.max(LIMITS.max_inline));
            base[start..start + len].to_vec()
        })
        .collect()
}

pub fn check_requests(input: &[u8], cuts: &[usize], limits: &Limits) {
    let whole = parse_requests(input, &[], limits);
    let split = parse_requests(input, cuts, limits);
    assert_eq!(whole, split, "chunking changed the parse (cuts {cuts:?})");
    for cmd in &whole.commands {
        check_lookup(&cmd[0], cmd.len());
    }
}

/// The replies in `input`, delivered in chunks: (length, first byte) of each, and the
/// error that ended the scan, if any.
pub fn scan_replies(input: &[u8], cuts: &[usize]) -> (Vec<(usize, u8)>, Option<ProtocolError>) {
    let mut scanner = ReplyScanner::default();
    let mut ends = cuts.iter().copied().filter(|&c| c > 0 && c < input.len()).chain([input.len()]);
    let mut avail = 0;
    let mut start = 0;
    let mut out = Vec::new();
    loop {
        match scanner.next(&input[start..avail]) {
            Ok(Some(info)) => {
                assert!(info.len > 0 && start + info.len <= avail, "reply of {} bytes in {}", info.len, avail - start);
                assert_eq!(info.kind, input[start]);
                out.push((info.len, info.kind));
                start += info.len;
            }
            Ok(None) => match ends.next() {
                Some(end) => avail = end,
                None => return (out, None),
            },
            Err(e) => return (out, Some(e)),
        }
    }
}

pub fn check_replies(input: &[u8], cuts: &[usize]) {
    let whole = scan_replies(input, &[]);
    let split = scan_replies(input, cuts);
    assert_eq!(whole, split, "chunking changed the scan (cuts {cuts:?})");
}

pub fn check_lookup(name: &[u8], argc: usize) {
    if let Some((id, spec)) = command::lookup(name) {
        assert!(spec.name.as_bytes().eq_ignore_ascii_case(name));
        assert_eq!(command::label(id), spec.name.to_ascii_lowercase());
        let _ = spec.arity_ok(argc);
        for k in spec.key_positions(argc) {
            assert!(k > 0 && k < argc, "key position {k} of {} with {argc} arguments", spec.name);
        }
    }
}

/// Wherever `redis-protocol` decodes a complete frame at the start of `input`, the scanner
/// finds a reply of the same length or refuses the bytes (a protocol error): never another
/// boundary, never a wait for more. Not the other way round: the scanner is lenient where
/// Redis never sends anything else (e.g. `$-5`). HELLO (a request) and RESP3 streamed
/// strings are not replies Redis sends.
pub fn check_against_redis_protocol(input: &[u8]) {
    use redis_protocol::resp3::types::OwnedFrame;
    let Ok(ours) = ReplyScanner::default().next(input) else { return };
    let ours = ours.map(|i| i.len);
    if let Ok(Some((_, n))) = redis_protocol::resp2::decode::decode(input) {
        assert_eq!(ours, Some(n), "RESP2 frame of {n} bytes");
    }
    if let Ok(Some((frame, n))) = redis_protocol::resp3::decode::complete::decode(input) {
        if !matches!(frame, OwnedFrame::Hello { .. } | OwnedFrame::ChunkedString(_)) {
            assert_eq!(ours, Some(n), "RESP3 frame of {n} bytes: {frame:?}");
        }
    }
}
