//! Syslog framing and message parsing take any bytes without panicking, and a frame never
//! claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_agent::sources::syslog::parse::{next_frame, parse_message};

fuzz_target!(|data: &[u8]| {
    let _ = parse_message(data, "syslog", 1_795_768_200_000_000_000);
    let mut rest = data;
    while let Ok(Some((_, used))) = next_frame(rest, 512) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
    }
});
