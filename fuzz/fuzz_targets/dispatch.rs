//! Request decoding and dispatch, as a one-shard server runs them, under
//! arbitrary message sequences. The input format and the checks live in the
//! crate's lib (`nemesisdb_fuzz::run_input`), shared with the property test.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nemesisdb_fuzz::run_input(data));
