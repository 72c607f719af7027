//! Issue 7, item 11: a login flood fills only a bounded queue in front of the password hasher.
//! What does not fit gets 503 with `Retry-After` at once, one client cannot take the places of
//! others, an address that logged in before gets past a flood from many, and once the flood is
//! over logins work as before.

use std::{net::IpAddr, time::Duration};

use core4_tests::{
    ADMIN_PASSWORD, TestApp, error_text, fresh_database, spawn_app_with, test_settings,
};
use reqwest::Client;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

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

async fn login(client: &Client, app: &TestApp, password: &str) -> Reply {
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

type Reply = (u16, Option<String>, Value);

/// Sends one wrong guess for `admin` from each client at once; the replies arrive on the channel.
fn flood(app: &TestApp, clients: Vec<Client>) -> UnboundedReceiver<Reply> {
    let (tx, replies) = tokio::sync::mpsc::unbounded_channel();
    for (i, client) in clients.into_iter().enumerate() {
        let (url, tx) = (app.url("/login"), tx.clone());
        tokio::spawn(async move {
            let resp = client
                .get(url)
                .query(&[("username", "admin"), ("password", &format!("guess {i}"))])
                .send()
                .await
                .expect("flood request");
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let _ = tx.send((status, retry_after, resp.json().await.expect("JSON body")));
        });
    }
    replies
}

/// Counts the flood's 503s, checking each is the envelope with `Retry-After: 1`.
#[derive(Default)]
struct Refusals(usize);

impl Refusals {
    fn check(&mut self, (status, retry_after, body): Reply) {
        match status {
            401 => {}
            503 => {
                self.0 += 1;
                assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
                assert!(error_text(&body, 503).contains("try again"), "{body}");
            }
            other => panic!("flood login got {other}: {body}"),
        }
    }

    /// Reads replies up to the first 503: from then on the queue is full and the admitted
    /// guesses are being hashed (each takes far longer than the replies).
    async fn until_first(&mut self, replies: &mut UnboundedReceiver<Reply>) {
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(60), replies.recv())
                .await
                .expect("hang guard: flood replies")
                .expect("a flood login got 503");
            let refused = reply.0 == 503;
            self.check(reply);
            if refused {
                return;
            }
        }
    }

    async fn rest(&mut self, replies: &mut UnboundedReceiver<Reply>) {
        while let Some(reply) = replies.recv().await {
            self.check(reply);
        }
    }
}

#[tokio::test]
async fn a_login_flood_gets_503_at_once_while_other_clients_still_log_in() {
    let app = spawn_slow_hasher().await;
    let attacker = client_from([127, 0, 0, 1]);
    let mut replies = flood(&app, vec![attacker.clone(); 30]);
    let mut refused = Refusals::default();
    refused.until_first(&mut replies).await;

    // The attacker's share is taken; a user at another address is still let in.
    let (status, _, body) = login(&client_from([127, 0, 0, 2]), &app, ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");

    refused.rest(&mut replies).await;
    // Two places for the attacker: at most a handful of its 30 guesses were hashed.
    assert!(
        refused.0 >= 20,
        "only {} of 30 flood logins got 503",
        refused.0
    );

    // The flood is over: the attacker's address logs in again.
    let (status, _, body) = login(&attacker, &app, ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_address_that_logged_in_before_gets_past_a_flood_from_many_addresses() {
    let app = spawn_slow_hasher().await;
    let user = client_from([127, 0, 0, 3]);
    let (status, _, body) = login(&user, &app, ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");

    // One guess from each of 30 addresses: every share is free, the queue is not.
    let clients = (1..=30).map(|n| client_from([127, 0, 2, n])).collect();
    let mut replies = flood(&app, clients);
    let mut refused = Refusals::default();
    refused.until_first(&mut replies).await;

    let (status, _, body) = login(&user, &app, ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    refused.rest(&mut replies).await;
}

#[tokio::test]
async fn a_wrong_password_still_gets_401_when_the_queue_has_room() {
    let app = spawn_slow_hasher().await;
    let (status, retry_after, body) = login(&client_from([127, 0, 0, 1]), &app, "wrong").await;
    assert_eq!((status, retry_after), (401, None), "{body}");
}
