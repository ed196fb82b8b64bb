//! Small per-language lexers that blank comments and string literals.
//!
//! Each lexer walks the source once, left to right, and copies it to the output
//! unchanged except that every byte of a comment or literal becomes a space. Line
//! breaks inside blanked regions are kept, so the output has the same byte length
//! and the same line numbers as the input, and an offset in one is an offset in the
//! other.
//!
//! Scanning is byte-wise. That is safe for UTF-8: every delimiter is ASCII, and the
//! bytes of a multi-byte character are all >= 0x80, so they never look like a
//! delimiter. A blanked region therefore always starts at an ASCII byte and ends
//! after one (or at end of input), i.e. on character boundaries, and blanking whole
//! characters with spaces keeps the output valid UTF-8.
//!
//! Robustness rules shared by all lexers:
//! - every loop step advances at least one byte, so scanning always terminates;
//! - an unterminated comment or literal is blanked to the end of the file, except
//!   one-line strings (Python `'…'`/`"…"`, JS/TS `'…'`/`"…"`), which the language
//!   itself ends at the line break; stopping there keeps one stray quote (say an
//!   apostrophe in JSX text) from hiding the rest of the file;
//! - interpolations nest at most [`MAX_NESTING`] deep; deeper ones are treated as
//!   plain literal text instead of recursing further.
//!
//! Deliberate simplifications (each errs on a single line or literal at worst):
//! - Elixir: a `?` right after an identifier byte is a predicate suffix
//!   (`valid?`), anywhere else it starts a char literal (`?#`). Sigil
//!   delimiters do not nest, as in Elixir itself. Sigil modifiers (`~r/x/i`)
//!   stay as code; they are plain letters.
//! - Python: f-string fields are blanked, not searched. A quote inside a format
//!   spec (`f"{x:'>10}"`) is taken for a nested string, so the rest of that
//!   line may be blanked.
//! - Rust: `'` is a char literal only if a closing `'` follows one character
//!   (or an escape) later; otherwise it is a lifetime or label.
//! - TS/JS: regex literals use the usual "is an operand expected here?"
//!   guess (see [`clike_code`]). JSX text is not understood: an apostrophe in
//!   it opens a string that ends at the line break.

/// Which lexer to run over a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lexer {
    /// `#` comments, strings, charlists, heredocs, sigils, `?c` char literals.
    Elixir,
    /// `#` comments, prefixed/triple-quoted strings, f-strings.
    Python,
    /// `//` and nested `/* */` comments, strings, raw strings, char literals.
    Rust,
    /// TypeScript/JavaScript: `//`, `/* */`, quotes, template literals, simple regex literals.
    CLike,
}

impl Lexer {
    /// The lexer for a language table name in `llm_patterns.toml`.
    ///
    /// `elixir`, `python` and `rust` get their own lexer; `typescript`,
    /// `javascript` and any other name get [`Lexer::CLike`], because `//`/`/* */`
    /// comments with `'`/`"` strings cover most remaining mainstream languages
    /// (Go, Java, C, C#, Kotlin, Swift…) well enough for counting call sites.
    #[must_use]
    pub fn for_language(name: &str) -> Lexer {
        match name.to_ascii_lowercase().as_str() {
            "elixir" => Lexer::Elixir,
            "python" => Lexer::Python,
            "rust" => Lexer::Rust,
            "typescript" | "javascript" => Lexer::CLike,
            _ => Lexer::CLike,
        }
    }
}

/// Returns `source` with comments and string literals replaced by spaces.
///
/// Newlines are kept and the byte length is unchanged. Code inside Elixir `#{…}`
/// and JS/TS `${…}` interpolations is kept (it is code, and may hold a call);
/// Python f-string fields are blanked together with their string.
#[must_use]
pub fn strip_comments_and_strings(lang: Lexer, source: &str) -> String {
    let mut scan = Scan::new(source);
    match lang {
        Lexer::Elixir => elixir_code(&mut scan, 0),
        Lexer::Python => python_code(&mut scan),
        Lexer::Rust => rust_code(&mut scan),
        Lexer::CLike => clike_code(&mut scan, 0),
    }
    scan.finish()
}

/// How deep interpolations may nest before they are treated as plain text.
/// Bounds recursion on adversarial input such as `"#{"#{"#{…`.
const MAX_NESTING: usize = 32;

/// A lexer for the code inside an interpolation. It is called just after the
/// opener (`#{`, `${`) and must return at the matching `}` without consuming it,
/// or at end of input.
type CodeFn = fn(&mut Scan<'_>, usize);

/// Cursor over the source plus the output, which starts as a copy of the source
/// and is blanked in place.
struct Scan<'a> {
    src: &'a [u8],
    out: Vec<u8>,
    pos: usize,
}

impl<'a> Scan<'a> {
    fn new(source: &'a str) -> Self {
        Scan {
            src: source.as_bytes(),
            out: source.as_bytes().to_vec(),
            pos: 0,
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn peek(&self) -> Option<u8> {
        self.byte(0)
    }

    fn byte(&self, ahead: usize) -> Option<u8> {
        self.src.get(self.pos + ahead).copied()
    }

    fn prev(&self) -> Option<u8> {
        self.pos
            .checked_sub(1)
            .and_then(|i| self.src.get(i).copied())
    }

    fn rest(&self) -> &'a [u8] {
        self.src.get(self.pos..).unwrap_or_default()
    }

    fn at(&self, pattern: &[u8]) -> bool {
        self.rest().starts_with(pattern)
    }

    /// Moves forward, never past the end.
    fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.src.len());
    }

    fn skip_to_line_end(&mut self) {
        while self.peek().is_some_and(|b| b != b'\n') {
            self.pos += 1;
        }
    }

    /// Consumes an identifier-like run (letters, digits, `_`, `$`, non-ASCII) and
    /// returns it.
    fn word(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(is_word_byte) {
            self.pos += 1;
        }
        self.src.get(start..self.pos).unwrap_or_default()
    }

    /// Blanks everything from `from` to the cursor, keeping line breaks.
    fn blank_since(&mut self, from: usize) {
        if let Some(region) = self.out.get_mut(from..self.pos) {
            for b in region.iter_mut().filter(|b| !matches!(**b, b'\n' | b'\r')) {
                *b = b' ';
            }
        }
    }

    /// Blanks a comment that runs to the end of the line.
    fn line_comment(&mut self) {
        let start = self.pos;
        self.skip_to_line_end();
        self.blank_since(start);
    }

    fn finish(self) -> String {
        // Cannot fail (see the module docs), but a lossy copy beats a panic.
        String::from_utf8(self.out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Bytes that can continue an identifier in any of the supported languages.
/// Non-ASCII bytes count, so identifiers like `café` stay whole.
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Length of the UTF-8 character whose first byte is `lead`.
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// What a backslash does inside a literal.
#[derive(Clone, Copy)]
enum Escape {
    /// Escapes whatever follows (most strings).
    Any,
    /// Only escapes the closing delimiter (Elixir uppercase sigils like `~S`).
    CloseOnly,
}

/// The shape of a quoted literal, from just after its opening delimiter.
#[derive(Clone, Copy)]
struct Literal {
    close: &'static [u8],
    escape: Escape,
    /// Opener of embedded code (`#{`, `${`) if the literal interpolates.
    interpolation: Option<&'static [u8]>,
    /// Ends at an unescaped line break (see the module docs).
    single_line: bool,
}

impl Literal {
    const fn plain(close: &'static [u8], single_line: bool) -> Self {
        Literal {
            close,
            escape: Escape::Any,
            interpolation: None,
            single_line,
        }
    }
}

/// Scans a literal whose text starts at `start` and whose opening delimiter the
/// cursor has just passed. Literal text is blanked; interpolated code is handed
/// to `code` and kept.
fn literal(s: &mut Scan<'_>, start: usize, lit: Literal, depth: usize, code: CodeFn) {
    let mut text_start = start;
    while !s.done() {
        if s.at(lit.close) {
            s.advance(lit.close.len());
            break;
        }
        match s.peek() {
            Some(b'\\') => skip_escape(s, lit),
            Some(b'\n') if lit.single_line => break,
            _ => match lit.interpolation {
                Some(open) if depth < MAX_NESTING && s.at(open) => {
                    s.advance(open.len());
                    s.blank_since(text_start);
                    code(s, depth + 1);
                    // The closing `}` (if any) is blanked with the text after it.
                    text_start = s.pos;
                    s.advance(1);
                }
                _ => s.advance(1),
            },
        }
    }
    s.blank_since(text_start);
}

/// Steps over a backslash escape inside a literal.
fn skip_escape(s: &mut Scan<'_>, lit: Literal) {
    let escaped = s.rest().get(1..).unwrap_or_default();
    let len = match lit.escape {
        // A `\` + CRLF line continuation escapes both bytes.
        Escape::Any if escaped.starts_with(b"\r\n") => 3,
        Escape::Any => 2,
        Escape::CloseOnly if escaped.starts_with(lit.close) => 1 + lit.close.len(),
        Escape::CloseOnly => 1,
    };
    s.advance(len);
}

/// Scans code until the `}` that closes an interpolation (when `depth > 0`) or
/// the end of input. `on_byte` handles everything except brace counting and
/// returns false when it did not consume anything.
fn braced_code(s: &mut Scan<'_>, depth: usize, mut on_byte: impl FnMut(&mut Scan<'_>, u8) -> bool) {
    let mut open_braces = 0usize;
    while let Some(b) = s.peek() {
        match b {
            b'{' => open_braces += 1,
            b'}' if depth > 0 && open_braces == 0 => return,
            b'}' => open_braces = open_braces.saturating_sub(1),
            _ => {}
        }
        if !on_byte(s, b) {
            s.advance(1);
        }
    }
}

// ---------------------------------------------------------------------------
// Elixir
// ---------------------------------------------------------------------------

/// Elixir code. Strings, charlists, heredocs and lowercase sigils interpolate
/// `#{…}`; that code is lexed recursively and kept.
fn elixir_code(s: &mut Scan<'_>, depth: usize) {
    braced_code(s, depth, |s, b| {
        match b {
            b'#' => s.line_comment(),
            // `?#`, `?"` are character literals; `valid?` is a predicate name.
            b'?' if !s.prev().is_some_and(is_word_byte) => elixir_char(s),
            b'"' | b'\'' => elixir_string(s, depth),
            b'~' => return elixir_sigil(s, depth),
            _ => return false,
        }
        true
    });
}

/// `?c` or `?\c`: kept as code, but its character must not start a comment or
/// string.
fn elixir_char(s: &mut Scan<'_>) {
    let len = if s.byte(1) == Some(b'\\') { 3 } else { 2 };
    s.advance(len);
}

/// `"…"`, `'…'`, `"""…"""` or `'''…'''`.
fn elixir_string(s: &mut Scan<'_>, depth: usize) {
    let close: &'static [u8] = if s.at(b"\"\"\"") {
        b"\"\"\""
    } else if s.at(b"'''") {
        b"'''"
    } else if s.at(b"\"") {
        b"\""
    } else {
        b"'"
    };
    let start = s.pos;
    s.advance(close.len());
    let lit = Literal {
        interpolation: Some(b"#{"),
        ..Literal::plain(close, false)
    };
    literal(s, start, lit, depth, elixir_code);
}

/// `~name` + delimiter. Returns false (consuming nothing) when the `~` belongs
/// to an operator such as `~>` or `~~~`. Lowercase sigils interpolate and
/// process escapes; uppercase ones (`~S`, `~R`, `~HTML`) do neither, except
/// that the closing delimiter can still be escaped.
fn elixir_sigil(s: &mut Scan<'_>, depth: usize) -> bool {
    let name_len = s
        .rest()
        .iter()
        .skip(1)
        .take_while(|b| b.is_ascii_alphabetic())
        .count();
    let after_name = s.rest().get(1 + name_len..).unwrap_or_default();
    let Some(close) = sigil_close(after_name).filter(|_| name_len > 0) else {
        return false;
    };
    let lowercase = s.byte(1).is_some_and(|b| b.is_ascii_lowercase());
    let start = s.pos;
    s.advance(1 + name_len + close.len());
    let lit = Literal {
        close,
        escape: if lowercase {
            Escape::Any
        } else {
            Escape::CloseOnly
        },
        interpolation: lowercase.then_some(b"#{".as_slice()),
        single_line: false,
    };
    literal(s, start, lit, depth, elixir_code);
    true
}

/// The closing delimiter for a sigil opened by the start of `rest`; heredoc
/// openers close with themselves. Modifiers after the close (`~r/x/i`) are
/// left as code: they are plain letters.
fn sigil_close(rest: &[u8]) -> Option<&'static [u8]> {
    if rest.starts_with(b"\"\"\"") {
        return Some(b"\"\"\"");
    }
    if rest.starts_with(b"'''") {
        return Some(b"'''");
    }
    Some(match rest.first()? {
        b'(' => b")",
        b'[' => b"]",
        b'{' => b"}",
        b'<' => b">",
        b'"' => b"\"",
        b'\'' => b"'",
        b'|' => b"|",
        b'/' => b"/",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Python
// ---------------------------------------------------------------------------

/// Python code. Identifiers are consumed whole so that a string prefix (`rb`,
/// `f`…) is only recognised as a complete word right before a quote.
fn python_code(s: &mut Scan<'_>) {
    while let Some(b) = s.peek() {
        match b {
            b'#' => s.line_comment(),
            b'"' | b'\'' => python_string(s, s.pos, false),
            _ if is_word_byte(b) => {
                let start = s.pos;
                let word = s.word();
                if matches!(s.peek(), Some(b'"' | b'\'')) {
                    if let Some(is_f) = python_prefix(word) {
                        python_string(s, start, is_f);
                    }
                }
            }
            _ => s.advance(1),
        }
    }
}

/// For a valid string prefix, whether it makes an f-string (or t-string, which
/// has the same `{…}` fields).
fn python_prefix(word: &[u8]) -> Option<bool> {
    let lower = word.to_ascii_lowercase();
    let valid = matches!(
        lower.as_slice(),
        b"r" | b"u" | b"b" | b"f" | b"t" | b"br" | b"rb" | b"fr" | b"rf" | b"tr" | b"rt"
    );
    valid.then(|| lower.iter().any(|&c| c == b'f' || c == b't'))
}

/// A string whose prefix starts at `start` and whose quote is at the cursor.
/// Raw strings need no special case: a backslash still keeps the next quote
/// from closing them.
fn python_string(s: &mut Scan<'_>, start: usize, is_f: bool) {
    let Some(quote) = s.peek() else { return };
    let triple = s.at(&[quote; 3]);
    let close: &'static [u8] = match (quote, triple) {
        (b'"', true) => b"\"\"\"",
        (b'"', false) => b"\"",
        (_, true) => b"'''",
        (_, false) => b"'",
    };
    s.advance(close.len());
    if is_f {
        fstring_body(s, close, !triple);
    } else {
        // Python strings never interpolate, so the code callback is unused.
        literal(s, s.pos, Literal::plain(close, !triple), 0, |_, _| {});
    }
    s.blank_since(start);
}

/// The body of an f-string, up to and including its closing quote. Only needs
/// to find the end: the caller blanks the whole string, fields included. Fields
/// are tracked because since Python 3.12 they may contain the outer quote, as in
/// `f"{d["key"]}"`.
fn fstring_body(s: &mut Scan<'_>, close: &'static [u8], single_line: bool) {
    while !s.done() {
        if s.at(close) {
            s.advance(close.len());
            return;
        }
        match s.peek() {
            Some(b'\\') => skip_escape(s, Literal::plain(close, single_line)),
            Some(b'\n') if single_line => return,
            Some(b'{') if s.byte(1) == Some(b'{') => s.advance(2),
            Some(b'{') => fstring_field(s, single_line),
            _ => s.advance(1),
        }
    }
}

/// One `{…}` field of an f-string, from its `{` to its matching `}`. Strings
/// inside are skipped (as non-f strings, which is enough to find their end).
fn fstring_field(s: &mut Scan<'_>, single_line: bool) {
    s.advance(1);
    let mut open_braces = 0usize;
    while let Some(b) = s.peek() {
        match b {
            b'{' => open_braces += 1,
            b'}' if open_braces == 0 => {
                s.advance(1);
                return;
            }
            b'}' => open_braces -= 1,
            b'\n' if single_line => return,
            b'"' | b'\'' => {
                python_string(s, s.pos, false);
                continue;
            }
            _ => {}
        }
        s.advance(1);
    }
}

// ---------------------------------------------------------------------------
// Rust
// ---------------------------------------------------------------------------

/// Rust code.
fn rust_code(s: &mut Scan<'_>) {
    while let Some(b) = s.peek() {
        match b {
            b'/' if s.byte(1) == Some(b'/') => s.line_comment(),
            b'/' if s.byte(1) == Some(b'*') => rust_block_comment(s),
            b'"' => {
                let start = s.pos;
                s.advance(1);
                literal(s, start, Literal::plain(b"\"", false), 0, |_, _| {});
            }
            b'\'' => rust_quote(s),
            _ if is_word_byte(b) => rust_word(s),
            _ => s.advance(1),
        }
    }
}

/// `/* … */`, which nests in Rust (doc comments `/** */` included).
fn rust_block_comment(s: &mut Scan<'_>) {
    let start = s.pos;
    s.advance(2);
    let mut depth = 1usize;
    while depth > 0 && !s.done() {
        if s.at(b"/*") {
            depth += 1;
            s.advance(2);
        } else if s.at(b"*/") {
            depth -= 1;
            s.advance(2);
        } else {
            s.advance(1);
        }
    }
    s.blank_since(start);
}

/// An identifier, or the prefix of a raw string (`r"…"`, `r#"…"#`, `br##"…"##`,
/// `cr"…"`). Other prefixes (`b"…"`, `b'x'`) need nothing special: the quote
/// that follows is lexed on the next step. `r#ident` is a raw identifier, not a
/// string, because no `"` follows the hashes.
fn rust_word(s: &mut Scan<'_>) {
    let start = s.pos;
    let word = s.word();
    if !matches!(word, b"r" | b"br" | b"cr") {
        return;
    }
    let hashes = s.rest().iter().take_while(|&&b| b == b'#').count();
    if s.byte(hashes) != Some(b'"') {
        return;
    }
    s.advance(hashes + 1);
    // No escapes in raw strings: the first `"` followed by enough `#`s closes.
    while !s.done() {
        let closes = s.peek() == Some(b'"')
            && s.rest()
                .iter()
                .skip(1)
                .take(hashes)
                .filter(|&&b| b == b'#')
                .count()
                == hashes;
        s.advance(if closes { 1 + hashes } else { 1 });
        if closes {
            break;
        }
    }
    s.blank_since(start);
}

/// A `'`: a char literal (`'a'`, `'é'`, `'\''`, `'\u{1F600}'`) or a lifetime /
/// label (`'a`, `'static`, `'outer:`). A lifetime is kept as code; treating it
/// as a quote would blank code up to the next `'`.
fn rust_quote(s: &mut Scan<'_>) {
    let start = s.pos;
    match s.byte(1) {
        Some(b'\\') => {
            // Past `'`, `\` and the escaped character (which may be `'`), then
            // to the closing quote; `\u{…}` escapes are longer.
            s.advance(3);
            while s.peek().is_some_and(|b| b != b'\'' && b != b'\n') {
                s.advance(1);
            }
            if s.peek() == Some(b'\'') {
                s.advance(1);
            }
            s.blank_since(start);
        }
        Some(first) if s.byte(1 + utf8_len(first)) == Some(b'\'') => {
            s.advance(2 + utf8_len(first));
            s.blank_since(start);
        }
        _ => s.advance(1),
    }
}

// ---------------------------------------------------------------------------
// TypeScript / JavaScript
// ---------------------------------------------------------------------------

/// Keywords after which a `/` starts a regex literal rather than a division.
const REGEX_KEYWORDS: &[&[u8]] = &[
    b"return",
    b"typeof",
    b"instanceof",
    b"in",
    b"of",
    b"new",
    b"delete",
    b"void",
    b"throw",
    b"case",
    b"do",
    b"else",
    b"yield",
    b"await",
];

/// TS/JS code. Template literals interpolate `${…}`; that code is lexed
/// recursively and kept.
///
/// Regex literals are recognised with the usual heuristic: a `/` starts one
/// where an operand is expected, i.e. at the start, after an operator or
/// punctuation, or after a keyword such as `return`; after an identifier,
/// number, literal, `)`, `]`, `}` or `<` it is a division (`<` so that JSX
/// closing tags like `</div>` are not taken for regexes).
fn clike_code(s: &mut Scan<'_>, depth: usize) {
    let mut operand_expected = true;
    braced_code(s, depth, |s, b| {
        match b {
            b'/' if s.byte(1) == Some(b'/') => s.line_comment(),
            b'/' if s.byte(1) == Some(b'*') => clike_block_comment(s),
            // A regex literal is a value; a `/` that turned out not to start one
            // is a division, after which an operand is expected.
            b'/' if operand_expected => operand_expected = !clike_regex(s),
            b'\'' | b'"' => {
                let start = s.pos;
                let close: &'static [u8] = if b == b'"' { b"\"" } else { b"'" };
                s.advance(1);
                literal(s, start, Literal::plain(close, true), depth, clike_code);
                operand_expected = false;
            }
            b'`' => {
                let start = s.pos;
                s.advance(1);
                let lit = Literal {
                    interpolation: Some(b"${"),
                    ..Literal::plain(b"`", false)
                };
                literal(s, start, lit, depth, clike_code);
                operand_expected = false;
            }
            _ if is_word_byte(b) => operand_expected = REGEX_KEYWORDS.contains(&s.word()),
            _ if b.is_ascii_whitespace() => return false,
            b')' | b']' | b'}' | b'<' => {
                operand_expected = false;
                return false;
            }
            _ => {
                operand_expected = true;
                return false;
            }
        }
        true
    });
}

/// `/* … */`, which does not nest in JS.
fn clike_block_comment(s: &mut Scan<'_>) {
    let start = s.pos;
    s.advance(2);
    while !s.done() && !s.at(b"*/") {
        s.advance(1);
    }
    s.advance(2);
    s.blank_since(start);
}

/// Tries to read a regex literal at the `/` under the cursor, blanking it with
/// its flags. Returns false, consuming only the `/`, if no closing `/` is found
/// on the same line: then it was a division after all.
fn clike_regex(s: &mut Scan<'_>) -> bool {
    let rest = s.rest();
    let mut i = 1;
    let mut in_class = false;
    loop {
        match rest.get(i) {
            None | Some(b'\n') => {
                s.advance(1);
                return false;
            }
            Some(b'\\') => i += 1,
            Some(b'[') => in_class = true,
            Some(b']') => in_class = false,
            Some(b'/') if !in_class => break,
            _ => {}
        }
        i += 1;
    }
    let flags = rest
        .iter()
        .skip(i + 1)
        .take_while(|b| b.is_ascii_alphabetic())
        .count();
    let start = s.pos;
    s.advance(i + 1 + flags);
    s.blank_since(start);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strips and checks the invariants every output must satisfy: same byte
    /// length, line breaks in the same places.
    fn strip(lang: Lexer, src: &str) -> String {
        let out = strip_comments_and_strings(lang, src);
        assert_eq!(out.len(), src.len(), "length changed for {src:?}");
        let breaks = |t: &str| {
            t.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        assert_eq!(breaks(&out), breaks(src), "line breaks moved for {src:?}");
        out
    }

    /// Asserts that each of `gone` is blanked and each of `kept` survives.
    fn check(lang: Lexer, src: &str, gone: &[&str], kept: &[&str]) {
        let out = strip(lang, src);
        for g in gone {
            assert!(!out.contains(g), "{g:?} should be blanked in {out:?}");
        }
        for k in kept {
            assert!(out.contains(k), "{k:?} should be kept in {out:?}");
        }
    }

    // --- Elixir -----------------------------------------------------------

    #[test]
    fn elixir_line_comment_is_blanked_exactly() {
        assert_eq!(strip(Lexer::Elixir, "a # b\nc"), "a    \nc");
    }

    #[test]
    fn elixir_heredocs_with_double_and_single_quotes() {
        let src =
            "@moduledoc \"\"\"\nSECRET \"quoted\"\n\"\"\"\n@doc '''\nHIDDEN\n'''\ndef f, do: KEEP";
        check(
            Lexer::Elixir,
            src,
            &["SECRET", "quoted", "HIDDEN"],
            &["@moduledoc", "@doc", "KEEP"],
        );
    }

    #[test]
    fn elixir_string_escapes_do_not_close() {
        check(
            Lexer::Elixir,
            r#"x = "a \" SECRET" <> KEEP"#,
            &["SECRET"],
            &["KEEP"],
        );
    }

    #[test]
    fn elixir_interpolation_keeps_code_and_handles_nested_strings() {
        let src = r#"x = "TEXT #{call("INNER")} MORE" ; KEEP"#;
        check(
            Lexer::Elixir,
            src,
            &["TEXT", "INNER", "MORE", "#{"],
            &["call(", "KEEP"],
        );
    }

    #[test]
    fn elixir_escaped_interpolation_is_text() {
        check(
            Lexer::Elixir,
            r#""\#{SECRET}" KEEP"#,
            &["SECRET"],
            &["KEEP"],
        );
    }

    #[test]
    fn elixir_charlist() {
        check(
            Lexer::Elixir,
            "x = 'SECRET # no comment' ++ KEEP",
            &["SECRET"],
            &["KEEP"],
        );
    }

    #[test]
    fn elixir_sigils_with_every_delimiter() {
        for (open, close) in [
            ("(", ")"),
            ("[", "]"),
            ("{", "}"),
            ("<", ">"),
            ("\"", "\""),
            ("'", "'"),
            ("|", "|"),
            ("/", "/"),
        ] {
            for name in ["s", "S", "r", "w"] {
                let src = format!("x = ~{name}{open}SECRET{close} ++ KEEP");
                check(Lexer::Elixir, &src, &["SECRET"], &["KEEP"]);
            }
        }
    }

    #[test]
    fn elixir_sigil_heredoc_and_modifiers() {
        let src = "x = ~S\"\"\"\nSECRET \"\n\"\"\"\ny = ~r/SECRET/iu\nKEEP";
        check(Lexer::Elixir, src, &["SECRET"], &["KEEP", "iu"]);
    }

    #[test]
    fn elixir_uppercase_sigil_has_no_interpolation_but_escaped_close() {
        check(
            Lexer::Elixir,
            r#"~S(a #{SECRET} \) STILL) KEEP"#,
            &["SECRET", "STILL"],
            &["KEEP"],
        );
        // Lowercase sigils interpolate.
        check(
            Lexer::Elixir,
            "~s(TEXT #{code()}) KEEP",
            &["TEXT"],
            &["code()", "KEEP"],
        );
    }

    #[test]
    fn elixir_tilde_operators_are_not_sigils() {
        check(
            Lexer::Elixir,
            "a ~> b ~~~ c <~> KEEP",
            &[],
            &["a ~> b ~~~ c <~> KEEP"],
        );
    }

    #[test]
    fn elixir_char_literals_are_not_comments_or_strings() {
        check(Lexer::Elixir, "c = ?# ; KEEP", &[], &["KEEP"]);
        check(Lexer::Elixir, "c = ?\" ; KEEP", &[], &["KEEP"]);
        check(Lexer::Elixir, "c = ?\\# ; KEEP", &[], &["KEEP"]);
        // A predicate name's `?` is not a char literal: the comment is one.
        check(
            Lexer::Elixir,
            "valid?# SECRET\nKEEP",
            &["SECRET"],
            &["valid?", "KEEP"],
        );
    }

    // --- Python -----------------------------------------------------------

    #[test]
    fn python_comments_and_quotes() {
        assert_eq!(strip(Lexer::Python, "a # b\nc"), "a    \nc");
        check(
            Lexer::Python,
            r#"x = 'S1' + "S2 # no" ; KEEP"#,
            &["S1", "S2"],
            &["KEEP"],
        );
    }

    #[test]
    fn python_escapes() {
        check(
            Lexer::Python,
            r#"x = 'it\'s SECRET' ; y = "a \" SECRET2" ; KEEP"#,
            &["SECRET"],
            &["KEEP"],
        );
    }

    #[test]
    fn python_triple_quoted_and_docstrings() {
        let src = "def f():\n    \"\"\"SECRET\n    \"quoted\" 'x'\n    \"\"\"\n    s = '''HIDDEN\n'''\n    return KEEP";
        check(
            Lexer::Python,
            src,
            &["SECRET", "quoted", "HIDDEN"],
            &["def f():", "KEEP"],
        );
    }

    #[test]
    fn python_prefixes() {
        for prefix in ["r", "b", "f", "u", "rb", "Rb", "BR", "fr", "rf", "F", "t"] {
            let src = format!("x = {prefix}'SECRET' + {prefix}\"\"\"SECRET2\"\"\" ; KEEP");
            let out = strip(Lexer::Python, &src);
            assert!(!out.contains("SECRET"), "{prefix}: {out:?}");
            assert!(
                !out.contains(&format!("{prefix}'")),
                "prefix blanked: {out:?}"
            );
            assert!(out.contains("KEEP"));
        }
        // Not a prefix: an identifier that happens to end in `r`.
        check(
            Lexer::Python,
            "bar'SECRET' ; KEEP",
            &["SECRET"],
            &["bar", "KEEP"],
        );
    }

    #[test]
    fn python_raw_string_backslash_before_quote() {
        check(
            Lexer::Python,
            r#"x = r"a\"SECRET" ; KEEP"#,
            &["SECRET"],
            &["KEEP"],
        );
    }

    #[test]
    fn python_fstring_fields_are_blanked_too() {
        let src = r#"x = f"TEXT {call(y)} {{lit}} {d["k"]} MORE" ; KEEP"#;
        check(
            Lexer::Python,
            src,
            &["TEXT", "call", "lit", "MORE"],
            &["KEEP"],
        );
    }

    #[test]
    fn python_unterminated_one_line_string_stops_at_line_end() {
        check(Lexer::Python, "x = 'SECRET\nKEEP", &["SECRET"], &["KEEP"]);
        check(Lexer::Python, "x = '''SECRET\nSECRET2", &["SECRET"], &[]);
    }

    // --- Rust -------------------------------------------------------------

    #[test]
    fn rust_line_and_doc_comments() {
        assert_eq!(strip(Lexer::Rust, "a // b\nc"), "a     \nc");
        check(
            Lexer::Rust,
            "/// S1\n//! S2\nKEEP",
            &["S1", "S2"],
            &["KEEP"],
        );
    }

    #[test]
    fn rust_nested_block_comments() {
        check(
            Lexer::Rust,
            "/* S1 /* S2 */ S3 */ KEEP /** S4 */",
            &["S1", "S2", "S3", "S4"],
            &["KEEP"],
        );
    }

    #[test]
    fn rust_strings_and_escapes() {
        check(
            Lexer::Rust,
            r#"let s = "a \" SECRET // no"; KEEP"#,
            &["SECRET"],
            &["KEEP"],
        );
        check(
            Lexer::Rust,
            r#"let s = b"SECRET"; let c = c"SECRET2"; KEEP"#,
            &["SECRET"],
            &["KEEP"],
        );
    }

    #[test]
    fn rust_raw_strings_with_any_number_of_hashes() {
        check(
            Lexer::Rust,
            "let s = r\"SECRET\\\"; KEEP",
            &["SECRET"],
            &["KEEP"],
        );
        check(
            Lexer::Rust,
            "let s = r#\"SECRET \" still\"#; KEEP",
            &["SECRET", "still"],
            &["KEEP"],
        );
        check(
            Lexer::Rust,
            "let s = br##\"SECRET \"# still\"##; KEEP",
            &["SECRET", "still"],
            &["KEEP"],
        );
    }

    #[test]
    fn rust_raw_identifier_is_not_a_raw_string() {
        check(
            Lexer::Rust,
            "let r#type = 1; \"SECRET\"; KEEP",
            &["SECRET"],
            &["r#type", "KEEP"],
        );
    }

    #[test]
    fn rust_char_literals() {
        check(Lexer::Rust, "let q = '\"'; KEEP", &[], &["KEEP"]);
        check(Lexer::Rust, "let q = '\\''; KEEP", &[], &["KEEP"]);
        check(Lexer::Rust, "let q = b'\\\\'; KEEP", &[], &["KEEP"]);
        check(
            Lexer::Rust,
            "let q = '\\u{1F600}'; KEEP",
            &["1F600"],
            &["KEEP"],
        );
        check(Lexer::Rust, "let q = 'é'; KEEP", &["é"], &["KEEP"]);
    }

    #[test]
    fn rust_lifetimes_are_not_quotes() {
        let src = "fn f<'a>(x: &'a str) -> &'a str { KEEP(x) }\n'outer: loop { break 'outer; }";
        let out = strip(Lexer::Rust, src);
        assert_eq!(out, src);
    }

    // --- TypeScript / JavaScript ------------------------------------------

    #[test]
    fn clike_comments() {
        assert_eq!(strip(Lexer::CLike, "a // b\nc"), "a     \nc");
        check(
            Lexer::CLike,
            "/** S1\n * S2 */ KEEP /* S3 */",
            &["S1", "S2", "S3"],
            &["KEEP"],
        );
    }

    #[test]
    fn clike_quotes_and_escapes() {
        check(
            Lexer::CLike,
            r#"x = 'it\'s S1' + "a \" S2"; KEEP"#,
            &["S1", "S2"],
            &["KEEP"],
        );
    }

    #[test]
    fn clike_template_literal_keeps_interpolated_code() {
        let src = "x = `TEXT ${call(`INNER ${deep()}`)} MORE`; KEEP";
        check(
            Lexer::CLike,
            src,
            &["TEXT", "INNER", "MORE", "${"],
            &["call(", "deep()", "KEEP"],
        );
    }

    #[test]
    fn clike_object_literal_inside_interpolation() {
        check(
            Lexer::CLike,
            "`A ${f({ a: 1 })} B` + KEEP",
            &["A ", " B"],
            &["f({ a: 1 })", "KEEP"],
        );
    }

    #[test]
    fn clike_regex_literals_in_simple_positions() {
        check(
            Lexer::CLike,
            "const re = /SECRET\\/[/]x/gi; KEEP",
            &["SECRET", "gi"],
            &["KEEP"],
        );
        check(
            Lexer::CLike,
            "if (/SECRET/.test(s)) KEEP",
            &["SECRET"],
            &[".test(s)", "KEEP"],
        );
        check(
            Lexer::CLike,
            "return /SECRET/.test(s); KEEP",
            &["SECRET"],
            &["return", "KEEP"],
        );
    }

    #[test]
    fn clike_division_is_not_a_regex() {
        let src = "const r = a / b, c = KEEP(x) / 2;";
        assert_eq!(strip(Lexer::CLike, src), src);
        let src = "const r = (a) / b + f(KEEP) / 2;";
        assert_eq!(strip(Lexer::CLike, src), src);
    }

    #[test]
    fn clike_jsx_closing_tag_is_not_a_regex() {
        let src = "<b>{x}</b><i>{KEEP()}</i>";
        assert_eq!(strip(Lexer::CLike, src), src);
    }

    #[test]
    fn clike_unterminated_one_line_string_stops_at_line_end() {
        check(Lexer::CLike, "<p>Don't</p>\nKEEP", &[], &["KEEP"]);
    }

    // --- Robustness -------------------------------------------------------

    const ALL: [Lexer; 4] = [Lexer::Elixir, Lexer::Python, Lexer::Rust, Lexer::CLike];

    #[test]
    fn unterminated_comments_and_literals_blank_to_end_of_file() {
        let cases = [
            (Lexer::Elixir, "x \"\"\"\nSECRET\nSECRET"),
            (Lexer::Elixir, "x \"SECRET\nSECRET"),
            (Lexer::Elixir, "x ~s(SECRET\nSECRET"),
            (Lexer::Elixir, "x '''\nSECRET"),
            (Lexer::Python, "x '''\nSECRET\nSECRET"),
            (Lexer::Python, "x f\"\"\"{\nSECRET"),
            (Lexer::Rust, "x /* /* */ SECRET\nSECRET"),
            (Lexer::Rust, "x r##\"SECRET\"#\nSECRET"),
            (Lexer::Rust, "x \"SECRET\nSECRET"),
            (Lexer::CLike, "x /* SECRET\nSECRET"),
            (Lexer::CLike, "x `SECRET\nSECRET"),
        ];
        for (lang, src) in cases {
            let out = strip(lang, src);
            assert!(!out.contains("SECRET"), "{lang:?}: {out:?}");
        }
        // An unclosed interpolation keeps its code, to the end of the file.
        check(Lexer::CLike, "x `a ${KEEP(", &[], &["KEEP("]);
    }

    #[test]
    fn deep_interpolation_nesting_is_bounded() {
        let deep = "\"#{".repeat(10_000);
        strip(Lexer::Elixir, &deep);
        let deep = "`${".repeat(10_000);
        strip(Lexer::CLike, &deep);
    }

    #[test]
    fn multibyte_text_never_splits_a_character() {
        let src = "é # ünïcödé\n\"日本語\" ?é 'ß' `€${x}€` /é/ r#\"😀\"# '😀' x / é";
        for lang in ALL {
            strip(lang, src);
        }
    }

    /// Every prefix of tricky input, so every construct is also seen cut off at
    /// every byte.
    #[test]
    fn every_prefix_of_tricky_input_is_handled() {
        let src = concat!(
            "a/*b/*c*/d*/\"e\\\"f\"'g'?#h~s(i#{j}k)`l${m`n${o}`}p`/q[/]r/g",
            "r##\"s\"#t\"##'\\''u'v br\"w\" f'x{y[\"z\"]}' \"\"\"A\n'''B\n",
            "~S\"\"\"C\n\"\"\"é😀// D\n# E\n",
        );
        for end in (0..=src.len()).filter(|&i| src.is_char_boundary(i)) {
            for lang in ALL {
                strip(lang, &src[..end]);
            }
        }
    }

    #[test]
    fn pseudo_random_input_never_panics() {
        const ALPHABET: &[&str] = &[
            "\"", "'", "`", "/", "*", "#", "{", "}", "$", "~", "?", "\\", "\n", "r", "b", "f", "s",
            "S", "(", ")", "<", ">", "|", "[", "]", "é", "😀", " ", "a", "=",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2_000 {
            let mut src = String::new();
            for _ in 0..64 {
                // xorshift64: deterministic, no dependency.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                src.push_str(ALPHABET[(state % ALPHABET.len() as u64) as usize]);
            }
            for lang in ALL {
                strip(lang, &src);
            }
        }
    }

    #[test]
    fn language_names_pick_lexers() {
        assert_eq!(Lexer::for_language("elixir"), Lexer::Elixir);
        assert_eq!(Lexer::for_language("Python"), Lexer::Python);
        assert_eq!(Lexer::for_language("rust"), Lexer::Rust);
        assert_eq!(Lexer::for_language("typescript"), Lexer::CLike);
        assert_eq!(Lexer::for_language("javascript"), Lexer::CLike);
        assert_eq!(Lexer::for_language("go"), Lexer::CLike);
    }
}
