//! Parsing SQL text with bounded work: DataFusion's default dialect (sqlparser's generic
//! one) with a budget of parser steps, over tokens whose whitespace runs are kept short.
//!
//! sqlparser is a recursive-descent parser that backtracks: where a construct can start two
//! ways it tries one, and on failure rewinds and tries the other, at every level of nesting.
//! Its recursion limit bounds the depth, not the number of attempts, so some short texts take
//! exponential time. Fuzzing found a 121-byte one (`fuzz/regressions/sql/`) that takes over a
//! minute; on a server that parses what clients send, that is a denial of service. Two things
//! bound the work here:
//!
//! - [`BoundedDialect`] counts the expressions the parser begins (every attempt, including
//!   those it later abandons, passes through [`Dialect::parse_prefix`]) and fails the parse
//!   once a text has used [`step_budget`] of them. It fails with sqlparser's recursion-limit
//!   error because that is the one error backtracking does not swallow, so every pending
//!   attempt stops at once; [`BoundedDialect::exhausted`] then tells the caller why. Queries as
//!   written by people and tools begin at most one expression per four bytes (the sqlparser
//!   test suite's 1,700 valid statements, TPC-H among them, peak at 0.24), so the budget
//!   leaves them sixteen times the room they need.
//! - A step costs the whitespace the parser skips to find the next token, and sqlparser makes
//!   one token of every space. [`compact_whitespace`] keeps at most [`MAX_WHITESPACE_RUN`]
//!   whitespace and comment tokens in a row (a longer run is what it keeps plus one space), so
//!   a step's cost does not grow with the text. Measured on the 121 bytes followed by 256 KiB
//!   of spaces: 475 s of parsing within the step budget without this, well under a second with.
//!
//! Every setting of the generic dialect is delegated, and [`Dialect::dialect`] answers with the
//! generic dialect's type, so sqlparser's dialect checks see no difference: the parse is the
//! one DataFusion would make, or the budget's error. (This file uses only sqlparser, so the
//! `sql` fuzz target includes it and fuzzes what the server runs.)

use std::any::TypeId;
use std::cell::Cell;

use sqlparser::ast::Expr;
use sqlparser::dialect::{Dialect, GenericDialect};
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Whitespace};

/// Whitespace and comment tokens kept in a row; see [`compact_whitespace`].
pub const MAX_WHITESPACE_RUN: usize = 8;

/// Keeps the first [`MAX_WHITESPACE_RUN`] tokens of each run of whitespace and comments, and
/// one space for the rest of the run. Only the first comments of a run can mean anything to
/// the parser (optimizer hints come first), and a space separates tokens as well as many.
pub fn compact_whitespace(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut compacted = Vec::with_capacity(tokens.len());
    let mut run = 0;
    for token in tokens {
        if !matches!(token.token, Token::Whitespace(_)) {
            run = 0;
            compacted.push(token);
            continue;
        }
        run += 1;
        if run <= MAX_WHITESPACE_RUN {
            compacted.push(token);
        } else if run == MAX_WHITESPACE_RUN + 1 {
            compacted.push(TokenWithSpan::new(
                Token::Whitespace(Whitespace::Space),
                token.span,
            ));
        }
    }
    compacted
}

/// Expressions a parse of `text_bytes` bytes may begin before it is stopped.
pub fn step_budget(text_bytes: usize) -> u64 {
    10_000u64.saturating_add(4u64.saturating_mul(text_bytes as u64))
}

/// The generic dialect with a budget of parser steps; one per parse.
#[derive(Debug)]
pub struct BoundedDialect {
    generic: GenericDialect,
    steps_left: Cell<u64>,
    exhausted: Cell<bool>,
}

impl BoundedDialect {
    /// A dialect for parsing `text` once.
    pub fn for_text(text: &str) -> BoundedDialect {
        BoundedDialect {
            generic: GenericDialect {},
            steps_left: Cell::new(step_budget(text.len())),
            exhausted: Cell::new(false),
        }
    }

    /// Whether the parse was stopped because it used its whole budget.
    pub fn exhausted(&self) -> bool {
        self.exhausted.get()
    }
}

/// Delegates the generic dialect's settings (every method `GenericDialect` overrides).
macro_rules! delegate {
    ($($setting:ident),* $(,)?) => {$(
        fn $setting(&self) -> bool {
            self.generic.$setting()
        }
    )*};
}

impl Dialect for BoundedDialect {
    fn dialect(&self) -> TypeId {
        TypeId::of::<GenericDialect>()
    }

    fn parse_prefix(&self, parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        let left = self.steps_left.get();
        if left == 0 {
            self.exhausted.set(true);
            return Some(Err(ParserError::RecursionLimitExceeded));
        }
        self.steps_left.set(left - 1);
        self.generic.parse_prefix(parser)
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.generic.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        self.generic.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        self.generic.is_identifier_part(ch)
    }

    delegate!(
        supports_unicode_string_literal,
        supports_partition_by_after_order_by,
        supports_array_join_syntax,
        supports_group_by_expr,
        supports_group_by_with_modifier,
        supports_left_associative_joins_without_parens,
        supports_connect_by,
        supports_match_recognize,
        supports_pipe_operator,
        supports_start_transaction_modifier,
        supports_window_function_null_treatment_arg,
        supports_dictionary_syntax,
        supports_window_clause_named_window_reference,
        supports_parenthesized_set_variables,
        supports_select_wildcard_except,
        support_map_literal_syntax,
        allow_extract_custom,
        allow_extract_single_quotes,
        supports_extract_comma_syntax,
        supports_create_view_comment_syntax,
        supports_parens_around_table_factor,
        supports_values_as_table_factor,
        supports_create_index_with_clause,
        supports_explain_with_utility_options,
        supports_limit_comma,
        supports_update_order_by,
        supports_from_first_select,
        supports_projection_trailing_commas,
        supports_asc_desc_in_column_definition,
        supports_try_convert,
        supports_bitwise_shift_operators,
        supports_comment_on,
        supports_load_extension,
        supports_named_fn_args_with_assignment_operator,
        supports_struct_literal,
        supports_empty_projections,
        supports_nested_comments,
        supports_multiline_comment_hints,
        supports_user_host_grantee,
        supports_string_escape_constant,
        supports_array_typedef_with_brackets,
        supports_match_against,
        supports_set_names,
        supports_comma_separated_set_assignments,
        supports_filter_during_aggregation,
        supports_select_wildcard_exclude,
        supports_data_type_signed_suffix,
        supports_interval_options,
        supports_quote_delimited_string,
        supports_select_wildcard_replace,
        supports_select_wildcard_ilike,
        supports_select_wildcard_rename,
        supports_optimize_table,
        supports_install,
        supports_detach,
        supports_prewhere,
        supports_with_fill,
        supports_limit_by,
        supports_interpolate,
        supports_settings,
        supports_select_format,
        supports_comment_optimizer_hint,
        supports_constraint_keyword_without_name,
        supports_key_column_option,
        supports_comma_separated_trim,
        supports_cte_without_as,
        supports_select_item_multi_column_alias,
        supports_xml_expressions,
    );
}
