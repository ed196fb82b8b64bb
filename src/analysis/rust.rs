//! Rust (tree-sitter-rust 0.24).
//!
//! Call sites: `call_expression` nodes. The chain follows `field_expression`
//! values, `scoped_identifier` paths (`a::b::c` are three segments), turbofish
//! `generic_function`s, and looks through `.await` and `?`, so
//! `self.client.chat().create(req).await?` is `self`, `client`, `chat()`,
//! `create`. Method calls on the way are marked as calls, which the
//! `*.chat().create` shapes require.
//!
//! Macro arguments are token trees, not expressions, in the grammar; a real
//! call passed to `println!`, `format!`, `tokio::join!`, `assert!`, `vec!` ...
//! is still a call. So the token trees of every macro invocation are scanned
//! for `name(` preceded by a `.`/`::` chain of names, method calls, `?` and
//! `.await`, which yields the same chain as the parsed form. `macro_rules!`
//! definitions are definitions and are not scanned; `fn name(` inside a macro
//! is a definition, `name!(` a nested macro (scanned in turn).
//!
//! Comments (also `///`, `//!` doc comments with code blocks) and string
//! literals hold no calls.
//!
//! Complexity: `fn` items are functions, named by their enclosing `impl`
//! type, trait and `mod` (`Gateway::ask`, `tests::it_works`); closures belong
//! to the enclosing function unless bound by `let name = |..|` (then named).
//! +1 for `if` (each `else if` is another `if`), `while`, `loop`, `for`, each
//! `&&`/`||` (also inside `if let` chains), `let ... else`; a `match` adds
//! one per arm after the first. `?` is not a decision point.

use tree_sitter::Node;

use super::engine::{
    self, callee_chain, field, function_named_by, line_of, text, Call, Facts, Role, Step, Syntax,
};
use super::shapes::Link;

pub(crate) struct Rust;

impl Syntax for Rust {
    fn separator(&self) -> &'static str {
        "::"
    }

    fn facts(&self, root: Node, src: &str) -> Facts {
        let mut facts = Facts::default();
        engine::visit(root, |node| {
            if node.kind() == "function_item" {
                if let Some(name) = field(node, "name") {
                    facts.defined.insert(text(name, src).to_owned());
                }
            }
            true
        });
        facts
    }

    fn call(&self, node: Node, src: &str) -> Option<Call> {
        if node.kind() != "call_expression" {
            return None;
        }
        let chain = chain(field(node, "function")?, src);
        let args = field(node, "arguments")?;
        Some(Call {
            on_self: on_self(&chain),
            chain,
            line: line_of(args),
        })
    }

    fn unparsed_calls(&self, node: Node, src: &str, out: &mut Vec<Call>) {
        if node.kind() != "macro_invocation" {
            return;
        }
        let Some(tree) = engine::named_children(node)
            .into_iter()
            .find(|c| c.kind() == "token_tree")
        else {
            return;
        };
        engine::visit(tree, |n| {
            if n.kind() == "token_tree" {
                scan_tokens(n, src, out);
            }
            true
        });
    }

    fn role(&self, node: Node, src: &str) -> Role {
        match node.kind() {
            "function_item" => function_named_by(node, "name", src),
            "impl_item" => {
                field(node, "type").map_or(Role::None, |t| Role::Scope(type_name(t, src)))
            }
            "trait_item" | "mod_item" => {
                field(node, "name").map_or(Role::None, |n| Role::Scope(text(n, src).to_owned()))
            }
            "closure_expression" => {
                let bound = node
                    .parent()
                    .filter(|p| p.kind() == "let_declaration")
                    .and_then(|p| {
                        let pattern = field(p, "pattern")?;
                        let value = field(p, "value")?;
                        (value.id() == node.id() && pattern.kind() == "identifier")
                            .then_some(pattern)
                    });
                match bound {
                    Some(name) => Role::Function {
                        name: text(name, src).to_owned(),
                        line: line_of(name),
                    },
                    None => Role::Anonymous,
                }
            }
            _ => Role::None,
        }
    }

    fn decisions(&self, node: Node, src: &str) -> u32 {
        match node.kind() {
            "if_expression" | "while_expression" | "loop_expression" | "for_expression" => 1,
            "binary_expression" => match field(node, "operator").map(|o| text(o, src)) {
                Some("&&" | "||") => 1,
                _ => 0,
            },
            "let_chain" => {
                let n = engine::children(node)
                    .into_iter()
                    .filter(|c| matches!(c.kind(), "&&" | "||"))
                    .count();
                u32::try_from(n).unwrap_or(u32::MAX)
            }
            "let_declaration" => u32::from(field(node, "alternative").is_some()),
            "match_expression" => field(node, "body").map_or(0, |body| {
                engine::count_children(body, &["match_arm"]).saturating_sub(1)
            }),
            _ => 0,
        }
    }
}

fn on_self(chain: &[Link]) -> bool {
    chain.len() == 2 && matches!(chain[0].name.as_deref(), Some("self" | "Self"))
}

/// `Gateway` for `Gateway<'a>`, `crate::x::Gateway`, `&Gateway`.
fn type_name(node: Node, src: &str) -> String {
    match node.kind() {
        "generic_type" => {
            field(node, "type").map_or_else(|| text(node, src).to_owned(), |t| type_name(t, src))
        }
        "scoped_type_identifier" => field(node, "name")
            .map_or_else(|| text(node, src).to_owned(), |t| text(t, src).to_owned()),
        "reference_type" | "pointer_type" => {
            field(node, "type").map_or_else(|| text(node, src).to_owned(), |t| type_name(t, src))
        }
        _ => text(node, src).to_owned(),
    }
}

/// The callee chain of a call's `function` expression, root first.
fn chain(expr: Node, src: &str) -> Vec<Link> {
    callee_chain(expr, src, |node| match node.kind() {
        "identifier" | "self" | "crate" | "super" | "metavariable" => Step::Root,
        "field_expression" => Step::Member(field(node, "field"), field(node, "value")),
        // `path::name`; without a path (`::name`) the name is the root.
        "scoped_identifier" => Step::Path(field(node, "name"), field(node, "path")),
        "generic_function" => Step::Through(field(node, "function")),
        "call_expression" => Step::Call(field(node, "function")),
        "try_expression" | "await_expression" | "parenthesized_expression" => {
            Step::Through(node.named_child(0))
        }
        _ => Step::Unknown,
    })
}

/// Finds `chain.name(...)` in the direct children of one token tree.
fn scan_tokens(tree: Node, src: &str, out: &mut Vec<Call>) {
    let tokens = engine::children(tree);
    for (i, token) in tokens.iter().enumerate() {
        if token.kind() != "token_tree" || !text(*token, src).starts_with('(') || i == 0 {
            continue;
        }
        let Some(j) = skip_turbofish(&tokens, i - 1, src) else {
            continue;
        };
        let name = tokens[j];
        if name.kind() != "identifier" {
            continue; // `x!(..)`, `(a)(b)`, literals
        }
        if j > 0 && tokens[j - 1].kind() == "fn" {
            continue; // a definition
        }
        let mut links = vec![Link::name(text(name, src))];
        let mut start = j;
        while start >= 2 && matches!(tokens[start - 1].kind(), "." | "::") {
            match element_before(&tokens, start - 2, src) {
                Some((link, at)) => {
                    let opaque = link.name.is_none();
                    links.push(link);
                    start = at;
                    if opaque {
                        break;
                    }
                }
                None => {
                    links.push(Link::opaque());
                    break;
                }
            }
        }
        links.reverse();
        out.push(Call {
            on_self: on_self(&links),
            chain: links,
            line: line_of(*token),
        });
    }
}

/// Index of the name before `::<...>` ending at `end`, or `end` itself.
fn skip_turbofish(tokens: &[Node], end: usize, src: &str) -> Option<usize> {
    if text(tokens[end], src) != ">" {
        return Some(end);
    }
    let mut depth = 0usize;
    let mut k = end;
    loop {
        match text(tokens[k], src) {
            ">" => depth += 1,
            ">>" => depth += 2,
            "<" => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth == 0 {
            break;
        }
        k = k.checked_sub(1)?;
    }
    // tokens[k] is the opening `<`, preceded by `::` and the name.
    (k >= 2 && tokens[k - 1].kind() == "::").then(|| k - 2)
}

/// The chain element whose last token is at `end`: a name, or a method call
/// `name(...)`, looking through `?` and `.await`. Returns it with the index
/// of its first token.
fn element_before(tokens: &[Node], end: usize, src: &str) -> Option<(Link, usize)> {
    let mut p = end;
    loop {
        match tokens[p].kind() {
            "?" => p = p.checked_sub(1)?,
            "await" if p >= 2 && tokens[p - 1].kind() == "." => p -= 2,
            _ => break,
        }
    }
    let token = tokens[p];
    match token.kind() {
        "identifier" | "self" | "crate" | "super" => Some((Link::name(text(token, src)), p)),
        "token_tree" if text(token, src).starts_with('(') && p >= 1 => {
            let q = skip_turbofish(tokens, p - 1, src)?;
            if tokens[q].kind() == "identifier" {
                let name = Link {
                    name: Some(text(tokens[q], src).to_owned()),
                    called: true,
                };
                Some((name, q))
            } else {
                Some((Link::opaque(), p))
            }
        }
        _ => Some((Link::opaque(), p)),
    }
}
