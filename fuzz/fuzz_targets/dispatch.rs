//! Request decoding and dispatch, as a one-shard server runs them, under
//! arbitrary message sequences. The input format and the checks live in the
//! oracle crate (`nemesisdb_oracle::run_input`, `fuzz/oracle/`), shared with
//! the integration tests.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nemesisdb_oracle::run_input(data));
