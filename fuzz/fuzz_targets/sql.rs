//! SQL text, as `/api/v1/sql` receives it, through the parser DataFusion plans with
//! (sqlparser, generic dialect) under the bounds the query API puts on its work
//! (`query-api/src/sql/bounded.rs`, included here as it is): any text parses or is refused,
//! never panics, and never takes more than the step budget. Planning and the read-only refusal
//! are covered by the query API's tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Tokenizer;

// The query API's module, included whole: what only the server calls is unused here.
#[allow(dead_code)]
#[path = "../../query-api/src/sql/bounded.rs"]
mod bounded;

fn parse(text: &str) -> Option<Vec<sqlparser::ast::Statement>> {
    let dialect = bounded::BoundedDialect::for_text(text);
    let tokens = Tokenizer::new(&dialect, text).tokenize_with_location().ok()?;
    Parser::new(&dialect)
        .with_recursion_limit(50)
        .with_tokens_with_locations(bounded::compact_whitespace(tokens))
        .parse_statements()
        .ok()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if text.len() > 4_096 {
        return;
    }
    for statement in parse(&text).unwrap_or_default() {
        // What parsed prints back and parses again.
        let _ = parse(&statement.to_string());
    }
});
