//! Go (tree-sitter-go 0.25).
//!
//! Call sites: `call_expression` nodes; the chain follows `selector_expression`
//! operands and `call_expression` functions (`client.Chat.Completions.New`,
//! `llms.GenerateFromSinglePrompt`). Raw and interpreted strings and comments
//! hold no calls.
//!
//! Imports: a named import (`l "github.com/tmc/langchaingo/llms"`) makes `l`
//! stand for the package's own name (last path element, skipping a `/vN`
//! suffix and a `go-` prefix or `-go` suffix), so `l.GenerateFromSinglePrompt`
//! reads as `llms.GenerateFromSinglePrompt`. Dot and blank imports map nothing.
//!
//! The own-wrapper rule treats a method's receiver (`c` in `func (c *Client)`)
//! like `self`: `c.CreateChatCompletion(...)` inside a file that defines
//! `CreateChatCompletion` is the file's own wrapper.
//!
//! Complexity: `func` declarations are functions, methods named `Type.Method`;
//! a `func` literal bound by `f := func(...)`/`var f = func(...)` is a
//! function named `f`, other literals belong to the enclosing function. +1
//! for `if`, `for` (every form), each `case` of an expression switch, a type
//! switch and a `select` (`default` adds nothing), each `&&`/`||`.

use tree_sitter::Node;

use super::engine::{
    self, callee_chain, field, function_named_by, line_of, text, Call, Facts, Role, Step, Syntax,
};
use super::shapes::Link;

pub(crate) struct Go;

impl Syntax for Go {
    fn facts(&self, root: Node, src: &str) -> Facts {
        let mut facts = Facts::default();
        engine::visit(root, |node| {
            match node.kind() {
                "import_spec" => {
                    let name = field(node, "name").filter(|n| n.kind() == "package_identifier");
                    if let (Some(name), Some(path)) = (name, field(node, "path")) {
                        let package = package_name(text(path, src));
                        if !package.is_empty() {
                            facts
                                .imports
                                .insert(text(name, src).to_owned(), vec![package]);
                        }
                    }
                }
                "function_declaration" | "method_declaration" => {
                    if let Some(name) = field(node, "name") {
                        facts.defined.insert(text(name, src).to_owned());
                    }
                }
                _ => {}
            }
            // Imports and declarations are at the top level: no need to
            // descend into bodies.
            matches!(
                node.kind(),
                "source_file" | "import_declaration" | "import_spec_list"
            )
        });
        facts
    }

    fn call(&self, node: Node, src: &str) -> Option<Call> {
        if node.kind() != "call_expression" {
            return None;
        }
        let chain = chain(field(node, "function")?, src);
        let args = field(node, "arguments")?;
        let on_self = chain.len() == 2
            && chain[0]
                .name
                .as_deref()
                .is_some_and(|root| receiver_name(node, src).as_deref() == Some(root));
        Some(Call {
            chain,
            line: line_of(args),
            on_self,
        })
    }

    fn role(&self, node: Node, src: &str) -> Role {
        match node.kind() {
            "function_declaration" => function_named_by(node, "name", src),
            "method_declaration" => match field(node, "name") {
                Some(name) => {
                    let method = text(name, src);
                    let name_text = match receiver_type(node, src) {
                        Some(t) => format!("{t}.{method}"),
                        None => method.to_owned(),
                    };
                    Role::Function {
                        name: name_text,
                        line: line_of(name),
                    }
                }
                None => Role::Anonymous,
            },
            "func_literal" => bound_name(node, src).map_or(Role::Anonymous, |(name, line)| {
                Role::Function { name, line }
            }),
            _ => Role::None,
        }
    }

    fn decisions(&self, node: Node, src: &str) -> u32 {
        match node.kind() {
            "if_statement" | "for_statement" | "expression_case" | "type_case"
            | "communication_case" => 1,
            "binary_expression" => match field(node, "operator").map(|o| text(o, src)) {
                Some("&&" | "||") => 1,
                _ => 0,
            },
            _ => 0,
        }
    }
}

/// `"github.com/sashabaranov/go-openai"` → `openai`, `".../llms"` → `llms`,
/// `".../openai-go/v2"` → `openai`.
fn package_name(quoted: &str) -> String {
    let path = quoted.trim_matches(['"', '`']);
    let mut parts = path.rsplit('/');
    let mut last = parts.next().unwrap_or("");
    let is_version =
        last.len() > 1 && last.starts_with('v') && last[1..].chars().all(|c| c.is_ascii_digit());
    if is_version {
        last = parts.next().unwrap_or(last);
    }
    let last = last.strip_prefix("go-").unwrap_or(last);
    let last = last.strip_suffix("-go").unwrap_or(last);
    last.replace(['-', '.'], "_")
}

/// `f := func() {}` or `var f = func() {}` with one name and one value.
fn bound_name(node: Node, src: &str) -> Option<(String, u32)> {
    let list = node.parent().filter(|p| p.kind() == "expression_list")?;
    if list.named_child_count() != 1 {
        return None;
    }
    let holder = list.parent()?;
    let name = match holder.kind() {
        "short_var_declaration" | "assignment_statement" => {
            let left = field(holder, "left")?;
            (left.named_child_count() == 1).then(|| left.named_child(0))??
        }
        "var_spec" => {
            let names: Vec<Node> = {
                let mut cursor = holder.walk();
                holder.children_by_field_name("name", &mut cursor).collect()
            };
            (names.len() == 1).then(|| names[0])?
        }
        _ => return None,
    };
    (name.kind() == "identifier").then(|| (text(name, src).to_owned(), line_of(name)))
}

/// The receiver variable of the method enclosing `node`.
fn receiver_name(node: Node, src: &str) -> Option<String> {
    let mut current = node.parent();
    while let Some(n) = current {
        if n.kind() == "method_declaration" {
            let receiver = field(n, "receiver")?;
            let param = engine::named_children(receiver)
                .into_iter()
                .find(|c| c.kind() == "parameter_declaration")?;
            return field(param, "name").map(|name| text(name, src).to_owned());
        }
        if n.kind() == "function_declaration" {
            return None;
        }
        current = n.parent();
    }
    None
}

/// `Client` for `(c *Client)`, `(s Stack[T])`.
fn receiver_type(method: Node, src: &str) -> Option<String> {
    let receiver = field(method, "receiver")?;
    let param = engine::named_children(receiver)
        .into_iter()
        .find(|c| c.kind() == "parameter_declaration")?;
    let mut ty = field(param, "type")?;
    loop {
        match ty.kind() {
            "pointer_type" => ty = ty.named_child(0)?,
            "generic_type" => ty = field(ty, "type")?,
            _ => return Some(text(ty, src).to_owned()),
        }
    }
}

/// The callee chain of a call's `function` expression, root first.
fn chain(expr: Node, src: &str) -> Vec<Link> {
    callee_chain(expr, src, |node| match node.kind() {
        "identifier" | "package_identifier" => Step::Root,
        "selector_expression" => Step::Member(field(node, "field"), field(node, "operand")),
        "call_expression" => Step::Call(field(node, "function")),
        _ => Step::Unknown,
    })
}
