//! The parser against the specification's shapes, and against Apollo's parser as an
//! oracle: whatever this module accepts, `apollo-parser` must accept with the same
//! operations and top-level selections.

use apollo_parser::cst;

use super::*;

/// An owned top-level selection, comparable across the two parsers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sel {
    Field(String),
    Spread(String),
    Inline(Vec<Sel>),
}

type Summary = (
    Vec<(Option<String>, OperationType, Vec<Sel>)>,
    Vec<(String, Vec<Sel>)>,
);

fn ours(text: &str) -> Result<Summary, SyntaxError> {
    fn own(tops: &[Top<'_>]) -> Vec<Sel> {
        tops.iter()
            .map(|top| match top {
                Top::Field(name) => Sel::Field((*name).to_owned()),
                Top::Spread(name) => Sel::Spread((*name).to_owned()),
                Top::Inline(inner) => Sel::Inline(own(inner)),
            })
            .collect()
    }
    let document = parse(text)?;
    Ok((
        document
            .operations
            .iter()
            .map(|op| (op.name.map(str::to_owned), op.kind, own(&op.selections)))
            .collect(),
        document
            .fragments
            .iter()
            .map(|f| (f.name.to_owned(), own(&f.selections)))
            .collect(),
    ))
}

/// Apollo's reading: `None` if it reports an error or the document is not purely
/// executable.
fn apollo(text: &str) -> Option<Summary> {
    fn sels(set: Option<cst::SelectionSet>) -> Option<Vec<Sel>> {
        let mut out = Vec::new();
        for selection in set?.selections() {
            out.push(match selection {
                cst::Selection::Field(field) => Sel::Field(field.name()?.text().to_string()),
                cst::Selection::FragmentSpread(spread) => {
                    Sel::Spread(spread.fragment_name()?.name()?.text().to_string())
                }
                cst::Selection::InlineFragment(inline) => {
                    Sel::Inline(sels(inline.selection_set())?)
                }
            });
        }
        Some(out)
    }
    let tree = apollo_parser::Parser::new(text)
        .recursion_limit(RECURSION_LIMIT)
        .token_limit(TOKEN_LIMIT)
        .parse();
    if tree.errors().next().is_some() {
        return None;
    }
    let mut operations = Vec::new();
    let mut fragments = Vec::new();
    for definition in tree.document().definitions() {
        match definition {
            cst::Definition::OperationDefinition(op) => {
                let kind = match op.operation_type() {
                    None => OperationType::Query,
                    Some(t) if t.query_token().is_some() => OperationType::Query,
                    Some(t) if t.mutation_token().is_some() => OperationType::Mutation,
                    Some(_) => OperationType::Subscription,
                };
                let name = op.name().map(|n| n.text().to_string());
                operations.push((name, kind, sels(op.selection_set())?));
            }
            cst::Definition::FragmentDefinition(fragment) => {
                let name = fragment.fragment_name()?.name()?.text().to_string();
                fragments.push((name, sels(fragment.selection_set())?));
            }
            _ => return None,
        }
    }
    Some((operations, fragments))
}

/// The text with every comma outside strings and comments made a space: the same
/// document (a comma is an ignored token, like a space), for Apollo, whose parser
/// refuses a comma in some places the grammar allows one (`a,: b`).
fn without_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let len = if let Some(body) = rest.strip_prefix("\"\"\"") {
            let mut i = 0;
            loop {
                match body.get(i..) {
                    None | Some("") => break body.len() + 3,
                    Some(tail) if tail.starts_with("\\\"\"\"") => i += 4,
                    Some(tail) if tail.starts_with("\"\"\"") => break i + 6,
                    Some(tail) => i += tail.chars().next().map_or(1, char::len_utf8),
                }
            }
        } else if c == '"' {
            let mut chars = rest.char_indices().skip(1);
            let mut end = rest.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' | '\n' | '\r' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            end
        } else if c == '#' {
            rest.find(['\n', '\r']).unwrap_or(rest.len())
        } else {
            c.len_utf8()
        };
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        out.push_str(if piece == "," { " " } else { piece });
        rest = tail;
    }
    out
}

/// Ours accepts ⟹ Apollo accepts (the text, or the same text with its commas made
/// spaces), and both read the same; returns ours.
fn agree(text: &str) -> Result<Summary, SyntaxError> {
    let mine = ours(text);
    if let Ok(summary) = &mine {
        let theirs = apollo(text).or_else(|| apollo(&without_commas(text)));
        assert_eq!(
            theirs.as_ref(),
            Some(summary),
            "accepted here but Apollo reads it differently: {text:?}"
        );
    }
    mine
}

const VALID: &[&str] = &[
    "{ a }",
    "query { a }",
    "query Q { a }",
    "mutation M($input: AddCommentInput!) { addComment(input: $input) { clientMutationId } }",
    "subscription S { issueUpdated(id: 1) { id title } }",
    "query Q($a: [Int!]! = [1, 2], $b: String = \"x\" @dir, $c: In = {a: {b: [null]}}) @live { a(x: $a) @include(if: true) }",
    "{ alias: field(arg: 1.5e-3, other: -0, s: \"\\u00e9\\n\\\"\", e: ENUM, l: [], o: {}) }",
    "{ ...F ... on User { id } ... @skip(if: false) { x } ... { y } } fragment F on Query { z }",
    "fragment F on T { a } query { ...F }",
    "query A { a } query B { b }",
    "{ a(s: \"\"\"block\n  \\\"\"\" string\"\"\") }",
    "\u{feff}{ a } # trailing comment",
    "# comment\n{\r\n a,,, b\r c\t}",
    "{ a(x: \"emoji \u{1F600} and \\uD83D\\uDE00 and \\u{1F600}\") }",
    "{ __typename a: __schema { types { name } } }",
    "query on { on: on(on: on) { on } }",
    "{ a(i: 0, j: -12, k: 1E10, l: 0.0, m: 1.5E+2) }",
    "{ a(x: $v) }",
    "query ($v: Int) { a(x: $v) }",
    "{ a(x: true, y: false, z: null) }",
    "{ f(x: \"\\/\\b\\f\\r\\t\\\\\") }",
];

const INVALID: &[&str] = &[
    "",
    "   # only a comment",
    "{",
    "{ a ",
    "{ }",
    "{ a() }",
    "query Q() { a }",
    "query Q",
    "fragment on on T { a }",
    "fragment F { a }",
    "fragment F on T",
    "{ a(x: 01) }",
    "{ a(x: 1.) }",
    "{ a(x: .5) }",
    "{ a(x: 1e) }",
    "{ a(x: 1x) }",
    "{ a(x: 1.5.2) }",
    "{ a(x: -) }",
    "{ a(x: \"unterminated) }",
    "{ a(x: \"line\nbreak\") }",
    "{ a(x: \"bad \\q escape\") }",
    "{ a(x: \"\\u12\") }",
    "{ a(x: \"\\uD800\") }",
    "{ a(x: \"\\uDC00\") }",
    "{ a(x: \"\\u{110000}\") }",
    "{ a(x: \"\"\"unterminated) }",
    "{ a(x: \"ctrl \u{1}\") }",
    "{ a .. b }",
    "{ a } }",
    "{ a(x: {b}) }",
    "{ a(x: [1, 2) }",
    "query Q($v: Int = $w) { a }",
    "query Q($v) { a }",
    "query Q(v: Int) { a }",
    "{ a @ }",
    "{ a } extra",
    "type Query { a: Int }",
    "extend type Query { b: Int }",
    "schema { query: Query }",
    "\"description\" type Query { a: Int }",
    "{ a } type Query { a: Int }",
    "{ a | b }",
    "{ a & b }",
    "{ 1 }",
    "{ a(x: 1 }",
    "{ ... }",
    "{ ...on }",
    "query Q @dir( { a }",
    "{ a # comment \u{1} \n }",
];

#[test]
fn the_specification_s_shapes_parse_and_agree_with_apollo() {
    for text in VALID {
        if let Err(error) = agree(text) {
            panic!("{text:?} refused: {error}");
        }
    }
}

#[test]
fn what_is_outside_the_grammar_is_refused() {
    for text in INVALID {
        assert!(agree(text).is_err(), "{text:?} was accepted");
    }
    let error = parse("type Query { a: Int }").unwrap_err();
    assert!(error.type_system, "{error:?}");
    let error = parse("{ a } extra").unwrap_err();
    assert!(!error.type_system);
    assert_eq!(error.at, 6, "{error}");
    assert_eq!(
        error.to_string(),
        "expected an operation or a fragment, found `extra` (at byte 6)"
    );
}

#[test]
fn what_is_read_from_a_document() {
    let document =
        parse("query A { x: b(n: 1) { c } ...F ... on Q { d ...G } } fragment F on Q { e }")
            .unwrap();
    assert_eq!(document.operations.len(), 1);
    let op = &document.operations[0];
    assert_eq!((op.name, op.kind), (Some("A"), OperationType::Query));
    assert_eq!(
        op.selections,
        vec![
            Top::Field("b"),
            Top::Spread("F"),
            Top::Inline(vec![Top::Field("d"), Top::Spread("G")]),
        ]
    );
    assert_eq!(document.fragments[0].name, "F");
    assert_eq!(document.fragments[0].selections, vec![Top::Field("e")]);
}

#[test]
fn nesting_and_length_are_bounded() {
    let deep = format!(
        "{}a{}",
        "{ a ".repeat(RECURSION_LIMIT + 1),
        " }".repeat(RECURSION_LIMIT + 1)
    );
    assert!(
        parse(&deep)
            .unwrap_err()
            .message
            .contains("nests too deeply")
    );
    let ok = format!(
        "{}a{}",
        "{ a ".repeat(RECURSION_LIMIT - 1),
        " }".repeat(RECURSION_LIMIT - 1)
    );
    assert!(parse(&ok).is_ok());
    let values = format!(
        "{{ a(x: {}1{}) }}",
        "[".repeat(RECURSION_LIMIT + 1),
        "]".repeat(RECURSION_LIMIT + 1)
    );
    assert!(parse(&values).is_err());
    let long = format!("{{ {} }}", "a ".repeat(TOKEN_LIMIT));
    assert!(parse(&long).unwrap_err().message.contains("tokens"));
}

/// Deterministic mutations of the valid documents (bytes deleted, duplicated,
/// replaced by GraphQL's own punctuation and keywords): every mutant this module
/// accepts, Apollo accepts with the same reading.
#[test]
fn mutants_accepted_here_are_accepted_by_apollo_alike() {
    const PIECES: &[&str] = &[
        "{", "}", "(", ")", "[", "]", ":", "$", "@", "!", "=", "...", "\"", "\"\"\"", "\\", "#",
        "\n", ",", " ", "on", "query", "mutation", "fragment", "type", "1", "-", ".", "e", "0",
        "\\u", "\u{feff}", "é",
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |bound: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        usize::try_from(seed % bound as u64).unwrap_or(0)
    };
    let mut accepted = 0;
    for round in 0..20_000 {
        let base = VALID[round % VALID.len()];
        let mut text = base.to_owned();
        for _ in 0..1 + next(3) {
            let boundaries: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            let at = boundaries[next(boundaries.len())];
            let end = boundaries.iter().copied().find(|&i| i > at).unwrap_or(at);
            match next(3) {
                0 => text.replace_range(at..end, ""),
                1 => text.insert_str(at, PIECES[next(PIECES.len())]),
                _ => text.replace_range(at..end, PIECES[next(PIECES.len())]),
            }
        }
        if agree(&text).is_ok() {
            accepted += 1;
        }
    }
    // The mutants are a real mix: some still parse, most do not.
    assert!(
        (1_000..19_000).contains(&accepted),
        "{accepted} of 20000 accepted"
    );
}
