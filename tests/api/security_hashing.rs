//! Issue 7, item 11: a login flood fills only a bounded queue in front of the password hasher.
//! What does not fit gets 503 with `Retry-After` at once, one client cannot take the places of
//! others, and once the flood is over logins work as before.

use std::{net::IpAddr, time::Duration};

use core4_tests::{
    ADMIN_PASSWORD, TestApp, error_text, fresh_database, spawn_app_with, test_settings,
};
use reqwest::{Client, header::HeaderValue};
use serde_json::Value;

/// One slot, two queue places, two per client, and hashes slow enough (t=300 over 1 MiB) that
/// a flood is still in the hasher when the next login arrives. The login limiter is lifted so
/// that it does not answer before the queue does.
async fn spawn_slow_hasher() -> TestApp {
    let mut settings = test_settings(&fresh_database().await);
    settings.argon2.t_cost = 300;
    settings.argon2.concurrency = 1;
    settings.argon2.max_queue = 2;
    settings.argon2.max_queue_per_client = 2;
    settings.login_limit.max_failures = 1_000_000;
    spawn_app_with(settings).await
}

fn client_from(address: [u8; 4]) -> Client {
    Client::builder()
        .local_address(IpAddr::from(address))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

async fn login(client: &Client, app: &TestApp, password: &str) -> (u16, Option<String>, Value) {
    let resp = client
        .get(app.url("/login"))
        .query(&[("username", "admin"), ("password", password)])
        .send()
        .await
        .expect("login request");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.json().await.expect("JSON body");
    (status, retry_after, body)
}

#[tokio::test]
async fn a_login_flood_gets_503_at_once_while_other_clients_still_log_in() {
    let app = spawn_slow_hasher().await;
    let attacker = client_from([127, 0, 0, 1]);
    let (tx, mut replies) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..30 {
        let (attacker, url, tx) = (attacker.clone(), app.url("/login"), tx.clone());
        tokio::spawn(async move {
            let resp = attacker
                .get(url)
                .query(&[("username", "admin"), ("password", &format!("guess {i}"))])
                .send()
                .await
                .expect("flood request");
            let status = resp.status().as_u16();
            let retry_after = resp.headers().get("Retry-After").cloned();
            let body: serde_json::Value = resp.json().await.expect("JSON body");
            let _ = tx.send((status, retry_after, body));
        });
    }
    drop(tx);

    let mut refused = 0;
    let mut check = |(status, retry_after, body): (u16, Option<HeaderValue>, Value)| match status {
        401 => {}
        503 => {
            refused += 1;
            assert_eq!(
                retry_after.as_ref().and_then(|v| v.to_str().ok()),
                Some("1"),
                "{body}"
            );
            assert!(error_text(&body, 503).contains("try again"), "{body}");
        }
        other => panic!("flood login got {other}: {body}"),
    };
    // The first 503 means the attacker's share is taken and its guesses are being hashed
    // (each takes far longer than the replies); a user at another address is still let in.
    loop {
        let reply = tokio::time::timeout(Duration::from_secs(60), replies.recv())
            .await
            .expect("hang guard: flood replies")
            .expect("a flood login got 503");
        let was_503 = reply.0 == 503;
        check(reply);
        if was_503 {
            break;
        }
    }
    let user = client_from([127, 0, 0, 2]);
    let (status, _, body) = login(&user, &app, ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");

    while let Some(reply) = replies.recv().await {
        check(reply);
    }
    // Two places for the attacker: at most a handful of its 30 guesses were hashed.
    assert!(refused >= 20, "only {refused} of 30 flood logins got 503");

    // The flood is over: the attacker's address logs in again.
    let (status, _, body) = login(&attacker, &app, ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_wrong_password_still_gets_401_when_the_queue_has_room() {
    let app = spawn_slow_hasher().await;
    let (status, retry_after, body) = login(&client_from([127, 0, 0, 1]), &app, "wrong").await;
    assert_eq!((status, retry_after), (401, None), "{body}");
}
