//! Encoding the replies respite gives from its local store, in the client's protocol
//! (RESP2, or RESP3 after `HELLO 3`), the way Redis encodes them.

use std::sync::atomic::{AtomicBool, Ordering};

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
    /// A bulk string, or nil for `None`.
    pub fn bulk_or_nil(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => self.bulk(b),
            None => self.nil(),
        }
    }
    /// A double, or nil for `None`.
    pub fn double_or_nil(&mut self, v: Option<f64>) {
        match v {
            Some(v) => self.double(v),
            None => self.nil(),
        }
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

/// How the upstream prints scores: Redis before 7.2 uses `%.17g` (`1.1000000000000001`),
/// 7.2 and later the shortest form that reads back the same (`1.1`). Learned from the
/// upstream's version by the probe, so outage replies match what the upstream would say.
static SCORES_SHORTEST: AtomicBool = AtomicBool::new(true);

/// Sets the score format from the upstream's `redis_version` (e.g. "7.0.15").
pub fn set_upstream_version(version: &str) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    SCORES_SHORTEST.store((major, minor) >= (7, 2), Ordering::Relaxed);
}

/// Formats a score (ZSCORE, ZINCRBY, WITHSCORES) as the upstream would.
pub fn format_double(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if SCORES_SHORTEST.load(Ordering::Relaxed) {
        format_shortest(v)
    } else {
        format_g17(v)
    }
}

/// The shortest representation that reads back the same, in `%g` layout.
pub fn format_shortest(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor();
    if (-4.0..17.0).contains(&exp) {
        format!("{v}")
    } else {
        c_exponent(&format!("{v:e}"))
    }
}

/// C's `%.17g`: 17 significant digits, trailing zeros removed.
pub fn format_g17(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{v:.16e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..17).contains(&exp) {
        let m = mantissa.trim_end_matches('0').trim_end_matches('.');
        return c_exponent(&format!("{m}e{exp}"));
    }
    let decimals = (16 - exp).max(0) as usize;
    let fixed = format!("{v:.decimals$}");
    if fixed.contains('.') {
        fixed.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        fixed
    }
}

/// `1e21` → `1e+21`, `1.5e-7` → `1.5e-07` (C's exponent layout).
fn c_exponent(s: &str) -> String {
    match s.split_once('e') {
        Some((m, e)) if e.starts_with('-') => format!("{m}e-{:0>2}", &e[1..]),
        Some((m, e)) => format!("{m}e+{e:0>2}"),
        None => s.to_string(),
    }
}

/// INCRBYFLOAT / HINCRBYFLOAT: Redis adds in long double and prints `%.17Lf` without
/// trailing zeros, so `0.1 + 0.2` is `0.3`. Plain decimal operands are added exactly here
/// (what long double gives for them); anything else falls back to binary floating point.
pub fn add_decimal(current: &[u8], increment: &[u8]) -> Option<String> {
    let (a, sa) = parse_decimal(current)?;
    let (b, sb) = parse_decimal(increment)?;
    let scale = sa.max(sb);
    let a = a.checked_mul(10i128.checked_pow(scale - sa)?)?;
    let b = b.checked_mul(10i128.checked_pow(scale - sb)?)?;
    let sum = a.checked_add(b)?;
    let p = 10i128.pow(scale);
    let (int, frac) = (sum / p, (sum % p).abs());
    let sign = if sum < 0 && int == 0 { "-" } else { "" };
    let mut s = format!("{sign}{int}");
    if frac != 0 {
        let f = format!("{frac:0width$}", width = scale as usize);
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    Some(s)
}

/// A plain decimal (`-12.340`, no exponent) as an integer and its number of decimals.
fn parse_decimal(b: &[u8]) -> Option<(i128, u32)> {
    let s = std::str::from_utf8(b).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
        || int.len() > 20
        || frac.len() > 17
    {
        return None;
    }
    let digits: i128 = format!("{int}{frac}").parse().ok()?;
    Some((if neg { -digits } else { digits }, frac.len() as u32))
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
        assert_eq!(format_double(f64::NEG_INFINITY), "-inf");
        assert_eq!(format_shortest(3.0), "3");
        assert_eq!(format_shortest(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_shortest(1e21), "1e+21");
        assert_eq!(format_shortest(1.5e-7), "1.5e-07");
        assert_eq!(format_shortest(-2.5), "-2.5");
        // Redis 7.0's %.17g.
        assert_eq!(format_g17(1.1), "1.1000000000000001");
        assert_eq!(format_g17(2.5), "2.5");
        assert_eq!(format_g17(10.0), "10");
        assert_eq!(format_g17(1e21), "1e+21");
        assert_eq!(format_g17(0.0001), "0.0001");
        // INCRBYFLOAT in long double.
        assert_eq!(add_decimal(b"0.1", b"0.2").as_deref(), Some("0.3"));
        assert_eq!(add_decimal(b"10.50", b"0.1").as_deref(), Some("10.6"));
        assert_eq!(add_decimal(b"5", b"-5").as_deref(), Some("0"));
        assert_eq!(add_decimal(b"0.5", b"-1").as_deref(), Some("-0.5"));
        assert_eq!(add_decimal(b"3", b"2").as_deref(), Some("5"));
        assert_eq!(add_decimal(b"1e3", b"1"), None);
    }
}
