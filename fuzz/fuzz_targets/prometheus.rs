//! The Prometheus text parser takes any text without panicking, and what it keeps maps to
//! envelopes that carry a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_agent::sources::prometheus::exposition::{envelopes, parse};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let page = parse(&text);
    let (kept, _refused) = envelopes(&page, "fuzz", "127.0.0.1:9100", 1_795_768_200_000_000_000);
    for envelope in kept {
        assert!(envelope.message.is_some());
    }
});
