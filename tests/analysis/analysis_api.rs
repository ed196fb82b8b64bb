//! The public API: policy loading and validation, language detection,
//! errors, JSON shape, thread safety.

use genesis::analysis::{AnalysisError, Analyzer, Language, Report, Shapes};

fn analyzer() -> Analyzer {
    Analyzer::new(Shapes::builtin()).unwrap()
}

#[test]
fn builtin_policy_has_every_table() {
    let shapes = Shapes::builtin();
    for table in [
        &shapes.python,
        &shapes.javascript,
        &shapes.rust,
        &shapes.go,
        &shapes.elixir,
    ] {
        assert!(!table.calls.is_empty());
    }
}

#[test]
fn unknown_keys_are_rejected_and_named() {
    for (text, needle) in [
        ("[python]\ncall = ['*.invoke']", "call"),
        ("[pyhton]\ncalls = []", "pyhton"),
        ("[extensions]\npyw = 'pithon'", "pithon"),
    ] {
        let err = Shapes::from_toml_str(text, "policies/custom.toml").unwrap_err();
        assert!(matches!(err, AnalysisError::Policy { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("policies/custom.toml"), "{message}");
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn bad_shape_error_names_file_table_and_shape() {
    let err = Shapes::from_toml_str("[go]\ncalls = ['*.Chat.', 'ok']", "p.toml").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, AnalysisError::Pattern { .. }));
    assert!(
        message.contains("p.toml") && message.contains("[go]") && message.contains("`*.Chat.`"),
        "{message}"
    );

    let err = Shapes::from_toml_str("[rust]\ncalls = ['*.chat().create()']", "p.toml").unwrap_err();
    assert!(err.to_string().contains("without `()`"), "{err}");
}

#[test]
fn user_shapes_and_extensions_apply() {
    let policy = "[extensions]\npyw = 'python'\nJSX = 'tsx'\n\n[python]\ncalls = ['*.generate_text', 'mistral_chat.complete']\n";
    let analyzer = Analyzer::new(Shapes::from_toml_str(policy, "custom.toml").unwrap()).unwrap();
    assert_eq!(analyzer.language_for("tool.PYW"), Some(Language::Python));
    assert_eq!(analyzer.language_for("ui/App.jsx"), Some(Language::Tsx));
    let source = "from mistral_chat import complete as c\nclient.generate_text(x)\nc(x)\nclient.chat.completions.create(x)\n";
    let got = analyzer.analyze("a.pyw", source, None).unwrap();
    // Only the user's shapes are in this policy: the OpenAI call is not one.
    assert_eq!(got.llm_call_lines, vec![2, 3]);
}

#[test]
fn language_detection() {
    let a = analyzer();
    for (path, language) in [
        ("a.py", Some(Language::Python)),
        ("src/lib.RS", Some(Language::Rust)),
        ("web/x.mjs", Some(Language::JavaScript)),
        ("web/x.cts", Some(Language::TypeScript)),
        ("web/x.tsx", Some(Language::Tsx)),
        ("cmd/main.go", Some(Language::Go)),
        ("lib/a.exs", Some(Language::Elixir)),
        ("dir.py/README.md", None),
        ("Makefile", None),
        (".py", None),
    ] {
        assert_eq!(a.language_for(path), language, "{path}");
    }
}

#[test]
fn unknown_language_is_an_error_naming_the_file_and_override_works() {
    let a = analyzer();
    let err = a
        .analyze("notes/README.md", "llm.call(x)", None)
        .unwrap_err();
    assert!(matches!(err, AnalysisError::UnknownLanguage { .. }));
    assert!(err.to_string().contains("notes/README.md"));
    let got = a
        .analyze("script", "llm.call(x)\n", Some(Language::Python))
        .unwrap();
    assert_eq!(got.llm_call_lines, vec![1]);
}

#[test]
fn syntax_errors_are_not_fatal() {
    let got = analyzer()
        .analyze(
            "broken.py",
            "def f(:\n    client.chat.completions.create(x)\n",
            None,
        )
        .unwrap();
    assert_eq!(got.language, Language::Python);
}

#[test]
fn json_matches_the_contract_shape() {
    let a = analyzer();
    let file = a
        .analyze(
            "agent.py",
            "def ask(c, q):\n    if q:\n        return c.chat.completions.create(q)\n",
            None,
        )
        .unwrap();
    let report = Report::new(vec![file]);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "files": [{
                "path": "agent.py",
                "language": "python",
                "llm_call_sites": 1,
                "llm_call_lines": [3],
                "complexity": 2,
                "functions": [{"name": "ask", "line": 1, "complexity": 2}]
            }],
            "totals": {"files": 1, "llm_call_sites": 1, "complexity": 2}
        })
    );
}

#[test]
fn analyzer_is_shared_across_threads() {
    let a = std::sync::Arc::new(analyzer());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let a = a.clone();
            std::thread::spawn(move || {
                let src = format!("x = {i}\nllm.invoke(x)\n");
                a.analyze("t.py", &src, None).unwrap().llm_call_lines
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), vec![2]);
    }
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let depth = 20_000;
    let source = format!("x = {}1{}\n", "(".repeat(depth), ")".repeat(depth));
    let expr = format!("y = 1{}\n", " + 1".repeat(depth));
    let a = analyzer();
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            a.analyze("deep.py", &source, None).unwrap();
            a.analyze("long.py", &expr, None).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}
