//! A gzip body, whatever it holds, inflates to at most the limit or is refused: a bomb costs
//! no more memory than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_agent::sources::otlp::{Inflate, inflate_capped};

fuzz_target!(|data: &[u8]| {
    match inflate_capped(data, 64 * 1024) {
        Ok(inflated) => assert!(inflated.len() <= 64 * 1024),
        Err(Inflate::Bad(_) | Inflate::TooLarge) => {}
    }
});
