//! SQL text, as `/api/v1/sql` receives it, through the parser DataFusion plans with
//! (sqlparser, generic dialect, as `SessionContext::sql` uses by default): any text parses
//! or is refused, never panics. Planning and the read-only refusal are covered by the
//! query API's tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if text.len() > 4_096 {
        return;
    }
    if let Ok(statements) = Parser::parse_sql(&GenericDialect {}, &text) {
        for statement in statements {
            // What parsed prints back and parses again.
            let printed = statement.to_string();
            let _ = Parser::parse_sql(&GenericDialect {}, &printed);
        }
    }
});
