//! Server-Sent Events end to end: ids and frames, resume on another instance, pings, the cookie's
//! origin check, revocation, a stream that falls behind (gap), a resume below what retention kept
//! (truncated), and a Python client reading the stream with `requests`.

use std::time::Duration;

use core4_tests::{TestApp, spawn_app, spawn_app_with, test_settings};
use serde_json::{Value, json};

/// The hang guard of every wait for an event.
const WAIT: Duration = Duration::from_secs(20);

/// One event of the stream; `comment` for a `:` line.
#[derive(Debug, Default, PartialEq)]
struct Sse {
    event: Option<String>,
    id: Option<String>,
    data: String,
    comment: bool,
}

impl Sse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|_| panic!("not JSON: {self:?}"))
    }
}

struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    async fn open(app: &TestApp, query: &str, token: &str, last_id: Option<&str>) -> Stream {
        let mut req = app
            .client
            .get(app.url(&format!("/event/stream?{query}")))
            .bearer_auth(token);
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Stream {
            resp,
            buf: String::new(),
        }
    }

    /// The next event or comment; `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut sse = Sse::default();
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        sse.comment = true;
                        sse.data = c.trim().to_string();
                    } else if let Some((k, v)) = line.split_once(": ") {
                        match k {
                            "event" => sse.event = Some(v.into()),
                            "id" => sse.id = Some(v.into()),
                            "data" => sse.data = v.into(),
                            other => panic!("unexpected field {other}"),
                        }
                    }
                }
                return Some(sse);
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("a chunk within the hang guard")
                .expect("stream ok")?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next message event (skipping comments and other event types).
    async fn message(&mut self) -> Sse {
        loop {
            let e = self.next().await.expect("stream open");
            if !e.comment && e.event.is_none() {
                return e;
            }
        }
    }
}

async fn post(app: &TestApp, token: &str, channel: &str, text: &str) -> String {
    let (status, body) = app
        .post("/event", token, json!({"channel": channel, "text": text}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["message_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_with_their_ids_and_resume_on_another_instance() {
    let a = spawn_app().await;
    let admin = a.admin_token().await;
    let mut s = Stream::open(&a, "channel=message&channel=system", &admin, None).await;
    let first = s.next().await.unwrap();
    assert_eq!(first.event.as_deref(), Some("interest"));
    assert_eq!(first.json()["data"], json!(["message", "system"]));
    let m1 = post(&a, &admin, "message", "one").await;
    let m2 = post(&a, &admin, "system", "two").await;
    post(&a, &admin, "other", "not subscribed").await;
    for (id, text) in [(&m1, "one"), (&m2, "two")] {
        let e = s.message().await;
        assert_eq!(e.id.as_deref(), Some(id.as_str()));
        let frame = e.json();
        assert_eq!(
            (frame["_id"].as_str(), frame["data"].as_str()),
            (Some(id.as_str()), Some(text))
        );
    }
    drop(s);
    let m3 = post(&a, &admin, "message", "three").await;
    let m4 = post(&a, &admin, "system", "four").await;
    // Reconnecting to another instance with Last-Event-ID: the rest, then live, once each.
    let b = spawn_app_with(test_settings(&a.database_url)).await;
    let mut s = Stream::open(&b, "channel=message&channel=system", &admin, Some(&m2)).await;
    let m5 = post(&a, &admin, "message", "five").await;
    let mut got = vec![];
    while got.last() != Some(&m5) {
        got.push(s.message().await.id.unwrap());
    }
    assert_eq!(got, [m3.clone(), m4.clone(), m5]);
    // `?since=` does the same.
    let mut s = Stream::open(&b, &format!("channel=message&since={m1}"), &admin, None).await;
    assert_eq!(s.message().await.json()["data"], "three");
    drop(s);
    // A page's `EventSource` reconnects to its URL, `since` and all, adding `Last-Event-ID`: the
    // later of the two wins, so nothing is sent twice.
    let query = format!("channel=message&channel=system&since={m1}");
    let mut s = Stream::open(&b, &query, &admin, Some(&m3)).await;
    assert_eq!(s.message().await.id.as_deref(), Some(m4.as_str()));
    drop(s);
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_at_shutdown_is_closed_with_a_close_event() {
    let a = spawn_app().await;
    let admin = a.admin_token().await;
    let mut s = Stream::open(&a, "channel=message", &admin, None).await;
    assert_eq!(s.next().await.unwrap().event.as_deref(), Some("interest"));
    let stopping = tokio::spawn(a.stop());
    let close = loop {
        let e = s
            .next()
            .await
            .expect("a close event before the stream ends");
        if !e.comment {
            break e;
        }
    };
    assert_eq!(close.event.as_deref(), Some("close"), "{close:?}");
    assert_eq!(close.json()["code"], 1001);
    assert!(
        s.next().await.is_none(),
        "the stream ends after its close event"
    );
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_stream_pings_and_a_revoked_token_ends_it_with_a_close_event() {
    let url = core4_tests::fresh_database().await;
    let mut settings = test_settings(&url);
    settings.events.ping_interval_secs = 1;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let (_, token) = app.create_user(&admin, "user1", "very secret").await;
    let mut s = Stream::open(&app, "channel=message", &token, None).await;
    loop {
        if s.next().await.unwrap().comment {
            break;
        }
    }
    let (status, _) = app.get("/logout", &token).await;
    assert_eq!(status, 200);
    let close = loop {
        let e = s.next().await.expect("a close event before the end");
        if e.event.as_deref() == Some("close") {
            break e.json();
        }
    };
    assert_eq!(close["code"], 1008, "{close}");
    assert!(
        s.next().await.is_none(),
        "the stream ends after the close event"
    );
}

#[tokio::test]
async fn the_cookie_opens_a_stream_only_from_a_trusted_origin() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let get = |origin: String| {
        app.client
            .get(app.url("/event/stream?channel=message"))
            .header("cookie", format!("token={admin}"))
            .header("origin", origin)
            .send()
    };
    assert_eq!(
        get("http://evil.example".into()).await.unwrap().status(),
        403
    );
    let own = format!("http://127.0.0.1:{}", app.port);
    assert_eq!(get(own).await.unwrap().status(), 200);
    let (status, _) = app.get("/event/stream?since=x", &admin).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_python_client_reads_and_resumes_the_stream_with_requests() {
    let app = spawn_app().await;
    let stdout = core4_tests::run_python_client(&app, "sse_requests.py", "requests").await;
    assert!(stdout.starts_with("OK: "), "{stdout}");
}

#[tokio::test]
async fn a_quiet_stream_outlives_the_idle_timeout_with_keepalive_comments() {
    let url = core4_tests::fresh_database().await;
    let mut settings = test_settings(&url);
    settings.http.idle_timeout_secs = 2;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let mut s = Stream::open(&app, "channel=message", &admin, None).await;
    // Three keepalives span more than the idle timeout of silence.
    let mut keepalives = 0;
    while keepalives < 3 {
        let e = s.next().await.expect("the stream stays open");
        if e.comment && e.data == "keepalive" {
            keepalives += 1;
        }
    }
    let id = post(&app, &admin, "message", "still here").await;
    assert_eq!(s.message().await.id, Some(id));
}

/// A stream that stops reading falls behind like a socket: a prefix of the events, one `gap`
/// event naming the last id it got, then live events again; resuming from the gap with
/// `Last-Event-ID` fills it from the stored messages with no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_reading_gets_a_gap_event_and_resumes_from_it() {
    let url = core4_tests::fresh_database().await;
    let mut settings = test_settings(&url);
    settings.events.outbound_queue = 8;
    settings.events.messages_per_second = 100_000;
    settings.events.burst = 100_000;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let mut slow = Stream::open(&app, "channel=message", &admin, None).await;
    let interest = slow.next().await.expect("the interest event");
    assert_eq!(interest.event.as_deref(), Some("interest"), "{interest:?}");
    // Big messages fill the socket buffers quickly; the stream reads nothing meanwhile.
    let big = "x".repeat(60 * 1024);
    let n = 300;
    let mut ids = vec![];
    for i in 0..n {
        ids.push(post(&app, &admin, "message", &format!("{i}{big}")).await);
    }
    let mut received = vec![];
    let gap = loop {
        let e = slow.next().await.expect("stream open");
        if e.comment {
            continue;
        }
        if e.event.as_deref() == Some("gap") {
            break e.json();
        }
        assert_eq!(e.event, None, "{e:?}");
        received.push(e.id.clone().expect("an id"));
    };
    assert!(
        !received.is_empty() && received.len() < n,
        "{} of {n} before the gap",
        received.len()
    );
    assert_eq!(received, ids[..received.len()]);
    assert_eq!(gap["after"], received.last().unwrap().as_str());
    let live = post(&app, &admin, "message", "after the gap").await;
    assert_eq!(slow.message().await.id.as_deref(), Some(&*live));

    // Resuming from the gap: every missed message once, in order, then the live one.
    let after = gap["after"].as_str().unwrap();
    let mut resumed = Stream::open(&app, "channel=message", &admin, Some(after)).await;
    let missed = &ids[received.len()..];
    for id in missed.iter().chain([&live]) {
        assert_eq!(resumed.message().await.id.as_deref(), Some(id.as_str()));
    }
    let later = post(&app, &admin, "message", "later").await;
    assert_eq!(resumed.message().await.id.as_deref(), Some(&*later));
}

/// A resume from below what retention kept is told so before the replay: a `truncated` event
/// naming the oldest kept id, then exactly the kept messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_below_what_retention_kept_gets_a_truncated_event_first() {
    let rules = vec![core4d::settings::RetentionRule {
        channel: "logs*".into(),
        max_count: Some(3),
        max_age_secs: None,
    }];
    let mut settings = test_settings(&core4_tests::fresh_database().await);
    settings.events.retention = rules.clone();
    settings.events.retention_interval_secs = 3600;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let mut ids = vec![];
    for i in 0..8 {
        ids.push(post(&app, &admin, "logs-a", &format!("l{i}")).await);
    }
    let pool = core4d::startup::connect(&app.database_url, 2)
        .await
        .unwrap();
    let pruned = core4d::events::retention::prune_round(&pool, &rules)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(pruned, 5);

    let mut stream = Stream::open(&app, "channel=logs-a", &admin, Some(&ids[0])).await;
    let interest = stream.next().await.expect("the interest event");
    assert_eq!(interest.event.as_deref(), Some("interest"), "{interest:?}");
    let notice = loop {
        let e = stream.next().await.expect("stream open");
        if !e.comment {
            break e;
        }
    };
    assert_eq!(notice.event.as_deref(), Some("truncated"), "{notice:?}");
    assert_eq!(
        notice.json(),
        json!({"type": "truncated", "channel": "logs-a", "first": ids[5]})
    );
    for id in &ids[5..] {
        assert_eq!(stream.message().await.id.as_deref(), Some(id.as_str()));
    }
}
