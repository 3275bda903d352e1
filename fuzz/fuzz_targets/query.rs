//! The search query language (what `/api/v1/search?query=` and tail filters take): parsing
//! any text against the index schema answers or refuses, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_indexer::Searcher;

thread_local! {
    static SEARCHER: Searcher = Searcher::new(std::path::Path::new("/nonexistent-sluice-fuzz-index"));
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    SEARCHER.with(|searcher| {
        let _ = searcher.parse(&text);
    });
});
