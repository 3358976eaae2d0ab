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

/// The upstream's `redis_version` as last read by the probe (HELLO answered during an
/// outage reports it); "7.0.0", the oldest supported, until one is read.
static UPSTREAM_VERSION: parking_lot::Mutex<Option<String>> = parking_lot::Mutex::new(None);

pub fn upstream_version() -> String {
    UPSTREAM_VERSION.lock().clone().unwrap_or_else(|| "7.0.0".into())
}

/// Sets the score format from the upstream's `redis_version` (e.g. "7.0.15").
pub fn set_upstream_version(version: &str) {
    *UPSTREAM_VERSION.lock() = Some(version.to_string());
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
        return if v.is_sign_negative() { "-0".into() } else { "0".into() };
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
        return if v.is_sign_negative() { "-0".into() } else { "0".into() };
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

/// INCRBYFLOAT / HINCRBYFLOAT arithmetic as Redis does it: operands read as x87 80-bit
/// long doubles (`strtold`), added with round-to-nearest-even, the sum printed `%.17Lf`
/// without trailing zeros. So `0.1 + 0.2` is `0.3` but `0 + 1000.1` is
/// `1000.09999999999999998`, as Redis answers; binary64 arithmetic gets both wrong.
pub mod long_double {
    use rustc_apfloat::ieee::X87DoubleExtended as Ld;
    use rustc_apfloat::{Float, Round};

    /// A float Redis accepts (the caller checked the syntax), as a long double.
    pub fn parse(text: &[u8]) -> Option<Ld> {
        let s = std::str::from_utf8(text).ok()?;
        let (neg, word) = match s.strip_prefix('-') {
            Some(w) => (true, w),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        if word.eq_ignore_ascii_case("inf") || word.eq_ignore_ascii_case("infinity") {
            return Some(if neg { -Ld::INFINITY } else { Ld::INFINITY });
        }
        Ld::from_str_r(s, Round::NearestTiesToEven).ok().map(|r| r.value)
    }

    /// Whether a float Redis accepts is finite (`inf` is a float to Redis, but not a
    /// HINCRBYFLOAT increment).
    pub fn is_finite(text: &[u8]) -> bool {
        parse(text).is_some_and(|v| v.is_finite())
    }

    /// `a + b` as Redis prints it; `None` when the sum is not finite.
    pub fn add(a: &[u8], b: &[u8]) -> Option<String> {
        let sum = parse(a)?.add_r(parse(b)?, Round::NearestTiesToEven).value;
        sum.is_finite().then(|| format(sum))
    }

    /// `%.17Lf` without trailing zeros (and "-0" printed "0", as Redis does).
    fn format(v: Ld) -> String {
        let bits = v.to_bits();
        let negative = (bits >> 79) & 1 == 1;
        let biased = ((bits >> 64) & 0x7fff) as i32;
        // The integer bit is explicit in this format: value = significand * 2^exp.
        let significand = bits as u64;
        let exp = biased.max(1) - 16383 - 63;
        let digits =
            if exp >= 0 { shifted_integer(significand, exp as u32) } else { fixed17(significand, (-exp) as u32) };
        if negative && digits != "0" {
            format!("-{digits}")
        } else {
            digits
        }
    }

    /// `significand * 2^-k` to 17 decimals (round half to even, as glibc's printf), without
    /// trailing zeros.
    fn fixed17(significand: u64, k: u32) -> String {
        const SCALE: u128 = 100_000_000_000_000_000; // 10^17
        let p = significand as u128 * SCALE; // < 2^121
        let n = if k >= 122 {
            0
        } else {
            let (q, r, half) = (p >> k, p & ((1u128 << k) - 1), 1u128 << (k - 1));
            if r > half || (r == half && q & 1 == 1) {
                q + 1
            } else {
                q
            }
        };
        let (int, frac) = (n / SCALE, n % SCALE);
        let mut s = int.to_string();
        if frac != 0 {
            s.push('.');
            s.push_str(format!("{frac:017}").trim_end_matches('0'));
        }
        s
    }

    /// `significand * 2^k` in decimal (up to ~4,933 digits for the largest long double).
    fn shifted_integer(significand: u64, k: u32) -> String {
        // Little-endian base-10^9 limbs.
        const BASE: u64 = 1_000_000_000;
        let mut limbs = vec![significand % BASE, (significand / BASE) % BASE, significand / (BASE * BASE)];
        let mut left = k;
        while left > 0 {
            let step = left.min(32);
            let mut carry = 0u64;
            for limb in &mut limbs {
                let v = (*limb << step) + carry;
                *limb = v % BASE;
                carry = v / BASE;
            }
            while carry > 0 {
                limbs.push(carry % BASE);
                carry /= BASE;
            }
            left -= step;
        }
        while limbs.len() > 1 && limbs.last() == Some(&0) {
            limbs.pop();
        }
        let mut s = limbs.last().map_or_else(String::new, |l| l.to_string());
        for l in limbs.iter().rev().skip(1) {
            s.push_str(&format!("{l:09}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_double_sums_print_as_redis_7_printed_them() {
        // Each line: what redis-server 7.0 answered to INCRBYFLOAT on the previous value.
        let chain = [
            ("0", "1000.1", "1000.09999999999999998"),
            ("1000.09999999999999998", "0.1", "1000.19999999999999996"),
            ("1000.19999999999999996", "12345.678", "13345.87800000000000011"),
            ("13345.87800000000000011", "1e3", "14345.87800000000000011"),
            ("14345.87800000000000011", "2.5e1", "14370.87800000000000011"),
            ("14370.87800000000000011", "-1.5E-1", "14370.72799999999999976"),
            ("14370.72799999999999976", "123456789.123", "123471159.85100000000238651"),
            ("0.1", "0.2", "0.3"),
            ("10.50", "0.1", "10.6"),
            ("5", "-5", "0"),
            ("0.5", "-1", "-0.5"),
            ("1e-30", "-2e-30", "0"),
            ("1", "-1.00000000000000000001", "0"),
            ("16", ".5", "16.5"),
            ("16.5", "5.", "21.5"),
            ("21.5", "+1", "22.5"),
        ];
        for (a, b, want) in chain {
            assert_eq!(long_double::add(a.as_bytes(), b.as_bytes()).as_deref(), Some(want), "{a} + {b}");
        }
        let big = long_double::add(b"1e400", b"1").unwrap();
        assert!(big.starts_with("10000000000000000000281880683947586514586453433629052038625910693539685534008629"));
        assert_eq!(big.len(), 401);
        let twice = long_double::add(b"0", b"1e308").unwrap();
        assert!(twice.starts_with("99999999999999999996685879655845645660560099847415567207797047994921734868838061"));
        let twice = long_double::add(twice.as_bytes(), b"1e308").unwrap();
        assert!(twice.starts_with("19999999999999999999337175931169129132112019969483113441559409598984346973767612"));
        assert_eq!(long_double::add(b"inf", b"1"), None);
        assert_eq!(long_double::add(b"1", b"-inf"), None);
        assert!(!long_double::is_finite(b"+inf") && long_double::is_finite(b"1e400"));
    }

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
        assert_eq!((format_shortest(-0.0), format_g17(-0.0), format_g17(0.0)), ("-0".into(), "-0".into(), "0".into()));
        // Redis 7.0's %.17g.
        assert_eq!(format_g17(1.1), "1.1000000000000001");
        assert_eq!(format_g17(2.5), "2.5");
        assert_eq!(format_g17(10.0), "10");
        assert_eq!(format_g17(1e21), "1e+21");
        assert_eq!(format_g17(0.0001), "0.0001");
        // INCRBYFLOAT in long double.
    }
}
