//! Property tests of the protocol edge (`src/resp.rs`), and the fuzzer's regressions.
//!
//! - Arbitrary bytes, cut at arbitrary points: the request parser and the reply scanner
//!   never panic, never report a length beyond their input, and decide the same whatever
//!   the cuts (the checks are the fuzz target's own, `fuzz/fuzz_targets/check.rs`).
//! - Valid pipelines of random commands (RESP arrays and inline lines), cut anywhere,
//!   parse to exactly those commands.
//! - Generated RESP2 and RESP3 replies: the scanner finds the same reply boundaries as
//!   the `redis-protocol` crate's decoders, whatever the cuts; and wherever
//!   `redis-protocol` decodes a complete frame from mutated bytes, the scanner finds the
//!   same frame or refuses the bytes (never another boundary).
//! - Every input in `fuzz/regressions/` (inputs the fuzzer or review found) passes.

#[path = "../fuzz/fuzz_targets/check.rs"]
mod check;

use proptest::prelude::*;
use proptest::sample::Index;
use respite::resp::{Limits, ReplyScanner};

fn cuts(idx: &[Index], len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = idx.iter().map(|i| i.index(len + 1)).collect();
    c.sort_unstable();
    c.dedup();
    c
}

/// Bytes that look like RESP often enough to get past the first byte.
fn resp_ish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        4 => any::<u8>().prop_map(|b| vec![b]),
        2 => Just(b"\r\n".to_vec()),
        1 => prop::sample::select(vec![&b"*"[..], b"$", b"%", b"|", b">", b"~", b"!", b"=", b"+", b"-", b":", b"_", b"#", b",", b"("])
            .prop_map(|t| t.to_vec()),
        1 => (-3i64..40).prop_map(|n| n.to_string().into_bytes()),
        1 => prop::sample::select(vec!["9223372036854775807", "-9223372036854775808", "99999999999999999999", "\"", "'", "\\x4"])
            .prop_map(|t| t.as_bytes().to_vec()),
    ];
    prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_parse_and_scan_the_same_across_any_cuts(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..200), resp_ish()],
        idx in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let cuts = cuts(&idx, bytes.len());
        check::check_requests(&bytes, &cuts, &check::LIMITS);
        check::check_requests(&bytes, &cuts, &Limits::default());
        check::check_replies(&bytes, &cuts);
        check::check_against_redis_protocol(&bytes);
        let every: Vec<usize> = (1..bytes.len()).collect();
        check::check_requests(&bytes, &every, &check::LIMITS);
        check::check_replies(&bytes, &every);
    }
}

/// A command and how it is sent: as a RESP array, or as an inline line when its words
/// need no quoting.
fn command() -> impl Strategy<Value = (Vec<Vec<u8>>, bool)> {
    let plain = prop::collection::vec("[A-Za-z0-9_:.-]{1,12}".prop_map(String::into_bytes), 1..6);
    let binary = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..8);
    prop_oneof![plain.prop_map(|c| (c, true)), binary.prop_map(|c| (c, false))].prop_flat_map(|(c, can_inline)| {
        (Just(c), if can_inline { any::<bool>().boxed() } else { Just(false).boxed() })
    })
}

fn encode(cmd: &[Vec<u8>], inline: bool) -> Vec<u8> {
    if inline {
        let mut line = cmd.join(&b" "[..]);
        line.extend_from_slice(b"\r\n");
        return line;
    }
    let mut out = format!("*{}\r\n", cmd.len()).into_bytes();
    for a in cmd {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

proptest! {
    #[test]
    fn valid_pipelines_parse_to_exactly_their_commands_across_any_cuts(
        cmds in prop::collection::vec(command(), 1..12),
        idx in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let bytes: Vec<u8> = cmds.iter().flat_map(|(c, inline)| encode(c, *inline)).collect();
        let cuts = cuts(&idx, bytes.len());
        let expected: Vec<Vec<Vec<u8>>> = cmds.iter().map(|(c, _)| c.clone()).collect();
        let got = check::parse_requests(&bytes, &cuts, &Limits::default());
        prop_assert_eq!(got, check::Requests { commands: expected, end: None });
    }
}

/// A reply as Redis encodes it. `resp3`: also the RESP3 types.
fn reply(resp3: bool) -> BoxedStrategy<Vec<u8>> {
    let bulk = |t: &'static str| {
        prop::collection::vec(any::<u8>(), 0..40).prop_map(move |b| {
            let mut out = format!("{t}{}\r\n", b.len()).into_bytes();
            out.extend_from_slice(&b);
            out.extend_from_slice(b"\r\n");
            out
        })
    };
    let line = |t: &'static str| "[ -~]{0,30}".prop_map(move |s| format!("{t}{s}\r\n").into_bytes());
    let mut leaves = vec![
        line("+").boxed(),
        line("-ERR ").boxed(),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()).boxed(),
        bulk("$").boxed(),
    ];
    if !resp3 {
        // RESP2's nulls; RESP3 has `_`.
        leaves.extend([Just(b"$-1\r\n".to_vec()).boxed(), Just(b"*-1\r\n".to_vec()).boxed()]);
    } else {
        leaves.extend([
            Just(b"_\r\n".to_vec()).boxed(),
            any::<bool>().prop_map(|b| if b { b"#t\r\n".to_vec() } else { b"#f\r\n".to_vec() }).boxed(),
            prop_oneof![
                any::<i32>().prop_map(|n| format!(",{}\r\n", n as f64 / 8.0)),
                Just(",inf\r\n".to_string()),
                Just(",-inf\r\n".to_string()),
            ]
            .prop_map(String::into_bytes)
            .boxed(),
            "-?[1-9][0-9]{0,40}".prop_map(|d| format!("({d}\r\n").into_bytes()).boxed(),
            bulk("!").boxed(),
            prop::collection::vec(any::<u8>(), 0..30)
                .prop_map(|b| {
                    let mut out = format!("={}\r\ntxt:", b.len() + 4).into_bytes();
                    out.extend_from_slice(&b);
                    out.extend_from_slice(b"\r\n");
                    out
                })
                .boxed(),
        ]);
    }
    // Map keys and set members are strings or integers, as Redis sends them (redis-protocol
    // keeps them in hash maps and sets, and rejects a null key).
    let key = prop_oneof![line("+"), bulk("$"), any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes())].boxed();
    let leaf = prop::strategy::Union::new(leaves);
    let map = |t: &'static str, key: BoxedStrategy<Vec<u8>>, value: BoxedStrategy<Vec<u8>>| {
        prop::collection::vec((key, value), 0..3).prop_map(move |pairs| {
            let mut out = format!("{t}{}\r\n", pairs.len()).into_bytes();
            for (k, v) in pairs {
                out.extend(k);
                out.extend(v);
            }
            out
        })
    };
    let k = key.clone();
    let value = leaf
        .prop_recursive(3, 24, 4, move |inner| {
            let inner = inner.boxed();
            let array = |t: &'static str, items: BoxedStrategy<Vec<u8>>| {
                prop::collection::vec(items, 0..4).prop_map(move |items| {
                    let mut out = format!("{t}{}\r\n", items.len()).into_bytes();
                    out.extend(items.concat());
                    out
                })
            };
            let mut kinds = vec![array("*", inner.clone()).boxed()];
            if resp3 {
                kinds.push(array("~", k.clone()).boxed());
                kinds.push(map("%", k.clone(), inner.clone()).boxed());
            }
            prop::strategy::Union::new(kinds)
        })
        .boxed();
    if !resp3 {
        return value;
    }
    // Sometimes an attribute map (`|`) before the reply it annotates (redis-protocol
    // attaches it to the reply, and refuses it on a null).
    let annotated = value.clone().prop_filter("a null has no attributes", |v| v[0] != b'_');
    let attributed = (map("|", key, value.clone()), annotated).prop_map(|(attr, v)| [attr, v].concat());
    prop_oneof![4 => value, 1 => attributed].boxed()
}

/// Replies of one protocol version: (RESP3?, replies).
fn replies(n: std::ops::Range<usize>) -> impl Strategy<Value = (bool, Vec<Vec<u8>>)> {
    prop_oneof![
        prop::collection::vec(reply(false), n.clone()).prop_map(|r| (false, r)),
        prop::collection::vec(reply(true), n).prop_map(|r| (true, r)),
    ]
}

fn redis_protocol_decode(bytes: &[u8], resp3: bool) -> Result<Option<usize>, String> {
    let decoded = if resp3 {
        redis_protocol::resp3::decode::complete::decode(bytes).map(|d| d.map(|(_, n)| n))
    } else {
        redis_protocol::resp2::decode::decode(bytes).map(|d| d.map(|(_, n)| n))
    };
    decoded.map_err(|e| format!("{e:?}"))
}

proptest! {
    #[test]
    fn scanner_finds_the_boundaries_redis_protocol_finds(
        (resp3, frames) in replies(1..6),
        idx in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let bytes = frames.concat();
        let mut theirs = Vec::new();
        let mut off = 0;
        while off < bytes.len() {
            match redis_protocol_decode(&bytes[off..], resp3) {
                Ok(Some(n)) => {
                    theirs.push(n);
                    off += n;
                }
                other => prop_assert!(false, "redis-protocol: {:?} at {} of {:?}", other, off, String::from_utf8_lossy(&bytes)),
            }
        }
        prop_assert_eq!(&theirs, &frames.iter().map(Vec::len).collect::<Vec<_>>());
        let cuts = cuts(&idx, bytes.len());
        let (ours, err) = check::scan_replies(&bytes, &cuts);
        prop_assert_eq!(err, None);
        prop_assert_eq!(ours.iter().map(|&(len, _)| len).collect::<Vec<_>>(), theirs);
    }

    #[test]
    fn wherever_redis_protocol_decodes_a_frame_the_scanner_agrees(
        (resp3, mut frames) in replies(1..2),
        at in any::<Index>(),
        byte in any::<u8>(),
    ) {
        // RESP3 streamed strings and aggregates (`$?`, `;`, `.`) are not sent by Redis and
        // not supported by the scanner: it answers a protocol error, not a wrong boundary.
        prop_assume!(![b';', b'?', b'.'].contains(&byte));
        let mut bytes = frames.remove(0);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let ours = ReplyScanner::default().next(&bytes);
        if let Ok(Some(o)) = &ours {
            prop_assert!(o.len <= bytes.len());
        }
        // Where redis-protocol frames a reply, the scanner finds the same one or refuses
        // the bytes (a protocol error closes the upstream connection): never another
        // boundary, never a wait for bytes that are not needed.
        if let Ok(Some(n)) = redis_protocol_decode(&bytes, resp3) {
            if let Ok(ours) = ours {
                prop_assert_eq!(ours.map(|o| o.len), Some(n), "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }
}

#[test]
fn fuzz_regressions_still_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/regressions exists") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check::check(&bytes));
        assert!(outcome.is_ok(), "{} fails again", path.display());
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
