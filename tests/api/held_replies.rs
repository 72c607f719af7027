//! Large replies waiting for slow readers are bounded per client: a client that asks for big
//! pages and never reads them cannot pin the server's memory, one connection after another.

use std::time::Duration;

use core4_tests::{fresh_database, spawn_app_with, test_settings};

use crate::metrics::metric;
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_large_replies_gets_503_for_more() {
    let mut settings = test_settings(&fresh_database().await);
    settings.events.messages_per_second = 10_000;
    settings.events.burst = 10_000;
    settings.http.max_held_reply_bytes_per_address = 1 << 20;
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    // 160 messages of 60 KB: a page of them is about 10 MB, more than the socket buffers of
    // both ends hold, so a client that does not read keeps most of it waiting in core4d.
    let text = "x".repeat(60_000);
    for _ in 0..160 {
        let (status, body) = app
            .post("/event", &admin, json!({"channel": "big", "text": text}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let page = "/event/history?channel=big&per_page=160";
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket
        .connect(format!("127.0.0.1:{}", app.port).parse().unwrap())
        .await
        .unwrap();
    stalled
        .write_all(
            format!(
                "GET /core4/api/v1{page} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Once core4d holds the stalled reply (its size shows in /metrics; nothing else asks for a
    // large page meanwhile), the same client's next large reply is refused...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if metric(&app.metrics().await, "core4d_http_held_reply_bytes") > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled reply was never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let get_page = || app.client.get(app.url(page)).bearer_auth(&admin).send();
    let refused = get_page().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("waiting for this client to read them"),
        "{body}"
    );
    // ...while small replies are not counted,
    let (status, _) = app.get("/profile", &admin).await;
    assert_eq!(status, 200);
    // and once the stalled client leaves, its budget is free again.
    drop(stalled);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let resp = get_page().await.unwrap();
        if resp.status() == 200 {
            let len = resp.headers()["content-length"]
                .to_str()
                .unwrap()
                .to_string();
            let body = resp.bytes().await.unwrap();
            assert_eq!(len, body.len().to_string(), "the length is still announced");
            assert!(body.len() > 160 * 60_000);
            break;
        }
        assert_eq!(resp.status(), 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the budget was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
