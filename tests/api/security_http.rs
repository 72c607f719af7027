//! The HTTP surface under attack: cross-site requests riding on the login cookie, cross-site
//! WebSocket hijacking, `/metrics` label poisoning, the security headers, and slow clients.

use std::time::Duration;

use core4_tests::{TestApp, error_text, fresh_database, spawn_app, spawn_app_with, test_settings};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};

/// What a page on another port of the same host sends to create a cop: a POST with a Blob body
/// (no Content-Type, so no CORS preflight), the victim's cookie attached by the browser.
fn forged_cop(app: &TestApp, cookie_token: &str, name: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url("/roles"))
        .header("Cookie", format!("token={cookie_token}"))
        .body(
            json!({"name": name, "email": format!("{name}@example.com"),
                   "password": "very secret", "perm": ["cop"]})
            .to_string(),
        )
}

async fn role_exists(app: &TestApp, admin: &str, name: &str) -> bool {
    let (status, body) = app.get(&format!("/roles?name={name}"), admin).await;
    assert_eq!(status, 200, "{body}");
    body["total_count"].as_u64().expect("total_count") > 0
}

#[tokio::test]
async fn a_cookie_post_from_another_origin_cannot_create_a_cop() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let other_port = app.port.wrapping_add(1);
    let foreign = format!("http://127.0.0.1:{other_port}");

    let resp = forged_cop(&app, &admin, "evil")
        .header("Origin", &foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    let error = error_text(&body, 403);
    assert!(
        error.contains(&foreign) && error.contains("trusted_origins"),
        "{error}"
    );
    assert!(
        !role_exists(&app, &admin, "evil").await,
        "the forged cop was created"
    );

    // A browser that leaves Origin out still tells a same-site request by Sec-Fetch-Site.
    let resp = forged_cop(&app, &admin, "evil")
        .header("Sec-Fetch-Site", "same-site")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // PUT and DELETE are guarded the same way.
    let resp = app
        .client
        .delete(app.url("/roles/standard_user"))
        .header("Cookie", format!("token={admin}"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(role_exists(&app, &admin, "standard_user").await);

    // The same request from core4d's own pages, with the token as Bearer header or ?token=, or
    // from a client that is not a browser, is served.
    let own = format!("http://127.0.0.1:{}", app.port);
    let resp = forged_cop(&app, &admin, "own")
        .header("Origin", &own)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = forged_cop(&app, &admin, "bearer")
        .header("Origin", &foreign)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = app
        .client
        .post(app.url(&format!("/roles?token={admin}")))
        .header("Origin", &foreign)
        .body(json!({"name": "query", "perm": []}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = forged_cop(&app, &admin, "script").send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

#[tokio::test]
async fn trusted_origins_may_use_the_cookie() {
    let mut settings = test_settings(&fresh_database().await);
    settings.trusted_origins = vec!["https://ui.example.com".into()];
    let app = spawn_app_with(settings).await;
    let admin = app.admin_token().await;
    let resp = forged_cop(&app, &admin, "fromui")
        .header("Origin", "https://ui.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = forged_cop(&app, &admin, "fromelsewhere")
        .header("Origin", "https://ui.example.com.evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

fn upgrade_request(
    app: &TestApp,
    query: &str,
    headers: &[(&'static str, String)],
) -> tungstenite::handshake::client::Request {
    let url = format!("ws://127.0.0.1:{}/core4/api/v1/event{query}", app.port);
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    req
}

#[tokio::test]
async fn a_cookie_websocket_upgrade_from_another_origin_is_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let evil = ("origin", "http://evil.example".to_string());
    let cookie = ("cookie", format!("token={admin}"));

    let req = upgrade_request(&app, "", &[cookie.clone(), evil.clone()]);
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert!(error_text(&body, 403).contains("http://evil.example"));
        }
        other => panic!("a hijacked upgrade was not refused: {other:?}"),
    }

    // core4's clients send the token themselves and keep working from anywhere; so do pages of
    // core4d's own origin with the cookie.
    let own = ("origin", format!("http://127.0.0.1:{}", app.port));
    for req in [
        upgrade_request(
            &app,
            &format!("?token={admin}"),
            &[cookie.clone(), evil.clone()],
        ),
        upgrade_request(
            &app,
            "",
            &[("authorization", format!("Bearer {admin}")), evil.clone()],
        ),
        upgrade_request(&app, "", &[cookie.clone(), own]),
    ] {
        let (mut ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade");
        assert_eq!(resp.status(), 101);
        ws.send(Message::text(r#"{"type":"interest","data":["message"]}"#))
            .await
            .unwrap();
        let reply = tokio::time::timeout(
            Duration::from_secs(20),
            futures_util::StreamExt::next(&mut ws),
        )
        .await
        .expect("a reply")
        .expect("a frame")
        .unwrap();
        assert!(reply.to_text().unwrap().contains("\"interest\""), "{reply}");
    }
}

/// The request counters, `(labels, count)`.
fn http_series(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("core4d_http_requests_total{"))
        .filter_map(|l| l.split_once("} "))
        .map(|(labels, n)| (labels.to_string(), n.parse().unwrap()))
        .collect()
}

#[tokio::test]
async fn junk_urls_do_not_change_how_real_routes_are_labelled() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, me) = app.get("/profile", &admin).await;
    let my_id = me["data"]["_id"].as_str().unwrap().to_string();
    let real = |app: &TestApp| {
        let (client, admin, my_id) = (app.client.clone(), admin.clone(), my_id.clone());
        let urls = [
            app.url("/health"),
            app.url(&format!("/roles/{my_id}")),
            app.url("/roles/0123456789abcdef01234567"),
        ];
        async move {
            for url in urls {
                client.get(url).bearer_auth(&admin).send().await.unwrap();
            }
        }
    };
    real(&app).await;
    let expected = [
        r#"method="GET",route="/core4/api/v1/health",status="200""#,
        r#"method="GET",route="/core4/api/v1/roles/{id}",status="200""#,
        r#"method="GET",route="/core4/api/v1/roles/{id}",status="404""#,
    ];
    let count = |series: &[(String, u64)], labels: &str| {
        series.iter().find(|(l, _)| l == labels).map(|(_, n)| *n)
    };
    let before = http_series(&app.metrics().await);
    for labels in expected {
        assert_eq!(count(&before, labels), Some(1), "{labels} in {before:?}");
    }

    // 600 anonymous requests with paths, methods and statuses a client chose.
    for i in 0..600 {
        let junk = match i % 4 {
            0 => app.url(&format!("/roles/junk{i}\"x")),
            1 => app.url(&format!("/roles/{i}/{i}")),
            2 => format!("{}/junk/{i}", app.address),
            _ => app.url(&format!("/event/history?channel=c{i}")),
        };
        let method = if i % 5 == 0 {
            reqwest::Method::from_bytes(format!("JUNK{i}").as_bytes()).unwrap()
        } else {
            reqwest::Method::GET
        };
        app.client.request(method, junk).send().await.unwrap();
    }
    real(&app).await;
    let text = app.metrics().await;
    let after = http_series(&text);
    for labels in expected {
        assert_eq!(count(&after, labels), Some(2), "{labels} in {after:?}");
    }
    assert!(!text.contains("junk") && !text.contains("JUNK"), "{text}");
    assert!(after.len() < 60, "{} series: {after:?}", after.len());
}

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap) {
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.headers().clone())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn token_replies_are_never_stored_and_no_reply_is_sniffed_or_framed() {
    let mut settings = test_settings(&fresh_database().await);
    settings.token_refresh = 0;
    let app = spawn_app_with(settings).await;
    let login = app.client.get(app.url("/login")).query(&[
        ("username", "admin"),
        ("password", core4_tests::ADMIN_PASSWORD),
    ]);
    let (status, headers) = send(login).await;
    assert_eq!(status, 200);
    assert!(!header(&headers, "token").is_empty());
    assert_eq!(header(&headers, "cache-control"), "no-store");
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");

    // A reply that hands out a refreshed token (after a second, with token_refresh = 0).
    let admin = app.admin_token().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, headers) = send(app.client.get(app.url("/profile")).bearer_auth(&admin)).await;
    assert_eq!(status, 200);
    assert!(!header(&headers, "token").is_empty(), "{headers:?}");
    assert_eq!(header(&headers, "cache-control"), "no-store");

    for path in ["/health", "/nosuchpath", "/docs", "/openapi.json"] {
        let (_, headers) = send(app.client.get(app.url(path))).await;
        assert_eq!(
            header(&headers, "x-content-type-options"),
            "nosniff",
            "{path}"
        );
        assert!(
            header(&headers, "content-security-policy").contains("frame-ancestors 'none'"),
            "{path}: {headers:?}"
        );
    }
    // The docs page runs Swagger UI's inline scripts: its policy restricts framing only.
    let (status, headers) = send(app.client.get(app.url("/docs"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-security-policy"),
        "frame-ancestors 'none'"
    );
}

/// A test core4d that gives slow clients `header_read` and `idle` seconds.
async fn spawn_with_timeouts(header_read: u64, idle: u64) -> TestApp {
    let mut settings = test_settings(&fresh_database().await);
    settings.http.header_read_timeout_secs = header_read;
    settings.http.idle_timeout_secs = idle;
    spawn_app_with(settings).await
}

/// Reads until the server closes the connection (EOF or reset), discarding what it sends.
/// Panics if that does not happen within the hang guard.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

#[tokio::test]
async fn a_silent_connection_is_closed() {
    let app = spawn_with_timeouts(1, 1).await;
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    closed_by_server(&mut stream).await;
}

#[tokio::test]
async fn a_half_sent_request_header_is_closed() {
    let app = spawn_with_timeouts(1, 1).await;
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    stream
        .write_all(b"GET /core4/api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    closed_by_server(&mut stream).await;
}

/// Slowloris: one byte at a time keeps a connection busy but never finishes the header; the
/// header deadline ends it although the idle timeout never fires.
#[tokio::test]
async fn a_trickled_request_header_is_closed() {
    let app = spawn_with_timeouts(1, 60).await;
    let stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"GET /core4/api/v1/health HTTP/1.1\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "the server kept the trickling connection open"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_reply() {
    let app = spawn_with_timeouts(60, 1).await;
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    stream
        .write_all(b"GET /core4/api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    closed_by_server(&mut stream).await;
}
