//! Encoding the replies respite gives from its local store, in the client's protocol
//! (RESP2, or RESP3 after `HELLO 3`), the way Redis encodes them.

use bytes::{BufMut, BytesMut};

use crate::error::write_error_line;
use crate::resp::put_decimal;

pub struct Reply<'a> {
    pub out: &'a mut BytesMut,
    pub resp3: bool,
}

impl Reply<'_> {
    pub fn ok(&mut self) {
        self.out.put_slice(b"+OK\r\n");
    }
    pub fn simple(&mut self, s: &str) {
        self.out.put_u8(b'+');
        self.out.put_slice(s.as_bytes());
        self.out.put_slice(b"\r\n");
    }
    pub fn error(&mut self, msg: &str) {
        write_error_line(self.out, msg);
    }
    pub fn int(&mut self, v: i64) {
        self.out.put_u8(b':');
        put_decimal(self.out, v);
        self.out.put_slice(b"\r\n");
    }
    pub fn bulk(&mut self, b: &[u8]) {
        self.out.reserve(b.len() + 16);
        self.out.put_u8(b'$');
        put_decimal(self.out, b.len() as i64);
        self.out.put_slice(b"\r\n");
        self.out.put_slice(b);
        self.out.put_slice(b"\r\n");
    }
    pub fn nil(&mut self) {
        self.out.put_slice(if self.resp3 { b"_\r\n" } else { b"$-1\r\n" });
    }
    pub fn null_array(&mut self) {
        self.out.put_slice(if self.resp3 { b"_\r\n" } else { b"*-1\r\n" });
    }
    fn header(&mut self, t: u8, n: usize) {
        self.out.put_u8(t);
        put_decimal(self.out, n as i64);
        self.out.put_slice(b"\r\n");
    }
    pub fn array(&mut self, n: usize) {
        self.header(b'*', n);
    }
    /// A map of `n` pairs: `%n` in RESP3, a flat array of 2n in RESP2.
    pub fn map(&mut self, n: usize) {
        if self.resp3 {
            self.header(b'%', n)
        } else {
            self.header(b'*', 2 * n)
        }
    }
    /// A set: `~n` in RESP3, an array in RESP2.
    pub fn set(&mut self, n: usize) {
        self.header(if self.resp3 { b'~' } else { b'*' }, n);
    }
    /// A double: `,x` in RESP3, a bulk string in RESP2.
    pub fn double(&mut self, v: f64) {
        let s = format_double(v);
        if self.resp3 {
            self.out.put_u8(b',');
            self.out.put_slice(s.as_bytes());
            self.out.put_slice(b"\r\n");
        } else {
            self.bulk(s.as_bytes());
        }
    }
    /// A `[member, score]` pair as ZRANGE … WITHSCORES returns it (a nested pair in RESP3).
    pub fn scored_header(&mut self, n: usize) {
        if self.resp3 {
            self.array(n)
        } else {
            self.array(2 * n)
        }
    }
    pub fn scored(&mut self, member: &[u8], score: f64) {
        if self.resp3 {
            self.array(2);
        }
        self.bulk(member);
        self.double(score);
    }
}

/// Formats a float the way Redis prints scores and INCRBYFLOAT results: the shortest
/// representation that reads back the same, `inf`/`-inf` for infinities.
pub fn format_double(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return "0".into();
    }
    // As C's %.17g chooses: exponent form below 1e-4 and from 1e17, shortest digits.
    let exp = v.abs().log10().floor();
    if (-4.0..17.0).contains(&exp) {
        format!("{v}")
    } else {
        let s = format!("{v:e}");
        match s.split_once('e') {
            Some((m, e)) if e.starts_with('-') => format!("{m}e-{:0>2}", &e[1..]),
            Some((m, e)) => format!("{m}e+{e:0>2}"),
            None => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_resp2_and_resp3() {
        let mut out = BytesMut::new();
        let mut r = Reply { out: &mut out, resp3: false };
        r.nil();
        r.map(1);
        r.double(1.5);
        r.set(0);
        assert_eq!(&out[..], b"$-1\r\n*2\r\n$3\r\n1.5\r\n*0\r\n");
        let mut out = BytesMut::new();
        let mut r = Reply { out: &mut out, resp3: true };
        r.nil();
        r.map(1);
        r.double(1.5);
        r.set(0);
        assert_eq!(&out[..], b"_\r\n%1\r\n,1.5\r\n~0\r\n");
        assert_eq!(format_double(3.0), "3");
        assert_eq!(format_double(f64::NEG_INFINITY), "-inf");
        assert_eq!(format_double(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_double(1e21), "1e+21");
        assert_eq!(format_double(1.5e-7), "1.5e-07");
        assert_eq!(format_double(-2.5), "-2.5");
    }
}
