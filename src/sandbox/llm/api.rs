//! The model APIs as the official SDKs speak them: what a request asks
//! ([`Prompt`], read from its JSON) and the bytes of the answer, plain or
//! streamed ([`Reply`]). Pure functions, so the framing each SDK parses is
//! unit-tested here.
//!
//! Streams are whole bodies: an SDK reads server-sent events (OpenAI,
//! Anthropic) or NDJSON lines (Ollama) off the byte stream however they
//! are chunked, so the endpoint sends every event at once and the answer
//! is deterministic to the byte.
//!
//! Framing, as the SDKs parse it:
//! - OpenAI chat and completions: `data: {chunk}\n\n` per chunk, no
//!   `event:` line, then `data: [DONE]\n\n`.
//! - OpenAI responses: `event: TYPE\ndata: {"type": TYPE, …}\n\n` from
//!   `response.created` to `response.completed`, no `[DONE]`.
//! - Anthropic messages: `event: TYPE\ndata: {"type": TYPE, …}\n\n` from
//!   `message_start` to `message_stop`.
//! - Ollama: one JSON object per line, the last with `"done": true`;
//!   `stream` defaults to true there, as in Ollama itself.

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest;

use crate::contract::LlmApi;

/// A fixed `created` time, so answers are the same bytes on every run.
const CREATED: u64 = 1_735_689_600;
const CREATED_AT: &str = "2025-01-01T00:00:00Z";

/// What one request asks, as far as the record and the answer need it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prompt {
    pub model: String,
    pub streamed: bool,
    /// Every text of the prompt (system, messages, input), in order:
    /// what the prompt tokens are counted on.
    pub texts: Vec<String>,
    /// The last user message (or the prompt), which answers are matched on.
    pub last_user: String,
    /// Embedding inputs (embedding APIs only).
    pub inputs: Vec<String>,
    /// `dimensions` asked for (OpenAI embeddings).
    pub dimensions: Option<usize>,
    /// OpenAI embeddings asked as base64 (the Python SDK's default).
    pub base64: bool,
    /// OpenAI chat: a final chunk with usage was asked for.
    pub include_usage: bool,
}

impl Prompt {
    /// Reads a request body of `api`; an error is a sentence for a 400.
    pub fn parse(api: LlmApi, body: &[u8]) -> Result<Prompt, String> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| format!("the request body is not JSON: {e}"))?;
        if !value.is_object() {
            return Err("the request body is not a JSON object".into());
        }
        let model = value["model"].as_str().unwrap_or_default().to_owned();
        // Ollama streams unless told not to; the others only when told to.
        let stream_default = matches!(api, LlmApi::OllamaChat | LlmApi::OllamaGenerate);
        let streamed = value["stream"].as_bool().unwrap_or(stream_default);
        let mut prompt = Prompt {
            model,
            streamed,
            ..Prompt::default()
        };
        match api {
            LlmApi::OpenAiChat | LlmApi::OllamaChat => {
                prompt.read_messages(&value["messages"]);
                prompt.include_usage = value["stream_options"]["include_usage"] == true;
            }
            LlmApi::AnthropicMessages => {
                prompt.texts.extend(texts_of(&value["system"]));
                prompt.read_messages(&value["messages"]);
            }
            LlmApi::OpenAiCompletions | LlmApi::OllamaGenerate => {
                prompt.texts.extend(texts_of(&value["system"]));
                let texts = texts_of(&value["prompt"]);
                prompt.last_user = texts.last().cloned().unwrap_or_default();
                prompt.texts.extend(texts);
            }
            LlmApi::OpenAiResponses => {
                prompt.texts.extend(texts_of(&value["instructions"]));
                match &value["input"] {
                    Value::String(s) => {
                        prompt.texts.push(s.clone());
                        prompt.last_user = s.clone();
                    }
                    items => prompt.read_messages(items),
                }
            }
            LlmApi::OpenAiEmbeddings | LlmApi::OllamaEmbed => {
                prompt.inputs = texts_of(&value["input"]);
                prompt.texts = prompt.inputs.clone();
                prompt.dimensions = value["dimensions"].as_u64().map(|d| d as usize);
                prompt.base64 = value["encoding_format"] == "base64";
            }
            LlmApi::OllamaEmbeddings => {
                prompt.inputs = texts_of(&value["prompt"]);
                prompt.texts = prompt.inputs.clone();
            }
            LlmApi::Other => {}
        }
        Ok(prompt)
    }

    /// Chat-style messages (`role` + `content` as text or parts).
    fn read_messages(&mut self, messages: &Value) {
        for message in messages.as_array().into_iter().flatten() {
            let texts = texts_of(&message["content"]);
            if message["role"] == "user" {
                self.last_user = texts.join("\n");
            }
            self.texts.extend(texts);
        }
    }
}

/// The texts in a content value: a string, or an array of strings or of
/// parts with a `text` (OpenAI, Anthropic and Ollama shapes alike).
fn texts_of(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(s) => Some(s.clone()),
                part => part["text"].as_str().map(str::to_owned),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An answer's body and content type.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    /// An error in the shape the OpenAI and Anthropic SDKs both read.
    pub fn error(status: u16, kind: &str, message: &str) -> Reply {
        Reply::json(
            status,
            &json!({"type": "error", "error": {"type": kind, "message": message}}),
        )
    }
}

/// What the answer is made of besides the prompt.
pub struct Answer<'a> {
    /// The `n`th call of the run, for ids.
    pub call: u64,
    pub text: &'a str,
    pub prompt_tokens: u64,
    pub answer_tokens: u64,
    pub embedding_dimensions: usize,
}

/// The reply to `prompt` on `api`.
pub fn reply(api: LlmApi, prompt: &Prompt, answer: &Answer) -> Reply {
    let model = if prompt.model.is_empty() {
        "genesis"
    } else {
        prompt.model.as_str()
    };
    match (api, prompt.streamed) {
        (LlmApi::OpenAiChat, false) => Reply::json(200, &openai_chat(model, answer)),
        (LlmApi::OpenAiChat, true) => sse(&openai_chat_chunks(model, answer, prompt), true),
        (LlmApi::OpenAiCompletions, false) => Reply::json(200, &openai_completion(model, answer)),
        (LlmApi::OpenAiCompletions, true) => sse(&openai_completion_chunks(model, answer), true),
        (LlmApi::OpenAiResponses, false) => Reply::json(200, &openai_response(model, answer)),
        (LlmApi::OpenAiResponses, true) => sse(&openai_response_events(model, answer), false),
        (LlmApi::AnthropicMessages, false) => Reply::json(200, &anthropic_message(model, answer)),
        (LlmApi::AnthropicMessages, true) => sse(&anthropic_events(model, answer), false),
        (LlmApi::OllamaChat | LlmApi::OllamaGenerate, streamed) => {
            ollama(api, model, answer, streamed)
        }
        (LlmApi::OpenAiEmbeddings, _) => {
            Reply::json(200, &openai_embeddings(model, prompt, answer))
        }
        (LlmApi::OllamaEmbed, _) => {
            let vectors: Vec<Vec<f32>> = prompt
                .inputs
                .iter()
                .map(|t| embedding(t, answer.embedding_dimensions))
                .collect();
            Reply::json(
                200,
                &json!({"model": model, "embeddings": vectors, "prompt_eval_count": answer.prompt_tokens}),
            )
        }
        (LlmApi::OllamaEmbeddings, _) => {
            let text = prompt
                .inputs
                .first()
                .map(String::as_str)
                .unwrap_or_default();
            Reply::json(
                200,
                &json!({"embedding": embedding(text, answer.embedding_dimensions)}),
            )
        }
        (LlmApi::Other, _) => Reply::error(
            404,
            "not_found_error",
            "no such API on the genesis LLM endpoint",
        ),
    }
}

/// Server-sent events: `event:` lines when the payloads carry a `type`
/// (Anthropic, OpenAI responses), `data: [DONE]` last for OpenAI's
/// chat and completions streams.
fn sse(payloads: &[Value], done: bool) -> Reply {
    let mut body = String::new();
    for payload in payloads {
        if let Some(kind) = payload["type"].as_str() {
            body.push_str("event: ");
            body.push_str(kind);
            body.push('\n');
        }
        body.push_str("data: ");
        body.push_str(&payload.to_string());
        body.push_str("\n\n");
    }
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    Reply {
        status: 200,
        content_type: "text/event-stream",
        body: body.into_bytes(),
    }
}

fn openai_usage(answer: &Answer) -> Value {
    json!({
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.answer_tokens,
        "total_tokens": answer.prompt_tokens + answer.answer_tokens,
    })
}

fn openai_chat(model: &str, answer: &Answer) -> Value {
    json!({
        "id": format!("chatcmpl-genesis-{}", answer.call),
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer.text, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": openai_usage(answer),
    })
}

fn openai_chat_chunks(model: &str, answer: &Answer, prompt: &Prompt) -> Vec<Value> {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": format!("chatcmpl-genesis-{}", answer.call),
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    };
    let mut chunks = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": answer.text}), Value::Null),
        chunk(json!({}), json!("stop")),
    ];
    if prompt.include_usage {
        chunks.push(json!({
            "id": format!("chatcmpl-genesis-{}", answer.call),
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [],
            "usage": openai_usage(answer),
        }));
    }
    chunks
}

fn openai_completion(model: &str, answer: &Answer) -> Value {
    json!({
        "id": format!("cmpl-genesis-{}", answer.call),
        "object": "text_completion",
        "created": CREATED,
        "model": model,
        "choices": [{"text": answer.text, "index": 0, "logprobs": null, "finish_reason": "stop"}],
        "usage": openai_usage(answer),
    })
}

fn openai_completion_chunks(model: &str, answer: &Answer) -> Vec<Value> {
    let chunk = |text: &str, finish: Value| {
        json!({
            "id": format!("cmpl-genesis-{}", answer.call),
            "object": "text_completion",
            "created": CREATED,
            "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
        })
    };
    vec![chunk(answer.text, Value::Null), chunk("", json!("stop"))]
}

fn response_message(answer: &Answer, status: &str, text: Option<&str>) -> Value {
    let content = match text {
        Some(t) => json!([{"type": "output_text", "text": t, "annotations": []}]),
        None => json!([]),
    };
    json!({
        "id": format!("msg_genesis_{}", answer.call),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    })
}

fn openai_response_with(model: &str, answer: &Answer, status: &str, output: Value) -> Value {
    json!({
        "id": format!("resp_genesis_{}", answer.call),
        "object": "response",
        "created_at": CREATED,
        "model": model,
        "status": status,
        "output": output,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": answer.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": answer.answer_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": answer.prompt_tokens + answer.answer_tokens,
        },
    })
}

fn openai_response(model: &str, answer: &Answer) -> Value {
    let message = response_message(answer, "completed", Some(answer.text));
    openai_response_with(model, answer, "completed", json!([message]))
}

fn openai_response_events(model: &str, answer: &Answer) -> Vec<Value> {
    let item_id = format!("msg_genesis_{}", answer.call);
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let events = [
        json!({"type": "response.created",
               "response": openai_response_with(model, answer, "in_progress", json!([]))}),
        json!({"type": "response.output_item.added", "output_index": 0,
               "item": response_message(answer, "in_progress", None)}),
        json!({"type": "response.content_part.added", "item_id": item_id, "output_index": 0,
               "content_index": 0, "part": part("")}),
        json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
               "content_index": 0, "delta": answer.text, "logprobs": []}),
        json!({"type": "response.output_text.done", "item_id": item_id, "output_index": 0,
               "content_index": 0, "text": answer.text, "logprobs": []}),
        json!({"type": "response.content_part.done", "item_id": item_id, "output_index": 0,
               "content_index": 0, "part": part(answer.text)}),
        json!({"type": "response.output_item.done", "output_index": 0,
               "item": response_message(answer, "completed", Some(answer.text))}),
        json!({"type": "response.completed", "response": openai_response(model, answer)}),
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(n, mut event)| {
            event["sequence_number"] = json!(n);
            event
        })
        .collect()
}

fn anthropic_message(model: &str, answer: &Answer) -> Value {
    json!({
        "id": format!("msg_genesis_{}", answer.call),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": answer.answer_tokens},
    })
}

fn anthropic_events(model: &str, answer: &Answer) -> Vec<Value> {
    let mut start = anthropic_message(model, answer);
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = json!(0);
    vec![
        json!({"type": "message_start", "message": start}),
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": answer.text}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": answer.answer_tokens}}),
        json!({"type": "message_stop"}),
    ]
}

/// Ollama's chat and generate: one object, or NDJSON lines when streamed.
fn ollama(api: LlmApi, model: &str, answer: &Answer, streamed: bool) -> Reply {
    let object = |text: &str, done: bool| {
        let mut value = json!({"model": model, "created_at": CREATED_AT, "done": done});
        if api == LlmApi::OllamaChat {
            value["message"] = json!({"role": "assistant", "content": text});
        } else {
            value["response"] = json!(text);
        }
        if done {
            value["done_reason"] = json!("stop");
            value["prompt_eval_count"] = json!(answer.prompt_tokens);
            value["eval_count"] = json!(answer.answer_tokens);
        }
        value
    };
    if !streamed {
        return Reply::json(200, &object(answer.text, true));
    }
    let mut body = String::new();
    for line in [object(answer.text, false), object("", true)] {
        body.push_str(&line.to_string());
        body.push('\n');
    }
    Reply {
        status: 200,
        content_type: "application/x-ndjson",
        body: body.into_bytes(),
    }
}

fn openai_embeddings(model: &str, prompt: &Prompt, answer: &Answer) -> Value {
    let dims = prompt.dimensions.map_or(answer.embedding_dimensions, |d| {
        d.clamp(1, answer.embedding_dimensions)
    });
    let data: Vec<Value> = prompt
        .inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = embedding(text, dims);
            let encoded = if prompt.base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": encoded})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": answer.prompt_tokens, "total_tokens": answer.prompt_tokens},
    })
}

/// A unit vector of `dims` numbers derived from the text's SHA-256: the
/// same text always gets the same vector, different texts differ.
pub fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut raw = Vec::with_capacity(dims);
    let mut block = 0u32;
    while raw.len() < dims {
        let digest = sha2::Sha256::new()
            .chain_update(block.to_le_bytes())
            .chain_update(text.as_bytes())
            .finalize();
        raw.extend(
            digest
                .iter()
                .take(dims - raw.len())
                .map(|b| f32::from(*b) / 127.5 - 1.0),
        );
        block += 1;
    }
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.iter().map(|x| x / norm).collect()
}

#[cfg(test)]
mod tests;
