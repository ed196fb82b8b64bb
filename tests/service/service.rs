//! `genesis serve` against a real nats-server and a real Docker engine:
//! round trip, concurrency limit, duplicates, junk, crash and restart in
//! JetStream mode, a NATS restart mid-run, two services sharing a queue
//! group, and a draining SIGTERM.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures_util::StreamExt;

use crate::support::nats::NatsServer;
use crate::support::*;

/// Everything genesis publishes, as (subject, headers, json).
struct Listener {
    sub: async_nats::Subscriber,
    seen: Vec<(String, Option<HeaderMap>, serde_json::Value)>,
}

impl Listener {
    async fn new(client: &async_nats::Client) -> Listener {
        let sub = client.subscribe(">").await.unwrap();
        client.flush().await.unwrap();
        Listener {
            sub,
            seen: Vec::new(),
        }
    }

    /// Reads messages until `done` holds for what was seen, or panics.
    async fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[(String, Option<HeaderMap>, serde_json::Value)]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.seen) {
            let next = tokio::time::timeout_at(deadline, self.sub.next()).await;
            let Ok(Some(msg)) = next else {
                let subjects: Vec<_> = self.seen.iter().map(|(s, _, _)| s.as_str()).collect();
                panic!("timed out waiting for {what}; saw {subjects:?}");
            };
            let subject = msg.subject.to_string();
            if subject.starts_with("agent.events.experiment.request")
                || subject.starts_with("$JS")
                || subject.starts_with("_INBOX") && msg.payload.is_empty()
            {
                continue;
            }
            let json = serde_json::from_slice(&msg.payload).unwrap_or(serde_json::Value::Null);
            self.seen.push((subject, msg.headers, json));
        }
    }

    fn answers(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (subject, _, _) in &self.seen {
            for prefix in [
                "agent.events.experiment.completed.",
                "agent.events.experiment.failed.",
            ] {
                if let Some(id) = subject.strip_prefix(prefix) {
                    *counts.entry(id.to_owned()).or_default() += 1;
                }
            }
        }
        counts
    }
}

fn count_answers(seen: &[(String, Option<HeaderMap>, serde_json::Value)]) -> usize {
    seen.iter()
        .filter(|(s, _, _)| {
            s.starts_with("agent.events.experiment.completed.")
                || s.starts_with("agent.events.experiment.failed.")
        })
        .count()
}

async fn send(client: &async_nats::Client, req: &serde_json::Value) {
    let subject = format!(
        "agent.events.experiment.request.{}",
        req["instance_id"].as_str().unwrap_or("x")
    );
    client
        .publish(subject, req.to_string().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_with_reply_and_traceparent() {
    let nats = NatsServer::start(false);
    let home = serve_home(2, false);
    let _serve = ServeProcess::start(&home, &nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut listener = Listener::new(&client).await;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    let mut headers = HeaderMap::new();
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    headers.insert("traceparent", trace);
    let req = sleepy_request("rt-1", 0.0);
    client
        .publish_with_reply_and_headers(
            "agent.events.experiment.request.test-instance",
            inbox,
            headers,
            req.to_string().into(),
        )
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(60), replies.next())
        .await
        .unwrap()
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(result["status"], "success", "{result}");
    assert_eq!(result["metrics"]["test_count"], 3);
    listener
        .until(Duration::from_secs(10), "completed.rt-1", |seen| {
            seen.iter()
                .any(|(s, _, _)| s == "agent.events.experiment.completed.rt-1")
        })
        .await;
    let about_it: Vec<_> = listener
        .seen
        .iter()
        .filter(|(s, _, _)| s.ends_with(".rt-1"))
        .collect();
    let stages: Vec<_> = about_it
        .iter()
        .filter(|(s, _, _)| s.contains(".progress."))
        .map(|(_, _, j)| j["stage"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        stages.contains(&"experiment_start".to_owned()),
        "{stages:?}"
    );
    assert!(stages.contains(&"tests_completed".to_owned()), "{stages:?}");
    for (subject, headers, _) in about_it {
        let got = headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned());
        assert_eq!(
            got.as_deref(),
            Some(trace),
            "{subject} lacks the traceparent"
        );
    }
    assert!(home.containers_left().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_requests_never_exceed_max_concurrent() {
    let nats = NatsServer::start(false);
    let home = serve_home(2, false);
    let _serve = ServeProcess::start(&home, &nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut listener = Listener::new(&client).await;
    for i in 0..20 {
        send(&client, &sleepy_request(&format!("many-{i}"), 0.3)).await;
    }
    let label = genesis::sandbox::home_label(&home.home());
    let docker = genesis::sandbox::connect().await.unwrap();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while count_answers(&listener.seen) < 20 {
        assert!(
            Instant::now() < deadline,
            "only {} answers",
            count_answers(&listener.seen)
        );
        let alive = genesis::sandbox::labelled_containers(&docker, Some(&label), None)
            .await
            .unwrap();
        peak = peak.max(alive.len());
        // Sample the engine between messages; the wait is for the next answer.
        let _ = tokio::time::timeout(
            Duration::from_millis(100),
            listener.until(Duration::from_secs(3600), "one more", |seen| {
                count_answers(seen) >= 20
            }),
        )
        .await;
    }
    assert!(
        peak <= 2,
        "{peak} containers alive at once with max_concurrent = 2"
    );
    assert!(peak >= 1, "sampling never saw a container");
    let answers = listener.answers();
    assert_eq!(answers.len(), 20);
    assert!(answers.values().all(|n| *n == 1), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_twice_runs_once_and_is_answered_twice() {
    let nats = NatsServer::start(false);
    let home = serve_home(2, false);
    let _serve = ServeProcess::start(&home, &nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut listener = Listener::new(&client).await;
    let req = sleepy_request("twice", 1.0);
    send(&client, &req).await;
    send(&client, &req).await;
    listener
        .until(Duration::from_secs(60), "two answers", |seen| {
            count_answers(seen) >= 2
        })
        .await;
    let answers: Vec<_> = listener
        .seen
        .iter()
        .filter(|(s, _, _)| s == "agent.events.experiment.completed.twice")
        .map(|(_, _, j)| j.clone())
        .collect();
    assert_eq!(answers.len(), 2);
    assert_eq!(
        answers[0], answers[1],
        "both answers are the one stored result"
    );
    // One candidate container was ever created for it.
    let show = home.run_args(&["show", "twice", "--json"]);
    let view: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let creates = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| {
            h["operation"] == "create" && h["detail"].as_str().unwrap_or("").contains("candidate")
        })
        .count();
    assert_eq!(creates, 1, "{view}");
    // The same id with other content is refused, not answered with the
    // stale result, and so is a malformed request naming the id: both on
    // the sender's `rejected` subject, never on the victim's own subjects
    // and never as a rollback event.
    let mut other = req.clone();
    other["description"] = "something else".into();
    send(&client, &other).await;
    client
        .publish(
            "agent.events.experiment.request.test-instance",
            r#"{"experiment_id": "twice", "instance_id": "test-instance"}"#.into(),
        )
        .await
        .unwrap();
    let rejected = "agent.events.experiment.rejected.test-instance";
    listener
        .until(Duration::from_secs(30), "two refusals", |seen| {
            seen.iter().filter(|(s, _, _)| s == rejected).count() >= 2
        })
        .await;
    // A later request's answer: anything about `twice` would be out by now.
    send(&client, &sleepy_request("after-twice", 0.0)).await;
    listener
        .until(Duration::from_secs(60), "the next answer", |seen| {
            seen.iter()
                .any(|(s, _, _)| s == "agent.events.experiment.completed.after-twice")
        })
        .await;
    let refusals: Vec<_> = listener
        .seen
        .iter()
        .filter(|(s, _, _)| s == rejected)
        .map(|(_, _, j)| j)
        .collect();
    for refusal in &refusals {
        assert_eq!(refusal["experiment_id"], "twice");
        assert_eq!(refusal["error_kind"], "invalid_request");
        assert!(refusal["error"].as_str().unwrap().len() > 10, "{refusal}");
    }
    assert!(
        !listener
            .seen
            .iter()
            .any(|(s, _, j)| s == "agent.events.experiment.failed.twice"
                || (s == "genesis.rollback.event" && j["experiment_id"] == "twice")),
        "the victim's subjects were used: {:?}",
        listener.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_does_not_stop_the_next_good_request() {
    let nats = NatsServer::start(false);
    let home = serve_home(2, false);
    let mut serve = ServeProcess::start(&home, &nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut listener = Listener::new(&client).await;
    let subject = "agent.events.experiment.request.junk";
    client
        .publish(subject, "not json at all".into())
        .await
        .unwrap();
    client
        .publish(subject, r#"{"experiment_id": "bad id!"}"#.into())
        .await
        .unwrap();
    client
        .publish(subject, vec![b'{'; 5 * 1024 * 1024].into())
        .await
        .unwrap();
    let mut missing = sleepy_request("missing-field", 0.0);
    missing.as_object_mut().unwrap().remove("risk_level");
    client
        .publish(subject, missing.to_string().into())
        .await
        .unwrap();
    let mut wrong_type = sleepy_request("wrong-type", 0.0);
    wrong_type["estimated_impact"] = "lots".into();
    client
        .publish(subject, wrong_type.to_string().into())
        .await
        .unwrap();
    send(&client, &sleepy_request("good-after-junk", 0.0)).await;
    listener
        .until(Duration::from_secs(60), "the good answer", |seen| {
            seen.iter()
                .any(|(s, _, _)| s == "agent.events.experiment.completed.good-after-junk")
        })
        .await;
    for (id, field) in [
        ("missing-field", "risk_level"),
        ("wrong-type", "estimated_impact"),
    ] {
        let subject = format!("agent.events.experiment.failed.{id}");
        let (_, _, doc) = listener
            .seen
            .iter()
            .find(|(s, _, _)| *s == subject)
            .unwrap_or_else(|| panic!("no failure for {id}"));
        assert_eq!(doc["error_kind"], "invalid_request");
        assert!(doc["error"].as_str().unwrap().contains(field), "{doc}");
    }
    serve.signal(libc::SIGTERM);
    let log: Vec<String> = serve.lines.try_iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains("over the") && l.contains("limit")),
        "oversize not logged:\n{}",
        log.join("\n")
    );
    assert!(serve.wait().success());
}

/// kill -9 with four experiments in flight, then a restart: the restarted
/// service resumes the four from its store at once (it says so in its
/// log), and the request sent while it was down is run too (delivered
/// fresh, or redelivered after `ack_wait` when the dead process's pull
/// request took it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_flight_then_restart_answers_each_exactly_once() {
    let nats = NatsServer::start(true);
    let home = serve_home_with(&serve_config_acking(4, true, 15000));
    let mut serve = ServeProcess::start(&home, &nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut listener = Listener::new(&client).await;
    let js = async_nats::jetstream::new(client.clone());
    let ids: Vec<String> = (0..4).map(|i| format!("durable-{i}")).collect();
    for id in &ids {
        let req = sleepy_request(id, 3.0);
        js.publish(
            "agent.events.experiment.request.test-instance",
            req.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    for _ in 0..4 {
        serve.wait_for_line("sandbox_created", Duration::from_secs(60));
    }
    serve.signal(libc::SIGKILL);
    serve.wait();
    // A request sent while genesis is down is still run.
    let late = sleepy_request("durable-late", 0.0);
    js.publish(
        "agent.events.experiment.request.test-instance",
        late.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let restarted = std::time::Instant::now();
    let serve = ServeProcess::start(&home, &nats.url());
    serve.wait_for_count("resuming an experiment", 4, Duration::from_secs(30));
    listener
        .until(Duration::from_secs(120), "5 answers", |seen| {
            count_answers(seen) >= 5
        })
        .await;
    eprintln!(
        "kill -9 with 4 in flight: all answered {:?} after the restart",
        restarted.elapsed()
    );
    // Give redelivery a chance to produce duplicates before judging "exactly once".
    let _ = tokio::time::timeout(
        Duration::from_secs(8),
        listener.until(Duration::from_secs(3600), "more", |seen| {
            count_answers(seen) > 5
        }),
    )
    .await;
    let answers = listener.answers();
    let want: BTreeSet<String> = ids
        .iter()
        .cloned()
        .chain(["durable-late".to_owned()])
        .collect();
    assert_eq!(answers.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(answers.values().all(|n| *n == 1), "{answers:?}");
    for (s, _, doc) in &listener.seen {
        if s.starts_with("agent.events.experiment.completed.")
            || s.starts_with("agent.events.experiment.failed.")
        {
            assert_eq!(doc["status"], "success", "{s}: {doc}");
        }
    }
    assert!(home.containers_left().is_empty());
    let scratch = home.home().join("scratch");
    let disks = std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0);
    assert_eq!(disks, 0, "run disks left in {}", scratch.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_run_loses_no_answer() {
    let mut nats = NatsServer::start(false);
    let home = serve_home(2, false);
    let serve = ServeProcess::start(&home, &nats.url());
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .unwrap();
    send(&client, &sleepy_request("through-restart", 3.0)).await;
    serve.wait_for_line("sandbox_created", Duration::from_secs(60));
    nats.restart();
    // The listener subscribes after the restart; the answer is due seconds later.
    let mut listener = Listener::new(&client).await;
    listener
        .until(
            Duration::from_secs(90),
            "the answer after the restart",
            |seen| {
                seen.iter()
                    .any(|(s, _, _)| s == "agent.events.experiment.completed.through-restart")
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_share_one_queue_group() {
    let nats = NatsServer::start(false);
    let a = serve_home(2, false);
    let b = serve_home(2, false);
    let _serve_a = ServeProcess::start(&a, &nats.url());
    let _serve_b = ServeProcess::start(&b, &nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut listener = Listener::new(&client).await;
    for i in 0..16 {
        send(&client, &sleepy_request(&format!("shared-{i}"), 0.2)).await;
    }
    listener
        .until(Duration::from_secs(180), "16 answers", |seen| {
            count_answers(seen) >= 16
        })
        .await;
    let answers = listener.answers();
    assert_eq!(answers.len(), 16);
    assert!(answers.values().all(|n| *n == 1), "{answers:?}");
    let ran = |h: &TestHome| {
        let out = h.run_args(&["list", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    let (na, nb) = (ran(&a), ran(&b));
    assert_eq!(na + nb, 16, "each experiment ran in exactly one service");
    assert!(na > 0 && nb > 0, "work was not shared: {na} / {nb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_and_exits_zero() {
    let nats = NatsServer::start(false);
    let home = serve_home(2, false);
    let mut serve = ServeProcess::start(&home, &nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut listener = Listener::new(&client).await;
    send(&client, &sleepy_request("drain-me", 2.0)).await;
    serve.wait_for_line("sandbox_created", Duration::from_secs(60));
    serve.signal(libc::SIGTERM);
    listener
        .until(Duration::from_secs(60), "the drained answer", |seen| {
            seen.iter()
                .any(|(s, _, _)| s == "agent.events.experiment.completed.drain-me")
        })
        .await;
    let status = serve.wait();
    assert_eq!(status.code(), Some(0));
    assert!(home.containers_left().is_empty());
}

/// The scheduler runs inside `serve`: with a once-a-second health schedule
/// a health document with the contract's fields arrives without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_publishes_health_on_its_schedule() {
    let nats = NatsServer::start(false);
    let text = format!(
        "{}\n[schedule]\nhealth = \"* * * * * *\"\n",
        serve_config(2, false)
    );
    let home = serve_home_with(&text);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut health = client.subscribe("system.health.genesis").await.unwrap();
    client.flush().await.unwrap();
    let _serve = ServeProcess::start(&home, &nats.url());
    let msg = tokio::time::timeout(Duration::from_secs(30), health.next())
        .await
        .expect("no health document within 30 s")
        .unwrap();
    let doc: genesis::contract::Health = serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&msg.payload)));
    assert_eq!((doc.active_experiments, doc.queued), (0, 0));
    assert!(doc.corrupt_archives.is_empty());
}
