//! RESP framing: where a request or a reply ends, found without allocating and with every
//! size limit checked from the header, before the body is buffered.
//!
//! respite forwards bytes, not re-encoded frames: a request is parsed only far enough to
//! know its arguments (as offsets into the client's buffer), and an upstream reply only
//! far enough to know where it ends. Both parsers are resumable, so a 10 MB value or a
//! million-element reply arriving in many reads is scanned once, not once per read.

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// Smallest room a socket read is given. `read_buf` into a full `BytesMut` would make room
/// for only 64 bytes, and after `split_to` the room left is whatever the last round did not
/// use: without this a 16-request pipeline often arrives in two reads (and its replies go
/// out in two writes). Room is reclaimed in place when the buffer is no longer shared.
pub const READ_ROOM: usize = 4096;

/// Makes sure the next read into `buf` can take at least `min` bytes.
pub fn make_room(buf: &mut BytesMut, min: usize) {
    if buf.capacity() - buf.len() < min {
        buf.reserve(min);
    }
}

/// Capacity a connection's read buffer keeps once it is done with a large request or reply.
pub const KEEP_CAPACITY: usize = 1 << 20;

/// Splits off the first `n` bytes of a read buffer (a request or reply that is complete).
/// When the buffer had grown past [`KEEP_CAPACITY`] for them, the bytes after them move to
/// a fresh buffer, so that the large allocation goes with the split-off bytes: otherwise a
/// connection that once carried a 100 MiB value kept 100+ MiB for as long as it stayed
/// open, idle or not (Redis, too, shrinks an idle client's query buffer).
pub fn split_front(buf: &mut BytesMut, n: usize) -> BytesMut {
    let large = buf.capacity() > KEEP_CAPACITY;
    let front = buf.split_to(n);
    if large && buf.len() < KEEP_CAPACITY {
        let mut rest = BytesMut::with_capacity(buf.len() + READ_ROOM);
        rest.extend_from_slice(buf);
        *buf = rest;
    }
    front
}

/// Size limits applied to client requests (Redis: `proto-max-bulk-len` and friends).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string argument accepted.
    pub max_bulk: usize,
    /// Largest number of arguments in one command.
    pub max_array: usize,
    /// Largest inline (telnet-style) command line, as Redis's 64 KiB.
    pub max_inline: usize,
    /// The client has not authenticated yet (with client authentication configured): as
    /// Redis (CVE-2021-32675), a request may then have at most [`UNAUTHENTICATED_MAX_ARRAY`]
    /// arguments of at most [`UNAUTHENTICATED_MAX_BULK`] bytes, so that whoever can connect
    /// cannot make respite buffer large requests without knowing a password.
    pub unauthenticated: bool,
}

/// Most arguments in a request from a client that has not authenticated (Redis's 10).
pub const UNAUTHENTICATED_MAX_ARRAY: i64 = 10;
/// Largest argument of a request from a client that has not authenticated (Redis's 16 KiB).
pub const UNAUTHENTICATED_MAX_BULK: i64 = 16384;

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bulk: 512 << 20, max_array: 1 << 20, max_inline: 64 << 10, unauthenticated: false }
    }
}

/// A request the client sent that cannot be parsed. All of these close the connection after
/// the error reply, because the byte stream cannot be resynchronised (Redis does the same).
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: bulk string not terminated by CRLF")]
    MissingCrlf,
    #[error("Protocol error: query buffer limit exceeded (client.max_query_buffer)")]
    QueryBufferLimit,
    #[error("Protocol error: invalid reply type byte 0x{0:02x}")]
    InvalidReplyType(u8),
    #[error("Protocol error: invalid length in reply")]
    InvalidReplyLength,
    #[error("Protocol error: reply line not terminated by CRLF")]
    InvalidReplyLine,
}

/// One argument of a request: an offset and length into the request's bytes.
pub type Arg = (u32, u32);

/// Outcome of feeding the buffer to [`RequestParser::parse`].
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet.
    Incomplete,
    /// A RESP array request of `len` bytes; its arguments were appended to `args`.
    Request { len: usize },
    /// An inline command line of `len` bytes, re-encoded as a RESP array into `encoded`
    /// (its arguments, appended to `args`, point into `encoded`). An empty line has no
    /// arguments and is skipped, as Redis skips it.
    Inline { len: usize },
}

/// Resumable parser of client requests (RESP arrays of bulk strings, or inline lines).
#[derive(Debug, Default)]
pub struct RequestParser {
    /// Progress through a partially received array request.
    partial: Option<Partial>,
    /// Arguments of the partial request so far (offsets from its first byte). Kept here,
    /// not in the caller's vector, so they survive the caller clearing it between reads.
    partial_args: Vec<Arg>,
}

#[derive(Debug, Clone, Copy)]
struct Partial {
    /// Offset of the next unparsed byte.
    pos: usize,
    /// Arguments still to come.
    remaining: usize,
}

impl RequestParser {
    /// Parses one request at the start of `buf`. Argument offsets are relative to the
    /// request's first byte (for `Inline`, to the first byte of `encoded`).
    ///
    /// On `Incomplete` the progress is kept, and the next call must pass the same bytes
    /// again (with more appended).
    pub fn parse(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        args: &mut Vec<Arg>,
        encoded: &mut BytesMut,
    ) -> Result<Parsed, ProtocolError> {
        if self.partial.is_none() {
            match buf.first() {
                None => return Ok(Parsed::Incomplete),
                Some(b'*') => {}
                Some(_) => return parse_inline(buf, limits, args, encoded),
            }
            let Some((n, after)) = read_line_int(buf, 1)? else {
                if buf.len() > limits.max_inline {
                    return Err(ProtocolError::InvalidMultibulkLength);
                }
                return Ok(Parsed::Incomplete);
            };
            if n > limits.max_array as i64 {
                return Err(ProtocolError::InvalidMultibulkLength);
            }
            if limits.unauthenticated && n > UNAUTHENTICATED_MAX_ARRAY {
                return Err(ProtocolError::UnauthenticatedMultibulkLength);
            }
            if n <= 0 {
                // `*0` and `*-1` are empty requests: Redis ignores them silently.
                return Ok(Parsed::Inline { len: after });
            }
            self.partial = Some(Partial { pos: after, remaining: n as usize });
            self.partial_args.clear();
        }
        let mut p = self.partial.expect("set above");
        // Arguments go straight into the caller's vector; only an incomplete request's
        // are parked in `partial_args` until the next call.
        let base = args.len();
        args.append(&mut self.partial_args);
        while p.remaining > 0 {
            let Some(&first) = buf.get(p.pos) else { break };
            if first != b'$' {
                self.reset(args, base);
                return Err(ProtocolError::ExpectedBulk(printable(first)));
            }
            let header = match read_line_int(buf, p.pos + 1) {
                Ok(h) => h,
                Err(_) => {
                    self.reset(args, base);
                    return Err(ProtocolError::InvalidBulkLength);
                }
            };
            let Some((len, body)) = header else {
                if buf.len() - p.pos > 32 {
                    self.reset(args, base);
                    return Err(ProtocolError::InvalidBulkLength);
                }
                break;
            };
            if len < 0 || len as u64 > limits.max_bulk as u64 || len > u32::MAX as i64 {
                self.reset(args, base);
                return Err(ProtocolError::InvalidBulkLength);
            }
            if limits.unauthenticated && len > UNAUTHENTICATED_MAX_BULK {
                self.reset(args, base);
                return Err(ProtocolError::UnauthenticatedBulkLength);
            }
            let end = body + len as usize;
            if buf.len() < end + 2 {
                break;
            }
            if &buf[end..end + 2] != b"\r\n" {
                self.reset(args, base);
                return Err(ProtocolError::MissingCrlf);
            }
            args.push((body as u32, len as u32));
            p.pos = end + 2;
            p.remaining -= 1;
        }
        if p.remaining == 0 {
            self.partial = None;
            Ok(Parsed::Request { len: p.pos })
        } else {
            self.partial = Some(p);
            self.partial_args.extend(args.drain(base..));
            Ok(Parsed::Incomplete)
        }
    }

    /// Bytes a partially parsed request is known to need at least (0 when unknown).
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Drops the request in progress (its arguments from `base` on).
    fn reset(&mut self, args: &mut Vec<Arg>, base: usize) {
        args.truncate(base);
        self.partial_args.clear();
        self.partial = None;
    }
}

fn printable(b: u8) -> char {
    if b.is_ascii_graphic() {
        b as char
    } else {
        '?'
    }
}

/// Inline command: one line, arguments separated by spaces, with Redis's double and single
/// quotes (`sdssplitargs`) so that `SET "a b" c` from telnet means what it means to Redis.
fn parse_inline(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Arg>,
    encoded: &mut BytesMut,
) -> Result<Parsed, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > limits.max_inline {
            return Err(ProtocolError::InlineTooBig);
        }
        return Ok(Parsed::Incomplete);
    };
    if nl > limits.max_inline {
        return Err(ProtocolError::InlineTooBig);
    }
    let mut line = &buf[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let words = split_args(line)?;
    if words.len() > limits.max_array {
        return Err(ProtocolError::InvalidMultibulkLength);
    }
    encoded.clear();
    if words.is_empty() {
        return Ok(Parsed::Inline { len: nl + 1 });
    }
    encoded.put_u8(b'*');
    put_decimal(encoded, words.len() as i64);
    encoded.put_slice(b"\r\n");
    for w in &words {
        encoded.put_u8(b'$');
        put_decimal(encoded, w.len() as i64);
        encoded.put_slice(b"\r\n");
        args.push((encoded.len() as u32, w.len() as u32));
        encoded.put_slice(w);
        encoded.put_slice(b"\r\n");
    }
    Ok(Parsed::Inline { len: nl + 1 })
}

/// Splits an inline line the way Redis's `sdssplitargs` does: whitespace separates,
/// "double quotes" allow `\n \r \t \b \a \\ \" \xHH` escapes, 'single quotes' allow `\'`.
/// A quote anywhere in an unquoted word starts quoting (`a"b c"` is `ab c`); such a word
/// ends only at a space, tab, CR or LF, while C's `isspace` (form feed and vertical tab too)
/// separates words and must follow a closing quote.
fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let c_isspace = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && c_isspace(&line[i]) {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                let Some(&c) = line.get(i) else {
                    return Err(ProtocolError::UnbalancedQuotes);
                };
                if c == b'\\'
                    && line.get(i + 1) == Some(&b'x')
                    && i + 3 < line.len()
                    && line[i + 2].is_ascii_hexdigit()
                    && line[i + 3].is_ascii_hexdigit()
                {
                    let hex = |d: u8| (d as char).to_digit(16).unwrap_or(0) as u8;
                    cur.push(hex(line[i + 2]) << 4 | hex(line[i + 3]));
                    i += 4;
                    continue;
                }
                if c == b'\\' && i + 1 < line.len() {
                    let e = line[i + 1];
                    cur.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                } else if c == b'"' {
                    // The closing quote must be followed by a space or the end.
                    if line.get(i + 1).is_some_and(|n| !c_isspace(n)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                    i += 1;
                }
            } else if in_sq {
                let Some(&c) = line.get(i) else {
                    return Err(ProtocolError::UnbalancedQuotes);
                };
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    cur.push(b'\'');
                    i += 2;
                } else if c == b'\'' {
                    if line.get(i + 1).is_some_and(|n| !c_isspace(n)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                    i += 1;
                }
            } else {
                match line.get(i) {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => {
                        in_dq = true;
                        i += 1;
                    }
                    Some(b'\'') => {
                        in_sq = true;
                        i += 1;
                    }
                    Some(&c) => {
                        cur.push(c);
                        i += 1;
                    }
                }
            }
        }
        out.push(cur);
    }
    Ok(out)
}

/// Longest integer line: '-' and 19 digits.
const MAX_INT_LINE: usize = 20;

/// Longest line of an upstream scalar reply other than a status or an error (an integer,
/// double, boolean, null or big number).
const MAX_SCALAR_LINE: usize = 64 << 10;

/// Reads `<integer>\r\n` starting at `start`; returns the value and the offset after CRLF.
///
/// A line longer than any integer is an error as soon as its first 21 bytes are in,
/// wherever its CR is: the verdict must not depend on how the bytes were split into reads
/// (found by the fuzzer: a CR as the last byte read used to mean "wait for the LF").
fn read_line_int(buf: &[u8], start: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    match read_small_len(buf, start) {
        Some(fast) => Ok(Some(fast)),
        None => read_line_int_general(buf, start),
    }
}

fn read_line_int_general(buf: &[u8], start: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(rest) = buf.get(start..) else {
        return Ok(None);
    };
    // A plain loop: these lines are a few bytes long, shorter than memchr's set-up
    // (callgrind: ~60 instructions per line less, four lines per SET).
    let window = &rest[..rest.len().min(MAX_INT_LINE + 1)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if rest.len() > MAX_INT_LINE {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        return Ok(None);
    };
    if cr + 1 >= rest.len() {
        return Ok(None);
    }
    if rest[cr + 1] != b'\n' {
        return Err(ProtocolError::InvalidMultibulkLength);
    }
    let v = parse_int(&rest[..cr]).ok_or(ProtocolError::InvalidMultibulkLength)?;
    Ok(Some((v, start + cr + 2)))
}

/// The common header line, one pass: 1 to 9 digits without a leading zero, then CRLF.
/// `None` for anything else (incomplete, signed, zero, long, malformed), which the
/// general path then reads with the same result it would have given on its own.
#[inline]
fn read_small_len(buf: &[u8], start: usize) -> Option<(i64, usize)> {
    let first = *buf.get(start)?;
    if !(b'1'..=b'9').contains(&first) {
        return None;
    }
    let mut v = (first - b'0') as i64;
    let mut i = start + 1;
    loop {
        let b = *buf.get(i)?;
        if b.is_ascii_digit() && i - start < 9 {
            v = v * 10 + (b - b'0') as i64;
            i += 1;
        } else if b == b'\r' && buf.get(i + 1) == Some(&b'\n') {
            return Some((v, i + 2));
        } else {
            return None;
        }
    }
}

/// Parses a decimal integer as Redis does (`string2ll`): "0", or an optional '-' then a
/// digit 1-9 then digits, within i64 (i64::MIN included). No '+', no leading zeros, no
/// "-0", no spaces: "00" is not an integer to `INCR`, as it is not to Redis.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) || digits.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (d - b'0') as u64;
    }
    if neg {
        // 2^63 is i64::MIN's magnitude; `as` wraps it to i64::MIN, which negates to itself.
        (v <= 1 << 63).then(|| (v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

/// Appends the decimal form of `v`.
pub fn put_decimal(out: &mut BytesMut, v: i64) {
    let mut b = itoa::Buffer::new();
    out.put_slice(b.format(v).as_bytes());
}

/// The first CRLF in `s`. A short-line search: `memmem::find` builds a searcher per call,
/// which cost more than the search itself for `+OK`-sized lines (a tenth of a replay's CPU).
fn find_crlf(s: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\r', &s[from..]) {
        let at = from + i;
        if s.get(at + 1) == Some(&b'\n') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Resumable scanner of upstream replies, RESP2 and RESP3 (maps, sets, pushes, attributes,
/// doubles, big numbers, verbatim strings, blob errors). It only finds where each reply ends.
#[derive(Debug, Default, Clone)]
pub struct ReplyScanner {
    pos: usize,
    /// Elements still needed to complete the current reply (0: at a reply boundary).
    pending: u64,
}

/// What [`ReplyScanner::next`] found.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct ReplyInfo {
    /// Length in bytes of the complete reply.
    pub len: usize,
    /// First byte: `-` / `!` mark an error, `>` a RESP3 push (not an answer to a request).
    pub kind: u8,
}

impl ReplyInfo {
    /// Whether the reply is an error reply.
    pub fn is_error(&self) -> bool {
        self.kind == b'-' || self.kind == b'!'
    }
    /// Whether the reply is an out-of-band RESP3 push.
    pub fn is_push(&self) -> bool {
        self.kind == b'>'
    }
}

impl ReplyScanner {
    /// Scans the reply at the start of `buf`. Returns `None` while incomplete (call again
    /// with the same bytes plus more), or the reply's length once it is complete; the caller
    /// then removes those bytes and the scanner starts afresh.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<ReplyInfo>, ProtocolError> {
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        if self.pending == 0 {
            self.pos = 0;
            self.pending = 1;
        }
        while self.pending > 0 {
            let Some(&t) = buf.get(self.pos) else {
                return Ok(None);
            };
            // How long the line after the type byte may be: a length or count is an
            // integer; other scalars are short; status and error lines are not limited.
            // Checked on the bytes in, not on where the CR is, so that the verdict does
            // not depend on how the reply was split into reads.
            let max_line = match t {
                b'+' | b'-' => usize::MAX, // not limited
                b'$' | b'!' | b'=' | b'*' | b'~' | b'>' | b'%' | b'|' => MAX_INT_LINE,
                _ => MAX_SCALAR_LINE,
            };
            let rest = &buf[self.pos + 1..];
            let cr = if max_line == MAX_INT_LINE {
                let Some(cr) = memchr::memchr(b'\r', &rest[..rest.len().min(max_line + 1)]) else {
                    if rest.len() > max_line {
                        return Err(ProtocolError::InvalidReplyLength);
                    }
                    return Ok(None);
                };
                if cr + 1 >= rest.len() {
                    return Ok(None);
                }
                if rest[cr + 1] != b'\n' {
                    // Found by tests/proptest_protocol.rs: the byte after a CR used to be
                    // taken for the LF unseen, and the next reply read from inside this one.
                    return Err(ProtocolError::InvalidReplyLine);
                }
                cr
            } else {
                // Other lines end at the first CRLF; a lone CR is part of the text (as the
                // redis-protocol crate reads it, and Redis never sends one).
                let window = &rest[..rest.len().min(max_line.saturating_add(2))];
                let Some(cr) = find_crlf(window) else {
                    if window.len() > max_line.saturating_add(1) {
                        return Err(ProtocolError::InvalidReplyLength);
                    }
                    return Ok(None);
                };
                cr
            };
            let line_end = self.pos + 1 + cr;
            let line = &buf[self.pos + 1..line_end];
            let after = line_end + 2;
            let consumed = match t {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => after,
                b'$' | b'!' | b'=' => {
                    let n = parse_int(line).ok_or(ProtocolError::InvalidReplyLength)?;
                    if n < 0 {
                        after
                    } else {
                        let end = usize::try_from(n)
                            .ok()
                            .and_then(|n| after.checked_add(n)?.checked_add(2))
                            .ok_or(ProtocolError::InvalidReplyLength)?;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        end
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(line).ok_or(ProtocolError::InvalidReplyLength)?;
                    let n = n.max(0) as u64;
                    let more = match t {
                        b'%' => n.checked_mul(2),
                        // An attribute map precedes the reply it annotates.
                        b'|' => n.checked_mul(2).and_then(|m| m.checked_add(1)),
                        _ => Some(n),
                    };
                    // Counts no reply can have (found by review, kept as a fuzz regression:
                    // nested counts near i64::MAX overflowed the pending count).
                    self.pending =
                        more.and_then(|m| self.pending.checked_add(m)).ok_or(ProtocolError::InvalidReplyLength)?;
                    after
                }
                other => return Err(ProtocolError::InvalidReplyType(other)),
            };
            self.pos = consumed;
            self.pending -= 1;
        }
        let len = self.pos;
        self.pos = 0;
        Ok(Some(ReplyInfo { len, kind }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_int_accepts_exactly_what_redis_string2ll_accepts() {
        for (s, v) in [
            ("0", 0),
            ("7", 7),
            ("-7", -7),
            ("10", 10),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ] {
            assert_eq!(parse_int(s.as_bytes()), Some(v), "{s}");
        }
        for s in [
            "",
            "-",
            "00",
            "01",
            "-0",
            "-01",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "1e3",
            "0x10",
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
            "١",
        ] {
            assert_eq!(parse_int(s.as_bytes()), None, "{s:?}");
        }
    }

    #[test]
    fn find_crlf_is_the_first_cr_followed_by_lf() {
        for s in [&b""[..], b"\r", b"\n", b"ab", b"a\rb", b"\r\r", b"x\r", b"\n\r"] {
            assert_eq!(find_crlf(s), None, "{s:?}");
        }
        for (s, at) in [(&b"\r\n"[..], 0), (b"OK\r\n", 2), (b"a\rb\r\n", 3), (b"\r\r\n", 1), (b"a\r\nb\r\n", 1)] {
            assert_eq!(find_crlf(s), Some(at), "{s:?}");
            assert_eq!(find_crlf(s), memchr::memmem::find(s, b"\r\n"));
        }
    }

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut p = RequestParser::default();
        let mut out = Vec::new();
        let mut off = 0;
        let limits = Limits::default();
        loop {
            let mut args = Vec::new();
            let mut enc = BytesMut::new();
            match p.parse(&input[off..], &limits, &mut args, &mut enc)? {
                Parsed::Incomplete => return Ok(out),
                Parsed::Request { len } => {
                    let base = &input[off..];
                    out.push(args.iter().map(|&(s, l)| base[s as usize..(s + l) as usize].to_vec()).collect());
                    off += len;
                }
                Parsed::Inline { len } => {
                    if !args.is_empty() {
                        out.push(args.iter().map(|&(s, l)| enc[s as usize..(s + l) as usize].to_vec()).collect());
                    }
                    off += len;
                }
            }
        }
    }

    #[test]
    fn the_header_fast_path_reads_what_the_general_path_reads() {
        // Every line of up to 6 bytes over an alphabet of the interesting characters.
        let alphabet = b"01259-\r\nx";
        let mut line = Vec::new();
        let mut checked = 0;
        for len in 0..=6u32 {
            for mut n in 0..alphabet.len().pow(len) {
                line.clear();
                for _ in 0..len {
                    line.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                let mut buf = b"$".to_vec();
                buf.extend_from_slice(&line);
                if let Some(fast) = read_small_len(&buf, 1) {
                    assert_eq!(read_line_int_general(&buf, 1), Ok(Some(fast)), "{:?}", String::from_utf8_lossy(&buf));
                    checked += 1;
                }
            }
        }
        assert!(checked > 5_000, "{checked}");
    }

    #[test]
    fn parses_arrays_and_pipelines() {
        let got = parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(got, vec![vec![b"GET".to_vec(), b"a".to_vec()], vec![b"PING".to_vec()]]);
    }

    #[test]
    fn binary_safe_arguments() {
        let got = parse_all(b"*2\r\n$3\r\nGET\r\n$4\r\n\r\n\0\xff\r\n").unwrap();
        assert_eq!(got[0][1], b"\r\n\0\xff".to_vec());
    }

    #[test]
    fn resumes_byte_by_byte() {
        let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
        let mut p = RequestParser::default();
        let limits = Limits::default();
        let mut args = Vec::new();
        let mut enc = BytesMut::new();
        for end in 0..input.len() {
            assert_eq!(p.parse(&input[..end], &limits, &mut args, &mut enc).unwrap(), Parsed::Incomplete);
        }
        assert_eq!(p.parse(input, &limits, &mut args, &mut enc).unwrap(), Parsed::Request { len: input.len() });
        assert_eq!(args.len(), 3);
    }

    #[test]
    fn a_request_split_across_reads_keeps_its_arguments_when_the_caller_clears_between_reads() {
        let input = b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n";
        let mut p = RequestParser::default();
        let limits = Limits::default();
        let mut enc = BytesMut::new();
        let mut args = Vec::new();
        assert_eq!(p.parse(&input[..16], &limits, &mut args, &mut enc).unwrap(), Parsed::Incomplete);
        assert!(args.is_empty(), "a partial request's arguments are not handed out");
        args.clear();
        assert_eq!(p.parse(input, &limits, &mut args, &mut enc).unwrap(), Parsed::Request { len: input.len() });
        let got: Vec<&[u8]> = args.iter().map(|&(s, l)| &input[s as usize..(s + l) as usize]).collect();
        assert_eq!(got, vec![&b"ECHO"[..], b"hello"]);
    }

    #[test]
    fn limits_are_checked_from_the_header() {
        let limits = Limits { max_bulk: 10, max_array: 3, max_inline: 64, unauthenticated: false };
        let mut p = RequestParser::default();
        let (mut a, mut e) = (Vec::new(), BytesMut::new());
        // The header alone is enough to refuse: the 11-byte body never needs to arrive.
        assert_eq!(
            p.parse(b"*2\r\n$3\r\nGET\r\n$11\r\n", &limits, &mut a, &mut e),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(p.parse(b"*4\r\n", &limits, &mut a, &mut e), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(p.parse(b"*1\r\n$-5\r\n", &limits, &mut a, &mut e), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(p.parse(b"*1\r\n:5\r\n", &limits, &mut a, &mut e), Err(ProtocolError::ExpectedBulk(':')));
        assert_eq!(p.parse(b"*x\r\n", &limits, &mut a, &mut e), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(p.parse(b"*1\r\n$1\r\nab\r\n", &limits, &mut a, &mut e), Err(ProtocolError::MissingCrlf));
        assert_eq!(p.parse(&[b'x'; 65], &limits, &mut a, &mut e), Err(ProtocolError::InlineTooBig));
        assert_eq!(
            p.parse(b"*99999999999999999999999\r\n", &limits, &mut a, &mut e),
            Err(ProtocolError::InvalidMultibulkLength)
        );
    }

    #[test]
    fn unauthenticated_requests_have_redis_smaller_limits() {
        let limits = Limits { unauthenticated: true, ..Limits::default() };
        let mut p = RequestParser::default();
        let (mut a, mut e) = (Vec::new(), BytesMut::new());
        let err = |p: &mut RequestParser, a: &mut Vec<Arg>, e: &mut BytesMut, b: &[u8]| p.parse(b, &limits, a, e);
        assert_eq!(err(&mut p, &mut a, &mut e, b"*11\r\n"), Err(ProtocolError::UnauthenticatedMultibulkLength));
        assert_eq!(err(&mut p, &mut a, &mut e, b"*1\r\n$16385\r\n"), Err(ProtocolError::UnauthenticatedBulkLength));
        // Malformed headers keep their own errors; the limits themselves are allowed.
        assert_eq!(err(&mut p, &mut a, &mut e, b"*x\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(err(&mut p, &mut a, &mut e, b"*1\r\n$-2\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(err(&mut p, &mut a, &mut e, b"*10\r\n$16384\r\n"), Ok(Parsed::Incomplete));
    }

    #[test]
    fn a_buffer_done_with_a_large_request_lets_its_allocation_go() {
        let mut buf = BytesMut::with_capacity(4 * KEEP_CAPACITY);
        buf.extend_from_slice(&vec![b'x'; 3 * KEEP_CAPACITY]);
        buf.extend_from_slice(b"*1\r\n");
        let front = split_front(&mut buf, 3 * KEEP_CAPACITY);
        assert_eq!(front.len(), 3 * KEEP_CAPACITY);
        assert_eq!(&buf[..], b"*1\r\n");
        assert!(buf.capacity() < KEEP_CAPACITY, "{}", buf.capacity());
        // Small buffers are split as before, in place.
        let mut small = BytesMut::with_capacity(4096);
        small.extend_from_slice(b"PING\r\nPI");
        let ptr = small[6..].as_ptr();
        assert_eq!(&split_front(&mut small, 6)[..], b"PING\r\n");
        assert_eq!(small.as_ptr(), ptr);
    }

    #[test]
    fn empty_arrays_are_skipped() {
        assert_eq!(parse_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n").unwrap(), vec![vec![b"PING".to_vec()]]);
    }

    #[test]
    fn inline_commands_follow_redis_quoting() {
        assert_eq!(parse_all(b"PING\r\n").unwrap(), vec![vec![b"PING".to_vec()]]);
        assert_eq!(
            parse_all(b"set \"a b\" 'c\\'d' \"\\x41\\n\"\n").unwrap(),
            vec![vec![b"set".to_vec(), b"a b".to_vec(), b"c'd".to_vec(), b"A\n".to_vec()]]
        );
        assert_eq!(parse_all(b"\r\n\r\nPING\n").unwrap(), vec![vec![b"PING".to_vec()]]);
        assert_eq!(parse_all(b"set \"abc\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(parse_all(b"set \"a\"b\n"), Err(ProtocolError::UnbalancedQuotes));
        // As redis-server 7.0 splits them (checked against it): a quote inside a word starts
        // quoting; form feed and vertical tab separate words but do not end one.
        let words = |line: &[u8]| parse_all(line).unwrap().remove(0);
        assert_eq!(words(b"SET k a\"b c\"\r\n"), [&b"SET"[..], b"k", b"ab c"]);
        assert_eq!(words(b"SET k a'b c'\r\n"), [&b"SET"[..], b"k", b"ab c"]);
        assert_eq!(parse_all(b"SET k a'b c'd\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(words(b"SET f a\x0cb\r\n"), [&b"SET"[..], b"f", b"a\x0cb"]);
        assert_eq!(words(b"SET  \x0c g \x0bv\r\n"), [&b"SET"[..], b"g", b"v"]);
        assert_eq!(words(b"SET q \"x\"\x0cy\r\n"), [&b"SET"[..], b"q", b"x", b"y"]);
    }

    fn scan(input: &[u8]) -> Option<ReplyInfo> {
        ReplyScanner::default().next(input).unwrap()
    }

    #[test]
    fn scans_resp2_and_resp3_replies() {
        for r in [
            &b"+OK\r\n"[..],
            b"-ERR x\r\n",
            b":12\r\n",
            b"$3\r\nabc\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"_\r\n",
            b"#t\r\n",
            b",3.14\r\n",
            b"(123456789012345678901234567890\r\n",
            b"!3\r\nerr\r\n",
            b"=7\r\ntxt:abc\r\n",
            b"%1\r\n+k\r\n*0\r\n",
            b"~2\r\n+a\r\n+b\r\n",
            b">2\r\n+message\r\n+x\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
        ] {
            let mut with_tail = r.to_vec();
            with_tail.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(scan(&with_tail).map(|i| i.len), Some(r.len()), "{}", String::from_utf8_lossy(r));
            for cut in 0..r.len() {
                assert_eq!(scan(&r[..cut]), None, "prefix {cut} of {}", String::from_utf8_lossy(r));
            }
        }
        assert!(scan(b"-ERR\r\n").unwrap().is_error());
        assert!(scan(b">1\r\n+a\r\n").unwrap().is_push());
    }

    #[test]
    fn scanner_resumes_without_rescanning() {
        let reply = b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n";
        let mut s = ReplyScanner::default();
        for cut in 1..reply.len() {
            assert_eq!(s.next(&reply[..cut]).unwrap(), None);
        }
        assert_eq!(s.next(reply).unwrap().unwrap().len, reply.len());
        // And the scanner starts afresh on the next reply.
        assert_eq!(s.next(b":1\r\n").unwrap().unwrap().len, 4);
    }

    #[test]
    fn rejects_garbage_replies() {
        assert!(ReplyScanner::default().next(b"?x\r\n").is_err());
        assert!(ReplyScanner::default().next(b"$abc\r\n").is_err());
    }

    // Regressions from fuzz/ and tests/proptest_protocol.rs (their inputs are also in
    // fuzz/regressions/, run by that test file).

    #[test]
    fn a_header_too_long_for_an_integer_fails_whatever_the_reads() {
        // 29 bytes after '$' with the CR last: used to wait for the LF when read at once,
        // and fail when read in pieces.
        let input =
            b"*3\r\n$2\0\0\xff\xff\na*\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\r";
        assert_eq!(parse_all(input), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(parse_all(&input[..26]), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(parse_all(&input[..25]), Ok(vec![]));
        assert_eq!(parse_all(b"*123456789012345678901"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse_all(b"*12345678901234567890"), Ok(vec![]), "20 characters may still be an integer");
    }

    #[test]
    fn reply_counts_that_overflow_are_errors_not_panics() {
        let mut s = ReplyScanner::default();
        assert_eq!(s.next(b"*2\r\n%9223372036854775807\r\n"), Err(ProtocolError::InvalidReplyLength));
        let mut s = ReplyScanner::default();
        let three = b"*9223372036854775807\r\n*9223372036854775807\r\n*9223372036854775807\r\n";
        assert_eq!(s.next(three), Err(ProtocolError::InvalidReplyLength));
        let mut s = ReplyScanner::default();
        assert_eq!(s.next(b"$9223372036854775807\r\nabc"), Ok(None), "a huge bulk just waits");
    }

    #[test]
    fn reply_lines_end_at_crlf() {
        // A lone CR in a header is an error, not a line end that swallows the next byte.
        assert_eq!(ReplyScanner::default().next(b"*1\r\n*1\r\n$1\rX\r\n"), Err(ProtocolError::InvalidReplyLine));
        // In a status or scalar line it is text, as redis-protocol reads it.
        assert_eq!(scan(b"+a\rb\r\n:1\r\n").map(|i| i.len), Some(6));
        assert_eq!(scan(b"(12\r3\r\n").map(|i| i.len), Some(7));
        // A scalar line may not grow without end; a status line may.
        let long_int = [&b":"[..], &[b'1'; 70_000]].concat();
        assert_eq!(ReplyScanner::default().next(&long_int), Err(ProtocolError::InvalidReplyLength));
        let long_status = [&b"+"[..], &[b'x'; 70_000], b"\r\n"].concat();
        assert_eq!(scan(&long_status).map(|i| i.len), Some(70_003));
    }
}
