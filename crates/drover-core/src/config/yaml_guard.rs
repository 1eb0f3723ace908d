//! Checks on YAML text made before the real parser sees it, so that a small hostile text cannot
//! cost the master minutes or gigabytes.
//!
//! * Nesting: libyaml's scanner does work proportional to the flow nesting depth for every
//!   token, so `[[[[...]]]]` 100,000 deep takes over half a minute to be refused. [`scan`]
//!   replays the scanner's decisions (where tokens start, where quoted, plain and block scalars
//!   and comments end, how block indentation rolls) in one linear pass and stops at the first
//!   collection nested deeper than [`MAX_YAML_DEPTH`]. It follows `libyaml-rs` (the scanner
//!   `yaml_serde` uses) function by function, without building tokens; where libyaml would
//!   report an error it carries on, since libyaml reads nothing past its first error anyway.
//!   (Checked against libyaml's own tokens on some 30 million generated texts: every flow
//!   collection start and end before libyaml's first error was found at the same byte.)
//! * Aliases: yaml_serde allows 100 alias jumps per event of the document, which stops
//!   exponential bombs but not a wide one (`[*a, *a, ...]` of a large anchor: 20 kB of text made
//!   9 million nodes).
//!   When [`scan`] saw an alias, [`expanded_size`] walks the document once with aliases
//!   expanded, counting nodes and scalar bytes, and stops at [`MAX_YAML_NODES`] or
//!   [`MAX_YAML_SCALAR_BYTES`].

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use crate::limits::{MAX_YAML_DEPTH, MAX_YAML_NODES, MAX_YAML_SCALAR_BYTES};

/// What the scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Alias tokens (`*name`).
    pub aliases: usize,
    /// Where a collection first nests deeper than [`MAX_YAML_DEPTH`]: 1-based line and column
    /// (in characters).
    pub too_deep_at: Option<(usize, usize)>,
}

/// Scans `text` as libyaml would, stopping early at a collection nested too deep.
pub(crate) fn scan(text: &str) -> Scan {
    let mut s = Scanner::new(text);
    s.run();
    Scan { aliases: s.aliases, too_deep_at: s.too_deep_at }
}

/// End of input, as libyaml's `IS_Z` sees it.
const END: char = '\0';

struct Scanner {
    chars: Vec<char>,
    pos: usize,
    /// libyaml's mark: byte index, 0-based line and column (in characters).
    index: usize,
    line: usize,
    column: usize,
    flow_level: usize,
    /// Column of the innermost block collection; -1 outside any.
    indent: i64,
    indents: Vec<i64>,
    simple_key_allowed: bool,
    /// The possible simple key of the block context: (line, byte index, column). Keys inside flow
    /// collections are left out: they only ever roll indentation, which flow context ignores.
    key: Option<(usize, usize, usize)>,
    aliases: usize,
    too_deep_at: Option<(usize, usize)>,
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_blankz(c: char) -> bool {
    is_blank(c) || is_break(c) || c == END
}

fn is_breakz(c: char) -> bool {
    is_break(c) || c == END
}

/// libyaml's `IS_ALPHA`: anchor, alias and tag handle characters.
fn is_alpha(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Characters libyaml's reader accepts; it stops with an error at any other.
fn printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

impl Scanner {
    fn new(text: &str) -> Scanner {
        // The reader fails at the first character it does not accept, so nothing after it is
        // ever scanned. (yaml_serde fixes the encoding, so a leading byte order mark is not
        // dropped by the reader but skipped as a token separator at column 0.)
        let chars: Vec<char> = text.chars().take_while(|c| printable(*c)).collect();
        Scanner {
            chars,
            pos: 0,
            index: 0,
            line: 0,
            column: 0,
            flow_level: 0,
            indent: -1,
            indents: Vec::new(),
            simple_key_allowed: true,
            key: None,
            aliases: 0,
            too_deep_at: None,
        }
    }

    fn peek(&self, ahead: usize) -> char {
        self.chars.get(self.pos + ahead).copied().unwrap_or(END)
    }

    fn ch(&self) -> char {
        self.peek(0)
    }

    fn skip(&mut self) {
        if let Some(c) = self.chars.get(self.pos) {
            self.index += c.len_utf8();
            self.column += 1;
            self.pos += 1;
        }
    }

    fn skip_n(&mut self, n: usize) {
        for _ in 0..n {
            self.skip();
        }
    }

    fn skip_line(&mut self) {
        if self.ch() == '\r' && self.peek(1) == '\n' {
            self.pos += 2;
            self.index += 2;
        } else if is_break(self.ch()) {
            self.index += self.ch().len_utf8();
            self.pos += 1;
        } else {
            return;
        }
        self.column = 0;
        self.line += 1;
    }

    fn document_indicator(&self) -> bool {
        self.column == 0
            && ((self.peek(0) == '-' && self.peek(1) == '-' && self.peek(2) == '-')
                || (self.peek(0) == '.' && self.peek(1) == '.' && self.peek(2) == '.'))
            && is_blankz(self.peek(3))
    }

    fn depth(&self) -> usize {
        self.indents.len() + self.flow_level
    }

    fn check_depth(&mut self) {
        if self.depth() > MAX_YAML_DEPTH && self.too_deep_at.is_none() {
            self.too_deep_at = Some((self.line + 1, self.column + 1));
        }
    }

    fn roll_indent(&mut self, column: usize) {
        if self.flow_level == 0 && self.indent < column as i64 {
            self.indents.push(self.indent);
            self.indent = column as i64;
            self.check_depth();
        }
    }

    fn unroll_indent(&mut self, column: i64) {
        if self.flow_level == 0 {
            while self.indent > column {
                self.indent = self.indents.pop().unwrap_or(-1);
            }
        }
    }

    fn save_simple_key(&mut self) {
        if self.flow_level == 0 && self.simple_key_allowed {
            self.key = Some((self.line, self.index, self.column));
        }
    }

    fn remove_simple_key(&mut self) {
        if self.flow_level == 0 {
            self.key = None;
        }
    }

    /// The block context's simple key, if it is still possible here (libyaml's
    /// `stale_simple_keys`: same line, at most 1024 bytes back).
    fn possible_key(&self) -> Option<usize> {
        self.key.filter(|&(line, index, _)| line == self.line && index + 1024 >= self.index).map(|(_, _, column)| column)
    }

    fn run(&mut self) {
        loop {
            if self.too_deep_at.is_some() {
                return;
            }
            self.scan_to_next_token();
            self.unroll_indent(self.column as i64);
            let c = self.ch();
            let next = self.peek(1);
            if c == END {
                return;
            }
            if self.column == 0 && c == '%' {
                // A directive: all of it is on its line, and nothing but a comment may follow.
                self.unroll_indent(-1);
                self.remove_simple_key();
                self.simple_key_allowed = false;
                while !is_breakz(self.ch()) {
                    self.skip();
                }
                continue;
            }
            if self.document_indicator() {
                self.unroll_indent(-1);
                self.remove_simple_key();
                self.simple_key_allowed = false;
                self.skip_n(3);
                continue;
            }
            let flow = self.flow_level > 0;
            match c {
                '[' | '{' => {
                    self.save_simple_key();
                    self.flow_level += 1;
                    self.check_depth();
                    self.simple_key_allowed = true;
                    self.skip();
                }
                ']' | '}' => {
                    self.remove_simple_key();
                    self.flow_level = self.flow_level.saturating_sub(1);
                    self.simple_key_allowed = false;
                    self.skip();
                }
                ',' => {
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.skip();
                }
                '-' if is_blankz(next) => {
                    self.roll_indent(self.column);
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.skip();
                }
                '?' if flow || is_blankz(next) => {
                    self.roll_indent(self.column);
                    self.remove_simple_key();
                    self.simple_key_allowed = !flow;
                    self.skip();
                }
                ':' if flow || is_blankz(next) => {
                    if flow {
                        self.simple_key_allowed = false;
                    } else if let Some(column) = self.possible_key() {
                        self.roll_indent(column);
                        self.key = None;
                        self.simple_key_allowed = false;
                    } else {
                        self.roll_indent(self.column);
                        self.simple_key_allowed = true;
                    }
                    self.skip();
                }
                '*' | '&' => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    if c == '*' {
                        self.aliases += 1;
                    }
                    self.skip();
                    while is_alpha(self.ch()) {
                        self.skip();
                    }
                }
                '!' => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.scan_tag();
                }
                '|' | '>' if !flow => {
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.scan_block_scalar();
                }
                '\'' | '"' => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.scan_flow_scalar(c == '\'');
                }
                _ if self.plain_scalar_starts() => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.scan_plain_scalar();
                }
                // libyaml stops here ("cannot start any token"); carrying on can only find more.
                _ => self.skip(),
            }
        }
    }

    fn plain_scalar_starts(&self) -> bool {
        let (c, next) = (self.ch(), self.peek(1));
        !(is_blankz(c) || "-?:,[]{}#&*!|>'\"%@`".contains(c))
            || (c == '-' && !is_blank(next))
            || (self.flow_level == 0 && (c == '?' || c == ':') && !is_blankz(next))
    }

    fn scan_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.ch() == '\u{FEFF}' {
                self.skip();
            }
            while self.ch() == ' ' || ((self.flow_level > 0 || !self.simple_key_allowed) && self.ch() == '\t') {
                self.skip();
            }
            if self.ch() == '#' {
                while !is_breakz(self.ch()) {
                    self.skip();
                }
            }
            if !is_break(self.ch()) {
                return;
            }
            self.skip_line();
            if self.flow_level == 0 {
                self.simple_key_allowed = true;
            }
        }
    }

    fn is_uri_char(c: char, verbatim: bool) -> bool {
        is_alpha(c) || ";/?:@&=+$.%!~*'()".contains(c) || (verbatim && ",[]".contains(c))
    }

    fn scan_tag(&mut self) {
        let verbatim = self.peek(1) == '<';
        // `!<uri>`, or a handle (`!`, `!name!` or `!name`) followed by a suffix; a suffix and
        // a handle are made of the same characters, so one run covers both.
        self.skip_n(if verbatim { 2 } else { 1 });
        while Self::is_uri_char(self.ch(), verbatim) {
            if self.ch() == '%' {
                if !(self.peek(1).is_ascii_hexdigit() && self.peek(2).is_ascii_hexdigit()) {
                    return; // libyaml: invalid escape
                }
                self.skip_n(3);
            } else {
                self.skip();
            }
        }
        if verbatim && self.ch() == '>' {
            self.skip();
        }
    }

    fn scan_block_scalar(&mut self) {
        self.skip();
        let mut increment = 0i64;
        if matches!(self.ch(), '+' | '-') {
            self.skip();
            if let Some(d) = self.ch().to_digit(10) {
                if d == 0 {
                    return;
                }
                increment = i64::from(d);
                self.skip();
            }
        } else if let Some(d) = self.ch().to_digit(10) {
            if d == 0 {
                return;
            }
            increment = i64::from(d);
            self.skip();
            if matches!(self.ch(), '+' | '-') {
                self.skip();
            }
        }
        while is_blank(self.ch()) {
            self.skip();
        }
        if self.ch() == '#' {
            while !is_breakz(self.ch()) {
                self.skip();
            }
        }
        if !is_breakz(self.ch()) {
            return;
        }
        self.skip_line();
        let mut indent = 0i64;
        if increment != 0 {
            indent = if self.indent >= 0 { self.indent + increment } else { increment };
        }
        if !self.block_scalar_breaks(&mut indent) {
            return;
        }
        while self.column as i64 == indent && self.ch() != END {
            while !is_breakz(self.ch()) {
                self.skip();
            }
            self.skip_line();
            if !self.block_scalar_breaks(&mut indent) {
                return;
            }
        }
    }

    /// Empty lines and indentation; fixes the indentation of the scalar from its first line
    /// when it was not given. `false` where libyaml stops (a tab in the indentation).
    fn block_scalar_breaks(&mut self, indent: &mut i64) -> bool {
        let mut max_indent = 0i64;
        loop {
            while (*indent == 0 || (self.column as i64) < *indent) && self.ch() == ' ' {
                self.skip();
            }
            max_indent = max_indent.max(self.column as i64);
            if (*indent == 0 || (self.column as i64) < *indent) && self.ch() == '\t' {
                return false;
            }
            if !is_break(self.ch()) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
        true
    }

    fn scan_flow_scalar(&mut self, single: bool) {
        let quote = if single { '\'' } else { '"' };
        self.skip();
        loop {
            if self.document_indicator() || self.ch() == END {
                return; // libyaml: unexpected document indicator or end of stream
            }
            while !is_blankz(self.ch()) {
                let c = self.ch();
                if single && c == '\'' && self.peek(1) == '\'' {
                    self.skip_n(2);
                } else if c == quote {
                    break;
                } else if !single && c == '\\' && is_break(self.peek(1)) {
                    self.skip();
                    self.skip_line();
                    break;
                } else if !single && c == '\\' {
                    let code_length = match self.peek(1) {
                        '0' | 'a' | 'b' | 't' | '\t' | 'n' | 'v' | 'f' | 'r' | 'e' | ' ' | '"' | '/' | '\\' | 'N' | '_' | 'L' | 'P' => 0,
                        'x' => 2,
                        'u' => 4,
                        'U' => 8,
                        _ => return, // libyaml: unknown escape
                    };
                    self.skip_n(2);
                    for _ in 0..code_length {
                        if !self.ch().is_ascii_hexdigit() {
                            return;
                        }
                        self.skip();
                    }
                } else {
                    self.skip();
                }
            }
            if self.ch() == quote {
                self.skip();
                return;
            }
            while is_blank(self.ch()) || is_break(self.ch()) {
                if is_blank(self.ch()) {
                    self.skip();
                } else {
                    self.skip_line();
                }
            }
        }
    }

    fn scan_plain_scalar(&mut self) {
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            if self.document_indicator() || self.ch() == '#' {
                break;
            }
            while !is_blankz(self.ch()) {
                let (c, next) = (self.ch(), self.peek(1));
                if self.flow_level > 0 && c == ':' && ",?[]{}".contains(next) {
                    return; // libyaml: found unexpected ':'
                }
                if (c == ':' && is_blankz(next)) || (self.flow_level > 0 && ",[]{}".contains(c)) {
                    break;
                }
                leading_blanks = false;
                self.skip();
            }
            if !(is_blank(self.ch()) || is_break(self.ch())) {
                break;
            }
            while is_blank(self.ch()) || is_break(self.ch()) {
                if is_blank(self.ch()) {
                    if leading_blanks && (self.column as i64) < indent && self.ch() == '\t' {
                        return; // libyaml: a tab that violates indentation
                    }
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.flow_level == 0 && (self.column as i64) < indent {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
    }
}

/// Why [`expanded_size`] refused a document.
#[derive(Debug)]
pub(crate) enum Expansion {
    /// Aliases expand the document beyond [`MAX_YAML_NODES`] or [`MAX_YAML_SCALAR_BYTES`];
    /// the 1-based line and column where the walk stopped, when known.
    TooLarge(Option<(usize, usize)>),
    /// The YAML itself is wrong.
    Yaml(serde_yaml::Error),
}

/// Walks the document with its aliases expanded, without keeping anything, and stops once it
/// exceeds [`MAX_YAML_NODES`] nodes or [`MAX_YAML_SCALAR_BYTES`] bytes of scalars.
pub(crate) fn expanded_size(text: &str) -> Result<(), Expansion> {
    let nodes = Cell::new(MAX_YAML_NODES);
    let bytes = Cell::new(MAX_YAML_SCALAR_BYTES);
    let exceeded = Cell::new(false);
    let budget = Budget { nodes: &nodes, bytes: &bytes, exceeded: &exceeded };
    match budget.deserialize(serde_yaml::Deserializer::from_str(text)) {
        Ok(()) => Ok(()),
        Err(e) if exceeded.get() => Err(Expansion::TooLarge(e.location().map(|l| (l.line(), l.column())))),
        Err(e) => Err(Expansion::Yaml(e)),
    }
}

/// What is left of the expansion budget; a visitor that keeps nothing.
#[derive(Clone, Copy)]
struct Budget<'a> {
    nodes: &'a Cell<usize>,
    bytes: &'a Cell<usize>,
    exceeded: &'a Cell<bool>,
}

impl Budget<'_> {
    fn spend<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match (self.nodes.get().checked_sub(1), self.bytes.get().checked_sub(bytes)) {
            (Some(n), Some(b)) => {
                self.nodes.set(n);
                self.bytes.set(b);
                Ok(())
            }
            _ => {
                self.exceeded.set(true);
                Err(E::custom("YAML aliases expand the document beyond the limit"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Budget<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budget<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.spend(v.len())
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.spend(v.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.spend(0)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.spend(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.spend(0)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    /// A tagged node (`!tag value`).
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        self.spend(0)?;
        let (_, variant) = data.variant::<de::IgnoredAny>()?;
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests;
