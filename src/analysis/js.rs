//! JavaScript, TypeScript and TSX (tree-sitter-javascript 0.25,
//! tree-sitter-typescript 0.23; the three grammars share these node kinds).
//!
//! Call sites: `call_expression` nodes (also optional calls `f?.()` and
//! tagged templates). The chain follows `member_expression` objects
//! (optional chaining `a?.b` included), `call_expression` functions and TS
//! non-null assertions (`this.client!.chat`); `this` is a name, anything else
//! (`await x`, `(expr)`, `new C()`, subscripts) an opaque receiver. Template
//! text is not code, `${...}` substitutions are; JSX `{...}` expressions are.
//! `new OpenAI()` is a `new_expression`, not a call.
//!
//! Imports: `import { generateText as gen } from "ai"` makes `gen` stand for
//! `generateText`, as does `const { generateText: gen } = require("ai")`.
//! Namespace imports need nothing (`ai.generateText` ends with the shape).
//!
//! Complexity: function declarations, methods (class and object), and arrow
//! functions / function expressions bound to a name (variable, class field,
//! object property, assignment) are functions, named `Class.method` (TS
//! namespaces and modules prefix too: `Util.clamp`); other
//! arrows and function expressions (callbacks) belong to the enclosing
//! function. +1 for `if`, `for`, `for..in/of`, `while`, `do`, `catch`, `?:`,
//! each `&&`/`||`/`??` and `&&=`/`||=`/`??=`, each `case` of a `switch`
//! (`default` adds nothing). Optional chaining `?.` is not a decision.

use tree_sitter::Node;

use super::engine::{
    self, callee_chain, field, function_named_by, line_of, text, Call, Facts, Role, Step, Syntax,
};
use super::shapes::Link;

pub(crate) struct Js;

impl Syntax for Js {
    fn facts(&self, root: Node, src: &str) -> Facts {
        let mut facts = Facts::default();
        engine::visit(root, |node| {
            match node.kind() {
                "import_specifier" => {
                    if let (Some(name), Some(alias)) = (field(node, "name"), field(node, "alias")) {
                        facts
                            .imports
                            .insert(text(alias, src).to_owned(), vec![unquote(text(name, src))]);
                    }
                }
                "variable_declarator" => require_destructuring(node, src, &mut facts),
                "function_declaration" | "generator_function_declaration" | "method_definition" => {
                    if let Some(name) = field(node, "name") {
                        facts.defined.insert(text(name, src).to_owned());
                    }
                }
                "arrow_function" | "function_expression" | "generator_function" => {
                    if let Some((name, _)) = bound_name(node, src) {
                        facts.defined.insert(name);
                    }
                }
                _ => {}
            }
            true
        });
        facts
    }

    fn call(&self, node: Node, src: &str) -> Option<Call> {
        if node.kind() != "call_expression" {
            return None;
        }
        let function = field(node, "function")?;
        if matches!(function.kind(), "import" | "super") {
            return None;
        }
        let chain = chain(function, src);
        let args = field(node, "arguments")?;
        let on_self = chain.len() == 2 && chain[0].name.as_deref() == Some("this");
        Some(Call {
            chain,
            line: line_of(args),
            on_self,
        })
    }

    fn role(&self, node: Node, src: &str) -> Role {
        match node.kind() {
            "function_declaration" | "generator_function_declaration" | "method_definition" => {
                function_named_by(node, "name", src)
            }
            "class_declaration"
            | "abstract_class_declaration"
            | "class"
            | "internal_module"
            | "module" => match field(node, "name") {
                Some(name) => Role::Scope(unquote(text(name, src))),
                None => Role::None,
            },
            "arrow_function" | "function_expression" | "generator_function" => {
                bound_name(node, src).map_or(Role::Anonymous, |(name, line)| Role::Function {
                    name,
                    line,
                })
            }
            _ => Role::None,
        }
    }

    fn decisions(&self, node: Node, src: &str) -> u32 {
        match node.kind() {
            "if_statement" | "for_statement" | "for_in_statement" | "while_statement"
            | "do_statement" | "catch_clause" | "ternary_expression" | "switch_case" => 1,
            "binary_expression" | "augmented_assignment_expression" => {
                match field(node, "operator").map(|o| text(o, src)) {
                    Some("&&" | "||" | "??" | "&&=" | "||=" | "??=") => 1,
                    _ => 0,
                }
            }
            _ => 0,
        }
    }
}

/// The name an anonymous function is bound to directly, if any.
fn bound_name(node: Node, src: &str) -> Option<(String, u32)> {
    let parent = node.parent()?;
    let is_value = |f: &str| field(parent, f).is_some_and(|v| v.id() == node.id());
    let name = match parent.kind() {
        "variable_declarator" if is_value("value") => {
            field(parent, "name").filter(|n| n.kind() == "identifier")?
        }
        "public_field_definition" if is_value("value") => field(parent, "name")?,
        "field_definition" if is_value("value") => field(parent, "property")?,
        "pair" if is_value("value") => field(parent, "key")?,
        "assignment_expression" if is_value("right") => {
            let left = field(parent, "left")?;
            match left.kind() {
                "identifier" => left,
                "member_expression" => field(left, "property")?,
                _ => return None,
            }
        }
        _ => return None,
    };
    Some((unquote(text(name, src)), line_of(name)))
}

/// `const { generateText: gen } = require("ai")`.
fn require_destructuring(node: Node, src: &str, facts: &mut Facts) {
    let (Some(pattern), Some(value)) = (field(node, "name"), field(node, "value")) else {
        return;
    };
    let is_require = value.kind() == "call_expression"
        && field(value, "function").is_some_and(|f| text(f, src) == "require");
    if pattern.kind() != "object_pattern" || !is_require {
        return;
    }
    for pair in engine::named_children(pattern) {
        if pair.kind() == "pair_pattern" {
            if let (Some(key), Some(value)) = (field(pair, "key"), field(pair, "value")) {
                if value.kind() == "identifier" {
                    facts
                        .imports
                        .insert(text(value, src).to_owned(), vec![unquote(text(key, src))]);
                }
            }
        }
    }
}

fn unquote(s: &str) -> String {
    s.trim_matches(['"', '\'']).to_owned()
}

/// The callee chain of a call's `function` expression, root first.
fn chain(expr: Node, src: &str) -> Vec<Link> {
    callee_chain(expr, src, |node| match node.kind() {
        "identifier" | "this" | "super" => Step::Root,
        "member_expression" => Step::Member(field(node, "property"), field(node, "object")),
        "call_expression" => Step::Call(field(node, "function")),
        // `this.client!.chat`; and `await a.b<T>(x)`, which the TypeScript
        // grammar parses with the `await` inside the callee.
        "non_null_expression" | "await_expression" => Step::Through(node.named_child(0)),
        _ => Step::Unknown,
    })
}
