//! The framing each official SDK parses, checked with a decoder that reads
//! server-sent events the way theirs do (`event:` and `data:` lines, an
//! event per blank line; the `openai` package stops at `data: [DONE]`,
//! the `anthropic` package dispatches on the event name).

use super::*;

fn answer(text: &str) -> Answer<'_> {
    Answer {
        call: 7,
        text,
        prompt_tokens: 5,
        answer_tokens: 2,
        embedding_dimensions: 8,
    }
}

/// (event name, data) per event, as an SDK's SSE decoder yields them.
fn decode_sse(body: &[u8]) -> Vec<(Option<String>, String)> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("\n\n"), "every event ends with a blank line");
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                } else {
                    panic!("a line an SSE decoder would not read: {line:?}");
                }
            }
            (event, data.join("\n"))
        })
        .collect()
}

fn parse(api: LlmApi, body: &str) -> Prompt {
    Prompt::parse(api, body.as_bytes()).unwrap()
}

#[test]
fn openai_chat_stream_is_data_lines_then_done() {
    let prompt = parse(
        LlmApi::OpenAiChat,
        r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},
            "messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
    );
    assert!(prompt.streamed && prompt.include_usage);
    assert_eq!(prompt.last_user, "hi");
    assert_eq!(prompt.texts, ["be brief", "hi"]);
    let reply = reply(LlmApi::OpenAiChat, &prompt, &answer("Paris"));
    assert_eq!(reply.content_type, "text/event-stream");
    let events = decode_sse(&reply.body);
    assert_eq!(events.last().unwrap(), &(None, "[DONE]".to_string()));
    let mut text = String::new();
    let mut finish = None;
    for (event, data) in &events[..events.len() - 1] {
        assert!(event.is_none(), "chat chunks carry no event name");
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o");
        if let Some(choice) = chunk["choices"].get(0) {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            if !choice["finish_reason"].is_null() {
                finish = Some(choice["finish_reason"].clone());
            }
        } else {
            assert_eq!(chunk["usage"]["prompt_tokens"], 5);
        }
    }
    assert_eq!(text, "Paris");
    assert_eq!(finish, Some(json!("stop")));
}

#[test]
fn openai_plain_answers_have_the_sdk_shapes() {
    let chat = reply(
        LlmApi::OpenAiChat,
        &parse(
            LlmApi::OpenAiChat,
            r#"{"model":"m","messages":[{"role":"user","content":"q"}]}"#,
        ),
        &answer("a"),
    );
    let v: Value = serde_json::from_slice(&chat.body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "a");
    assert_eq!(v["usage"]["total_tokens"], 7);

    let completion = parse(
        LlmApi::OpenAiCompletions,
        r#"{"model":"m","prompt":"2+2=","stream":true}"#,
    );
    assert_eq!(completion.last_user, "2+2=");
    let events = decode_sse(&reply(LlmApi::OpenAiCompletions, &completion, &answer("4")).body);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let first: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(first["object"], "text_completion");
    assert_eq!(first["choices"][0]["text"], "4");
}

#[test]
fn openai_responses_stream_names_each_event_by_its_type() {
    let prompt = parse(
        LlmApi::OpenAiResponses,
        r#"{"model":"m","stream":true,"instructions":"sys","input":[{"role":"user","content":[{"type":"input_text","text":"q"}]}]}"#,
    );
    assert_eq!(prompt.texts, ["sys", "q"]);
    let events = decode_sse(&reply(LlmApi::OpenAiResponses, &prompt, &answer("ok")).body);
    let mut deltas = String::new();
    for (n, (event, data)) in events.iter().enumerate() {
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(event.as_deref(), v["type"].as_str());
        assert_eq!(v["sequence_number"], n);
        if v["type"] == "response.output_text.delta" {
            deltas.push_str(v["delta"].as_str().unwrap());
        }
    }
    assert_eq!(events[0].0.as_deref(), Some("response.created"));
    let last: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(last["type"], "response.completed");
    assert_eq!(last["response"]["output"][0]["content"][0]["text"], "ok");
    assert_eq!(deltas, "ok");
    assert!(
        events.iter().all(|(_, d)| d != "[DONE]"),
        "responses streams end without [DONE]"
    );
}

#[test]
fn anthropic_stream_runs_message_start_to_message_stop() {
    let prompt = parse(
        LlmApi::AnthropicMessages,
        r#"{"model":"claude","max_tokens":10,"stream":true,"system":[{"type":"text","text":"sys"}],
            "messages":[{"role":"user","content":"q"}]}"#,
    );
    assert_eq!(prompt.texts, ["sys", "q"]);
    let events = decode_sse(&reply(LlmApi::AnthropicMessages, &prompt, &answer("hello")).body);
    let names: Vec<_> = events.iter().map(|(e, _)| e.clone().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (event, data) in &events {
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(event.as_deref(), v["type"].as_str());
    }
    let start: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(start["message"]["usage"]["input_tokens"], 5);
    let delta: Value = serde_json::from_str(&events[3].1).unwrap();
    assert_eq!(delta["delta"]["text"], "hello");

    let plain = Prompt {
        streamed: false,
        ..prompt
    };
    let v: Value =
        serde_json::from_slice(&reply(LlmApi::AnthropicMessages, &plain, &answer("hi")).body)
            .unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0], json!({"type": "text", "text": "hi"}));
    assert_eq!(v["usage"]["output_tokens"], 2);
}

#[test]
fn ollama_streams_ndjson_unless_told_not_to() {
    let streamed = parse(
        LlmApi::OllamaChat,
        r#"{"model":"llama3","messages":[{"role":"user","content":"q"}]}"#,
    );
    assert!(streamed.streamed, "Ollama streams by default");
    let r = reply(LlmApi::OllamaChat, &streamed, &answer("a"));
    assert_eq!(r.content_type, "application/x-ndjson");
    let lines: Vec<Value> = std::str::from_utf8(&r.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["message"]["content"], "a");
    assert_eq!(lines[1]["done"], true);

    let generate = parse(
        LlmApi::OllamaGenerate,
        r#"{"model":"m","prompt":"q","stream":false}"#,
    );
    let v: Value =
        serde_json::from_slice(&reply(LlmApi::OllamaGenerate, &generate, &answer("b")).body)
            .unwrap();
    assert_eq!(
        (v["response"].as_str(), v["done"].as_bool()),
        (Some("b"), Some(true))
    );
}

#[test]
fn embeddings_are_deterministic_unit_vectors_in_either_encoding() {
    let floats = parse(
        LlmApi::OpenAiEmbeddings,
        r#"{"model":"e","input":["a","b"]}"#,
    );
    let v: Value =
        serde_json::from_slice(&reply(LlmApi::OpenAiEmbeddings, &floats, &answer("")).body)
            .unwrap();
    let first: Vec<f32> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(first.len(), 8);
    assert!((first.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
    assert_eq!(first, embedding("a", 8));
    assert_ne!(first, embedding("b", 8));

    // The Python SDK asks for base64 by default and decodes little-endian f32.
    let b64 = parse(
        LlmApi::OpenAiEmbeddings,
        r#"{"model":"e","input":"a","encoding_format":"base64","dimensions":4}"#,
    );
    let v: Value =
        serde_json::from_slice(&reply(LlmApi::OpenAiEmbeddings, &b64, &answer("")).body).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, embedding("a", 4));
}

#[test]
fn bad_bodies_are_sentences_not_panics() {
    assert!(Prompt::parse(LlmApi::OpenAiChat, b"not json")
        .unwrap_err()
        .contains("not JSON"));
    assert!(Prompt::parse(LlmApi::OpenAiChat, b"[1]")
        .unwrap_err()
        .contains("object"));
    let odd = parse(LlmApi::OpenAiChat, r#"{"messages":"x","model":7}"#);
    assert_eq!(odd, Prompt::default());
}
