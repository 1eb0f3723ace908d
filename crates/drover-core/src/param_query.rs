//! Queries over the versions of a named parameter (policy weights, say), the way a
//! distributed-RL league picks opponents: a filter over each version's JSON metadata, a sort,
//! a limit, and optionally one match drawn at random.
//!
//! ```text
//! filter:  win_rate > 0.8 and games >= 10
//!          not (league == "main" or eval.elo < 1200)
//! sort:    -win_rate,version        (a leading `-` sorts that key descending)
//! ```
//!
//! A comparison is `field op value`: a dotted field path into the document, one of
//! `== != < <= > >=`, and a number, a quoted string (`"..."` or `'...'`) or `true`/`false`.
//! Keywords `and`, `or`, `not` (any case) bind in the usual order (`not` tightest, then `and`,
//! then `or`); parentheses group. A comparison whose field is missing, `null` or of another
//! type than the value is false, for `!=` too: `not (x == 1)` is how to say "x is not 1 or
//! absent". Errors name a 1-based column, in characters.
//!
//! Sans-IO like the rest of this crate: sampling takes the caller's generator.

use std::cmp::Ordering;
use std::fmt;

use serde_json::Value;

use crate::rng::SplitMix64;

/// Deeper nesting than this (parentheses, `not not ...`) is refused rather than risking the
/// stack on a hostile filter.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryPart {
    Filter,
    Sort,
}

impl QueryPart {
    pub fn as_str(&self) -> &'static str {
        match self {
            QueryPart::Filter => "filter",
            QueryPart::Sort => "sort",
        }
    }
}

/// A filter or sort spec that does not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct QueryError {
    pub part: QueryPart,
    /// 1-based, counted in characters; one past the end for "ran out of input".
    pub column: usize,
    pub message: String,
}

/// A constant on the right of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Number(f64),
    String(String),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare { field: Vec<String>, op: CmpOp, value: Literal },
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
}

/// Looks up a dotted path; `null` counts as missing.
fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut at = doc;
    for part in path {
        at = match at {
            Value::Object(map) => map.get(part)?,
            // `scores.0` reaches into arrays too.
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!at.is_null()).then_some(at)
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, QueryError> {
        let tokens = lex(text)?;
        let mut p = Parser { tokens, pos: 0, end: text.chars().count() + 1, depth: 0 };
        if p.tokens.is_empty() {
            return Err(p.err(1, "the filter is empty"));
        }
        let filter = p.or()?;
        if let Some(t) = p.peek() {
            return Err(p.err(t.column, format!("expected `and`, `or` or the end of the filter, found {}", t.kind.describe())));
        }
        Ok(filter)
    }

    /// Whether `doc` passes.
    pub fn matches(&self, doc: &Value) -> bool {
        match self {
            Filter::Compare { field, op, value } => {
                let Some(found) = lookup(doc, field) else { return false };
                let ordering = match (found, value) {
                    (Value::Number(n), Literal::Number(v)) => n.as_f64().and_then(|n| n.partial_cmp(v)),
                    (Value::String(s), Literal::String(v)) => Some(s.as_str().cmp(v.as_str())),
                    (Value::Bool(b), Literal::Bool(v)) => Some(b.cmp(v)),
                    _ => None,
                };
                ordering.is_some_and(|o| op.holds(o))
            }
            Filter::And(a, b) => a.matches(doc) && b.matches(doc),
            Filter::Or(a, b) => a.matches(doc) || b.matches(doc),
            Filter::Not(a) => !a.matches(doc),
        }
    }
}

/// Prints a filter that parses back to the same tree: every `and`/`or` parenthesised.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Compare { field, op, value } => {
                write!(f, "{} {} ", field.join("."), op.as_str())?;
                match value {
                    Literal::Number(n) => write!(f, "{n}"),
                    Literal::Bool(b) => write!(f, "{b}"),
                    Literal::String(s) => {
                        f.write_str("\"")?;
                        for c in s.chars() {
                            match c {
                                '"' => f.write_str("\\\"")?,
                                '\\' => f.write_str("\\\\")?,
                                '\n' => f.write_str("\\n")?,
                                '\t' => f.write_str("\\t")?,
                                c => write!(f, "{c}")?,
                            }
                        }
                        f.write_str("\"")
                    }
                }
            }
            Filter::And(a, b) => write!(f, "({a} and {b})"),
            Filter::Or(a, b) => write!(f, "({a} or {b})"),
            Filter::Not(a) => write!(f, "not {a}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Ident(String),
    Number(f64),
    Str(String),
    Op(CmpOp),
    Dot,
    LParen,
    RParen,
}

impl TokenKind {
    fn describe(&self) -> String {
        match self {
            TokenKind::Ident(s) => format!("`{s}`"),
            TokenKind::Number(n) => format!("the number {n}"),
            TokenKind::Str(_) => "a string".into(),
            TokenKind::Op(op) => format!("`{}`", op.as_str()),
            TokenKind::Dot => "`.`".into(),
            TokenKind::LParen => "`(`".into(),
            TokenKind::RParen => "`)`".into(),
        }
    }

    fn keyword(&self) -> Option<&'static str> {
        let TokenKind::Ident(s) = self else { return None };
        ["and", "or", "not", "true", "false"].into_iter().find(|k| s.eq_ignore_ascii_case(k))
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    column: usize,
}

fn filter_err(column: usize, message: impl Into<String>) -> QueryError {
    QueryError { part: QueryPart::Filter, column, message: message.into() }
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

fn lex(text: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let push = |out: &mut Vec<Token>, kind| out.push(Token { kind, column });
        match c {
            c if c.is_whitespace() => i += 1,
            // A dot right after a name separates a path (`scores.1`); elsewhere `.5` is a number.
            '(' | ')' | '.'
                if c != '.' || !chars.get(i + 1).is_some_and(char::is_ascii_digit) || (i > 0 && is_ident_char(chars[i - 1])) =>
            {
                let kind = match c {
                    '(' => TokenKind::LParen,
                    ')' => TokenKind::RParen,
                    _ => TokenKind::Dot,
                };
                push(&mut out, kind);
                i += 1;
            }
            '=' | '!' | '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                let op = match (c, eq) {
                    ('=', true) => CmpOp::Eq,
                    ('!', true) => CmpOp::Ne,
                    ('<', true) => CmpOp::Le,
                    ('>', true) => CmpOp::Ge,
                    ('<', false) => CmpOp::Lt,
                    ('>', false) => CmpOp::Gt,
                    ('=', false) => return Err(filter_err(column, "`=` is not an operator; use `==`")),
                    _ => return Err(filter_err(column, "`!` is not an operator; use `!=`, or `not` to negate")),
                };
                push(&mut out, TokenKind::Op(op));
                i += if eq { 2 } else { 1 };
            }
            '"' | '\'' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(filter_err(column, format!("the string opened here with {c} is never closed"))),
                        Some(&q) if q == c => break,
                        Some('\\') => {
                            let escaped = match chars.get(j + 1) {
                                Some('n') => '\n',
                                Some('t') => '\t',
                                Some(&e @ ('\\' | '"' | '\'')) => e,
                                Some(other) => return Err(filter_err(j + 1, format!("unknown escape `\\{other}` in a string"))),
                                None => return Err(filter_err(column, format!("the string opened here with {c} is never closed"))),
                            };
                            s.push(escaped);
                            j += 2;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            j += 1;
                        }
                    }
                }
                push(&mut out, TokenKind::Str(s));
                i = j + 1;
            }
            // An index in a path (`scores.0.x`) is digits only: no fraction to swallow the dot.
            c if c.is_ascii_digit() && out.last().is_some_and(|t: &Token| t.kind == TokenKind::Dot) => {
                let mut j = i;
                while chars.get(j).is_some_and(char::is_ascii_digit) {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                let n: f64 = text.parse().map_err(|_| filter_err(column, format!("`{text}` is not an index")))?;
                push(&mut out, TokenKind::Number(n));
                i = j;
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let start = i;
                let mut j = i;
                if matches!(chars[j], '-' | '+') {
                    j += 1;
                }
                let digits = |j: &mut usize| {
                    let from = *j;
                    while chars.get(*j).is_some_and(char::is_ascii_digit) {
                        *j += 1;
                    }
                    *j > from
                };
                let mut any = digits(&mut j);
                if chars.get(j) == Some(&'.') {
                    j += 1;
                    any |= digits(&mut j);
                }
                if !any {
                    return Err(filter_err(column, format!("`{c}` does not start a number")));
                }
                if matches!(chars.get(j), Some('e' | 'E')) {
                    let mut k = j + 1;
                    if matches!(chars.get(k), Some('+' | '-')) {
                        k += 1;
                    }
                    if digits(&mut k) {
                        j = k;
                    } else {
                        return Err(filter_err(j + 1, "expected the digits of an exponent"));
                    }
                }
                if chars.get(j).is_some_and(|&c| is_ident_start(c)) {
                    return Err(filter_err(j + 1, "a number runs into a name; put a space between them"));
                }
                let text: String = chars[start..j].iter().collect();
                let n: f64 = text.parse().map_err(|_| filter_err(column, format!("`{text}` is not a number")))?;
                if !n.is_finite() {
                    return Err(filter_err(column, format!("`{text}` is too large")));
                }
                push(&mut out, TokenKind::Number(n));
                i = j;
            }
            c if is_ident_start(c) => {
                let mut j = i;
                while chars.get(j).is_some_and(|&c| is_ident_char(c)) {
                    j += 1;
                }
                push(&mut out, TokenKind::Ident(chars[i..j].iter().collect()));
                i = j;
            }
            c if c.is_control() => return Err(filter_err(column, format!("unexpected control character U+{:04X}", c as u32))),
            c => return Err(filter_err(column, format!("unexpected `{c}`"))),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// The column one past the last character, for errors at the end.
    end: usize,
    depth: usize,
}

impl Parser {
    fn err(&self, column: usize, message: impl Into<String>) -> QueryError {
        filter_err(column, message)
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn column(&self) -> usize {
        self.peek().map_or(self.end, |t| t.column)
    }

    fn at_keyword(&self, kw: &str) -> bool {
        self.peek().is_some_and(|t| t.kind.keyword() == Some(kw))
    }

    fn descend(&mut self) -> Result<(), QueryError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(self.column(), format!("the filter nests deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Filter, QueryError> {
        let mut left = self.and()?;
        while self.at_keyword("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, QueryError> {
        let mut left = self.unary()?;
        while self.at_keyword("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, QueryError> {
        if self.at_keyword("not") {
            self.pos += 1;
            self.descend()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if let Some(Token { kind: TokenKind::LParen, column }) = self.peek().cloned() {
            self.pos += 1;
            self.descend()?;
            let inner = self.or()?;
            self.depth -= 1;
            match self.peek() {
                Some(Token { kind: TokenKind::RParen, .. }) => {
                    self.pos += 1;
                    return Ok(inner);
                }
                Some(t) => {
                    return Err(
                        self.err(t.column, format!("expected `)` to close the `(` at column {column}, found {}", t.kind.describe()))
                    );
                }
                None => return Err(self.err(self.end, format!("expected `)` to close the `(` at column {column}"))),
            }
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Filter, QueryError> {
        let field = self.field()?;
        let shown = field.join(".");
        let op = match self.peek() {
            Some(Token { kind: TokenKind::Op(op), .. }) => *op,
            Some(t) => {
                return Err(self.err(
                    t.column,
                    format!("expected a comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`) after `{shown}`, found {}", t.kind.describe()),
                ));
            }
            None => return Err(self.err(self.end, format!("expected a comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`) after `{shown}`"))),
        };
        let op_column = self.column();
        self.pos += 1;
        let expected = || format!("expected a value after `{}`", op.as_str());
        let value = match self.peek().cloned() {
            Some(Token { kind: TokenKind::Number(n), .. }) => Literal::Number(n),
            Some(Token { kind: TokenKind::Str(s), .. }) => Literal::String(s),
            Some(Token { kind: kind @ TokenKind::Ident(_), column }) => match kind.keyword() {
                Some("true") => Literal::Bool(true),
                Some("false") => Literal::Bool(false),
                _ => {
                    return Err(
                        self.err(column, format!("{} (a number, a quoted string, true or false), found {}", expected(), kind.describe()))
                    );
                }
            },
            Some(t) => return Err(self.err(t.column, format!("{}, found {}", expected(), t.kind.describe()))),
            None => return Err(self.err(self.end, expected())),
        };
        if matches!(value, Literal::Bool(_)) && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
            return Err(self.err(op_column, format!("`{}` compares numbers or strings; use `==` or `!=` with true/false", op.as_str())));
        }
        self.pos += 1;
        Ok(Filter::Compare { field, op, value })
    }

    fn field(&mut self) -> Result<Vec<String>, QueryError> {
        let mut path = Vec::new();
        loop {
            match self.peek().cloned() {
                Some(Token { kind: kind @ TokenKind::Ident(_), column }) if kind.keyword().is_some() && path.is_empty() => {
                    return Err(self.err(column, format!("expected a field name, found the keyword {}", kind.describe())));
                }
                Some(Token { kind: TokenKind::Ident(name), .. }) => path.push(name),
                // Array indices after a dot: `scores.0`.
                Some(Token { kind: TokenKind::Number(n), column }) if !path.is_empty() => {
                    if n.fract() != 0.0 || n < 0.0 {
                        return Err(self.err(column, "expected a field name or an index after `.`"));
                    }
                    path.push(format!("{}", n as u64));
                }
                Some(t) => {
                    let what = if path.is_empty() { "expected a field name" } else { "expected a field name after `.`" };
                    return Err(self.err(t.column, format!("{what}, found {}", t.kind.describe())));
                }
                None => {
                    let what = if path.is_empty() { "expected a field name" } else { "expected a field name after `.`" };
                    return Err(self.err(self.end, what));
                }
            }
            self.pos += 1;
            match self.peek() {
                Some(Token { kind: TokenKind::Dot, .. }) => self.pos += 1,
                _ => return Ok(path),
            }
        }
    }
}

/// One key of a sort spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub field: Vec<String>,
    pub descending: bool,
}

/// Parses `-win_rate,version`: comma-separated dotted fields, each optionally preceded by `-`
/// (descending) or `+` (ascending, the default).
pub fn parse_sort(text: &str) -> Result<Vec<SortKey>, QueryError> {
    let err = |column, message: String| QueryError { part: QueryPart::Sort, column, message };
    let mut keys = Vec::new();
    let mut column = 1;
    for raw in text.split(',') {
        let width = raw.chars().count();
        let lead = raw.chars().take_while(|c| c.is_whitespace()).count();
        let trimmed = raw.trim();
        let at = column + lead;
        let (descending, body, body_at) = match trimmed.chars().next() {
            Some('-') => (true, &trimmed[1..], at + 1),
            Some('+') => (false, &trimmed[1..], at + 1),
            _ => (false, trimmed, at),
        };
        if body.is_empty() {
            return Err(err(body_at, "expected a field name to sort by".into()));
        }
        let mut field = Vec::new();
        let mut part_at = body_at;
        for part in body.split('.') {
            let bad = part.chars().position(|c| !is_ident_char(c));
            if part.is_empty() {
                return Err(err(part_at, "expected a field name (an empty part between dots)".into()));
            }
            if let Some(i) = bad {
                let c = part.chars().nth(i).unwrap_or(' ');
                return Err(err(part_at + i, format!("unexpected `{c}` in the field name `{body}`")));
            }
            field.push(part.to_string());
            part_at += part.chars().count() + 1;
        }
        keys.push(SortKey { field, descending });
        column += width + 1;
    }
    Ok(keys)
}

/// Orders JSON values of one sort key: numbers, then strings, then booleans; missing last
/// whatever the direction, so "the top five by win rate" never picks a version without one.
fn sort_cmp(a: Option<&Value>, b: Option<&Value>, descending: bool) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::String(_) => 1,
            Value::Bool(_) => 2,
            _ => 3,
        }
    }
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            let o = match (x, y) {
                (Value::Number(m), Value::Number(n)) => {
                    m.as_f64().unwrap_or(f64::NAN).partial_cmp(&n.as_f64().unwrap_or(f64::NAN)).unwrap_or(Ordering::Equal)
                }
                (Value::String(m), Value::String(n)) => m.cmp(n),
                (Value::Bool(m), Value::Bool(n)) => m.cmp(n),
                _ => rank(x).cmp(&rank(y)),
            };
            if descending { o.reverse() } else { o }
        }
    }
}

/// A whole query: filter, then sort, then limit, then (if asked) one match drawn uniformly
/// from what is left, so "one of the five best" is `sort=-elo, limit=5, sample`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamQuery {
    pub filter: Option<Filter>,
    pub sort: Vec<SortKey>,
    pub limit: Option<usize>,
    pub sample: bool,
}

impl ParamQuery {
    /// Parses the textual parts; blank ones mean "none".
    pub fn parse(filter: Option<&str>, sort: Option<&str>, limit: Option<usize>, sample: bool) -> Result<ParamQuery, QueryError> {
        let filter = match filter.filter(|f| !f.trim().is_empty()) {
            Some(f) => Some(Filter::parse(f)?),
            None => None,
        };
        let sort = match sort.filter(|s| !s.trim().is_empty()) {
            Some(s) => parse_sort(s)?,
            None => Vec::new(),
        };
        Ok(ParamQuery { filter, sort, limit, sample })
    }

    /// Runs the query over `items`, each seen through `doc` as a JSON document. Items that tie
    /// on every sort key keep their input order. `rng` is drawn from only when sampling.
    pub fn run<'a, T>(&self, items: &'a [T], doc: impl Fn(&T) -> &Value, rng: &mut SplitMix64) -> Vec<&'a T> {
        let mut out: Vec<&T> = items.iter().filter(|item| self.filter.as_ref().is_none_or(|f| f.matches(doc(item)))).collect();
        if !self.sort.is_empty() {
            out.sort_by(|a, b| {
                let (a, b) = (doc(a), doc(b));
                self.sort
                    .iter()
                    .map(|k| sort_cmp(lookup(a, &k.field), lookup(b, &k.field), k.descending))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            });
        }
        if let Some(limit) = self.limit {
            out.truncate(limit);
        }
        if self.sample && !out.is_empty() {
            let pick = out[rng.index(out.len())];
            out = vec![pick];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn parse(s: &str) -> Filter {
        Filter::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn error(s: &str) -> String {
        Filter::parse(s).expect_err(s).to_string()
    }

    #[test]
    fn compares_numbers_strings_and_booleans() {
        let doc = json!({"win_rate": 0.85, "games": 12, "league": "main", "frozen": false, "eval": {"elo": 1300}, "scores": [3, 4]});
        for yes in [
            "win_rate > 0.8 and games >= 10",
            "win_rate>0.8",
            "league == \"main\"",
            "league == 'main'",
            "league < \"zzz\"",
            "frozen == false",
            "frozen != true",
            "eval.elo >= 1300",
            "eval.elo == 1.3e3",
            "scores.1 == 4",
            "not (league == \"main\" and eval.elo < 1200)",
            "games == 12.0",
            "NOT games < 0 AND win_rate <= .85",
        ] {
            assert!(parse(yes).matches(&doc), "{yes}");
        }
        for no in [
            "win_rate > 0.9",
            "not (league == \"main\" or eval.elo < 1200)",
            "league != \"main\"",
            "frozen == true",
            "games == \"12\"",
            "scores.2 == 4",
        ] {
            assert!(!parse(no).matches(&doc), "{no}");
        }
    }

    #[test]
    fn a_missing_field_makes_every_comparison_false() {
        let doc = json!({"a": 1, "n": null, "o": {"x": 1}});
        for f in ["b == 1", "b != 1", "b < 1", "n == 1", "n != 1", "o.y >= 0", "a.x == 1", "o != 1"] {
            assert!(!parse(f).matches(&doc), "{f}");
        }
        assert!(parse("not b == 1").matches(&doc));
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        assert_eq!(parse("a == 1 or b == 2 and c == 3"), parse("a == 1 or (b == 2 and c == 3)"));
        assert_eq!(parse("not a == 1 and b == 2"), parse("(not a == 1) and b == 2"));
        assert_ne!(parse("(a == 1 or b == 2) and c == 3"), parse("a == 1 or b == 2 and c == 3"));
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(error("win_rate > "), "at column 12: expected a value after `>`");
        assert_eq!(error("win_rate >"), "at column 11: expected a value after `>`");
        assert_eq!(error("a > 1 and"), "at column 10: expected a field name");
        assert_eq!(error("a = 1"), "at column 3: `=` is not an operator; use `==`");
        assert_eq!(error("(a == 1"), "at column 8: expected `)` to close the `(` at column 1");
        assert_eq!(error("a == 1 b == 2"), "at column 8: expected `and`, `or` or the end of the filter, found `b`");
        assert_eq!(error("a == 'x"), "at column 6: the string opened here with ' is never closed");
        assert_eq!(error("a == b"), "at column 6: expected a value after `==` (a number, a quoted string, true or false), found `b`");
        assert_eq!(error("a < true"), "at column 3: `<` compares numbers or strings; use `==` or `!=` with true/false");
        assert_eq!(error("a # 1"), "at column 3: unexpected `#`");
        assert_eq!(error("and == 1"), "at column 1: expected a field name, found the keyword `and`");
        assert_eq!(error("a. == 1"), "at column 4: expected a field name after `.`, found `==`");
        assert_eq!(error(""), "at column 1: the filter is empty");
        assert_eq!(error("é == 1 or"), "at column 10: expected a field name");
        let deep = format!("{}a == 1{}", "(".repeat(100), ")".repeat(100));
        assert!(error(&deep).contains("deeper than 64"));
    }

    #[test]
    fn sort_specs_parse_and_order_missing_last() {
        assert_eq!(
            parse_sort("-win_rate, version,+eval.elo").unwrap(),
            vec![
                SortKey { field: vec!["win_rate".into()], descending: true },
                SortKey { field: vec!["version".into()], descending: false },
                SortKey { field: vec!["eval".into(), "elo".into()], descending: false },
            ]
        );
        let e = parse_sort("-win_rate,,version").unwrap_err();
        assert_eq!((e.part, e.column), (QueryPart::Sort, 11));
        let e = parse_sort("a,b c").unwrap_err();
        assert_eq!(e.to_string(), "at column 4: unexpected ` ` in the field name `b c`");
        assert_eq!(parse_sort("-").unwrap_err().column, 2);

        let rows = [json!({"v": 1, "w": 0.5}), json!({"v": 2}), json!({"v": 3, "w": 0.9}), json!({"v": 4, "w": 0.5})];
        let mut rng = SplitMix64::new(1);
        let q = ParamQuery::parse(None, Some("-w,-v"), None, false).unwrap();
        let order: Vec<i64> = q.run(&rows, |r| r, &mut rng).iter().map(|r| r["v"].as_i64().unwrap()).collect();
        assert_eq!(order, vec![3, 4, 1, 2]);
        let q = ParamQuery::parse(Some("w < 0.8"), Some("w"), Some(1), false).unwrap();
        assert_eq!(q.run(&rows, |r| r, &mut rng), vec![&rows[0]]);
    }

    #[test]
    fn sampling_draws_from_the_limited_matches_reproducibly() {
        let rows: Vec<Value> = (0..20).map(|v| json!({"version": v, "elo": 1000 + v * 10})).collect();
        let q = ParamQuery::parse(Some("elo >= 1050"), Some("-elo"), Some(5), true).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let picked = q.run(&rows, |r| r, &mut SplitMix64::new(seed));
            assert_eq!(picked.len(), 1);
            let v = picked[0]["version"].as_i64().unwrap();
            assert!((15..20).contains(&v), "{v}");
            assert_eq!(q.run(&rows, |r| r, &mut SplitMix64::new(seed)), picked, "same seed, same pick");
            seen.insert(v);
        }
        assert_eq!(seen.len(), 5, "every one of the five best is drawn sometimes");
        let none = ParamQuery::parse(Some("elo > 5000"), None, None, true).unwrap();
        assert!(none.run(&rows, |r| r, &mut SplitMix64::new(0)).is_empty());
    }

    fn field() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec("[a-z_][a-z0-9_]{0,5}", 1..3)
            .prop_filter("not a keyword", |p| !["and", "or", "not", "true", "false"].contains(&p[0].as_str()))
    }

    fn literal() -> impl Strategy<Value = Literal> {
        prop_oneof![
            (-1e6f64..1e6).prop_map(Literal::Number),
            any::<i32>().prop_map(|n| Literal::Number(n as f64)),
            "[ -~éλ\"'\\\\\n\t]{0,8}".prop_map(Literal::String),
            any::<bool>().prop_map(Literal::Bool),
        ]
    }

    fn filter() -> impl Strategy<Value = Filter> {
        let ops = prop::sample::select(vec![CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge]);
        let leaf = (field(), ops, literal()).prop_map(|(field, op, value)| {
            let op = if matches!(value, Literal::Bool(_)) && !matches!(op, CmpOp::Eq | CmpOp::Ne) { CmpOp::Eq } else { op };
            Filter::Compare { field, op, value }
        });
        leaf.prop_recursive(5, 32, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| Filter::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| Filter::Or(Box::new(a), Box::new(b))),
                inner.prop_map(|a| Filter::Not(Box::new(a))),
            ]
        })
    }

    fn document() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-100i32..100).prop_map(|n| json!(n)),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        prop::collection::btree_map("[a-z_][a-z0-9_]{0,1}", scalar, 0..6).prop_map(|m| json!(m))
    }

    proptest! {
        #[test]
        fn printed_filters_parse_back_to_the_same_tree(f in filter()) {
            let text = f.to_string();
            prop_assert_eq!(Filter::parse(&text).map_err(|e| format!("{text}: {e}")), Ok(f));
        }

        #[test]
        fn not_is_the_complement_and_and_or_follow_logic(a in filter(), b in filter(), doc in document()) {
            let not_a = Filter::Not(Box::new(a.clone()));
            prop_assert_eq!(not_a.matches(&doc), !a.matches(&doc));
            prop_assert_eq!(Filter::And(Box::new(a.clone()), Box::new(b.clone())).matches(&doc), a.matches(&doc) && b.matches(&doc));
            prop_assert_eq!(Filter::Or(Box::new(a.clone()), Box::new(b.clone())).matches(&doc), a.matches(&doc) || b.matches(&doc));
        }

        #[test]
        fn any_input_parses_or_fails_at_a_column_inside_it(s in "[ -~éλ\t\n]{0,40}") {
            if let Err(e) = Filter::parse(&s) {
                prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{} for {:?}", e, s);
            }
            if let Err(e) = parse_sort(&s) {
                prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{} for {:?}", e, s);
            }
        }

        #[test]
        fn queries_return_matches_in_sort_order_within_the_limit(
            docs in prop::collection::vec(document(), 0..30),
            f in filter(),
            limit in prop::option::of(0usize..10),
            desc in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let key = SortKey { field: vec!["a".into()], descending: desc };
            let q = ParamQuery { filter: Some(f.clone()), sort: vec![key], limit, sample: false };
            let got = q.run(&docs, |d| d, &mut SplitMix64::new(seed));
            let matching = docs.iter().filter(|d| f.matches(d)).count();
            prop_assert_eq!(got.len(), limit.map_or(matching, |l| l.min(matching)));
            prop_assert!(got.iter().all(|d| f.matches(d)));
            prop_assert!(got.windows(2).all(|w| sort_cmp(lookup(w[0], &["a".into()]), lookup(w[1], &["a".into()]), desc) != Ordering::Greater));
            let sampled = ParamQuery { sample: true, ..q }.run(&docs, |d| d, &mut SplitMix64::new(seed));
            prop_assert_eq!(sampled.len(), usize::from(!got.is_empty()));
            prop_assert!(sampled.iter().all(|s| got.iter().any(|g| std::ptr::eq(*g, *s))));
        }
    }
}
