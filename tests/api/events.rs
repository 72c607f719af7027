//! The event WebSocket and history, end to end: a real core4d (sometimes two), a real PostgreSQL.
//! Tests of concurrency and faults run on a multi-threaded runtime, so that clients, servers and
//! the database work truly in parallel rather than interleaved on one thread.

use std::{
    collections::{BTreeSet, VecDeque},
    time::Duration,
};

use core4_tests::{TestApp, error_text, spawn_app, spawn_app_with, test_settings};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{
        self, Message,
        client::IntoClientRequest,
        http::{HeaderValue, StatusCode},
    },
};

/// The hang guard of every wait for a frame: generous, since a test only fails on it when the
/// frame never comes.
const WAIT: Duration = Duration::from_secs(20);

/// A test client on the event socket.
pub(crate) struct Ws {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Event frames that arrived while `publish` waited for its ack.
    backlog: VecDeque<Value>,
}

impl Ws {
    pub(crate) async fn connect(app: &TestApp, token: &str) -> Ws {
        Self::connect_url(&app.ws_url(token)).await
    }

    pub(crate) async fn connect_url(url: &str) -> Ws {
        let (inner, resp) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        Ws::from(inner)
    }

    pub(crate) fn from(inner: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Ws {
        Ws {
            inner,
            backlog: VecDeque::new(),
        }
    }

    pub(crate) async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.inner
            .send(Message::text(text.to_string()))
            .await
            .expect("send");
    }

    /// Sends the frames in one write: the server finds them all in one read (pipelining).
    pub(crate) async fn send_pipelined(&mut self, frames: &[String]) {
        for f in frames {
            self.inner
                .feed(Message::text(f.clone()))
                .await
                .expect("feed");
        }
        self.inner.flush().await.expect("flush");
    }

    /// Writes raw bytes on the connection (frames the client library would refuse to build).
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes).await.expect("raw write");
    }

    /// [`Self::send_raw`], returning the error of a connection the server closed.
    pub(crate) async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self.inner.get_mut() {
            MaybeTlsStream::Plain(tcp) => tcp.write_all(bytes).await,
            _ => panic!("raw frames only on plain sockets"),
        }
    }

    /// Sends a close frame with `code`; returns the server's answering close frame.
    pub(crate) async fn close_with(&mut self, code: u16) -> (u16, String) {
        use tungstenite::protocol::CloseFrame;
        self.inner
            .close(Some(CloseFrame {
                code: code.into(),
                reason: "bye".into(),
            }))
            .await
            .expect("send close");
        self.closed().await
    }

    /// The next JSON frame; panics on close or silence.
    pub(crate) async fn recv(&mut self) -> Value {
        match self.backlog.pop_front() {
            Some(v) => v,
            None => self.read().await,
        }
    }

    pub(crate) async fn read(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("a frame within the hang guard")
                .expect("socket open")
                .expect("socket ok");
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(&t).unwrap_or_else(|_| panic!("not JSON: {t}"));
                }
                Message::Close(c) => panic!("socket closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Skips frames until one matches.
    pub(crate) async fn recv_until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// Nothing arrives within `d`.
    pub(crate) async fn assert_silent(&mut self, d: Duration) {
        assert!(self.backlog.is_empty(), "unexpected: {:?}", self.backlog);
        if let Ok(Some(Ok(msg))) = tokio::time::timeout(d, self.inner.next()).await {
            panic!("unexpected frame: {msg:?}");
        }
    }

    /// Waits for the server's close frame and returns its code and reason.
    pub(crate) async fn closed(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("closed within the hang guard");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    panic!("closed without a close frame")
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    pub(crate) async fn interest(&mut self, channels: &[&str]) -> Value {
        self.send(json!({"type": "interest", "data": channels}))
            .await;
        self.recv_until(|v| v["type"] == "interest").await
    }

    /// Sends a message and returns its id from the ack (event frames before it are skipped).
    pub(crate) async fn publish(&mut self, channel: &str, text: Value) -> String {
        self.send(json!({"type": "message", "channel": channel, "text": text}))
            .await;
        let ack = loop {
            let v = self.read().await;
            if v.get("channel").is_none() {
                break v;
            }
            self.backlog.push_back(v);
        };
        assert!(
            ack["type"] == "send" || ack["type"] == "interest",
            "not an ack: {ack}"
        );
        ack["message_id"].as_str().expect("message_id").to_string()
    }

    pub(crate) async fn event(&mut self) -> Value {
        self.recv_until(|v| v.get("channel").is_some()).await
    }
}

fn is_error(v: &Value) -> bool {
    v["type"] == "error" && v.get("channel").is_none()
}

/// A user with exactly these permissions (plus what login and the socket need).
pub(crate) async fn user_with(
    app: &TestApp,
    admin: &str,
    name: &str,
    perms: &[&str],
) -> (String, String) {
    let mut perm = vec!["api://core4.api.v1.request.standard.*"];
    perm.extend_from_slice(perms);
    let (status, body) = app
        .post(
            "/roles",
            admin,
            json!({"name": name, "email": format!("{name}@example.com"), "password": "very secret", "perm": perm}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["_id"].as_str().unwrap().to_string();
    (id, app.login(name, "very secret").await)
}

async fn update_role(app: &TestApp, admin: &str, id: &str, change: Value) {
    let (_, current) = app.get(&format!("/roles/{id}"), admin).await;
    let mut body = change;
    body["etag"] = current["data"]["etag"].clone();
    let (status, reply) = app.put(&format!("/roles/{id}"), admin, body).await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn two_users_chat_as_in_the_seed_document() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, t1) = app.create_user(&admin, "user1", "very secret").await;
    let (_, t2) = app.create_user(&admin, "user2", "very secret").await;
    let mut a = Ws::connect(&app, &t1).await;
    let mut b = Ws::connect(&app, &t2).await;
    for ws in [&mut a, &mut b] {
        let reply = ws.interest(&["message", "system"]).await;
        assert_eq!(reply["data"], json!(["message", "system"]));
        assert_eq!(
            reply["message"],
            "processed interest in ['message', 'system']"
        );
    }

    a.send(json!({"type": "message", "channel": "message", "text": "hello from 1"}))
        .await;
    let ack = a.recv().await;
    assert_eq!(ack["type"], "send", "{ack}");
    assert_eq!(ack["message"], "OK");
    let id = ack["message_id"].as_str().unwrap().to_string();
    assert!(ack.get("channel").is_none());
    let own = a.event().await;
    let seen = b.event().await;
    assert_eq!(own, seen);
    assert_eq!(seen["_id"], id.as_str());
    assert_eq!(seen["author"], "user1");
    assert_eq!(seen["channel"], "message");
    assert_eq!(seen["name"], "message");
    assert_eq!(seen["data"], "hello from 1");
    assert!(seen["created"].as_str().unwrap().len() >= 19);

    let id2 = b.publish("message", json!({"nested": [1, 2]})).await;
    assert!(id2.parse::<i64>().unwrap() > id.parse::<i64>().unwrap());
    let got = a.event().await;
    assert_eq!(
        (got["author"].as_str(), &got["data"]),
        (Some("user2"), &json!({"nested": [1, 2]}))
    );
    assert_eq!(b.event().await["_id"], id2.as_str());
}

#[tokio::test]
async fn interest_replaces_the_set_and_normalises_names() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    let reply = ws
        .interest(&[" Message ", "SYSTEM", "message", "", "a b"])
        .await;
    assert_eq!(reply["data"], json!(["message", "system"]));
    assert!(reply["denied"]["a b"].is_string(), "{reply}");
    let reply = ws.interest(&["Queue"]).await;
    assert_eq!(reply["data"], json!(["queue"]));
    // The set was replaced: a message on `message` does not arrive any more ...
    let mut other = Ws::connect(&app, &admin).await;
    other.publish("MESSAGE", json!("not for ws")).await;
    let on_queue = other.publish("queue", json!("for ws")).await;
    let got = ws.event().await;
    assert_eq!(got["_id"], on_queue.as_str());
    assert_eq!(got["channel"], "queue");
    // ... and a message to a channel the sender did not listen to adds it (core4's behaviour).
    other
        .send(json!({"type": "message", "channel": " Fresh ", "text": "x"}))
        .await;
    let ack = other.recv_until(|v| v.get("channel").is_none()).await;
    assert_eq!(ack["type"], "interest", "{ack}");
    assert_eq!(ack["message"], "OK, added interest in channel");
    let own = other.recv_until(|v| v["data"] == "x").await;
    assert_eq!(own["channel"], "fresh");
    // A missing list unsubscribes from everything.
    ws.send(json!({"type": "interest"})).await;
    assert_eq!(ws.recv().await["data"], json!([]));
    other.publish("queue", json!("nobody")).await;
    ws.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_socket_stays_usable() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "error parsing json data"),
        ("[1,2]".into(), "a frame must be a JSON object"),
        ("5".into(), "a frame must be a JSON object"),
        ("null".into(), "a frame must be a JSON object"),
        ("{}".into(), "missing `type`"),
        (r#"{"type":7}"#.into(), "`type` must be a string"),
        (r#"{"type":"dance"}"#.into(), "unknown type [dance]"),
        (
            r#"{"type":"message","text":"x"}"#.into(),
            "malformed message: missing `channel`",
        ),
        (
            r#"{"type":"message","channel":"message"}"#.into(),
            "malformed message: missing `text`",
        ),
        (
            r#"{"type":"message","channel":"message","text":null}"#.into(),
            "malformed message: missing `text`",
        ),
        (
            r#"{"type":"message","channel":"a b","text":"x"}"#.into(),
            "malformed message: channel name contains whitespace",
        ),
        (
            r#"{"type":"interest","data":null}"#.into(),
            "`data` must be a list",
        ),
        (
            format!(
                r#"{{"type":"message","channel":"message","text":"{}"}}"#,
                "x".repeat(70 * 1024)
            ),
            "frame too large",
        ),
    ];
    for (frame, expected) in &cases {
        ws.send_text(frame).await;
        let reply = ws.recv().await;
        assert!(is_error(&reply), "{frame:.60}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(expected),
            "{frame:.60}: {reply}"
        );
    }
    // A frame refused for its size, unparsed, still gets its correlation id back.
    let big = format!(
        r#"{{"type":"message","channel":"message","text":"{}","id":"big"}}"#,
        "x".repeat(70 * 1024)
    );
    ws.send_text(&big).await;
    let reply = ws.recv().await;
    assert_eq!(
        (reply["kind"].as_str(), reply["id"].as_str()),
        (Some("too_large"), Some("big")),
        "{reply}"
    );
    ws.inner
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    let reply = ws.recv().await;
    assert!(is_error(&reply) && reply["message"].as_str().unwrap().contains("binary"));

    // Still usable.
    ws.interest(&["message"]).await;
    let id = ws.publish("message", json!("still here")).await;
    assert_eq!(ws.event().await["_id"], id.as_str());
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!(
            "core4d_event_frame_errors_total {}",
            cases.len() + 2
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn upgrade_without_valid_credentials_is_refused_with_401() {
    let app = spawn_app().await;
    let url = format!("ws://127.0.0.1:{}/core4/api/v1/event", app.port);
    for url in [url.clone(), format!("{url}?token=garbage")] {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401);
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                error_text(&body, 401);
            }
            other => panic!("expected a refused upgrade, got {other:?}"),
        }
    }
    // The Bearer header and the cookie work as well as ?token=.
    let admin = app.admin_token().await;
    for (name, value) in [
        ("authorization", format!("Bearer {admin}")),
        ("cookie", format!("token={admin}")),
    ] {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert(name, HeaderValue::from_str(&value).unwrap());
        let (mut inner, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        inner
            .send(Message::text(r#"{"type":"interest","data":["message"]}"#))
            .await
            .unwrap();
        let mut ws = Ws::from(inner);
        assert_eq!(ws.recv().await["data"], json!(["message"]));
    }
    // A plain GET is not an upgrade.
    let (status, body) = app.get("/event", &admin).await;
    assert_eq!(status, 400);
    assert!(error_text(&body, 400).contains("WebSocket"));
}

#[tokio::test]
async fn channel_permissions_allow_and_deny_reading_and_writing() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    // standard_user: message rw, system r.
    let (_, std_token) = app.create_user(&admin, "chatter", "very secret").await;
    let mut std = Ws::connect(&app, &std_token).await;
    let reply = std.interest(&["message", "system", "queue"]).await;
    assert_eq!(reply["data"], json!(["message", "system"]));
    assert_eq!(reply["denied"], json!({"queue": "no read permission"}));
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("left out: 'queue' (no read permission)")
    );
    std.send(json!({"type": "message", "channel": "system", "text": "x"}))
        .await;
    let err = std.recv().await;
    assert!(is_error(&err), "{err}");
    assert_eq!(err["message"], "no write permission on channel [system]");
    std.publish("message", json!("allowed")).await;

    // Write-only on `drop`, read-only on `news`; cop may do everything.
    let (_, writer) = user_with(
        &app,
        &admin,
        "writer",
        &["event://drop/w", "event://news/r"],
    )
    .await;
    let mut w = Ws::connect(&app, &writer).await;
    assert_eq!(w.interest(&["drop", "news"]).await["data"], json!(["news"]));
    let mut cop = Ws::connect(&app, &admin).await;
    cop.interest(&["drop", "news"]).await;
    w.send(json!({"type": "message", "channel": "drop", "text": "in"}))
        .await;
    let ack = w.recv().await;
    assert_eq!(ack["type"], "send", "not added to interests: {ack}");
    assert_eq!(cop.event().await["data"], "in");
    w.send(json!({"type": "message", "channel": "news", "text": "no"}))
        .await;
    assert!(is_error(&w.recv().await));
    let id = cop.publish("news", json!("read me")).await;
    assert_eq!(w.event().await["_id"], id.as_str());

    // History follows the same rule.
    let (status, body) = app.get("/event/history?channel=drop", &writer).await;
    assert_eq!(status, 403);
    assert!(error_text(&body, 403).contains("no read permission"));
    let (status, body) = app.get("/event/history?channel=news", &writer).await;
    assert_eq!(status, 200);
    assert_eq!(body["total_count"], 1);
}

/// Every way a token ends reaches the open sockets: a permission change re-filters interests,
/// logout closes every socket of that login session (also one opened with a token exchanged
/// from it) and no other, deactivation and deletion close every socket of the user. Each wait
/// is for the event itself, with `WAIT` as the hang guard; how fast it comes is a benchmark.
#[tokio::test]
async fn revocation_closes_open_sockets_and_permission_changes_withdraw_interest() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (id, token) = app.create_user(&admin, "leaver", "very secret").await;
    let exchanged = exchange(&app, &token).await;
    let second = app.login("leaver", "very secret").await;
    let mut a = Ws::connect(&app, &token).await;
    let mut same_session = Ws::connect(&app, &exchanged).await;
    let mut b = Ws::connect(&app, &second).await;
    for ws in [&mut a, &mut same_session, &mut b] {
        ws.interest(&["message", "system"]).await;
    }

    // Losing `system` read: the interest is withdrawn and every socket told.
    update_role(
        &app,
        &admin,
        &id,
        json!({"role": [], "perm": ["api://core4.api.v1.request.standard.*", "event://message/rw"]}),
    )
    .await;
    for ws in [&mut a, &mut same_session, &mut b] {
        let notice = ws.recv().await;
        assert_eq!(notice["type"], "interest", "{notice}");
        assert_eq!(notice["data"], json!(["message"]));
        assert_eq!(notice["denied"], json!({"system": "no read permission"}));
    }

    // Logout ends that login session: both of its sockets close with 1008, the other stays.
    let (status, _) = app.get("/logout", &token).await;
    assert_eq!(status, 200);
    for ws in [&mut a, &mut same_session] {
        let (code, reason) = ws.closed().await;
        assert_eq!(code, 1008);
        assert!(reason.contains("revoked"), "{reason}");
    }
    let mut cop = Ws::connect(&app, &admin).await;
    let id_msg = cop.publish("message", json!("still there?")).await;
    assert_eq!(b.event().await["_id"], id_msg.as_str());

    // Deactivation ends every token of the user.
    update_role(&app, &admin, &id, json!({"is_active": false})).await;
    let (code, reason) = b.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("log in again"), "{reason}");

    // Deletion too; a bystander's socket stays.
    let (gone_id, gone) = app.create_user(&admin, "goner", "very secret").await;
    let (_, stays) = app.create_user(&admin, "stayer", "very secret").await;
    let mut doomed = Ws::connect(&app, &gone).await;
    let mut bystander = Ws::connect(&app, &stays).await;
    doomed.interest(&["message"]).await;
    bystander.interest(&["message"]).await;
    let (_, current) = app.get(&format!("/roles/{gone_id}"), &admin).await;
    let etag = current["data"]["etag"].as_str().unwrap().to_string();
    let (status, body) = app
        .delete(&format!("/roles/{gone_id}?etag={etag}"), &admin)
        .await;
    assert_eq!(status, 200, "{body}");
    let (code, reason) = doomed.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("log in again"), "{reason}");
    let id_msg = cop.publish("message", json!("after the deletion")).await;
    assert_eq!(bystander.event().await["_id"], id_msg.as_str());
}

/// A token of the same login session, exchanged for `token` at `GET /login`.
async fn exchange(app: &TestApp, token: &str) -> String {
    let resp = app
        .client
        .get(app.url("/login"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let exchanged = body["data"]["token"].as_str().unwrap().to_string();
    assert_ne!(exchanged, token);
    exchanged
}

#[tokio::test]
async fn token_refresh_on_an_open_socket_keeps_it_past_expiry() {
    let url = core4_tests::fresh_database().await;
    let mut settings = test_settings(&url);
    settings.token_expiration = 3;
    settings.events.recheck_interval_ms = 100;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let (_, token) = app.create_user(&admin, "refresher", "very secret").await;
    let mut stale = Ws::connect(&app, &token).await;
    let mut fresh = Ws::connect(&app, &token).await;
    stale.interest(&["message"]).await;
    fresh.interest(&["message"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let newer = app.login("refresher", "very secret").await;
    fresh.send(json!({"type": "token", "token": newer})).await;
    let reply = fresh.recv().await;
    assert_eq!(reply["type"], "token", "{reply}");
    assert_eq!(reply["message"], "token accepted");
    // Someone else's token is refused.
    fresh.send(json!({"type": "token", "token": admin})).await;
    let err = fresh.recv().await;
    assert!(is_error(&err) && err["message"].as_str().unwrap().contains("another user"));

    let (code, reason) = stale.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("token expired"), "{reason}");
    let admin = app.admin_token().await;
    let mut cop = Ws::connect(&app, &admin).await;
    let id = cop.publish("message", json!("after expiry")).await;
    assert_eq!(fresh.event().await["_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_reconnect_delivers_exactly_the_missed_messages() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut publisher = Ws::connect(&app, &admin).await;
    let mut sub = Ws::connect(&app, &admin).await;
    sub.interest(&["message", "other"]).await;
    let first = publisher.publish("message", json!(1)).await;
    assert_eq!(sub.event().await["_id"], first.as_str());
    drop(sub);

    let mut missed = vec![];
    for i in 2..=6 {
        let channel = if i % 2 == 0 { "message" } else { "other" };
        missed.push(publisher.publish(channel, json!(i)).await);
    }
    publisher.publish("unrelated", json!("x")).await;

    // `?since=` on connect applies to the first interest frame.
    let mut url = app.ws_url(&admin);
    url.push_str(&format!("&since={first}"));
    let mut back = Ws::connect_url(&url).await;
    back.interest(&["message", "other"]).await;
    let mut got = vec![];
    for _ in 0..missed.len() {
        got.push(back.event().await["_id"].as_str().unwrap().to_string());
    }
    assert_eq!(got, missed);
    let live = publisher.publish("message", json!("live")).await;
    assert_eq!(back.event().await["_id"], live.as_str());
    back.assert_silent(Duration::from_millis(200)).await;

    // A `since` from the future is taken as "now", not as a reason to skip what comes next.
    let mut future = Ws::connect(&app, &admin).await;
    future
        .send(json!({"type": "interest", "data": ["message"], "since": "999999999"}))
        .await;
    future.recv().await;
    let next = publisher.publish("message", json!("next")).await;
    assert_eq!(future.event().await["_id"], next.as_str());

    // `since` in the interest frame, while messages keep coming: no gap, no duplicate.
    let mut again = Ws::connect(&app, &admin).await;
    let pump = tokio::spawn({
        let url = app.ws_url(&admin);
        async move {
            let mut p = Ws::connect_url(&url).await;
            let mut ids = vec![];
            for i in 0..40 {
                ids.push(p.publish("message", json!(i)).await);
            }
            ids
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    again
        .send(json!({"type": "interest", "data": ["message"], "since": first}))
        .await;
    let pumped = pump.await.unwrap();
    let last = pumped.last().unwrap().clone();
    let mut seen = vec![];
    loop {
        let v = again.event().await;
        let id = v["_id"].as_str().unwrap().to_string();
        seen.push(id.clone());
        if id == last {
            break;
        }
    }
    let unique: BTreeSet<i64> = seen.iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(unique.len(), seen.len(), "duplicates: {seen:?}");
    let sorted: Vec<i64> = unique.iter().copied().collect();
    let as_sent: Vec<i64> = seen.iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(sorted, as_sent, "out of order");
    let (_, history) = app
        .get(
            &format!("/event/history?channel=message&after={first}&per_page=1000"),
            &admin,
        )
        .await;
    let stored: BTreeSet<i64> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(unique, stored);
}

#[tokio::test]
async fn history_pages_newest_first_with_cursors() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    let mut ids = vec![];
    for i in 0..23 {
        ids.push(
            ws.publish("message", json!(format!("m{i}")))
                .await
                .parse::<i64>()
                .unwrap(),
        );
    }
    ws.publish("elsewhere", json!("x")).await;
    let page_ids = |body: &Value| -> Vec<i64> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["_id"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let newest: Vec<i64> = ids.iter().rev().copied().collect();

    let (status, body) = app.get("/event/history?per_page=10", &admin).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &body["total_count"],
            &body["page_count"],
            &body["count"],
            &body["page"]
        ),
        (&json!(23), &json!(3), &json!(10), &json!(0))
    );
    assert_eq!(page_ids(&body), newest[..10]);
    let item = &body["data"][0];
    assert_eq!(
        (&item["author"], &item["channel"], &item["data"]),
        (&json!("admin"), &json!("message"), &json!("m22"))
    );
    let (_, body) = app.get("/event/history?per_page=10&page=-1", &admin).await;
    assert_eq!(
        (page_ids(&body), &body["page"]),
        (newest[20..].to_vec(), &json!(2))
    );
    let (_, body) = app
        .get(
            &format!("/event/history?per_page=5&before={}", ids[10]),
            &admin,
        )
        .await;
    assert_eq!(page_ids(&body), newest[13..18]);
    assert_eq!(body["total_count"], 10);
    let (_, body) = app
        .get(
            &format!(
                "/event/history?per_page=100&after={}&before={}",
                ids[2], ids[6]
            ),
            &admin,
        )
        .await;
    assert_eq!(page_ids(&body), vec![ids[5], ids[4], ids[3]]);
    let (_, body) = app.get("/event/history?channel=ElseWhere", &admin).await;
    assert_eq!(body["total_count"], 1);
    // POST answers the same, not an empty body.
    let (status, body) = app
        .post("/event/history?per_page=10", &admin, json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(page_ids(&body), newest[..10]);
    for bad in ["per_page=0", "before=abc", "channel=a%20b"] {
        let (status, body) = app.get(&format!("/event/history?{bad}"), &admin).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_core4d_instances_on_one_database_deliver_each_others_messages() {
    let a = spawn_app().await;
    let b = spawn_app_with(test_settings(&a.database_url)).await;
    let admin_a = a.admin_token().await;
    let admin_b = b.admin_token().await;
    let mut on_a = Ws::connect(&a, &admin_a).await;
    let mut on_b = Ws::connect(&b, &admin_b).await;
    on_a.interest(&["message"]).await;
    on_b.interest(&["message"]).await;
    let from_a = on_a.publish("message", json!("from a")).await;
    let from_b = on_b.publish("message", json!("from b")).await;
    for ws in [&mut on_a, &mut on_b] {
        let got = [ws.event().await, ws.event().await];
        let ids: Vec<&str> = got.iter().map(|v| v["_id"].as_str().unwrap()).collect();
        assert_eq!(ids, [from_a.as_str(), from_b.as_str()]);
    }

    // Both write at once: every socket sees every message once, in id order.
    let n = 60;
    let (pa, pb) = tokio::join!(
        async {
            let mut ws = Ws::connect(&a, &admin_a).await;
            for i in 0..n {
                ws.publish("message", json!(format!("a{i}"))).await;
            }
        },
        async {
            let mut ws = Ws::connect(&b, &admin_b).await;
            for i in 0..n {
                ws.publish("message", json!(format!("b{i}"))).await;
            }
        }
    );
    let ((), ()) = (pa, pb);
    let mut streams = vec![];
    for ws in [&mut on_a, &mut on_b] {
        let mut ids = vec![];
        for _ in 0..2 * n {
            ids.push(
                ws.event().await["_id"]
                    .as_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap(),
            );
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        streams.push(ids);
    }
    assert_eq!(streams[0], streams[1]);
    let (_, history) = a.get("/event/history?per_page=1", &admin_a).await;
    assert_eq!(history["total_count"], 2 * n + 2);
    // Two writers, one sequence: no id skipped.
    assert_gapless(&stored_ids(&a.database_url).await, 2 * n as i64 + 2);
}

/// The ids stored in the events table, in order.
async fn stored_ids(database_url: &str) -> Vec<i64> {
    let pool = core4d::startup::connect(database_url, 1).await.unwrap();
    let ids = sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    ids
}

#[track_caller]
fn assert_gapless(ids: &[i64], n: i64) {
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "ids are not 1..={n}");
}

/// Kills every connection of core4d to its database during traffic (the listener, the writer's,
/// the pool's): acknowledged messages must all arrive, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_database_connections_during_traffic_lose_and_duplicate_nothing() {
    let a = spawn_app().await;
    let b = spawn_app_with(test_settings(&a.database_url)).await;
    let admin = a.admin_token().await;
    let db = database_name(&a.database_url);
    let mut sub = Ws::connect(&b, &admin).await;
    sub.interest(&["message"]).await;
    let killer = tokio::spawn({
        let url = core4_tests::db_url("postgres");
        async move {
            let pool = core4d::startup::connect(&url, 1).await.unwrap();
            let mut terminated = vec![];
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                // In the aggregate, not the WHERE clause: only rows that match are terminated.
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&db)
                .fetch_one(&pool)
                .await
                .unwrap();
                terminated.push(n);
            }
            terminated
        }
    });
    let mut publisher = Ws::connect(&a, &admin).await;
    let mut acked = BTreeSet::new();
    let mut errors = 0;
    for i in 0..150 {
        publisher
            .send(json!({"type": "message", "channel": "message", "text": i}))
            .await;
        let reply = publisher.recv_until(|v| v.get("channel").is_none()).await;
        match reply["message_id"].as_str() {
            Some(id) => {
                acked.insert(id.parse::<i64>().unwrap());
            }
            None => errors += 1,
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let terminated = killer.await.unwrap();
    // Both instances hold connections (listener, writer, pool) whenever the killer strikes.
    assert!(
        terminated.iter().all(|n| *n > 0),
        "sessions terminated per round: {terminated:?}"
    );
    assert_eq!(
        errors, 0,
        "the writer should retry through lost connections"
    );
    let mut got = vec![];
    while got.len() < acked.len() {
        got.push(
            sub.event().await["_id"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
    }
    sub.assert_silent(Duration::from_millis(500)).await;
    assert_eq!(got.iter().copied().collect::<BTreeSet<_>>(), acked);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    // Batches cut off by the terminations left no hole in the ids.
    assert_gapless(&stored_ids(&a.database_url).await, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_during_traffic_loses_no_acknowledged_message() {
    use core4d::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
    let dir = tempfile_dir();
    let opts = EmbeddedOptions {
        data_dir: dir.clone(),
        fsync: false,
        extra_settings: vec![],
    };
    let pg = EmbeddedPostgres::start(opts.clone())
        .await
        .expect("private PostgreSQL");
    let url = pg.url("postgres");
    let a = spawn_app_with(test_settings(&url)).await;
    let b = spawn_app_with(test_settings(&url)).await;
    let admin = a.admin_token().await;
    let mut sub = Ws::connect(&b, &admin).await;
    sub.interest(&["message"]).await;

    let publishing = tokio::spawn({
        let url = a.ws_url(&admin);
        async move {
            let mut p = Ws::connect_url(&url).await;
            let mut acked = BTreeSet::new();
            let mut errors = vec![];
            for i in 0..200 {
                p.send(json!({"type": "message", "channel": "message", "text": i}))
                    .await;
                let reply = p.recv_until(|v| v.get("channel").is_none()).await;
                match reply["message_id"].as_str() {
                    Some(id) => {
                        acked.insert(id.parse::<i64>().unwrap());
                    }
                    None => errors.push(reply),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, errors)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.stop().await.expect("stop PostgreSQL");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pg = EmbeddedPostgres::start(opts)
        .await
        .expect("restart PostgreSQL");
    let (acked, errors) = publishing.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(acked.len(), 200);

    let mut got = vec![];
    while got.len() < acked.len() {
        got.push(
            sub.event().await["_id"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
    }
    sub.assert_silent(Duration::from_millis(500)).await;
    assert_eq!(got.iter().copied().collect::<BTreeSet<_>>(), acked);
    let pool = core4d::startup::connect(&url, 1).await.unwrap();
    let stored: Vec<i64> = sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), acked);
    pool.close().await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    pg.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// The database name of a URL such as `postgres://u@h:1/t_1?host=/run/pg&sslmode=disable`.
fn database_name(url: &str) -> String {
    let path = url.split('?').next().unwrap();
    path.rsplit('/').next().unwrap().to_string()
}

#[test]
fn database_name_ignores_the_query() {
    assert_eq!(
        database_name(
            "postgres://postgres@localhost:5432/t_0af?host=/dev/shm/x/pg/run&sslmode=disable"
        ),
        "t_0af"
    );
    assert_eq!(database_name("postgres://u@h/core4"), "core4");
}

fn tempfile_dir() -> std::path::PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let dir = std::path::PathBuf::from(format!("{base}/c4r-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_gets_a_gap_frame_while_others_keep_pace() {
    let url = core4_tests::fresh_database().await;
    let mut settings = test_settings(&url);
    settings.events.outbound_queue = 8;
    settings.events.messages_per_second = 100_000;
    settings.events.burst = 100_000;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let mut slow = Ws::connect(&app, &admin).await;
    let mut fast = Ws::connect(&app, &admin).await;
    slow.interest(&["message"]).await;
    fast.interest(&["message"]).await;
    // Big messages fill the socket buffers quickly; the slow one reads nothing meanwhile.
    let big = "x".repeat(60 * 1024);
    let mut publisher = Ws::connect(&app, &admin).await;
    let n = 300;
    let mut ids = vec![];
    let mut fast_got = 0;
    for i in 0..n {
        ids.push(
            publisher
                .publish("message", json!(format!("{i}{big}")))
                .await,
        );
        // The fast reader gets each message before the next is sent, while the slow one reads
        // nothing: a fan-out that waited for the slow socket would hang here (the hang guard
        // of `recv` fails the test).
        let v = fast.event().await;
        assert_eq!(v["_id"], ids[i].as_str());
        fast_got += 1;
    }
    assert_eq!(fast_got, n);

    // Now the slow one reads: a prefix of the events, then one gap frame, then live again.
    let mut received = vec![];
    let gap = loop {
        let v = slow.recv().await;
        if v["type"] == "gap" {
            break v;
        }
        assert!(v.get("channel").is_some(), "{v}");
        received.push(v["_id"].as_str().unwrap().to_string());
    };
    assert!(gap.get("channel").is_none());
    assert!(
        !received.is_empty() && received.len() < n,
        "{}",
        received.len()
    );
    assert_eq!(received, ids[..received.len()]);
    assert_eq!(gap["after"], received.last().unwrap().as_str());
    // Exactly one gap frame: the frame after it is the next live event, and the server sent
    // no other gap frame to any socket.
    let live = publisher.publish("message", json!("after the gap")).await;
    // Live delivery resumes once the gap frame is queued, which can be before the loop above
    // ended (the kernel's send buffer grows while the slow socket reads nothing): the last
    // events may come after the gap, in order and all after what it names, then `live`.
    let id_of = |v: &Value| v["_id"].as_str().unwrap().parse::<i64>().unwrap();
    let mut after_gap = vec![];
    loop {
        let next = slow.recv().await;
        assert!(next.get("channel").is_some(), "a second gap frame: {next}");
        after_gap.push(id_of(&next));
        if next["_id"] == live.as_str() {
            break;
        }
    }
    let named: i64 = gap["after"].as_str().unwrap().parse().unwrap();
    assert!(
        after_gap[0] > named + 1,
        "the gap skipped nothing: {after_gap:?}"
    );
    assert!(after_gap.windows(2).all(|w| w[0] < w[1]), "{after_gap:?}");
    assert_eq!(fast.event().await["_id"], live.as_str());
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("\ncore4d_event_gap_frames_total 1\n"),
        "{metrics}"
    );
    // What it missed is in the history.
    let (_, body) = app
        .get(
            &format!(
                "/event/history?after={}&per_page=1000",
                gap["after"].as_str().unwrap()
            ),
            &admin,
        )
        .await;
    assert_eq!(body["total_count"], n - received.len() + 1);
}

#[tokio::test]
async fn per_user_limits_refuse_with_error_frames_and_429() {
    let url = core4_tests::fresh_database().await;
    let mut settings = test_settings(&url);
    settings.events.messages_per_second = 1;
    settings.events.burst = 3;
    settings.events.max_connections_per_user = 2;
    settings.events.max_channels = 2;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    let reply = ws.interest(&["a", "b", "c"]).await;
    assert_eq!(reply["data"], json!(["a", "b"]));
    assert_eq!(reply["denied"], json!({"c": "more than 2 channels"}));
    for _ in 0..3 {
        ws.publish("a", json!("ok")).await;
    }
    ws.send(json!({"type": "message", "channel": "a", "text": "too fast"}))
        .await;
    let err = ws.recv_until(|v| v.get("channel").is_none()).await;
    assert!(
        is_error(&err)
            && err["message"]
                .as_str()
                .unwrap()
                .starts_with("rate limit exceeded"),
        "{err}"
    );

    let _second = Ws::connect(&app, &admin).await;
    match tokio_tungstenite::connect_async(app.ws_url(&admin)).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected 429, got {other:?}"),
    }

    // The limits are per user: another user, meanwhile, has a full bucket and sockets to spare.
    let (_, other) = app.create_user(&admin, "other", "very secret").await;
    let mut first = Ws::connect(&app, &other).await;
    let mut second = Ws::connect(&app, &other).await;
    second.interest(&["message"]).await;
    for i in 0..3 {
        let id = first.publish("message", json!(i)).await;
        assert_eq!(second.event().await["_id"], id.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_every_ack_and_closes_sockets_with_1001() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let database_url = app.database_url.clone();
    let mut sub = Ws::connect(&app, &admin).await;
    sub.interest(&["message"]).await;
    let mut publisher = Ws::connect(&app, &admin).await;
    // Many messages in flight, none waited for.
    for i in 0..200 {
        publisher
            .send(json!({"type": "message", "channel": "message", "text": i}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stopping = tokio::spawn(app.stop());
    let mut acked = BTreeSet::new();
    let code = loop {
        let msg = tokio::time::timeout(WAIT, publisher.inner.next())
            .await
            .unwrap();
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if let Some(id) = v["message_id"].as_str() {
                    acked.insert(id.parse::<i64>().unwrap());
                }
            }
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, 1001);
    let (code, _) = sub.closed().await;
    assert_eq!(code, 1001);
    stopping.await.unwrap().unwrap();
    let pool = core4d::startup::connect(&database_url, 1).await.unwrap();
    let stored: Vec<i64> = sqlx::query_scalar("SELECT id FROM events")
        .fetch_all(&pool)
        .await
        .unwrap();
    let stored: BTreeSet<i64> = stored.into_iter().collect();
    assert!(acked.is_subset(&stored));
    assert!(!acked.is_empty());
}

#[tokio::test]
async fn metrics_count_sockets_messages_and_batches() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    ws.interest(&["message", "system"]).await;
    ws.publish("message", json!("counted")).await;
    ws.event().await;
    let text = app.metrics().await;
    for line in [
        "core4d_event_connections 1",
        "core4d_event_subscriptions 2",
        "core4d_event_messages_published_total 1",
        "core4d_event_messages_delivered_total 1",
        "core4d_event_batch_size_bucket{le=\"1\"} 1",
        "core4d_event_commit_seconds_count 1",
        "route=\"/core4/api/v1/event\",status=\"101\"",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

#[tokio::test]
async fn history_counts_up_to_its_limit_and_cursors_page_beyond_it() {
    let url = core4_tests::fresh_database().await;
    let mut settings = test_settings(&url);
    settings.events.history_count_limit = 10;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    let mut ids = vec![];
    for i in 0..23 {
        ids.push(
            ws.publish("message", json!(i))
                .await
                .parse::<i64>()
                .unwrap(),
        );
    }
    let newest: Vec<i64> = ids.iter().rev().copied().collect();
    let page = |body: &Value| -> (Vec<i64>, Value, Value, Value) {
        let items = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["_id"].as_str().unwrap().parse().unwrap())
            .collect();
        (
            items,
            body["total_count"].clone(),
            body["page_count"].clone(),
            body["page"].clone(),
        )
    };
    let (_, body) = app.get("/event/history?per_page=5", &admin).await;
    assert_eq!(
        page(&body),
        (newest[..5].to_vec(), json!(10), json!(2), json!(0))
    );
    let (_, body) = app.get("/event/history?per_page=4&page=2", &admin).await;
    assert_eq!(
        page(&body),
        (newest[8..10].to_vec(), json!(10), json!(3), json!(2))
    );
    let (_, body) = app.get("/event/history?per_page=5&page=-1", &admin).await;
    assert_eq!(
        page(&body),
        (newest[5..10].to_vec(), json!(10), json!(2), json!(1))
    );
    let (_, body) = app.get("/event/history?per_page=5&page=2", &admin).await;
    assert_eq!(page(&body), (vec![], json!(10), json!(2), json!(2)));
    // Cursors reach behind the counted window; near the end the count is exact again.
    let (_, body) = app
        .get(
            &format!("/event/history?per_page=5&before={}", newest[9]),
            &admin,
        )
        .await;
    assert_eq!(
        page(&body),
        (newest[10..15].to_vec(), json!(10), json!(2), json!(0))
    );
    let (_, body) = app
        .get(
            &format!("/event/history?per_page=5&before={}", newest[19]),
            &admin,
        )
        .await;
    assert_eq!(
        page(&body),
        (newest[20..].to_vec(), json!(3), json!(1), json!(0))
    );
}

/// Reference §6: 101 messages, `per_page=5&page=1` is the second-newest five of 21 pages.
#[tokio::test]
async fn history_pages_as_the_reference_shows() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    let mut ids = vec![];
    for i in 0..101 {
        ids.push(ws.publish("message", json!(i)).await);
    }
    let (status, body) = app.get("/event/history?per_page=5&page=1", &admin).await;
    assert_eq!(status, 200);
    let data: Vec<&Value> = body["data"].as_array().unwrap().iter().collect();
    let texts: Vec<i64> = data.iter().map(|e| e["data"].as_i64().unwrap()).collect();
    assert_eq!(texts, [95, 94, 93, 92, 91]);
    assert_eq!(data[0]["_id"], ids[95].as_str());
    assert_eq!(
        (
            &body["page_count"],
            &body["total_count"],
            &body["page"],
            &body["count"]
        ),
        (&json!(21), &json!(101), &json!(1), &json!(5))
    );
    let (_, body) = app.get("/event/history?per_page=5&page=-1", &admin).await;
    assert_eq!(body["data"][0]["data"], 0);
    assert_eq!((&body["page"], &body["count"]), (&json!(20), &json!(1)));
}

#[tokio::test]
async fn oversized_and_repeated_interest_frames_are_refused_and_rate_limited() {
    let url = core4_tests::fresh_database().await;
    let mut settings = test_settings(&url);
    settings.events.messages_per_second = 1;
    settings.events.burst = 3;
    settings.events.max_channels = 4;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;

    // More than 4 × max_channels names: refused outright, whatever they are (the first interest
    // frame of a socket is free of the rate limit).
    let many: Vec<String> = (0..5000).map(|i| format!("c{i}")).collect();
    ws.send(json!({"type": "interest", "data": many})).await;
    let err = ws.recv().await;
    assert!(is_error(&err), "{err}");
    let text = err["message"].as_str().unwrap();
    assert!(
        text.contains("5000 channel names, at most 16 per frame") && text.contains("unchanged"),
        "{text}"
    );
    // Up to the cap: the first max_channels are granted, each name is checked once.
    let names: Vec<String> = (0..16).map(|i| format!("c{}", i % 8)).collect();
    ws.send(json!({"type": "interest", "data": names})).await;
    let reply = ws.recv().await;
    assert_eq!(reply["data"], json!(["c0", "c1", "c2", "c3"]), "{reply}");
    assert_eq!(reply["denied"].as_object().unwrap().len(), 4, "{reply}");
    // Later interest frames take tokens from the user's bucket (burst 3): one is left ...
    ws.send(json!({"type": "interest", "data": many})).await;
    assert!(is_error(&ws.recv().await));
    assert_eq!(ws.interest(&["c5"]).await["data"], json!(["c5"]));
    // ... and then there is none.
    ws.send(json!({"type": "interest", "data": ["c6"]})).await;
    let err = ws.recv().await;
    assert!(is_error(&err), "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("rate limit exceeded: interest frames"),
        "{err}"
    );
    // The set is unchanged, the socket open; a new socket's first interest frame is free.
    let mut other = Ws::connect(&app, &admin).await;
    assert_eq!(other.interest(&["c5"]).await["data"], json!(["c5"]));
    let (_, token) = user_with(&app, &admin, "c5writer", &["event://c5/w"]).await;
    let mut writer = Ws::connect(&app, &token).await;
    let id = writer.publish("c5", json!("still subscribed")).await;
    assert_eq!(ws.event().await["_id"], id.as_str());
    assert_eq!(other.event().await["_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscription_with_an_older_since_repeats_no_id() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut publisher = Ws::connect(&app, &admin).await;
    let old = publisher.publish("message", json!("before")).await;
    // Published (the publisher listens now too) before `sub` subscribes.
    assert_eq!(publisher.event().await["_id"], old.as_str());
    let mut sub = Ws::connect(&app, &admin).await;
    sub.interest(&["message"]).await;
    let n = 80;
    let pump = tokio::spawn({
        let url = app.ws_url(&admin);
        async move {
            let mut p = Ws::connect_url(&url).await;
            let mut ids = vec![];
            for i in 0..n {
                ids.push(p.publish("message", json!(i)).await.parse::<i64>().unwrap());
            }
            ids
        }
    });
    // Live traffic arrives; then the same socket asks for a replay from an old id while
    // messages keep coming.
    let mut before_reply = vec![];
    for _ in 0..5 {
        before_reply.push(
            sub.event().await["_id"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
    }
    sub.send(json!({"type": "interest", "data": ["message"], "since": old}))
        .await;
    let reply = loop {
        let v = sub.recv().await;
        match v["_id"].as_str() {
            Some(id) => before_reply.push(id.parse().unwrap()),
            None => break v,
        }
    };
    assert_eq!(reply["type"], "interest", "{reply}");
    // The replay starts after the requested id and skips what this socket was sent.
    let start: i64 = reply["since"].as_str().unwrap().parse().unwrap();
    assert_eq!(start.to_string(), old, "{reply}");
    let pumped = pump.await.unwrap();
    let last = *pumped.last().unwrap();
    let mut after_reply = vec![];
    while after_reply.last() != Some(&last) {
        after_reply.push(
            sub.event().await["_id"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
    }
    assert!(
        after_reply.iter().all(|id| *id > start),
        "{after_reply:?} after {start}"
    );
    let mut all = before_reply;
    all.extend(after_reply);
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "repeated or out of order: {all:?}"
    );
    assert_eq!(all, pumped);
    sub.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_server_pings_and_closes_sockets_that_answer_nothing() {
    let url = core4_tests::fresh_database().await;
    let mut settings = test_settings(&url);
    settings.events.ping_interval_secs = 1;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let mut alive = Ws::connect(&app, &admin).await;
    // Never read, so it never answers a ping.
    let mut silent = Ws::connect(&app, &admin).await;

    // The client library answers pings while it reads. Two pings, each waited for (how
    // regularly they come is a benchmark's business, not this test's).
    for _ in 0..2 {
        let msg = tokio::time::timeout(WAIT, alive.inner.next())
            .await
            .expect("a ping within the hang guard");
        match msg {
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
    // Meanwhile `alive` keeps reading (and so answering pings).
    let close = close_without_answering_pings(&mut silent);
    tokio::pin!(close);
    let (code, reason) = loop {
        tokio::select! {
            closed = &mut close => break closed,
            msg = alive.inner.next() => match msg {
                Some(Ok(Message::Ping(_))) => {}
                other => panic!("unexpected on the answering socket: {other:?}"),
            },
        }
    };
    assert_eq!((code, reason.as_str()), (1001, "no pong"));

    // The one that answered is still served.
    alive.interest(&["message"]).await;
    let id = alive.publish("message", json!("pong")).await;
    assert_eq!(alive.event().await["_id"], id.as_str());
}

/// Reads the raw bytes under a socket until the server's close frame, and returns its code and
/// reason. Reading through the WebSocket library would answer the pings (and keep it open).
async fn close_without_answering_pings(ws: &mut Ws) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let raw = ws.inner.get_mut();
    let mut bytes = Vec::new();
    let read_until_close = async {
        loop {
            let mut at = 0;
            // Server frames are unmasked: opcode, length (7, 16 or 64 bits), payload.
            while bytes.len() >= at + 2 {
                let opcode = bytes[at] & 0x0f;
                let (len, head) = match bytes[at + 1] & 0x7f {
                    126 if bytes.len() >= at + 4 => (
                        u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                        4,
                    ),
                    127 if bytes.len() >= at + 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&bytes[at + 2..at + 10]);
                        (u64::from_be_bytes(n) as usize, 10)
                    }
                    126 | 127 => break,
                    n => (n as usize, 2),
                };
                let Some(payload) = bytes.get(at + head..at + head + len) else {
                    break;
                };
                if opcode == 0x8 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
                }
                at += head + len;
            }
            let mut chunk = [0u8; 1024];
            let n = raw.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed without a close frame");
            bytes.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, read_until_close)
        .await
        .expect("closed within the hang guard")
}

#[tokio::test]
async fn an_instance_at_max_connections_refuses_upgrades_with_503() {
    let url = core4_tests::fresh_database().await;
    let mut settings = test_settings(&url);
    settings.events.max_connections = 2;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let (_, other) = app.create_user(&admin, "second", "very secret").await;
    let first = Ws::connect(&app, &admin).await;
    let _second = Ws::connect(&app, &other).await;
    for token in [&admin, &other] {
        match tokio_tungstenite::connect_async(app.ws_url(token)).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503);
                assert_eq!(resp.headers()["retry-after"], "5");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                let text = error_text(&body, 503);
                assert!(
                    text.contains("most event connections it accepts (2)"),
                    "{text}"
                );
            }
            other => panic!("expected 503, got {other:?}"),
        }
    }
    // A closed socket frees its place.
    drop(first);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match tokio_tungstenite::connect_async(app.ws_url(&admin)).await {
            Ok(_) => break,
            Err(tungstenite::Error::Http(resp)) if resp.status() == 503 => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the place was not freed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Holds the row lock every batch transaction takes first (`event_head`), so that the writer's
/// next batch waits; released by `release`.
struct HeadLock {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

impl HeadLock {
    async fn take(database_url: &str) -> HeadLock {
        let pool = core4d::startup::connect(database_url, 1).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT last_id FROM event_head FOR UPDATE")
            .execute(&mut *tx)
            .await
            .unwrap();
        HeadLock { tx }
    }

    async fn release(self) {
        self.tx.rollback().await.unwrap();
    }
}

/// Sends a message and then a malformed frame, and waits until the server counted the error:
/// frames of a socket are handled in order, so by then the message is with the writer. (The
/// error frame itself comes only after the message's ack: replies keep the order of frames.)
async fn queue_message(app: &TestApp, ws: &mut Ws, text: &str) {
    let errors_before = frame_errors(app).await;
    ws.send(json!({"type": "message", "channel": "message", "text": text}))
        .await;
    ws.send_text("not json").await;
    let guard = std::time::Instant::now() + WAIT;
    while frame_errors(app).await == errors_before {
        assert!(
            std::time::Instant::now() < guard,
            "the frame was never handled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn frame_errors(app: &TestApp) -> u64 {
    let metrics = app.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("core4d_event_frame_errors_total "))
        .unwrap_or_else(|| panic!("no frame error count: {metrics}"))
        .parse()
        .unwrap()
}

/// Messages that arrive while a commit is running go into the next transaction together: here
/// three sockets' messages wait behind a batch that cannot commit, and end up in one
/// `event_batches` row (one row per committed transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_from_several_sockets_share_one_transaction() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut sockets = vec![];
    for _ in 0..4 {
        sockets.push(Ws::connect(&app, &admin).await);
    }
    let lock = HeadLock::take(&app.database_url).await;
    // The first message starts a batch, which waits for the lock; the others queue behind it.
    for (i, ws) in sockets.iter_mut().enumerate() {
        queue_message(&app, ws, &format!("m{i}")).await;
    }
    lock.release().await;
    let mut acked = vec![];
    for ws in &mut sockets {
        let ack = ws.recv_until(|v| v.get("message_id").is_some()).await;
        acked.push(ack["message_id"].as_str().unwrap().parse::<i64>().unwrap());
    }
    acked.sort();
    assert_eq!(acked, [1, 2, 3, 4]);

    let pool = core4d::startup::connect(&app.database_url, 1)
        .await
        .unwrap();
    let batches: Vec<(i64, i64)> =
        sqlx::query_as("SELECT first_id, last_id FROM event_batches ORDER BY first_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    // Either the writer had taken only the first message when it hit the lock, or all four.
    assert!(
        batches == [(1, 1), (2, 4)] || batches == [(1, 4)],
        "batches: {batches:?}"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!("\ncore4d_event_batches_total {}\n", batches.len())),
        "{metrics}"
    );
}

/// Ids come from a counter row updated inside the batch transaction, not from a sequence: a
/// batch whose transaction dies takes no id with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stay_gapless_when_a_batch_transaction_is_lost() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    let db = database_name(&app.database_url);
    let lock = HeadLock::take(&app.database_url).await;
    ws.send(json!({"type": "message", "channel": "message", "text": "first"}))
        .await;

    // The writer's session, once it waits for the lock, is terminated mid-transaction.
    let killer = core4d::startup::connect(&core4_tests::db_url("postgres"), 1)
        .await
        .unwrap();
    let guard = std::time::Instant::now() + WAIT;
    loop {
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND wait_event_type = 'Lock' AND query LIKE '%append_events%'",
        )
        .bind(&db)
        .fetch_one(&killer)
        .await
        .unwrap();
        if killed == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < guard,
            "the writer never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killer.close().await;
    lock.release().await;

    let ack = ws.recv_until(|v| v.get("message_id").is_some()).await;
    assert_eq!(ack["message_id"], "1", "{ack}");
    for i in 2..=5 {
        assert_eq!(ws.publish("message", json!(i)).await, i.to_string());
    }
    assert_gapless(&stored_ids(&app.database_url).await, 5);
}

/// Frames over `events.max_frame_bytes` get an error frame; over 16 times that (the default
/// 64 KiB makes it 1 MiB) the socket closes with 1009 (message too big).
#[tokio::test]
async fn a_frame_over_sixteen_times_the_limit_closes_the_socket_with_1009() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    let limit = core4d::settings::Settings::default().events.max_frame_bytes;
    let frame_of = |len: usize| {
        let head = r#"{"type":"message","channel":"message","text":""#;
        let frame = format!("{head}{}\"}}", "x".repeat(len - head.len() - 2));
        assert_eq!(frame.len(), len);
        frame
    };
    // At the hard cap: still an error frame, the socket open.
    ws.send_text(&frame_of(16 * limit)).await;
    let reply = ws.recv().await;
    assert!(is_error(&reply), "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("frame too large: {} bytes", 16 * limit)),
        "{reply}"
    );
    ws.interest(&["message"]).await;
    // One byte over: closed.
    ws.send_text(&frame_of(16 * limit + 1)).await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1009, "{reason}");
    assert!(
        reason.starts_with(&format!("frame too large: {} bytes", 16 * limit + 1)),
        "{reason}"
    );
}

/// core4 dropped entries that are not strings, so `[1, null, {}]` silently unsubscribed from
/// everything; core4d says what is wrong and leaves the set as it was.
#[tokio::test]
async fn interest_entries_that_are_not_strings_get_a_malformed_error_and_change_nothing() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    assert_eq!(ws.interest(&["message"]).await["data"], json!(["message"]));
    for (data, entry) in [
        (json!([1, null, {}]), "entry 0 is a number"),
        (json!(["system", null]), "entry 1 is null"),
        (json!(["system", ["queue"]]), "entry 1 is a list"),
    ] {
        ws.send(json!({"type": "interest", "data": data, "id": "i"}))
            .await;
        let reply = ws.recv().await;
        assert!(is_error(&reply), "{data}: {reply}");
        assert_eq!(
            (reply["kind"].as_str(), reply["id"].as_str()),
            (Some("malformed"), Some("i")),
            "{reply}"
        );
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.starts_with("malformed interest: `data` must be a list of channel names")
                && message.contains(entry),
            "{data}: {message}"
        );
    }
    // Still subscribed to `message` only.
    let mut other = Ws::connect(&app, &admin).await;
    other.publish("system", json!("not for ws")).await;
    let id = other.publish("message", json!("for ws")).await;
    assert_eq!(ws.event().await["_id"], id.as_str());
    // A list of strings still works, and a null list is still refused.
    assert_eq!(ws.interest(&["System"]).await["data"], json!(["system"]));
    ws.send(json!({"type": "interest", "data": null})).await;
    assert!(
        ws.recv().await["message"]
            .as_str()
            .unwrap()
            .contains("`data` must be a list")
    );
}

/// The publish body is parsed strictly, as the roles bodies are: an unknown field is a 400 naming
/// it and nothing is stored (it was accepted and ignored).
#[tokio::test]
async fn publishing_with_an_unknown_body_field_gets_400_naming_it() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for (body, field) in [
        (
            json!({"channel": "message", "text": "x", "bogus": 1}),
            "bogus",
        ),
        (json!({"channel": "message", "data": "x"}), "data"),
        (
            json!({"channel": "message", "text": "x", "type": "message"}),
            "type",
        ),
    ] {
        let (status, reply) = app.post("/event", &admin, body.clone()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        let text = error_text(&reply, 400);
        assert!(text.contains(&format!("field [{field}]")), "{body}: {text}");
    }
    let (_, history) = app.get("/event/history", &admin).await;
    assert_eq!(history["total_count"], 0, "{history}");
    let (status, reply) = app
        .post("/event", &admin, json!({"channel": "message", "text": "x"}))
        .await;
    assert_eq!(status, 200, "{reply}");
}

/// core4 read a handler's arguments from the query or a JSON body; `POST /event/history` takes
/// its parameters from either (it ignored the body). Different values in both places are a 400.
/// A page before the first is empty and keeps its number, as on the roles list.
#[tokio::test]
async fn history_post_takes_its_parameters_from_a_json_body() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    for i in 0..12 {
        ws.publish("message", json!(format!("m{i}"))).await;
    }
    ws.publish("elsewhere", json!("x")).await;
    let ids = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|e| e["_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, by_query) = app.get("/event/history?per_page=5&page=1", &admin).await;
    let (status, by_body) = app
        .post("/event/history", &admin, json!({"per_page": 5, "page": 1}))
        .await;
    assert_eq!(status, 200, "{by_body}");
    assert_eq!(
        (&by_body["page"], &by_body["per_page"], ids(&by_body)),
        (&json!(1), &json!(5), ids(&by_query))
    );
    let (_, both) = app
        .post(
            "/event/history?per_page=5",
            &admin,
            json!({"per_page": 5, "page": 1}),
        )
        .await;
    assert_eq!(ids(&both), ids(&by_query));
    let (_, elsewhere) = app
        .post("/event/history", &admin, json!({"channel": "ElseWhere"}))
        .await;
    assert_eq!(elsewhere["total_count"], 1, "{elsewhere}");
    let before = ids(&by_query)[0].clone();
    let (_, cursor) = app
        .post(
            "/event/history",
            &admin,
            json!({"before": before, "per_page": 100}),
        )
        .await;
    assert_eq!(cursor["total_count"], 6, "{cursor}");
    // No body at all is the query alone.
    let resp = app
        .client
        .post(app.url("/event/history?per_page=3"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["count"], 3, "{body}");

    for (query, body, named) in [
        ("?per_page=4", json!({"per_page": 5}), "[per_page]"),
        (
            "?channel=message",
            json!({"channel": "elsewhere"}),
            "[channel]",
        ),
        ("", json!({"per_page": 0}), "[per_page]"),
        ("", json!({"per_page": -1}), "[per_page]"),
        ("", json!({"page": "x"}), "[page]"),
        ("", json!({"before": "abc"}), "[before]"),
        ("", json!({"filter": {"channel": "x"}}), "[filter]"),
        ("", json!([1]), "JSON object"),
    ] {
        let (status, reply) = app
            .post(&format!("/event/history{query}"), &admin, body.clone())
            .await;
        assert_eq!(status, 400, "{query} {body}: {reply}");
        let text = error_text(&reply, 400);
        assert!(text.contains(named), "{query} {body}: {text}");
    }

    let (status, far) = app
        .get("/event/history?per_page=5&page=-99999999999", &admin)
        .await;
    assert_eq!(status, 200, "{far}");
    assert_eq!(
        (&far["page"], &far["count"], &far["page_count"]),
        (&json!(-99_999_999_999i64), &json!(0), &json!(3))
    );
}
