//! SQL text for the few places where nothing can be bound: identifiers (the
//! catalog's own spelling of a view, the log tables' schema), the values of
//! `SET` and the arguments of `EXECUTE` (`prepared`). Everything else is a
//! bind parameter.

/// Quotes an identifier for SQL text: always, so no name is ever read as SQL.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a string literal for SQL text, where no parameter can be bound
/// (`SET`, `EXECUTE`): doubled quotes, and `E''` with doubled backslashes when
/// it has any.
pub fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// An identifier as people read it: quoted only when PostgreSQL would need it.
pub fn display_ident(ident: &str) -> String {
    let plain = ident
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        ident.to_owned()
    } else {
        quote_ident(ident)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_names_and_values_from_being_read_as_sql() {
        assert_eq!(quote_ident("x\"; DROP"), "\"x\"\"; DROP\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(display_ident("top_bets"), "top_bets");
        assert_eq!(display_ident("Top"), "\"Top\"");
    }
}
