//! Elixir (tree-sitter-elixir 0.3).
//!
//! Call sites: `call` nodes whose target is a `dot` — remote calls
//! `Mod.fun(...)` and `var.fun(...)`; the alias is split into segments
//! (`LangChain.Chains.LLMChain.run` is four). Pipes need nothing special:
//! `x |> LLMChain.run()` has a `call` on the right of `|>`. A call without
//! parentheses (`x |> LLMChain.run`, `OpenAI.chat_completion model: m`) is a
//! call too; its line is that of the function name. Local calls (`run(x)`)
//! are calls to the file's own functions or imports, never a default shape;
//! function heads (`def run(x)`) are definitions, not calls.
//!
//! Not code: comments, strings, charlists and sigil text; `@doc`,
//! `@moduledoc`, `@typedoc` and `@shortdoc` attributes are skipped whole
//! (also interpolations inside them). Interpolations `#{...}` in other
//! strings and in lowercase sigils are code. A capture with an arity
//! (`&LLMChain.run/1`) is a reference, not a call; `&LLMChain.run(&1)` is an
//! anonymous function that calls, and counts.
//!
//! Aliases: `alias LangChain.Chains.LLMChain, as: Chain` makes `Chain.run()`
//! read as `LangChain.Chains.LLMChain.run()`; `alias A.{B, C}` works too.
//!
//! Complexity: `def`/`defp`/`defmacro`/`defmacrop` with a body are functions
//! named `Module.name/arity`; the clauses of one `name/arity` are merged into
//! one entry whose complexity is the sum of the clauses' (each clause after
//! the first adds one, like the arms of a `case`). `fn` belongs to the
//! enclosing function (or is named when bound: `f = fn ... end`). +1 for `if`,
//! `unless`, each `and`/`or`/`&&`/`||`, each `rescue`/`catch` clause, each `<-`
//! of `with`, a `for` and each of its filters; `case`, `cond`, `receive`
//! (with its `after`), `with`'s `else` and a multi-clause `fn` add one per
//! clause after the first.

use std::collections::HashMap;

use tree_sitter::Node;

use super::engine::{self, field, line_of, text, Call, Facts, Role, Syntax};
use super::shapes::Link;
use super::FunctionComplexity;

pub(crate) struct Elixir;

const DEFS: &[&str] = &[
    "def",
    "defp",
    "defmacro",
    "defmacrop",
    "defguard",
    "defguardp",
    "defdelegate",
];
const DOC_ATTRIBUTES: &[&str] = &["doc", "moduledoc", "typedoc", "shortdoc"];

impl Syntax for Elixir {
    fn facts(&self, root: Node, src: &str) -> Facts {
        let mut facts = Facts::default();
        engine::visit(root, |node| {
            if node.kind() == "call" {
                match target_name(node, src) {
                    Some("alias") => alias(node, src, &mut facts),
                    Some(def) if DEFS.contains(&def) => {
                        if let Some((name, _, _)) = function_head(node, src) {
                            facts.defined.insert(name);
                        }
                    }
                    _ => {}
                }
            }
            true
        });
        facts
    }

    fn call(&self, node: Node, src: &str) -> Option<Call> {
        if node.kind() != "call" {
            return None;
        }
        let target = field(node, "target")?;
        if target.kind() != "dot" {
            return None; // local call, special form or definition
        }
        let right = field(target, "right")?;
        if right.kind() != "identifier" {
            return None; // `fun.(x)` anonymous call
        }
        let mut chain =
            field(target, "left").map_or_else(|| vec![Link::opaque()], |left| receiver(left, src));
        chain.push(Link::name(text(right, src)));
        let args = engine::named_children(node)
            .into_iter()
            .find(|c| c.kind() == "arguments");
        let line = match args {
            Some(args) if text(args, src).starts_with('(') => line_of(args),
            _ => line_of(right),
        };
        Some(Call {
            chain,
            line,
            on_self: false,
        })
    }

    fn skip(&self, node: Node, src: &str) -> bool {
        match node.kind() {
            // @doc """...""" and friends
            "unary_operator" => {
                let operator = field(node, "operator").map(|o| text(o, src));
                let operand = field(node, "operand");
                match (operator, operand) {
                    (Some("@"), Some(operand)) => {
                        operand.kind() == "call"
                            && target_name(operand, src)
                                .is_some_and(|n| DOC_ATTRIBUTES.contains(&n))
                    }
                    // &Mod.fun/2: a reference
                    (Some("&"), Some(operand)) => {
                        operand.kind() == "binary_operator"
                            && field(operand, "operator").is_some_and(|o| text(o, src) == "/")
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    fn role(&self, node: Node, src: &str) -> Role {
        match node.kind() {
            "call" => match target_name(node, src) {
                Some("defmodule" | "defprotocol" | "defimpl") => first_argument(node)
                    .map_or(Role::None, |a| Role::Scope(text(a, src).to_owned())),
                Some(def) if DEFS.contains(&def) && has_body(node, src) => {
                    match function_head(node, src) {
                        Some((name, arity, line)) => Role::Function {
                            name: format!("{name}/{arity}"),
                            line,
                        },
                        None => Role::None,
                    }
                }
                _ => Role::None,
            },
            "anonymous_function" => {
                let bound = node
                    .parent()
                    .filter(|p| p.kind() == "binary_operator")
                    .and_then(|p| {
                        let is_match = field(p, "operator").is_some_and(|o| text(o, src) == "=");
                        let left = field(p, "left")?;
                        let is_right = field(p, "right").is_some_and(|r| r.id() == node.id());
                        (is_match && is_right && left.kind() == "identifier").then_some(left)
                    });
                match bound {
                    Some(name) => Role::Function {
                        name: format!("{}/{}", text(name, src), fn_arity(node)),
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
            "binary_operator" => match field(node, "operator").map(|o| text(o, src)) {
                Some("and" | "or" | "&&" | "||") => 1,
                _ => 0,
            },
            "anonymous_function" => clauses(node).saturating_sub(1),
            "call" => match target_name(node, src) {
                Some("if" | "unless") => 1,
                Some("case" | "cond") => block_clauses(node, "do_block").saturating_sub(1),
                Some("receive") => (block_clauses(node, "do_block")
                    + block_clauses(node, "after_block"))
                .saturating_sub(1),
                Some("try") => {
                    block_clauses(node, "rescue_block") + block_clauses(node, "catch_block")
                }
                Some("with") => {
                    arrows(node, src) + block_clauses(node, "else_block").saturating_sub(1)
                }
                Some("for") => {
                    let filters = first_arguments(node)
                        .into_iter()
                        .filter(|a| a.kind() != "keywords" && !is_arrow(*a, src))
                        .count();
                    1 + u32::try_from(filters).unwrap_or(u32::MAX)
                }
                _ => 0,
            },
            _ => 0,
        }
    }
}

/// The target identifier of a call (`def`, `case`, a local function name).
fn target_name<'s>(node: Node, src: &'s str) -> Option<&'s str> {
    let target = field(node, "target")?;
    (target.kind() == "identifier").then(|| text(target, src))
}

fn first_arguments(node: Node) -> Vec<Node> {
    engine::named_children(node)
        .into_iter()
        .find(|c| c.kind() == "arguments")
        .map(engine::named_children)
        .unwrap_or_default()
}

fn first_argument(node: Node) -> Option<Node> {
    first_arguments(node).into_iter().next()
}

fn is_arrow(node: Node, src: &str) -> bool {
    node.kind() == "binary_operator"
        && field(node, "operator").is_some_and(|o| text(o, src) == "<-")
}

fn arrows(node: Node, src: &str) -> u32 {
    let n = first_arguments(node)
        .into_iter()
        .filter(|a| is_arrow(*a, src))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Stab clauses (`pattern -> body`) in the call's block of that kind. The
/// grammar nests `else`/`rescue`/`catch`/`after` blocks inside the `do_block`.
fn block_clauses(node: Node, block: &str) -> u32 {
    let mut total = 0;
    for child in engine::named_children(node) {
        if child.kind() == block {
            total += clauses(child);
        } else if child.kind() == "do_block" {
            total += engine::named_children(child)
                .into_iter()
                .filter(|c| c.kind() == block)
                .map(clauses)
                .sum::<u32>();
        }
    }
    total
}

fn clauses(node: Node) -> u32 {
    engine::count_children(node, &["stab_clause"])
}

fn fn_arity(node: Node) -> usize {
    engine::named_children(node)
        .into_iter()
        .find(|c| c.kind() == "stab_clause")
        .and_then(|c| field(c, "left"))
        .map_or(0, |args| args.named_child_count())
}

/// A `def` with a `do` block or a `do:` keyword (not a bodiless head).
fn has_body(node: Node, src: &str) -> bool {
    engine::named_children(node)
        .iter()
        .any(|c| c.kind() == "do_block")
        || first_arguments(node).iter().any(|a| {
            a.kind() == "keywords"
                && engine::named_children(*a).iter().any(|pair| {
                    field(*pair, "key")
                        .is_some_and(|k| text(k, src).trim_end().trim_end_matches(':') == "do")
                })
        })
}

/// `(name, arity, line of name)` of a `def`'s head: `name(args)`,
/// `name(args) when guard`, or a bare `name`.
fn function_head(node: Node, src: &str) -> Option<(String, usize, u32)> {
    let mut head = first_argument(node)?;
    if head.kind() == "binary_operator"
        && field(head, "operator").is_some_and(|o| text(o, src) == "when")
    {
        head = field(head, "left")?;
    }
    match head.kind() {
        "identifier" => Some((text(head, src).to_owned(), 0, line_of(head))),
        "call" => {
            let name = field(head, "target")?;
            if name.kind() != "identifier" {
                return None;
            }
            let arity = first_arguments(head).len();
            Some((text(name, src).to_owned(), arity, line_of(name)))
        }
        _ => None,
    }
}

/// Chain of the left side of a remote call's dot.
fn receiver(node: Node, src: &str) -> Vec<Link> {
    match node.kind() {
        "alias" => text(node, src)
            .split('.')
            .map(|s| Link::name(s.trim()))
            .collect(),
        "identifier" => vec![Link::name(text(node, src))],
        "call" => {
            // Mod.fun().other() / var.fun().other()
            let mut chain = match field(node, "target") {
                Some(t) if t.kind() == "dot" => {
                    let mut c =
                        field(t, "left").map_or_else(|| vec![Link::opaque()], |l| receiver(l, src));
                    c.push(
                        field(t, "right").map_or_else(Link::opaque, |r| Link::name(text(r, src))),
                    );
                    c
                }
                Some(t) if t.kind() == "identifier" => vec![Link::name(text(t, src))],
                _ => vec![Link::opaque()],
            };
            if let Some(last) = chain.last_mut() {
                last.called = true;
            }
            chain
        }
        _ => vec![Link::opaque()],
    }
}

/// `alias A.B.C`, `alias A.B.C, as: D`, `alias A.B.{C, D}`.
fn alias(node: Node, src: &str, facts: &mut Facts) {
    let args = first_arguments(node);
    let Some(target) = args.first() else {
        return;
    };
    let as_name = args.iter().find(|a| a.kind() == "keywords").and_then(|kw| {
        engine::named_children(*kw).into_iter().find_map(|pair| {
            let key = field(pair, "key")?;
            let value = field(pair, "value")?;
            (text(key, src).trim_end().trim_end_matches(':') == "as" && value.kind() == "alias")
                .then(|| text(value, src).to_owned())
        })
    });
    let segments = |s: &str| {
        s.split('.')
            .map(|p| p.trim().to_owned())
            .collect::<Vec<_>>()
    };
    match target.kind() {
        "alias" => {
            let full = segments(text(*target, src));
            let local = as_name.unwrap_or_else(|| full.last().cloned().unwrap_or_default());
            if full.len() > 1 || local != full[0] {
                facts.imports.insert(local, full);
            }
        }
        // alias A.B.{C, D}: a dot whose right side is a tuple... or a call on `{`.
        "dot" => {
            let (Some(left), Some(right)) = (field(*target, "left"), field(*target, "right"))
            else {
                return;
            };
            if right.kind() != "tuple" {
                return;
            }
            let base = segments(text(left, src));
            for member in engine::named_children(right) {
                if member.kind() == "alias" {
                    let mut full = base.clone();
                    full.extend(segments(text(member, src)));
                    let first = segments(text(member, src))
                        .into_iter()
                        .next()
                        .unwrap_or_default();
                    facts.imports.insert(first, full);
                }
            }
        }
        _ => {}
    }
}

/// Merges the clauses of one `name/arity`: one entry at the first clause's
/// line whose complexity is the sum of the clauses'.
pub(crate) fn merge_clauses(functions: Vec<FunctionComplexity>) -> Vec<FunctionComplexity> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut merged: Vec<FunctionComplexity> = Vec::with_capacity(functions.len());
    for f in functions {
        match index.get(&f.name) {
            Some(&i) => merged[i].complexity += f.complexity,
            None => {
                index.insert(f.name.clone(), merged.len());
                merged.push(f);
            }
        }
    }
    merged
}
