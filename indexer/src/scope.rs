//! A reader's scope as a condition of every query on an hour's index: the tenant's term, and
//! the scope's source patterns. Added inside the engine, below the query the reader wrote, so
//! nothing in the search language can reach past it.

use sluice_common::SluiceError;
use sluice_common::tenancy::{DEFAULT_TENANT, Scope};
use tantivy::Term;
use tantivy::query::{AllQuery, BooleanQuery, EmptyQuery, Occur, Query, RegexQuery, TermQuery};
use tantivy::schema::{IndexRecordOption, Schema};

/// `query` limited to `scope` (unchanged when there is none), for an hour whose index has
/// `schema`: hours indexed before records had tenants hold only the default tenant's.
pub fn scoped(
    query: Box<dyn Query>,
    scope: Option<&Scope>,
    schema: &Schema,
) -> Result<Box<dyn Query>, SluiceError> {
    let Some(scope) = scope else {
        return Ok(query);
    };
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, query)];
    match schema.get_field("tenant") {
        Ok(field) => clauses.push((
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_text(field, &scope.tenant),
                IndexRecordOption::Basic,
            )),
        )),
        Err(_) if scope.tenant == DEFAULT_TENANT => {}
        Err(_) => return Ok(Box::new(EmptyQuery)),
    }
    if !scope.sources.is_empty() {
        let field = schema
            .get_field("source_id")
            .map_err(|error| SluiceError::internal(format!("index without source_id: {error}")))?;
        let mut sources: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for pattern in &scope.sources {
            let source: Box<dyn Query> = if pattern.contains(['*', '?']) {
                Box::new(
                    RegexQuery::from_pattern(&glob_regex(pattern), field).map_err(|error| {
                        SluiceError::internal(format!("source pattern {pattern:?}: {error}"))
                    })?,
                )
            } else {
                Box::new(TermQuery::new(
                    Term::from_field_text(field, pattern),
                    IndexRecordOption::Basic,
                ))
            };
            sources.push((Occur::Should, source));
        }
        clauses.push((Occur::Must, Box::new(BooleanQuery::new(sources))));
    }
    Ok(Box::new(BooleanQuery::new(clauses)))
}

/// The scope's condition alone (every document it admits).
pub fn condition(scope: Option<&Scope>, schema: &Schema) -> Result<Box<dyn Query>, SluiceError> {
    scoped(Box::new(AllQuery), scope, schema)
}

/// A source id glob (`*`, `?`) as the regular expression Tantivy's `RegexQuery` matches
/// whole terms against (`<` and `>` stay bare: escaped, they are word boundaries).
fn glob_regex(pattern: &str) -> String {
    let mut regex = String::with_capacity(pattern.len() * 2);
    for character in pattern.chars() {
        match character {
            '*' => regex.push_str(".*"),
            '?' => regex.push('.'),
            '\\' | '.' | '+' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' | '#' | '&'
            | '-' | '~' => {
                regex.push('\\');
                regex.push(character);
            }
            character => regex.push(character),
        }
    }
    regex
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_whole_term_regexes() {
        assert_eq!(glob_regex("web-*"), "web\\-.*");
        assert_eq!(glob_regex("a?c.d"), "a.c\\.d");
        let mut schema = Schema::builder();
        let field = schema.add_text_field("source_id", tantivy::schema::STRING);
        for pattern in ["web-*", "a?c.d", "(x)|[y]{z}^$#&~\"<>@"] {
            RegexQuery::from_pattern(&glob_regex(pattern), field).unwrap();
        }
    }
}
