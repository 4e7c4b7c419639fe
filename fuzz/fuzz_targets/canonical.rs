//! The fast path for canonical `SH_GET` / `SH_SET` requests against the
//! general decoder: for every input it must decline, or yield exactly the
//! command the general decoder yields (`src/protocol/canonical.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use nemesisdb::protocol::RequestParser;
use nemesisdb::protocol::canonical::recognize;

fuzz_target!(|data: &[u8]| {
    if let Some(fast) = recognize(data) {
        let general = RequestParser::default().parse_general(data);
        assert_eq!(Ok(fast), general, "input: {:?}", String::from_utf8_lossy(data));
    }
});
