//! The LLM endpoint of every run (contract §2b), end to end: the official
//! `openai` and `anthropic` SDKs from PyPI (installed by an environment)
//! calling it plain and streamed in a sandbox with only `lo`; a busybox
//! suite speaking raw HTTP; a hostile suite that tries to impersonate,
//! forge, kill and flood it. Counts are checked exactly, baseline against
//! candidate.

use std::path::Path;

use serde_json::Value;

use crate::support::*;

fn run(home: &TestHome, request: &Value) -> Value {
    let out = home.run_request(request);
    let r = result_json(&out);
    assert_eq!(
        r["status"],
        "success",
        "{r:#}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

/// The calls one run recorded, from genesis's own `llm.jsonl`.
fn recorded_calls(home: &TestHome, id: &str, role: &str) -> Vec<Value> {
    let path = home
        .home()
        .join("sandboxes")
        .join(id)
        .join(role)
        .join("llm.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tokens(text: &str) -> u64 {
    genesis::sandbox::llm::count_tokens(&[text])
}

#[test]
fn the_official_sdks_are_counted_exactly_plain_and_streamed() {
    ensure_image("python");
    let home = TestHome::new(
        r#"default_repo = "app"
[repos.app]
path = "{root}/app"
image = "genesis/python:bookworm"
install_command = "pip install -r requirements.txt"
install_inputs = ["requirements.txt"]
test_command = "python3 -m pytest -q -p no:cacheprovider --junitxml=/genesis/out/junit.xml"
report = "junit:/genesis/out/junit.xml"
llm_answers = "llm_answers.jsonl"
"#,
    );
    let repo = home.root().join("app");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/projects/llm-sdk");
    git_copy(&fixture, &repo);
    let calls = std::fs::read_to_string(repo.join("calls.py")).unwrap();
    let fewer = calls
        .replace("\"openai_chat_plain\": 3", "\"openai_chat_plain\": 1")
        .replace(
            "\"openai_responses_streamed\": 1",
            "\"openai_responses_streamed\": 0",
        )
        .replace("\"anthropic_plain\": 2", "\"anthropic_plain\": 1")
        .replace("\"anthropic_streamed\": 2", "\"anthropic_streamed\": 1");
    assert_ne!(calls, fewer);
    let patch = diff_for(&repo, &[("calls.py", Some(&fewer))]);
    let r = run(&home, &request("llm-sdk-1", "low", &["calls.py"], &patch));

    assert_eq!(r["metrics"]["failures"], 0, "{r:#}");
    let llm = &r["llm"];
    assert_eq!(llm["source"], "observed", "{llm:#}");
    let by_api = |api: &str| {
        (
            llm["by_api"][api]["before"].clone(),
            llm["by_api"][api]["after"].clone(),
        )
    };
    assert_eq!(by_api("openai.chat"), (5.into(), 3.into()), "{llm:#}");
    assert_eq!(by_api("openai.completions"), (1.into(), 1.into()));
    assert_eq!(by_api("openai.responses"), (2.into(), 1.into()));
    assert_eq!(by_api("openai.embeddings"), (1.into(), 1.into()));
    assert_eq!(by_api("anthropic.messages"), (4.into(), 2.into()));
    assert_eq!(llm["calls"]["before"], 13);
    assert_eq!(llm["calls"]["after"], 8);
    assert_eq!(r["metrics"]["llm_reduction"], (13.0 - 8.0) / 13.0);

    // Prompt tokens as o200k_base counts them: every call asks the same
    // question but the embeddings, which embed "alpha" and "beta".
    let question = tokens("What is the capital of France?");
    let embedded = tokens("alpha") + tokens("beta");
    assert_eq!(llm["tokens"]["before"], 12 * question + embedded);
    assert_eq!(llm["tokens"]["after"], 7 * question + embedded);

    // The record: every call, streamed ones marked, all answered 200.
    let baseline = recorded_calls(&home, "llm-sdk-1", "baseline");
    assert_eq!(baseline.len(), 13);
    assert!(baseline.iter().all(|c| c["status"] == 200), "{baseline:#?}");
    let streamed = baseline.iter().filter(|c| c["streamed"] == true).count();
    assert_eq!(streamed, 2 + 1 + 2, "{baseline:#?}");
    assert_eq!(recorded_calls(&home, "llm-sdk-1", "candidate").len(), 8);
    assert!(home.containers_left().is_empty());
}

const BUSYBOX_CONFIG: &str = r#"default_repo = "app"
[repos.app]
path = "{root}/app"
image = "genesis/busybox:latest"
test_command = "sh suite.sh"
report = "tap"

[llm]
port = 8080
max_calls = 10
max_request_bytes = 4096
"#;

/// Raw HTTP with busybox's wget: one call per API family, an unknown path,
/// and (in the candidate) the hostile part from `hostile.sh` if present.
const SUITE: &str = r#"post() { wget -q -O "/tmp/answer.$1" --header 'Content-Type: application/json' --post-data "$3" "$GENESIS_LLM_URL$2"; }
echo 1..5
post 1 /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"What is the capital of France?"}]}' && grep -q '"object":"chat.completion"' /tmp/answer.1 && echo ok 1 - openai chat || echo not ok 1 - openai chat
post 2 /v1/messages '{"model":"c","max_tokens":9,"stream":true,"messages":[{"role":"user","content":"capital of France"}]}' && grep -q 'event: message_stop' /tmp/answer.2 && echo ok 2 - anthropic stream || echo not ok 2 - anthropic stream
post 3 /api/chat '{"model":"llama3","messages":[{"role":"user","content":"hi"}]}' && grep -q '"done":true' /tmp/answer.3 && echo ok 3 - ollama chat || echo not ok 3 - ollama chat
if wget -q -O /tmp/answer.4 "$GENESIS_LLM_URL/v1/models"; then echo not ok 4 - unknown path; else echo ok 4 - unknown path answered 404; fi
if [ -f hostile.sh ]; then . ./hostile.sh; else echo ok 5 - hostile part; fi
"#;

/// Tries to impersonate (bind the endpoint's port, unprivileged here),
/// forge (write a record where one might be read), find a process to kill
/// (the endpoint is none of the sandbox's), and flood (calls past
/// `max_calls`, a body past `max_request_bytes`) the endpoint.
const HOSTILE: &str = r##"port=${GENESIS_LLM_URL##*:}
timeout 2 nc -l -p "$port" 2>/dev/null; bind=$?
for f in /genesis/out/llm.jsonl /tmp/llm.jsonl; do printf '{"call":1,"api":"openai.chat"}\n%.0s' 1 2 3 4 5 > "$f"; done
seen=0; for c in /proc/[0-9]*/comm; do [ "$(cat "$c" 2>/dev/null)" = genesis ] && seen=1; done
head -c 8192 /dev/zero | tr '\0' a > /tmp/big
wget -q -O /dev/null --post-file /tmp/big "$GENESIS_LLM_URL/v1/chat/completions"
i=0; refused=0
while [ $i -lt 30 ]; do post flood /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"flood"}]}' || refused=$((refused+1)); i=$((i+1)); done
echo "# bind exit $bind (1: in use), genesis seen $seen, $refused of 30 flood calls refused"
if [ $bind -eq 1 ] && [ $seen -eq 0 ] && [ $refused -eq 24 ]; then echo ok 5 - hostile part; else echo not ok 5 - hostile part; fi
"##;

#[test]
fn a_busybox_suite_is_answered_and_a_hostile_one_cannot_forge_or_flood_the_record() {
    ensure_image("busybox");
    let home = TestHome::new(BUSYBOX_CONFIG);
    let repo = home.root().join("app");
    git_repo(&repo, &[("suite.sh", SUITE)]);
    let patch = diff_for(&repo, &[("hostile.sh", Some(HOSTILE))]);
    let r = run(
        &home,
        &request("llm-hostile", "high", &["hostile.sh"], &patch),
    );

    // Both suites passed every test: the hostile one saw its bind fail,
    // no endpoint process among its own, and 24 of its 30 flood calls
    // refused (3 + 1 + 6 = 10 recorded before the budget ran out).
    let log = home.home().join("sandboxes/llm-hostile/candidate/test.log");
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(r["metrics"]["failures"], 0, "{r:#}\n{log}");
    assert_eq!(r["metrics"]["test_count"], 5);
    let llm = &r["llm"];
    assert_eq!(llm["calls"]["before"], 3, "{llm:#}");
    assert_eq!(llm["by_api"]["other"]["before"], 1);
    // The candidate: 3 calls, the unknown path, then 6 of the flood; the
    // oversized body and 24 flood calls refused.
    assert_eq!(llm["calls"]["after"], 9, "{llm:#}");
    assert_eq!(llm["by_api"]["openai.chat"]["after"], 7);
    assert_eq!(llm["refused"]["after"], 25);
    assert_eq!(llm["refused"]["before"], 0);

    // The record is genesis's, not what the suite wrote into /genesis/out.
    let candidate = recorded_calls(&home, "llm-hostile", "candidate");
    assert_eq!(candidate.len(), 10);
    let numbers: Vec<u64> = candidate
        .iter()
        .map(|c| c["call"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<_>>());
    let forged = home
        .home()
        .join("sandboxes/llm-hostile/candidate/out/llm.jsonl");
    assert_ne!(
        std::fs::read_to_string(forged).unwrap_or_default(),
        std::fs::read_to_string(
            home.home()
                .join("sandboxes/llm-hostile/candidate/llm.jsonl")
        )
        .unwrap()
    );
    assert!(home.containers_left().is_empty());
}

#[test]
fn a_repo_without_the_stub_says_so_and_falls_back_to_the_static_count() {
    ensure_image("busybox");
    let home = TestHome::new(
        r#"default_repo = "app"
[repos.app]
path = "{root}/app"
image = "genesis/busybox:latest"
test_command = "sh suite.sh"
report = "tap"
llm_stub = false
"#,
    );
    let repo = home.root().join("app");
    git_repo(
        &repo,
        &[(
            "suite.sh",
            "echo 1..1; [ -z \"$GENESIS_LLM_URL\" ] && echo ok 1 - no endpoint || echo not ok 1\n",
        )],
    );
    let patch = diff_for(&repo, &[("x.txt", Some("x\n"))]);
    let r = run(&home, &request("llm-off", "high", &["x.txt"], &patch));
    assert_eq!(r["metrics"]["failures"], 0, "{r:#}");
    assert_eq!(r["llm"]["source"], "static");
    assert_eq!(r["llm"]["unavailable"], "the repo's llm_stub is false");
    assert!(!home
        .home()
        .join("sandboxes/llm-off/candidate/llm.jsonl")
        .exists());
}
