//! The event protocol as a contract: replies in frame order, correlation ids, idempotent publish,
//! RFC 6455 closes and HTTP publish, end to end against a real core4d.

use core4_tests::{TestApp, spawn_app, spawn_app_with, test_settings};
use core4d::storage::{
    self,
    events::{AccountKey, NewBatch},
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::events::{Ws, user_with};

/// Replies only (events carry a `channel` key and may come in between).
async fn next_reply(ws: &mut Ws) -> Value {
    ws.recv_until(|v| v.get("channel").is_none()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_frames_are_answered_in_frame_order() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    ws.interest(&["message"]).await;
    for round in 0..20 {
        ws.send_pipelined(&[
            json!({"type": "message", "channel": "message", "text": format!("m{round}")})
                .to_string(),
            "not json".into(),
            json!({"type": "interest", "data": ["message"]}).to_string(),
        ])
        .await;
        let kinds = [
            next_reply(&mut ws).await,
            next_reply(&mut ws).await,
            next_reply(&mut ws).await,
        ];
        let kinds: Vec<&str> = kinds.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["send", "error", "interest"], "round {round}");
    }
}

#[tokio::test]
async fn replies_carry_the_correlation_id_of_their_frame() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    ws.send(json!({"type": "interest", "data": ["message"], "id": "i-1"}))
        .await;
    let reply = next_reply(&mut ws).await;
    assert_eq!(
        (reply["type"].as_str(), reply["id"].as_str()),
        (Some("interest"), Some("i-1"))
    );
    ws.send(json!({"type": "message", "channel": "message", "text": "hi", "id": "m-1"}))
        .await;
    let ack = next_reply(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_str()),
        (Some("send"), Some("m-1"))
    );
    ws.send(json!({"type": "dance", "id": "d-1"})).await;
    let err = next_reply(&mut ws).await;
    assert_eq!(
        (err["type"].as_str(), err["id"].as_str()),
        (Some("error"), Some("d-1"))
    );
    ws.send(json!({"type": "token", "token": admin, "id": "t-1"}))
        .await;
    let tok = next_reply(&mut ws).await;
    assert_eq!(
        (tok["type"].as_str(), tok["id"].as_str()),
        (Some("token"), Some("t-1"))
    );
    // A frame without an id gets a reply without one (core4 clients see no change).
    ws.send(json!({"type": "message", "channel": "message", "text": "plain"}))
        .await;
    let ack = next_reply(&mut ws).await;
    assert!(
        ack.get("id").is_none() && ack.get("duplicate").is_none(),
        "{ack}"
    );
    // An id that is not a short string is refused, and not echoed.
    ws.send(json!({"type": "interest", "data": [], "id": "x".repeat(65)}))
        .await;
    let err = next_reply(&mut ws).await;
    assert!(err["message"].as_str().unwrap().contains("`id`"), "{err}");
    assert!(err.get("id").is_none());
}

async fn stored_texts(app: &TestApp, token: &str) -> Vec<String> {
    let (status, body) = app
        .get("/event/history?channel=keyed&per_page=100", token)
        .await;
    assert_eq!(status, 200, "{body}");
    let mut texts: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    texts
}

/// Publishes with a key; returns the ack.
async fn publish_keyed(ws: &mut Ws, text: &str, key: &str) -> Value {
    ws.send(json!({"type": "message", "channel": "keyed", "text": text, "key": key}))
        .await;
    next_reply(ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_message_is_stored_once_across_reconnects_restarts_and_instances() {
    let a = spawn_app().await;
    let admin = a.admin_token().await;
    let mut ws = Ws::connect(&a, &admin).await;
    let first = publish_keyed(&mut ws, "one", "k1").await;
    assert_eq!(first["type"], "interest", "{first}");
    assert!(first.get("duplicate").is_none(), "{first}");
    let id = first["message_id"].as_str().unwrap().to_string();
    // The same socket, then a new one: the original id, marked duplicate.
    let again = publish_keyed(&mut ws, "one again", "k1").await;
    assert_eq!(
        (again["message_id"].as_str(), again["duplicate"].as_bool()),
        (Some(&*id), Some(true))
    );
    drop(ws);
    let mut ws = Ws::connect(&a, &admin).await;
    let again = publish_keyed(&mut ws, "one", "k1").await;
    assert_eq!(
        (again["message_id"].as_str(), again["duplicate"].as_bool()),
        (Some(&*id), Some(true))
    );
    // Pipelined duplicates (most likely in one group-commit batch): one stored.
    ws.send_pipelined(&[
        json!({"type": "message", "channel": "keyed", "text": "two", "key": "k2", "id": "a"})
            .to_string(),
        json!({"type": "message", "channel": "keyed", "text": "two", "key": "k2", "id": "b"})
            .to_string(),
    ])
    .await;
    let (x, y) = (next_reply(&mut ws).await, next_reply(&mut ws).await);
    assert_eq!((x["id"].as_str(), y["id"].as_str()), (Some("a"), Some("b")));
    assert_eq!(x["message_id"], y["message_id"]);
    assert_eq!(y["duplicate"], true);
    // Another instance on the same database.
    let b = spawn_app_with(test_settings(&a.database_url)).await;
    let mut wb = Ws::connect(&b, &admin).await;
    let again = publish_keyed(&mut wb, "one", "k1").await;
    assert_eq!(
        (again["message_id"].as_str(), again["duplicate"].as_bool()),
        (Some(&*id), Some(true))
    );
    // A restart of the first instance.
    drop(ws);
    let url = a.database_url.clone();
    a.stop().await.unwrap();
    let a = spawn_app_with(test_settings(&url)).await;
    let mut ws = Ws::connect(&a, &admin).await;
    let again = publish_keyed(&mut ws, "one", "k1").await;
    assert_eq!(
        (again["message_id"].as_str(), again["duplicate"].as_bool()),
        (Some(&*id), Some(true))
    );
    // Keys belong to their author: another user's k1 is a new message.
    let (_, other) = user_with(&a, &admin, "user1", &["event://keyed/rw"]).await;
    let mut wo = Ws::connect(&a, &other).await;
    let theirs = publish_keyed(&mut wo, "theirs", "k1").await;
    assert_eq!(theirs["type"], "interest", "{theirs}");
    assert!(theirs.get("duplicate").is_none(), "{theirs}");
    assert_ne!(theirs["message_id"].as_str(), Some(&*id));
    assert_eq!(stored_texts(&a, &admin).await, ["one", "theirs", "two"]);
    drop((ws, wb, wo));
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test]
async fn duplicates_inside_one_batch_ack_the_first_and_ids_stay_gapless() {
    let app = spawn_app().await;
    let pool = core4d::startup::connect(&app.database_url, 1)
        .await
        .unwrap();
    let admin: String = sqlx::query_scalar("SELECT id FROM roles WHERE name = 'admin'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let keys = |k: &[Option<&str>]| {
        Some(
            k.iter()
                .map(|k| k.map(|k| AccountKey::new(&admin, k)))
                .collect(),
        )
    };
    let batch = |keys: Option<Vec<Option<AccountKey>>>| {
        let n = keys.as_ref().map_or(3, Vec::len);
        NewBatch {
            names: vec!["message".into(); n],
            authors: vec!["admin".into(); n],
            channels: vec!["keyed".into(); n],
            data: (0..n).map(|i| format!("\"m{i}\"")).collect(),
            keys,
        }
    };
    let append = |rows: NewBatch, window: u64| {
        let pool = pool.clone();
        async move {
            storage::events::append(&pool, Uuid::new_v4(), "test", &rows, window)
                .await
                .unwrap()
        }
    };
    let head = storage::events::head(&pool).await.unwrap();
    let a = append(batch(keys(&[Some("x"), None, Some("x"), Some("y")])), 60).await;
    assert_eq!(a.first, head + 1);
    assert_eq!(a.acks, Some(vec![head + 1, head + 2, head + 1, head + 3]));
    assert_eq!(a.dups, Some(vec![false, false, true, false]));
    // A later batch: known keys ack their original, the plain path continues the ids.
    let b = append(batch(keys(&[Some("y"), Some("z")])), 60).await;
    assert_eq!(b.acks, Some(vec![head + 3, head + 4]));
    assert_eq!(b.dups, Some(vec![true, false]));
    let c = append(batch(None), 60).await;
    assert_eq!((c.first, c.acks), (head + 5, None));
    // All duplicates: nothing stored, the head stays.
    let d = append(batch(keys(&[Some("z")])), 60).await;
    assert_eq!(d.acks, Some(vec![head + 4]));
    assert_eq!(storage::events::head(&pool).await.unwrap(), head + 7);
    // Outside the window a key is new again.
    let e = append(batch(keys(&[Some("x")])), 0).await;
    assert_eq!((e.acks, e.dups), (Some(vec![head + 8]), Some(vec![false])));
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM events WHERE id > $1 ORDER BY id")
        .bind(head)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ids, (head + 1..=head + 8).collect::<Vec<_>>());
    // The key (qualified with its author's id) lives in the newest message's row only: the
    // expired holder gave it up.
    let holders: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, replace(key, chr(31), '/') FROM events WHERE id > $1 AND key IS NOT NULL ORDER BY id")
            .bind(head)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        holders,
        [
            (head + 3, format!("{admin}/y")),
            (head + 4, format!("{admin}/z")),
            (head + 8, format!("{admin}/x"))
        ]
    );
}

#[tokio::test]
async fn http_publish_commits_broadcasts_and_honours_keys_and_limits() {
    let url = core4_tests::fresh_database().await;
    let mut settings = test_settings(&url);
    settings.events.messages_per_second = 1;
    settings.events.burst = 3;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    ws.interest(&["message"]).await;
    let (status, body) = app
        .post(
            "/event",
            &admin,
            json!({"channel": " Message ", "text": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["duplicate"], false);
    let id = body["data"]["message_id"].as_str().unwrap().to_string();
    let event = ws.event().await;
    assert_eq!(
        (event["_id"].as_str(), &event["data"]),
        (Some(&*id), &json!({"n": 1}))
    );
    // The Idempotency-Key header: the second request acks the first message.
    let keyed = || {
        app.client
            .post(app.url("/event"))
            .bearer_auth(&admin)
            .header("Idempotency-Key", "nightly-1")
            .json(&json!({"channel": "message", "text": "report"}))
            .send()
    };
    let first: Value = keyed().await.unwrap().json().await.unwrap();
    let again: Value = keyed().await.unwrap().json().await.unwrap();
    assert_eq!(
        first["data"]["message_id"], again["data"]["message_id"],
        "{again}"
    );
    assert_eq!(
        (
            first["data"]["duplicate"].as_bool(),
            again["data"]["duplicate"].as_bool()
        ),
        (Some(false), Some(true))
    );
    // The socket's limits and phrases.
    let (status, body) = app
        .post("/event", &admin, json!({"channel": "message", "text": "x"}))
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("rate limit exceeded"),
        "{body}"
    );
    let (_, reader) = user_with(&app, &admin, "reader", &["event://message/r"]).await;
    let (status, body) = app
        .post(
            "/event",
            &reader,
            json!({"channel": "message", "text": "x"}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("no write permission on channel [message]"))
    );
    let (status, body) = app
        .post("/event", &reader, json!({"channel": "message", "text": ""}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("malformed message: `text` is empty"))
    );
    let (status, _) = app
        .post(
            "/event",
            &reader,
            json!({"channel": "a b", "text": "x", "key": ""}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .post("/event", "nope", json!({"channel": "message", "text": "x"}))
        .await;
    assert_eq!(status, 401);
    // A key or channel of another type is refused, as on the socket, not turned into a string
    // (a number key would otherwise collide with the string key of the same digits).
    for body in [
        json!({"channel": "message", "text": "x", "key": 5}),
        json!({"channel": "message", "text": "x", "key": true}),
        json!({"channel": 5, "text": "x"}),
    ] {
        let (status, reply) = app.post("/event", &reader, body.clone()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("field ["),
            "{reply}"
        );
    }
    // `"key": null` is no key.
    let (status, reply) = app
        .post(
            "/event",
            &admin,
            json!({"channel": "message", "text": "x", "key": null}),
        )
        .await;
    assert_ne!(status, 400, "{reply}");
}

#[tokio::test]
async fn a_client_close_frame_is_answered() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    ws.interest(&["message"]).await;
    assert_eq!(ws.close_with(1000).await.0, 1000);
}

/// A masked client frame (mask key 0) with this first byte and payload.
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn a_protocol_error_closes_with_1002() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    // FIN + RSV1 + text: a reserved bit no extension was negotiated for.
    ws.send_raw(&raw_frame(0xC1, b"{}")).await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.starts_with("protocol error"), "{reason}");
}

#[tokio::test]
async fn a_text_frame_of_invalid_utf8_closes_with_1007() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    ws.send_raw(&raw_frame(0x81, &[b'"', 0xff, 0xfe, b'"']))
        .await;
    assert_eq!(ws.closed().await.0, 1007);
}

/// The ids of the next `n` events.
async fn event_ids(ws: &mut Ws, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(ws.event().await["_id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test]
async fn a_resubscription_replays_what_the_socket_was_not_sent_on_every_channel() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut publisher = Ws::connect(&app, &admin).await;
    let mut sent = std::collections::HashMap::<&str, Vec<String>>::new();
    for (ch, text) in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2")] {
        sent.entry(ch)
            .or_default()
            .push(publisher.publish(ch, json!(text)).await);
    }
    let since = (sent["a"][0].parse::<i64>().unwrap() - 1).to_string();
    let mut sub = Ws::connect(&app, &admin).await;
    // Live on `a` only: it gets a3, not b3.
    sub.interest(&["a"]).await;
    let a3 = publisher.publish("a", json!("a3")).await;
    let b3 = publisher.publish("b", json!("b3")).await;
    assert_eq!(event_ids(&mut sub, 1).await, [a3]);
    // Adding `b` with an old `since`: a's stored messages it missed and all of b's, a3 not again.
    sub.send(json!({"type": "interest", "data": ["a", "b"], "since": since}))
        .await;
    let reply = next_reply(&mut sub).await;
    assert_eq!(reply["since"].as_str(), Some(&*since), "{reply}");
    let expected = vec![
        sent["a"][0].clone(),
        sent["b"][0].clone(),
        sent["a"][1].clone(),
        sent["b"][1].clone(),
        b3.clone(),
    ];
    assert_eq!(event_ids(&mut sub, 5).await, expected);
    // Live continues; a second replay from the same point brings nothing twice.
    let a4 = publisher.publish("a", json!("a4")).await;
    assert_eq!(event_ids(&mut sub, 1).await, [a4]);
    sub.send(json!({"type": "interest", "data": ["b", "a"], "since": since}))
        .await;
    next_reply(&mut sub).await;
    let a5 = publisher.publish("a", json!("a5")).await;
    assert_eq!(event_ids(&mut sub, 1).await, [a5]);
    // Dropping `b` and taking it back: what it was sent before does not come again.
    sub.interest(&["a"]).await;
    let b4 = publisher.publish("b", json!("b4")).await;
    sub.send(json!({"type": "interest", "data": ["a", "b"], "since": since}))
        .await;
    next_reply(&mut sub).await;
    assert_eq!(event_ids(&mut sub, 1).await, [b4]);
    sub.assert_silent(std::time::Duration::from_millis(200))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_database_refuses_costs_no_other_message_its_place() {
    let url = core4_tests::fresh_database().await;
    let app = spawn_app_with(test_settings(&url)).await;
    let admin = app.admin_token().await;
    // Stand-in for any row PostgreSQL refuses that validation let through.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        r#"CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF NEW.data::text = '"poison"' THEN RAISE EXCEPTION 'poisoned'; END IF;
               RETURN NEW;
           END $$;
           CREATE TRIGGER refuse_poison BEFORE INSERT ON events
               FOR EACH ROW EXECUTE FUNCTION refuse_poison();"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut ws = Ws::connect(&app, &admin).await;
    // Pipelined, so that they share group commits with the poison.
    let texts: Vec<String> = (0..41)
        .map(|i| {
            if i == 20 {
                "poison".into()
            } else {
                format!("good-{i}")
            }
        })
        .collect();
    let frames: Vec<String> = texts
        .iter()
        .map(|t| json!({"type": "message", "channel": "keyed", "text": t}).to_string())
        .collect();
    ws.send_pipelined(&frames).await;
    for text in &texts {
        let reply = next_reply(&mut ws).await;
        if text == "poison" {
            assert_eq!(reply["kind"], "internal", "{reply}");
        } else {
            // (The first also adds the channel to the socket's interests.)
            assert!(reply["message_id"].is_string(), "{text}: {reply}");
        }
    }
    let mut good: Vec<String> = texts.into_iter().filter(|t| t != "poison").collect();
    good.sort();
    assert_eq!(stored_texts(&app, &admin).await, good);
    // The database holds every stored id: none was lost to the failed batch.
    let (count, max): (i64, i64) = sqlx::query_as("SELECT count(*), max(id) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, max, "ids stay gapless");
}

#[tokio::test]
async fn keys_with_control_characters_are_refused_before_the_database() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    ws.send(
        json!({"type": "message", "channel": "keyed", "text": "x", "key": "k\u{0}", "id": "n"}),
    )
    .await;
    let reply = next_reply(&mut ws).await;
    assert_eq!(
        (reply["kind"].as_str(), reply["id"].as_str()),
        (Some("malformed"), Some("n")),
        "{reply}"
    );
    let (status, body) = app
        .post(
            "/event",
            &admin,
            json!({"channel": "keyed", "text": "x", "key": "k\u{0}"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("control characters"),
        "{body}"
    );
    let resp = app
        .client
        .post(app.url("/event"))
        .bearer_auth(&admin)
        .header("Idempotency-Key", "one")
        .json(&json!({"channel": "keyed", "text": "x", "key": "other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(stored_texts(&app, &admin).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pings_and_never_reads_is_closed_instead_of_buffered() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    let pings: Vec<u8> = raw_frame(0x89, &[b'x'; 125]).repeat(500);
    // Every ping is answered with a pong this client never reads (unbounded, the pongs piled up
    // in core4d's memory at 240 MB/s). Pings count against the user's frame rate: past it the
    // socket is closed, and the writes here fail.
    let total = 512 * 1024 * 1024 / pings.len();
    let mut refused = false;
    for _ in 0..total {
        if tokio::time::timeout(std::time::Duration::from_secs(20), ws.try_send_raw(&pings))
            .await
            .expect("core4d keeps reading or closes")
            .is_err()
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "512 MiB of pings were taken without a close");
    // A client that reads its pongs sees why.
    let mut ws = Ws::connect(&app, &admin).await;
    ws.send_raw(&raw_frame(0x89, b"p").repeat(1000)).await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.starts_with("too many pings"), "{reason}");
}

// Keys belong to the account (its role id), not to its name: a name can pass to another account.

/// Publishes over HTTP with a key; returns (message_id, duplicate).
async fn post_keyed(app: &TestApp, token: &str, text: &str, key: &str) -> (String, bool) {
    let (status, body) = app
        .post(
            "/event",
            token,
            json!({"channel": "keyed", "text": text, "key": key}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    (
        data["message_id"].as_str().unwrap().to_string(),
        data["duplicate"].as_bool().unwrap(),
    )
}

async fn update_role(app: &TestApp, admin: &str, id: &str, change: Value) -> (u16, Value) {
    let (status, current) = app.get(&format!("/roles/{id}"), admin).await;
    assert_eq!(status, 200, "{current}");
    let mut body = change;
    body["etag"] = current["data"]["etag"].clone();
    app.put(&format!("/roles/{id}"), admin, body).await
}

#[tokio::test]
async fn a_deleted_users_keys_do_not_answer_a_new_user_of_the_same_name() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (old_id, old) = user_with(&app, &admin, "frank", &["event://keyed/rw"]).await;
    let (first, duplicate) = post_keyed(&app, &old, "old frank", "daily-report").await;
    assert!(!duplicate);
    let (_, current) = app.get(&format!("/roles/{old_id}"), &admin).await;
    let etag = current["data"]["etag"].as_str().unwrap().to_string();
    let (status, body) = app
        .delete(&format!("/roles/{old_id}?etag={etag}"), &admin)
        .await;
    assert_eq!(status, 200, "{body}");
    let (new_id, new) = user_with(&app, &admin, "frank", &["event://keyed/rw"]).await;
    assert_ne!(new_id, old_id);
    // Stored, under a new id: neither silently dropped nor told the old account's message id.
    let (second, duplicate) = post_keyed(&app, &new, "new frank", "daily-report").await;
    assert!(!duplicate);
    assert_ne!(second, first);
    // The key is the new account's now, over HTTP and the socket alike.
    assert_eq!(
        post_keyed(&app, &new, "new frank", "daily-report").await,
        (second.clone(), true)
    );
    let mut ws = Ws::connect(&app, &new).await;
    let again = publish_keyed(&mut ws, "new frank", "daily-report").await;
    assert_eq!(
        (again["message_id"].as_str(), again["duplicate"].as_bool()),
        (Some(&*second), Some(true)),
        "{again}"
    );
    assert_eq!(stored_texts(&app, &admin).await, ["new frank", "old frank"]);
}

#[tokio::test]
async fn a_renamed_users_resend_is_a_duplicate_and_the_old_name_starts_afresh() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (id, frank) = user_with(&app, &admin, "frank", &["event://keyed/rw"]).await;
    let mut ws = Ws::connect(&app, &frank).await;
    let sent = publish_keyed(&mut ws, "report", "daily-report").await;
    let original = sent["message_id"].as_str().unwrap().to_string();
    drop(ws);
    let (status, body) = update_role(&app, &admin, &id, json!({"name": "francis"})).await;
    assert_eq!(status, 200, "{body}");
    // The resend after the rename, by socket and by HTTP: acked with the original id.
    let francis = app.login("francis", "very secret").await;
    let mut ws = Ws::connect(&app, &francis).await;
    let again = publish_keyed(&mut ws, "report", "daily-report").await;
    assert_eq!(
        (again["message_id"].as_str(), again["duplicate"].as_bool()),
        (Some(&*original), Some(true)),
        "{again}"
    );
    assert_eq!(
        post_keyed(&app, &francis, "report", "daily-report").await,
        (original.clone(), true)
    );
    // The next holder of the old name has keys of its own (francis keeps the old email).
    let (status, body) =
        update_role(&app, &admin, &id, json!({"email": "francis@example.com"})).await;
    assert_eq!(status, 200, "{body}");
    let (_, next) = user_with(&app, &admin, "frank", &["event://keyed/rw"]).await;
    let (theirs, duplicate) = post_keyed(&app, &next, "theirs", "daily-report").await;
    assert!(!duplicate);
    assert_ne!(theirs, original);
    assert_eq!(stored_texts(&app, &admin).await, ["report", "theirs"]);
}

#[tokio::test]
async fn migration_0010_moves_stored_keys_from_names_to_accounts() {
    let url = core4_tests::fresh_database().await;
    let pool = core4d::startup::connect(&url, 1).await.unwrap();
    let mut migrator = sqlx::migrate!("../daemon/migrations");
    let all = migrator.migrations.clone();
    migrator.migrations = all.iter().filter(|m| m.version <= 9).cloned().collect();
    migrator.run(&pool).await.unwrap();
    // Under the 0009 schema: frank exists, `gone` was deleted; each stored a keyed message.
    let frank_id = "0123456789abcdef01234567";
    sqlx::query("INSERT INTO roles (id, name, name_key, etag) VALUES ($1, 'frank', 'frank', 'e')")
        .bind(frank_id)
        .execute(&pool)
        .await
        .unwrap();
    let (first,): (i64,) = sqlx::query_as(
        "SELECT o_first FROM append_events($1, 'old', ARRAY['message', 'message'],
             ARRAY['frank', 'gone'], ARRAY['keyed', 'keyed'], ARRAY['\"old\"', '\"gone\"'],
             ARRAY['daily-report', 'daily-report'], 86400)",
    )
    .bind(Uuid::new_v4())
    .fetch_one(&pool)
    .await
    .unwrap();
    let keys = || async {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT author, replace(key, chr(31), '/') FROM events ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    assert_eq!(
        keys().await,
        [
            ("frank".into(), Some("frank/daily-report".into())),
            ("gone".into(), Some("gone/daily-report".into()))
        ]
    );
    migrator.migrations = all;
    migrator.run(&pool).await.unwrap();
    assert_eq!(
        keys().await,
        [
            ("frank".into(), Some(format!("{frank_id}/daily-report"))),
            ("gone".into(), None)
        ]
    );
    // A bare key (as a core4d from before 0010 would still send) is refused, not stored.
    let bare = sqlx::query(
        "SELECT * FROM append_events($1, 'old', ARRAY['message'], ARRAY['frank'],
             ARRAY['keyed'], ARRAY['\"bare\"'], ARRAY['daily-report'], 86400)",
    )
    .bind(Uuid::new_v4())
    .execute(&pool)
    .await
    .unwrap_err();
    assert_eq!(
        bare.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23514"),
        "{bare}"
    );
    // End to end: frank's resend after the upgrade is the message stored before it.
    let app = spawn_app_with(test_settings(&url)).await;
    let admin = app.admin_token().await;
    let (status, body) = update_role(
        &app,
        &admin,
        frank_id,
        json!({"email": "frank@example.com", "passwd": "very secret",
               "perm": ["api://core4.api.v1.request.standard.*", "event://keyed/rw"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let frank = app.login("frank", "very secret").await;
    assert_eq!(
        post_keyed(&app, &frank, "old", "daily-report").await,
        (first.to_string(), true)
    );
}

#[tokio::test]
async fn an_idempotency_key_header_beyond_ascii_is_honoured_and_a_repeated_one_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let publish = |headers: Vec<&'static str>| {
        let mut req = app
            .client
            .post(app.url("/event"))
            .bearer_auth(&admin)
            .json(&json!({"channel": "keyed", "text": "once"}));
        for h in headers {
            req = req.header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(h.as_bytes()).unwrap(),
            );
        }
        req.send()
    };
    let first: Value = publish(vec!["ключ-1"]).await.unwrap().json().await.unwrap();
    let again: Value = publish(vec!["ключ-1"]).await.unwrap().json().await.unwrap();
    assert_eq!(first["data"]["duplicate"], false, "{first}");
    assert_eq!(
        (&again["data"]["duplicate"], &again["data"]["message_id"]),
        (&json!(true), &first["data"]["message_id"]),
        "{again}"
    );
    let twice = publish(vec!["a", "b"]).await.unwrap();
    assert_eq!(twice.status(), 400);
    let body: Value = twice.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("more than once"),
        "{body}"
    );
    assert_eq!(stored_texts(&app, &admin).await, ["once"]);
}
