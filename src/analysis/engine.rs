//! The language-independent part: one walk over the syntax tree that finds
//! call sites and computes per-function complexity, driven by a [`Syntax`]
//! implementation per language.
//!
//! The walk is iterative (a `TreeCursor` with enter/leave events), so deeply
//! nested generated code cannot overflow the stack.
//!
//! Call sites: on every node the language says whether it is a call and what
//! its callee chain is ([`Syntax::call`]); the engine resolves the chain's
//! root through the file's imports ([`Facts::imports`]), drops calls to the
//! file's own functions ([`Facts::defined`], called bare or on `self`/`this`),
//! and matches the rest against the shapes. [`Syntax::skip`] prunes subtrees
//! that hold no code (`@doc`, Elixir `&Mod.fun/1` captures);
//! [`Syntax::unparsed_calls`] finds calls the grammar leaves as tokens (Rust
//! macro arguments).
//!
//! Complexity: [`Syntax::role`] marks scopes (classes, impls, modules, which
//! only prefix names), named functions (a new entry) and anonymous functions
//! (merged into the enclosing function; an entry named `<anonymous>` when
//! there is none). [`Syntax::decisions`] gives each node's decision points,
//! which go to the innermost function entry open at that node.

use std::collections::{HashMap, HashSet};

use tree_sitter::{Node, Tree};

use super::shapes::{Link, ShapeSet};
use super::FunctionComplexity;

/// What a file's top level tells about names, gathered before the walk.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// Local name → the qualified name it stands for, as segments
    /// (`c` → `litellm.completion`, `oa` → `openai`).
    pub(crate) imports: HashMap<String, Vec<String>>,
    /// Names of functions and methods defined in the file.
    pub(crate) defined: HashSet<String>,
}

/// A call expression as the language sees it.
#[derive(Debug)]
pub(crate) struct Call {
    /// Callee chain, root first, the called name last.
    pub(crate) chain: Vec<Link>,
    /// 1-based line of the `(` opening the arguments (of the called name when
    /// there is no parenthesis, e.g. Elixir `x |> Mod.fun`).
    pub(crate) line: u32,
    /// The receiver is the object itself (`self.f()`, `this.f()`, the Go
    /// method receiver), for the own-wrapper rule.
    pub(crate) on_self: bool,
}

/// What a node means for complexity.
#[derive(Debug)]
pub(crate) enum Role {
    None,
    /// A class, impl block, trait, module: prefixes the names inside.
    Scope(String),
    /// A named function: a new entry. `line` is where its name is.
    Function {
        name: String,
        line: u32,
    },
    /// A lambda/closure/arrow not bound to a name.
    Anonymous,
}

/// Per-language knowledge of the syntax tree.
pub(crate) trait Syntax {
    /// Joins scope and function names (`.` or `::`).
    fn separator(&self) -> &'static str {
        "."
    }
    /// Imports and definitions of the file.
    fn facts(&self, root: Node, src: &str) -> Facts;
    /// `Some` when `node` is a call expression.
    fn call(&self, node: Node, src: &str) -> Option<Call>;
    /// Calls inside `node` that the grammar does not parse as calls.
    fn unparsed_calls(&self, _node: Node, _src: &str, _out: &mut Vec<Call>) {}
    /// Whether the subtree at `node` holds no code at all.
    fn skip(&self, _node: Node, _src: &str) -> bool {
        false
    }
    fn role(&self, node: Node, src: &str) -> Role;
    /// Decision points contributed by `node` itself (not its children).
    fn decisions(&self, node: Node, src: &str) -> u32;
}

/// Result of one walk.
pub(crate) struct Walk {
    pub(crate) call_lines: Vec<u32>,
    pub(crate) functions: Vec<FunctionComplexity>,
}

struct Frame {
    node_id: usize,
    entry: usize,
}

/// Walks `tree` once.
pub(crate) fn walk(syntax: &dyn Syntax, tree: &Tree, src: &str, shapes: &ShapeSet) -> Walk {
    let root = tree.root_node();
    let facts = syntax.facts(root, src);
    let mut out = Walk {
        call_lines: Vec::new(),
        functions: Vec::new(),
    };
    let mut names: Vec<(usize, String)> = Vec::new();
    let mut frames: Vec<Frame> = Vec::new();
    let mut extra = Vec::new();

    let mut cursor = root.walk();
    loop {
        // Enter the node under the cursor.
        let node = cursor.node();
        let descend = !syntax.skip(node, src);
        if descend {
            if let Some(call) = syntax.call(node, src) {
                if counts(&call, &facts, shapes) {
                    out.call_lines.push(call.line);
                }
            }
            syntax.unparsed_calls(node, src, &mut extra);
            for call in extra.drain(..) {
                if counts(&call, &facts, shapes) {
                    out.call_lines.push(call.line);
                }
            }
            enter_role(
                syntax,
                node,
                src,
                &mut names,
                &mut frames,
                &mut out.functions,
            );
            let d = syntax.decisions(node, src);
            if d > 0 {
                if let Some(frame) = frames.last() {
                    out.functions[frame.entry].complexity += d;
                }
            }
        }
        if descend && cursor.goto_first_child() {
            continue;
        }
        // Leave nodes until one has a next sibling.
        loop {
            leave(cursor.node().id(), &mut names, &mut frames);
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                out.call_lines.sort_unstable();
                return out;
            }
        }
    }
}

fn enter_role(
    syntax: &dyn Syntax,
    node: Node,
    src: &str,
    names: &mut Vec<(usize, String)>,
    frames: &mut Vec<Frame>,
    functions: &mut Vec<FunctionComplexity>,
) {
    let (name, line) = match syntax.role(node, src) {
        Role::None => return,
        Role::Scope(name) => {
            names.push((node.id(), name));
            return;
        }
        Role::Anonymous if !frames.is_empty() => return,
        Role::Anonymous => ("<anonymous>".to_owned(), line_of(node)),
        Role::Function { name, line } => (name, line),
    };
    let mut qualified: Vec<&str> = names.iter().map(|(_, n)| n.as_str()).collect();
    qualified.push(&name);
    functions.push(FunctionComplexity {
        name: qualified.join(syntax.separator()),
        line,
        complexity: 1,
    });
    frames.push(Frame {
        node_id: node.id(),
        entry: functions.len() - 1,
    });
    names.push((node.id(), name));
}

fn leave(id: usize, names: &mut Vec<(usize, String)>, frames: &mut Vec<Frame>) {
    if names.last().is_some_and(|(n, _)| *n == id) {
        names.pop();
    }
    if frames.last().is_some_and(|f| f.node_id == id) {
        frames.pop();
    }
}

/// Applies the own-wrapper rule, resolves imports and matches the shapes.
fn counts(call: &Call, facts: &Facts, shapes: &ShapeSet) -> bool {
    let chain = &call.chain;
    let Some(Some(last)) = chain.last().map(|l| l.name.as_deref()) else {
        return false;
    };
    // `host.invoke("x")(args)`: the outer call calls what `invoke` returned;
    // the site is the inner call only.
    if chain.last().is_some_and(|l| l.called) {
        return false;
    }
    let own =
        facts.defined.contains(last) && (chain.len() == 1 || (chain.len() == 2 && call.on_self));
    if own {
        return false;
    }
    match resolve(chain, facts) {
        Some(resolved) => shapes.matches(&resolved),
        None => shapes.matches(chain),
    }
}

/// The chain with its root name replaced by what the file imported under it.
fn resolve(chain: &[Link], facts: &Facts) -> Option<Vec<Link>> {
    let root = chain.first()?;
    let target = facts.imports.get(root.name.as_deref()?)?;
    let mut resolved: Vec<Link> = target.iter().map(|s| Link::name(s)).collect();
    if let Some(last) = resolved.last_mut() {
        last.called = root.called;
    }
    resolved.extend(chain[1..].iter().cloned());
    Some(resolved)
}

// ---------------------------------------------------------------------------
// Helpers shared by the language modules.

/// 1-based line of a node's start.
pub(crate) fn line_of(node: Node) -> u32 {
    u32::try_from(node.start_position().row + 1).unwrap_or(u32::MAX)
}

/// What one node of a callee expression is, for [`callee_chain`].
pub(crate) enum Step<'t> {
    /// A name that starts the chain (`client`, `self`, a package).
    Root,
    /// `object.name`: `name` is a link and the walk goes on into `object`
    /// (an unknown receiver when there is none).
    Member(Option<Node<'t>>, Option<Node<'t>>),
    /// `path::name`: like a member, but no path is a rooted name (`::name`).
    Path(Option<Node<'t>>, Option<Node<'t>>),
    /// `f(args)` as a receiver: the walk goes on into `f`, called.
    Call(Option<Node<'t>>),
    /// A node that adds no link (`await x`, `x!`, generics, parentheses).
    Through(Option<Node<'t>>),
    /// Anything else: an unknown receiver ends the chain.
    Unknown,
}

/// The callee chain of a call's `function` expression, root first; what
/// each node is comes from the language's `step`.
pub(crate) fn callee_chain<'t>(
    expr: Node<'t>,
    src: &str,
    step: impl Fn(Node<'t>) -> Step<'t>,
) -> Vec<Link> {
    let mut links = Vec::new();
    let mut current = expr;
    let mut called = false;
    loop {
        let next = match step(current) {
            Step::Root => {
                links.push(Link {
                    name: Some(text(current, src).to_owned()),
                    called,
                });
                break;
            }
            Step::Member(name, object) | Step::Path(name, object @ Some(_)) => {
                links.push(Link {
                    name: name.map(|n| text(n, src).to_owned()),
                    called,
                });
                called = false;
                object
            }
            Step::Path(name, None) => {
                links.push(Link {
                    name: name.map(|n| text(n, src).to_owned()),
                    called,
                });
                break;
            }
            Step::Call(function) => {
                called = true;
                function
            }
            Step::Through(inner) => inner,
            Step::Unknown => None,
        };
        match next {
            Some(next) => current = next,
            None => {
                links.push(Link { name: None, called });
                break;
            }
        }
    }
    links.reverse();
    links
}

/// A function whose name is in `node`'s field `name_field`; anonymous
/// when it has none.
pub(crate) fn function_named_by(node: Node, name_field: &str, src: &str) -> Role {
    match field(node, name_field) {
        Some(name) => Role::Function {
            name: text(name, src).to_owned(),
            line: line_of(name),
        },
        None => Role::Anonymous,
    }
}

/// The source text of a node.
pub(crate) fn text<'s>(node: Node, src: &'s str) -> &'s str {
    src.get(node.byte_range()).unwrap_or("")
}

/// The child in field `field`.
pub(crate) fn field<'t>(node: Node<'t>, field: &str) -> Option<Node<'t>> {
    node.child_by_field_name(field)
}

/// Named children of a node.
pub(crate) fn named_children<'t>(node: Node<'t>) -> Vec<Node<'t>> {
    let mut cursor = node.walk();
    node.named_children(&mut cursor).collect()
}

/// All children (named and anonymous) of a node.
pub(crate) fn children<'t>(node: Node<'t>) -> Vec<Node<'t>> {
    let mut cursor = node.walk();
    node.children(&mut cursor).collect()
}

/// Named children of `node` with the given kind.
pub(crate) fn count_children(node: Node, kinds: &[&str]) -> u32 {
    let mut cursor = node.walk();
    let n = node
        .named_children(&mut cursor)
        .filter(|c| kinds.contains(&c.kind()))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Pre-order visit of every node under `root` (iterative).
pub(crate) fn visit(root: Node, mut f: impl FnMut(Node) -> bool) {
    let mut cursor = root.walk();
    loop {
        let descend = f(cursor.node());
        if descend && cursor.goto_first_child() {
            continue;
        }
        loop {
            if cursor.node().id() == root.id() {
                return;
            }
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return;
            }
        }
    }
}
