//! Arbitrary bytes through the client request parser (resumed across split points, with
//! tight limits), the upstream reply scanner and the command lookup. The checks live in
//! `check.rs`, which `tests/proptest_protocol.rs` also runs over `fuzz/regressions/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod check;

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
