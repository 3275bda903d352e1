//! The `_bulk` body parser takes any bytes without panicking, and every document it keeps is
//! a log envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_agent::sources::elasticsearch::bulk::{Mapping, parse};

fuzz_target!(|data: &[u8]| {
    let mapping = Mapping {
        source_id_field: Some(vec!["service".to_owned(), "name".to_owned()]),
    };
    if let Ok(items) = parse(data, Some("fuzz"), &mapping, 1_795_768_200_000_000_000) {
        for item in items {
            if let Ok(envelope) = item.outcome {
                assert!(envelope.message.is_some());
            }
        }
    }
});
