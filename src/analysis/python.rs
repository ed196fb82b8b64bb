//! Python (tree-sitter-python 0.25).
//!
//! Call sites: `call` nodes; the chain follows `attribute` objects and `call`
//! functions down to an `identifier` root (anything else — `await x`, a
//! parenthesized expression, a subscript, a literal — is an opaque receiver).
//! Docstrings and other strings are `string` nodes without calls, except the
//! fields of f-strings, which are parsed expressions and so are counted.
//!
//! Imports (anywhere in the file, also inside functions and `try`):
//! `import a.b as x` makes `x` stand for `a.b`; `from m import n as k` makes
//! `k` stand for `m.n`. Relative imports (`from .m import n`) map nothing: a
//! module of the project is never a client library.
//!
//! Complexity: `def` (also `async def`, methods) is a function named
//! `Class.method`, nested defs `outer.inner`; `lambda` belongs to the
//! enclosing def, or is a function named after the target of `name = lambda`.
//! +1 for `if`, `elif`, `for`, `while`, `except` (also `except*`), each
//! `and`/`or`, a conditional expression, each `for` and `if` of a
//! comprehension; a `match` adds one per `case` after the first. `else`,
//! `finally`, `with`, `assert` and `return` add nothing.

use tree_sitter::Node;

use super::engine::{self, field, function_named_by, line_of, text, Call, Facts, Role, Syntax};
use super::shapes::Link;

pub(crate) struct Python;

impl Syntax for Python {
    fn facts(&self, root: Node, src: &str) -> Facts {
        let mut facts = Facts::default();
        engine::visit(root, |node| {
            match node.kind() {
                "import_statement" => import(node, src, &mut facts),
                "import_from_statement" => import_from(node, src, &mut facts),
                "function_definition" => {
                    if let Some(name) = field(node, "name") {
                        facts.defined.insert(text(name, src).to_owned());
                    }
                }
                _ => {}
            }
            true
        });
        facts
    }

    fn call(&self, node: Node, src: &str) -> Option<Call> {
        if node.kind() != "call" {
            return None;
        }
        let chain = chain(field(node, "function")?, src);
        let args = field(node, "arguments")?;
        let on_self = chain.len() == 2 && matches!(chain[0].name.as_deref(), Some("self" | "cls"));
        Some(Call {
            chain,
            line: line_of(args),
            on_self,
        })
    }

    fn role(&self, node: Node, src: &str) -> Role {
        match node.kind() {
            "function_definition" => function_named_by(node, "name", src),
            "class_definition" => match field(node, "name") {
                Some(name) => Role::Scope(text(name, src).to_owned()),
                None => Role::None,
            },
            "lambda" => bound_name(node, src).map_or(Role::Anonymous, |(name, line)| {
                Role::Function { name, line }
            }),
            _ => Role::None,
        }
    }

    fn decisions(&self, node: Node, _src: &str) -> u32 {
        match node.kind() {
            "if_statement"
            | "elif_clause"
            | "for_statement"
            | "while_statement"
            | "except_clause"
            | "conditional_expression"
            | "boolean_operator"
            | "for_in_clause"
            | "if_clause" => 1,
            "match_statement" => field(node, "body").map_or(0, |body| {
                engine::count_children(body, &["case_clause"]).saturating_sub(1)
            }),
            _ => 0,
        }
    }
}

/// `name = lambda ...`: the lambda is the whole right-hand side of a plain
/// assignment to one name.
fn bound_name(node: Node, src: &str) -> Option<(String, u32)> {
    let parent = node.parent()?;
    if parent.kind() != "assignment" || field(parent, "right")?.id() != node.id() {
        return None;
    }
    let left = field(parent, "left")?;
    (left.kind() == "identifier").then(|| (text(left, src).to_owned(), line_of(left)))
}

/// The callee chain of a call's `function` expression, root first.
pub(crate) fn chain(expr: Node, src: &str) -> Vec<Link> {
    let mut links = Vec::new();
    let mut current = expr;
    let mut called = false;
    loop {
        match current.kind() {
            "identifier" => {
                links.push(Link {
                    name: Some(text(current, src).to_owned()),
                    called,
                });
                break;
            }
            "attribute" => {
                let (Some(attribute), Some(object)) =
                    (field(current, "attribute"), field(current, "object"))
                else {
                    links.push(Link::opaque());
                    break;
                };
                links.push(Link {
                    name: Some(text(attribute, src).to_owned()),
                    called,
                });
                called = false;
                current = object;
            }
            "call" => match field(current, "function") {
                Some(function) => {
                    called = true;
                    current = function;
                }
                None => {
                    links.push(Link::opaque());
                    break;
                }
            },
            _ => {
                links.push(Link { name: None, called });
                break;
            }
        }
    }
    links.reverse();
    links
}

fn dotted(node: Node, src: &str) -> Vec<String> {
    engine::named_children(node)
        .into_iter()
        .filter(|c| c.kind() == "identifier")
        .map(|c| text(c, src).to_owned())
        .collect()
}

/// `import a.b.c` (binds `a`, nothing to resolve) and `import a.b as x`.
fn import(node: Node, src: &str, facts: &mut Facts) {
    let mut cursor = node.walk();
    for name in node.children_by_field_name("name", &mut cursor) {
        if name.kind() == "aliased_import" {
            if let (Some(target), Some(alias)) = (field(name, "name"), field(name, "alias")) {
                facts
                    .imports
                    .insert(text(alias, src).to_owned(), dotted(target, src));
            }
        }
    }
}

/// `from m.n import a, b as c` (absolute modules only).
fn import_from(node: Node, src: &str, facts: &mut Facts) {
    let Some(module) = field(node, "module_name") else {
        return;
    };
    if module.kind() != "dotted_name" {
        return; // relative import: the project's own module
    }
    let module = dotted(module, src);
    let mut cursor = node.walk();
    for name in node.children_by_field_name("name", &mut cursor) {
        let (target, local) = match name.kind() {
            "aliased_import" => match (field(name, "name"), field(name, "alias")) {
                (Some(target), Some(alias)) => (dotted(target, src), text(alias, src).to_owned()),
                _ => continue,
            },
            "dotted_name" => {
                let target = dotted(name, src);
                match target.first() {
                    Some(first) => (target.clone(), first.clone()),
                    None => continue,
                }
            }
            _ => continue,
        };
        let mut full = module.clone();
        full.extend(target);
        facts.imports.insert(local, full);
    }
}
