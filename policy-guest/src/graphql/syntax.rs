//! GraphQL executable documents, read the way the `graphql:` rules need them: which
//! operations a document holds (type, name) and, for each operation and fragment, its
//! top-level selections (field names, fragment spreads, inline fragments).
//!
//! The lexer and the recursive-descent parser follow the grammar of the GraphQL
//! specification (October 2021, with the September 2025 edition's source text: any
//! Unicode scalar value) for an `ExecutableDocument`, and accept nothing outside it:
//! every token is checked (names, numbers with their lookahead rules, strings and
//! block strings with their escapes, `...`), every production is parsed in full
//! (arguments, values, variable definitions and their types, directives, nested
//! selection sets), and a type-system definition or extension — or a description,
//! which only starts one — is refused. Nesting is bounded by [`RECURSION_LIMIT`] and the
//! document by [`TOKEN_LIMIT`] tokens, so no input parses without end.
//!
//! Why not a parser crate: each builds a full syntax tree, which costs ~50–170 µs for
//! a 2 KiB document natively and 4× that in the guest (apollo-parser, graphql-parser,
//! cynic-parser measured; README), where this reading needs ~2 µs and allocates only
//! the selection lists it returns. Its agreement with Apollo's parser is tested: every
//! document this module accepts, `apollo-parser` accepts too, with the same operations
//! and top-level selections (the tests below, and the `graphql` fuzz target).

/// Deeper nesting (selection sets, values, list types) is refused.
pub(crate) const RECURSION_LIMIT: usize = 256;
/// Longer documents are refused.
pub(crate) const TOKEN_LIMIT: usize = 100_000;

/// An operation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationType {
    Query,
    Mutation,
    Subscription,
}

impl OperationType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Mutation => "mutation",
            Self::Subscription => "subscription",
        }
    }
}

/// A selection at the top of an operation's or fragment's selection set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Top<'a> {
    /// A field, by name (never its alias).
    Field(&'a str),
    /// `...Name`.
    Spread(&'a str),
    /// `... on Type { … }` or `... { … }`: its own top-level selections.
    Inline(Vec<Top<'a>>),
}

/// An operation definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationDefinition<'a> {
    pub name: Option<&'a str>,
    pub kind: OperationType,
    pub selections: Vec<Top<'a>>,
}

/// A fragment definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentDefinition<'a> {
    pub name: &'a str,
    pub selections: Vec<Top<'a>>,
}

/// An executable document, definitions in document order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Document<'a> {
    pub operations: Vec<OperationDefinition<'a>>,
    pub fragments: Vec<FragmentDefinition<'a>>,
}

/// Why a document is refused, and the byte offset where it was noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: String,
    pub at: usize,
    /// The document starts a type-system definition (not a syntax error, but nothing
    /// a client may ask a server to execute).
    pub type_system: bool,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.at)
    }
}

/// Parse an executable document.
pub fn parse(text: &str) -> Result<Document<'_>, SyntaxError> {
    let mut parser = Parser::new(text)?;
    let mut document = Document::default();
    if parser.token.kind == Kind::End {
        return Err(parser.error_here("the document is empty"));
    }
    while parser.token.kind != Kind::End {
        parser.definition(&mut document)?;
    }
    Ok(document)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bang,
    Dollar,
    Amp,
    LParen,
    RParen,
    Spread,
    Colon,
    Equals,
    At,
    LBracket,
    RBracket,
    LBrace,
    Pipe,
    RBrace,
    Name,
    Int,
    Float,
    String,
    BlockString,
    End,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Self::Bang => "`!`",
            Self::Dollar => "`$`",
            Self::Amp => "`&`",
            Self::LParen => "`(`",
            Self::RParen => "`)`",
            Self::Spread => "`...`",
            Self::Colon => "`:`",
            Self::Equals => "`=`",
            Self::At => "`@`",
            Self::LBracket => "`[`",
            Self::RBracket => "`]`",
            Self::LBrace => "`{`",
            Self::Pipe => "`|`",
            Self::RBrace => "`}`",
            Self::Name => "a name",
            Self::Int => "an integer",
            Self::Float => "a float",
            Self::String | Self::BlockString => "a string",
            Self::End => "the end of the document",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    /// Where the lexer goes on from.
    pos: usize,
    /// The current token.
    token: Token,
    tokens: usize,
    depth: usize,
}

const TYPE_SYSTEM: &[&str] = &[
    "schema",
    "scalar",
    "type",
    "interface",
    "union",
    "enum",
    "input",
    "directive",
    "extend",
];

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Result<Self, SyntaxError> {
        let mut parser = Self {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            token: Token {
                kind: Kind::End,
                start: 0,
                end: 0,
            },
            tokens: 0,
            depth: 0,
        };
        parser.advance()?;
        Ok(parser)
    }

    // ----- errors -----

    fn error(&self, at: usize, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            message: message.into(),
            at,
            type_system: false,
        }
    }

    fn error_here(&self, message: &str) -> SyntaxError {
        self.error(self.token.start, message)
    }

    fn unexpected(&self, wanted: &str) -> SyntaxError {
        let found = match self.token.kind {
            Kind::Name => format!("`{}`", self.slice()),
            other => other.describe().to_owned(),
        };
        self.error(
            self.token.start,
            format!("expected {wanted}, found {found}"),
        )
    }

    // ----- lexer -----

    fn slice(&self) -> &'a str {
        self.text
            .get(self.token.start..self.token.end)
            .unwrap_or_default()
    }

    fn byte(&self, at: usize) -> Option<u8> {
        self.bytes.get(at).copied()
    }

    /// Lex the next token into `self.token`.
    fn advance(&mut self) -> Result<(), SyntaxError> {
        self.skip_ignored()?;
        let start = self.pos;
        let Some(b) = self.byte(start) else {
            self.token = Token {
                kind: Kind::End,
                start,
                end: start,
            };
            return Ok(());
        };
        self.tokens += 1;
        if self.tokens > TOKEN_LIMIT {
            return Err(self.error(start, format!("the document is over {TOKEN_LIMIT} tokens")));
        }
        let kind = match b {
            b'!' => Kind::Bang,
            b'$' => Kind::Dollar,
            b'&' => Kind::Amp,
            b'(' => Kind::LParen,
            b')' => Kind::RParen,
            b':' => Kind::Colon,
            b'=' => Kind::Equals,
            b'@' => Kind::At,
            b'[' => Kind::LBracket,
            b']' => Kind::RBracket,
            b'{' => Kind::LBrace,
            b'|' => Kind::Pipe,
            b'}' => Kind::RBrace,
            b'.' => {
                if self.byte(start + 1) == Some(b'.') && self.byte(start + 2) == Some(b'.') {
                    self.pos += 2;
                    Kind::Spread
                } else {
                    return Err(self.error(start, "`.` is not `...`"));
                }
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                let mut end = start + 1;
                while self.byte(end).is_some_and(is_name_continue) {
                    end += 1;
                }
                self.pos = end - 1;
                Kind::Name
            }
            b'-' | b'0'..=b'9' => self.number(start)?,
            b'"' => self.string(start)?,
            _ => {
                let shown = self.text.get(start..).and_then(|rest| rest.chars().next());
                return Err(self.error(
                    start,
                    format!("unexpected character {:?}", shown.unwrap_or('\u{fffd}')),
                ));
            }
        };
        self.pos += 1;
        self.token = Token {
            kind,
            start,
            end: self.pos,
        };
        Ok(())
    }

    /// Skip white space, line terminators, commas, comments and byte order marks.
    fn skip_ignored(&mut self) -> Result<(), SyntaxError> {
        loop {
            match self.byte(self.pos) {
                Some(b' ' | b'\t' | b'\n' | b'\r' | b',') => self.pos += 1,
                Some(0xEF)
                    if self.bytes.get(self.pos..self.pos + 3) == Some(&[0xEF, 0xBB, 0xBF]) =>
                {
                    self.pos += 3;
                }
                Some(b'#') => {
                    self.pos += 1;
                    while let Some(b) = self.byte(self.pos) {
                        if b == b'\n' || b == b'\r' {
                            break;
                        }
                        if is_control(b) {
                            return Err(self.error(self.pos, "a control character in a comment"));
                        }
                        self.pos += 1;
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// An IntValue or FloatValue starting at `start`; leaves `pos` on its last byte.
    fn number(&mut self, start: usize) -> Result<Kind, SyntaxError> {
        let mut at = start;
        if self.byte(at) == Some(b'-') {
            at += 1;
        }
        match self.byte(at) {
            Some(b'0') => {
                at += 1;
                if self.byte(at).is_some_and(|b| b.is_ascii_digit()) {
                    return Err(self.error(start, "a number with a leading zero"));
                }
            }
            Some(b'1'..=b'9') => {
                while self.byte(at).is_some_and(|b| b.is_ascii_digit()) {
                    at += 1;
                }
            }
            _ => return Err(self.error(start, "`-` without a number")),
        }
        let mut kind = Kind::Int;
        if self.byte(at) == Some(b'.') {
            at += 1;
            if !self.byte(at).is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.error(start, "a number with no digit after `.`"));
            }
            while self.byte(at).is_some_and(|b| b.is_ascii_digit()) {
                at += 1;
            }
            kind = Kind::Float;
        }
        if matches!(self.byte(at), Some(b'e' | b'E')) {
            at += 1;
            if matches!(self.byte(at), Some(b'+' | b'-')) {
                at += 1;
            }
            if !self.byte(at).is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.error(start, "a number with no digit in its exponent"));
            }
            while self.byte(at).is_some_and(|b| b.is_ascii_digit()) {
                at += 1;
            }
            kind = Kind::Float;
        }
        if self
            .byte(at)
            .is_some_and(|b| b == b'.' || is_name_continue(b))
        {
            return Err(self.error(start, "a number followed by a name or `.`"));
        }
        self.pos = at - 1;
        Ok(kind)
    }

    /// A StringValue or block string starting at `start`; leaves `pos` on its last byte.
    fn string(&mut self, start: usize) -> Result<Kind, SyntaxError> {
        if self.bytes.get(start..start + 3) == Some(b"\"\"\"") {
            let mut at = start + 3;
            loop {
                match self.byte(at) {
                    None => return Err(self.error(start, "an unterminated block string")),
                    Some(b'"') if self.bytes.get(at..at + 3) == Some(b"\"\"\"") => {
                        self.pos = at + 2;
                        return Ok(Kind::BlockString);
                    }
                    Some(b'\\') if self.bytes.get(at + 1..at + 4) == Some(b"\"\"\"") => at += 4,
                    Some(b'\n' | b'\r') => at += 1,
                    Some(b) if is_control(b) => {
                        return Err(self.error(at, "a control character in a string"));
                    }
                    Some(_) => at += 1,
                }
            }
        }
        let mut at = start + 1;
        loop {
            match self.byte(at) {
                None | Some(b'\n' | b'\r') => {
                    return Err(self.error(start, "an unterminated string"));
                }
                Some(b'"') => {
                    self.pos = at;
                    return Ok(Kind::String);
                }
                Some(b'\\') => at = self.escape(at)?,
                Some(b) if is_control(b) => {
                    return Err(self.error(at, "a control character in a string"));
                }
                Some(_) => at += 1,
            }
        }
    }

    /// The escape sequence at `at` (its `\`); returns the offset after it.
    fn escape(&self, at: usize) -> Result<usize, SyntaxError> {
        match self.byte(at + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(at + 2),
            Some(b'u') => {
                if self.byte(at + 2) == Some(b'{') {
                    let digits = at + 3;
                    let mut end = digits;
                    while self.byte(end).is_some_and(|b| b.is_ascii_hexdigit()) {
                        end += 1;
                    }
                    let value = self
                        .text
                        .get(digits..end)
                        .filter(|hex| !hex.is_empty())
                        .and_then(|hex| u32::from_str_radix(hex, 16).ok());
                    return match value {
                        Some(value)
                            if self.byte(end) == Some(b'}') && char::from_u32(value).is_some() =>
                        {
                            Ok(end + 1)
                        }
                        _ => Err(self.error(at, "an invalid `\\u{…}` escape")),
                    };
                }
                let unit = self
                    .hex4(at + 2)
                    .ok_or_else(|| self.error(at, "an invalid `\\u` escape"))?;
                match unit {
                    0xD800..=0xDBFF => {
                        // A leading surrogate must be followed by a trailing one.
                        let trail = (self.bytes.get(at + 6..at + 8) == Some(b"\\u"))
                            .then(|| self.hex4(at + 8))
                            .flatten();
                        match trail {
                            Some(0xDC00..=0xDFFF) => Ok(at + 12),
                            _ => Err(self.error(at, "an unpaired surrogate in a `\\u` escape")),
                        }
                    }
                    0xDC00..=0xDFFF => {
                        Err(self.error(at, "an unpaired surrogate in a `\\u` escape"))
                    }
                    _ => Ok(at + 6),
                }
            }
            _ => Err(self.error(at, "an invalid escape in a string")),
        }
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let hex = self.text.get(at..at + 4)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok()
    }

    // ----- parser -----

    fn is(&self, kind: Kind) -> bool {
        self.token.kind == kind
    }

    fn is_name(&self, name: &str) -> bool {
        self.token.kind == Kind::Name && self.slice() == name
    }

    fn expect(&mut self, kind: Kind) -> Result<(), SyntaxError> {
        if self.token.kind != kind {
            return Err(self.unexpected(kind.describe()));
        }
        self.advance()
    }

    fn name(&mut self) -> Result<&'a str, SyntaxError> {
        if self.token.kind != Kind::Name {
            return Err(self.unexpected("a name"));
        }
        let name = self.slice();
        self.advance()?;
        Ok(name)
    }

    fn enter(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > RECURSION_LIMIT {
            return Err(self.error_here("the document nests too deeply"));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn definition(&mut self, document: &mut Document<'a>) -> Result<(), SyntaxError> {
        match self.token.kind {
            Kind::LBrace => {
                let selections = self.selection_set(true)?;
                document.operations.push(OperationDefinition {
                    name: None,
                    kind: OperationType::Query,
                    selections,
                });
                Ok(())
            }
            Kind::Name => {
                let kind = match self.slice() {
                    "query" => OperationType::Query,
                    "mutation" => OperationType::Mutation,
                    "subscription" => OperationType::Subscription,
                    "fragment" => return self.fragment(document),
                    word if TYPE_SYSTEM.contains(&word) => return Err(self.type_system()),
                    _ => return Err(self.unexpected("an operation or a fragment")),
                };
                self.advance()?;
                let name = if self.is(Kind::Name) {
                    Some(self.name()?)
                } else {
                    None
                };
                if self.is(Kind::LParen) {
                    self.variable_definitions()?;
                }
                self.directives(false)?;
                let selections = self.selection_set(true)?;
                document.operations.push(OperationDefinition {
                    name,
                    kind,
                    selections,
                });
                Ok(())
            }
            // A description starts only a type-system definition.
            Kind::String | Kind::BlockString => Err(self.type_system()),
            _ => Err(self.unexpected("an operation or a fragment")),
        }
    }

    fn type_system(&self) -> SyntaxError {
        SyntaxError {
            message: "a type-system definition".to_owned(),
            at: self.token.start,
            type_system: true,
        }
    }

    fn fragment(&mut self, document: &mut Document<'a>) -> Result<(), SyntaxError> {
        self.advance()?;
        if self.is_name("on") {
            return Err(self.error_here("a fragment cannot be named `on`"));
        }
        let name = self.name()?;
        if !self.is_name("on") {
            return Err(self.unexpected("`on` and a type condition"));
        }
        self.advance()?;
        self.name()?;
        self.directives(false)?;
        let selections = self.selection_set(true)?;
        document
            .fragments
            .push(FragmentDefinition { name, selections });
        Ok(())
    }

    /// `{ Selection+ }`; its top-level selections if `collect`.
    fn selection_set(&mut self, collect: bool) -> Result<Vec<Top<'a>>, SyntaxError> {
        if !self.is(Kind::LBrace) {
            return Err(self.unexpected("a selection set `{`"));
        }
        self.enter()?;
        self.advance()?;
        let mut selections = Vec::new();
        if self.is(Kind::RBrace) {
            return Err(self.error_here("an empty selection set"));
        }
        while !self.is(Kind::RBrace) {
            match self.token.kind {
                Kind::Spread => {
                    self.advance()?;
                    if self.is(Kind::Name) && !self.is_name("on") {
                        let name = self.name()?;
                        self.directives(false)?;
                        if collect {
                            selections.push(Top::Spread(name));
                        }
                    } else {
                        if self.is_name("on") {
                            self.advance()?;
                            self.name()?;
                        }
                        self.directives(false)?;
                        let inner = self.selection_set(collect)?;
                        if collect {
                            selections.push(Top::Inline(inner));
                        }
                    }
                }
                Kind::Name => {
                    let mut name = self.name()?;
                    if self.is(Kind::Colon) {
                        self.advance()?;
                        name = self.name()?;
                    }
                    if self.is(Kind::LParen) {
                        self.arguments(false)?;
                    }
                    self.directives(false)?;
                    if self.is(Kind::LBrace) {
                        self.selection_set(false)?;
                    }
                    if collect {
                        selections.push(Top::Field(name));
                    }
                }
                _ => return Err(self.unexpected("a field, `...` or `}`")),
            }
        }
        self.advance()?;
        self.leave();
        Ok(selections)
    }

    /// `( Argument+ )`.
    fn arguments(&mut self, constant: bool) -> Result<(), SyntaxError> {
        self.expect(Kind::LParen)?;
        if self.is(Kind::RParen) {
            return Err(self.error_here("empty arguments `()`"));
        }
        while !self.is(Kind::RParen) {
            self.name()?;
            self.expect(Kind::Colon)?;
            self.value(constant)?;
        }
        self.advance()
    }

    /// `Directive*`.
    fn directives(&mut self, constant: bool) -> Result<(), SyntaxError> {
        while self.is(Kind::At) {
            self.advance()?;
            self.name()?;
            if self.is(Kind::LParen) {
                self.arguments(constant)?;
            }
        }
        Ok(())
    }

    fn value(&mut self, constant: bool) -> Result<(), SyntaxError> {
        match self.token.kind {
            Kind::Dollar => {
                if constant {
                    return Err(self.error_here("a variable in a constant value"));
                }
                self.advance()?;
                self.name()?;
                Ok(())
            }
            Kind::Int | Kind::Float | Kind::String | Kind::BlockString | Kind::Name => {
                self.advance()
            }
            Kind::LBracket => {
                self.enter()?;
                self.advance()?;
                while !self.is(Kind::RBracket) {
                    self.value(constant)?;
                }
                self.advance()?;
                self.leave();
                Ok(())
            }
            Kind::LBrace => {
                self.enter()?;
                self.advance()?;
                while !self.is(Kind::RBrace) {
                    self.name()?;
                    self.expect(Kind::Colon)?;
                    self.value(constant)?;
                }
                self.advance()?;
                self.leave();
                Ok(())
            }
            _ => Err(self.unexpected("a value")),
        }
    }

    /// `( VariableDefinition+ )`.
    fn variable_definitions(&mut self) -> Result<(), SyntaxError> {
        self.expect(Kind::LParen)?;
        if self.is(Kind::RParen) {
            return Err(self.error_here("empty variable definitions `()`"));
        }
        while !self.is(Kind::RParen) {
            self.expect(Kind::Dollar)?;
            self.name()?;
            self.expect(Kind::Colon)?;
            self.type_reference()?;
            if self.is(Kind::Equals) {
                self.advance()?;
                self.value(true)?;
            }
            self.directives(true)?;
        }
        self.advance()
    }

    /// `NamedType`, `[Type]`, either followed by `!`.
    fn type_reference(&mut self) -> Result<(), SyntaxError> {
        if self.is(Kind::LBracket) {
            self.enter()?;
            self.advance()?;
            self.type_reference()?;
            self.expect(Kind::RBracket)?;
            self.leave();
        } else {
            self.name()?;
        }
        if self.is(Kind::Bang) {
            self.advance()?;
        }
        Ok(())
    }
}

fn is_name_continue(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphanumeric()
}

/// A control character other than tab (line terminators are handled by the caller).
fn is_control(b: u8) -> bool {
    b < 0x20 && b != b'\t'
}

#[cfg(test)]
mod tests;
