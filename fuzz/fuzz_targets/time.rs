//! The time parser (the query API's `start=`/`end=`, `_bulk` timestamps) takes any text:
//! it answers or refuses, never panics, and what it answers formats back to a time that
//! parses to the same instant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_common::time::{format_rfc3339_nanos, parse_time_nanos};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(nanos) = parse_time_nanos(&text) {
        let formatted = format_rfc3339_nanos(nanos);
        if formatted.starts_with(|c: char| c.is_ascii_digit()) && formatted.len() == 30 {
            assert_eq!(parse_time_nanos(&formatted), Some(nanos), "{text:?} -> {formatted}");
        }
    }
});
