//! An incremental view's query with its `$changed(e1, …, en)` marks found by
//! a tokenizer that knows PostgreSQL's lexical rules: string constants
//! (`'…'`, `E'…'` with backslash escapes), quoted identifiers, `--` and
//! nested `/* */` comments, and dollar quotes (`$$…$$`, `$tag$…$tag$`). A
//! `$changed` inside any of them, or inside an identifier (`x$changed`), is
//! text. Nothing else of the user's SQL is changed.

use std::fmt;

/// The query, split at its `$changed(...)` marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// The argument expressions of one `$changed(...)`, trimmed.
    Changed(Vec<String>),
}

const MARK: &str = "$changed";

impl Template {
    /// Parses `sql`, one statement; a `;` at its end is dropped. The error
    /// says what is wrong and at which line of the query.
    pub fn parse(sql: &str) -> Result<Self, String> {
        let mut lexer = Lexer::new(sql);
        let mut parts = Vec::new();
        let mut text_start = 0;
        while let Some(token) = lexer.next_token()? {
            match token {
                Token::Semicolon(at) => {
                    if !sql[at + 1..].trim().is_empty() && !lexer.rest_is_trivia()? {
                        return Err(format!(
                            "line {}: the query holds more than one statement (a `;` before its end)",
                            line_of(sql, at)
                        ));
                    }
                    parts.push(Part::Text(sql[text_start..at].to_owned()));
                    text_start = sql.len();
                    break;
                }
                Token::Changed(at) => {
                    parts.push(Part::Text(sql[text_start..at].to_owned()));
                    let (args, end) = lexer.arguments(at)?;
                    parts.push(Part::Changed(args));
                    text_start = end;
                }
            }
        }
        parts.push(Part::Text(sql[text_start..].to_owned()));
        parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
        if !parts.iter().any(|p| matches!(p, Part::Changed(_))) {
            return Err(
                "the query has no $changed(...): every incremental cycle would \
                        recompute every key (restrict it to the changed keys, e.g. \
                        WHERE $changed(tenant_id, user_id))"
                    .into(),
            );
        }
        Ok(Self { parts })
    }

    /// The argument counts of its `$changed(...)` marks, in order.
    pub fn arities(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Changed(args) => Some(args.len()),
            Part::Text(_) => None,
        })
    }

    /// The query with every `$changed(args)` replaced by `expand(args)`.
    pub fn expand(&self, expand: impl Fn(&[String]) -> String) -> String {
        self.expand_each(|_, args| expand(args))
    }

    /// The query with the `i`-th `$changed(args)` (from 0) replaced by
    /// `expand(i, args)`.
    pub fn expand_each(&self, expand: impl Fn(usize, &[String]) -> String) -> String {
        let mut sql = String::new();
        let mut i = 0;
        for part in &self.parts {
            match part {
                Part::Text(text) => sql.push_str(text),
                Part::Changed(args) => {
                    sql.push_str(&expand(i, args));
                    i += 1;
                }
            }
        }
        sql
    }

    /// The `i`-th `$changed(...)` (from 0) as written.
    pub fn mark(&self, i: usize) -> Option<String> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Changed(args) => Some(format!("{MARK}({})", args.join(", "))),
                Part::Text(_) => None,
            })
            .nth(i)
    }

    /// The query of a full load: `$changed(...)` is `true`.
    pub fn full(&self) -> String {
        self.expand(|_| "true".into())
    }
}

impl fmt::Display for Template {
    /// The query as written (less a final `;`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.expand(|args| format!("{MARK}({})", args.join(", ")));
        f.write_str(&text)
    }
}

fn line_of(sql: &str, at: usize) -> usize {
    sql[..at].matches('\n').count() + 1
}

enum Token {
    Semicolon(usize),
    /// The byte offset of `$changed`.
    Changed(usize),
}

struct Lexer<'a> {
    sql: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Self {
        Self {
            sql,
            bytes: sql.as_bytes(),
            pos: 0,
        }
    }

    fn error(&self, at: usize, what: &str) -> String {
        format!("line {}: {what}", line_of(self.sql, at))
    }

    /// The next `;` or `$changed` outside strings, identifiers and comments;
    /// parentheses are not tracked here.
    fn next_token(&mut self) -> Result<Option<Token>, String> {
        while self.pos < self.bytes.len() {
            if let Some(token) = self.step()? {
                return Ok(Some(token));
            }
        }
        Ok(None)
    }

    /// Whether only whitespace and comments are left.
    fn rest_is_trivia(&mut self) -> Result<bool, String> {
        let start = self.pos + 1;
        self.pos = start;
        while self.pos < self.bytes.len() {
            let b = self.bytes[self.pos];
            if b.is_ascii_whitespace() {
                self.pos += 1;
            } else if self.starts_with("--") || self.starts_with("/*") {
                self.skip_lexeme()?;
            } else {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn starts_with(&self, s: &str) -> bool {
        self.bytes[self.pos..].starts_with(s.as_bytes())
    }

    /// Consumes one lexeme; returns a token when it is one of ours.
    fn step(&mut self) -> Result<Option<Token>, String> {
        let b = self.bytes[self.pos];
        let follows_ident = self.pos > 0 && is_ident_char(self.bytes[self.pos - 1]);
        if b == b';' {
            return Ok(Some(Token::Semicolon(self.pos)));
        }
        if b == b'$' && !follows_ident && self.starts_with(MARK) {
            let after = self.pos + MARK.len();
            if self.bytes.get(after).is_none_or(|&c| !is_ident_char(c)) {
                let at = self.pos;
                self.pos = after;
                return Ok(Some(Token::Changed(at)));
            }
        }
        self.skip_lexeme()?;
        Ok(None)
    }

    /// Skips one lexeme: a string, quoted identifier, comment, dollar quote,
    /// or a single character of anything else.
    fn skip_lexeme(&mut self) -> Result<(), String> {
        let start = self.pos;
        let b = self.bytes[self.pos];
        let follows_ident = start > 0 && is_ident_char(self.bytes[start - 1]);
        match b {
            b'\'' => {
                let escapes = start > 0
                    && matches!(self.bytes[start - 1], b'e' | b'E')
                    && (start < 2 || !is_ident_char(self.bytes[start - 2]));
                self.skip_quoted(b'\'', escapes, "an unterminated string constant")
            }
            b'"' => self.skip_quoted(b'"', false, "an unterminated quoted identifier"),
            b'-' if self.starts_with("--") => {
                self.pos = self.sql[start..]
                    .find('\n')
                    .map_or(self.bytes.len(), |n| start + n + 1);
                Ok(())
            }
            b'/' if self.starts_with("/*") => self.skip_block_comment(),
            b'$' if !follows_ident => self.skip_dollar_quote(),
            _ => {
                // One character, whole (identifiers may hold any letter).
                let len = self.sql[start..].chars().next().map_or(1, char::len_utf8);
                self.pos += len;
                Ok(())
            }
        }
    }

    fn skip_quoted(&mut self, quote: u8, escapes: bool, what: &str) -> Result<(), String> {
        let start = self.pos;
        self.pos += 1;
        while self.pos < self.bytes.len() {
            let b = self.bytes[self.pos];
            if escapes && b == b'\\' {
                self.pos += 2;
                continue;
            }
            self.pos += 1;
            if b == quote {
                if self.bytes.get(self.pos) == Some(&quote) {
                    self.pos += 1;
                    continue;
                }
                return Ok(());
            }
        }
        Err(self.error(start, what))
    }

    fn skip_block_comment(&mut self) -> Result<(), String> {
        let start = self.pos;
        let mut depth = 0;
        while self.pos < self.bytes.len() {
            if self.starts_with("/*") {
                depth += 1;
                self.pos += 2;
            } else if self.starts_with("*/") {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return Ok(());
                }
            } else {
                self.pos += 1;
            }
        }
        Err(self.error(start, "an unterminated /* comment"))
    }

    /// `$tag$ … $tag$`; a `$` that opens none (`$1`) is one character.
    fn skip_dollar_quote(&mut self) -> Result<(), String> {
        let start = self.pos;
        let rest = &self.bytes[start + 1..];
        let tag_len = rest
            .iter()
            .take_while(|&&c| c != b'$' && is_ident_char(c))
            .count();
        let opens =
            rest.get(tag_len) == Some(&b'$') && rest.first().is_some_and(|c| !c.is_ascii_digit());
        if !opens {
            self.pos += 1;
            return Ok(());
        }
        let delimiter = &self.sql[start..start + tag_len + 2];
        let body = start + delimiter.len();
        match self.sql[body..].find(delimiter) {
            Some(n) => {
                self.pos = body + n + delimiter.len();
                Ok(())
            }
            None => Err(self.error(start, &format!("an unterminated {delimiter} quote"))),
        }
    }

    /// The arguments of the `$changed` at `at`, the lexer just after its name:
    /// split at top-level commas. Returns them and the offset after `)`.
    fn arguments(&mut self, at: usize) -> Result<(Vec<String>, usize), String> {
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        if self.bytes.get(self.pos) != Some(&b'(') {
            return Err(self.error(
                at,
                "$changed must be followed by its arguments: $changed(key, ...)",
            ));
        }
        self.pos += 1;
        let mut args = Vec::new();
        let mut arg_start = self.pos;
        let mut depth = 0usize;
        while self.pos < self.bytes.len() {
            let b = self.bytes[self.pos];
            match b {
                b'(' | b'[' => depth += 1,
                b')' | b']' if depth > 0 => depth -= 1,
                b')' | b',' if depth == 0 => {
                    let arg = self.sql[arg_start..self.pos].trim();
                    if arg.is_empty() {
                        return Err(self.error(at, "$changed(...) has an empty argument"));
                    }
                    args.push(arg.to_owned());
                    self.pos += 1;
                    if b == b')' {
                        return Ok((args, self.pos));
                    }
                    arg_start = self.pos;
                    continue;
                }
                b';' => break,
                b'$' if self.starts_with(MARK) => {
                    return Err(self.error(self.pos, "$changed(...) inside $changed(...)"));
                }
                _ => {
                    self.skip_lexeme()?;
                    continue;
                }
            }
            self.pos += 1;
        }
        Err(self.error(at, "$changed( is not closed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(sql: &str) -> String {
        Template::parse(sql)
            .unwrap()
            .expand(|args| format!("<{}>", args.join("|")))
    }

    #[test]
    fn marks_are_found_and_split_at_top_level_commas() {
        assert_eq!(
            expand("SELECT * FROM t WHERE $changed(a, coalesce(b, 0))"),
            "SELECT * FROM t WHERE <a|coalesce(b, 0)>"
        );
        assert_eq!(
            expand("SELECT 1 WHERE $changed (t.a,f(x, ',', \"q,\")) AND $changed(b)"),
            "SELECT 1 WHERE <t.a|f(x, ',', \"q,\")> AND <b>"
        );
        assert_eq!(
            expand("SELECT 1 WHERE $changed(a[1], (b, c)) ;\n  -- done\n"),
            "SELECT 1 WHERE <a[1]|(b, c)> "
        );
    }

    #[test]
    fn strings_comments_dollar_quotes_and_identifiers_are_text() {
        let sql = "SELECT '$changed(x)', E'\\'$changed(y)', \"$changed(z)\", x$changed, $1, \
                   $$ $changed(q) $$, $f$ ; $changed(r) $f$ -- $changed(c)\n\
                   /* /* $changed(n) */ ; */ FROM t WHERE $changed(k)";
        let out = expand(sql);
        assert_eq!(out.matches('<').count(), 1, "{out}");
        assert!(out.ends_with("WHERE <k>"), "{out}");
        assert!(out.contains("'$changed(x)'") && out.contains("$f$ ; $changed(r) $f$"));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |sql: &str| Template::parse(sql).unwrap_err();
        assert!(err("SELECT 1").contains("no $changed"));
        assert!(err("SELECT 1 WHERE $changed(a").contains("not closed"));
        assert!(err("SELECT 1 WHERE $changed a").contains("followed by its arguments"));
        assert!(err("SELECT 1 WHERE $changed(a,)").contains("empty argument"));
        assert!(err("SELECT 1; DELETE FROM t WHERE $changed(a)").contains("more than one"));
        assert!(err("SELECT 'x WHERE $changed(a)").contains("unterminated string"));
        assert!(err("SELECT $q$ x WHERE $changed(a)").contains("unterminated $q$"));
        assert!(err("SELECT 1 WHERE $changed(a)\n/* x").contains("line 2"));
    }

    #[test]
    fn the_full_query_reads_true_and_display_keeps_the_marks() {
        let t = Template::parse("SELECT a FROM t WHERE $changed(a) AND b;").unwrap();
        assert_eq!(t.full(), "SELECT a FROM t WHERE true AND b");
        assert_eq!(t.to_string(), "SELECT a FROM t WHERE $changed(a) AND b");
        assert_eq!(t.arities().collect::<Vec<_>>(), [1]);
    }
}
