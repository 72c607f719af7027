//! Attacks on identities and logins that once worked against core4d, performed again: each test
//! is the attack, and fails if the hole reopens.

use std::net::{IpAddr, Ipv4Addr};

use core4_tests::{TestApp, error_text, fresh_database, spawn_app, spawn_app_with, test_settings};
use core4d::settings::LoginLimitSettings;
use serde_json::{Value, json};

const ROLE_HANDLER: &str = "api://core4.api.v1.request.role";

async fn role(app: &TestApp, admin: &str, id: &str) -> Value {
    let (status, body) = app.get(&format!("/roles/{id}"), admin).await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

async fn id_of(app: &TestApp, admin: &str, name: &str) -> String {
    let (status, body) = app.get(&format!("/roles?name={name}"), admin).await;
    assert_eq!(status, 200, "{body}");
    body["data"][0]["_id"].as_str().expect("id").to_string()
}

/// An HTTP client whose connections come from `127.0.0.<last>` (all of 127/8 is loopback).
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .build()
        .expect("client")
}

async fn login_status(app: &TestApp, client: &reqwest::Client, user: &str, password: &str) -> u16 {
    client
        .get(app.url("/login"))
        .query(&[("username", user), ("password", password)])
        .send()
        .await
        .expect("login request")
        .status()
        .as_u16()
}

/// The takeover: a role renamed to the id of `standard_user` was picked up instead of it by a
/// cop's `"role": ["<id>"]`. A reference of 24 hex digits is always an id now, and no name may
/// have that shape.
#[tokio::test]
async fn a_role_reference_shaped_like_an_id_is_an_id_and_no_name_may_look_like_one() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let standard = id_of(&app, &admin, "standard_user").await;
    let (status, body) = app
        .post(
            "/roles",
            &admin,
            json!({"name": "managers", "perm": [ROLE_HANDLER]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let managers = body["data"]["_id"].as_str().unwrap().to_string();
    app.create_user_with(&admin, "mallory", &[], &["standard_user", "managers"])
        .await;
    let mallory = app.login("mallory", "very secret").await;

    let etag = role(&app, &admin, &managers).await["etag"].clone();
    let (status, body) = app
        .put(
            &format!("/roles/{managers}"),
            &mallory,
            json!({"name": standard, "etag": etag}),
        )
        .await;
    assert_eq!(status, 400, "a non-cop renames its role to an id: {body}");
    let (status, body) = app
        .put(
            &format!("/roles/{managers}"),
            &mallory,
            json!({"name": "standard", "etag": etag}),
        )
        .await;
    assert_eq!(status, 403, "a non-cop renames a role at all: {body}");
    let (status, body) = app
        .put(
            &format!("/roles/{managers}"),
            &admin,
            json!({"name": standard, "etag": etag}),
        )
        .await;
    assert_eq!(status, 400, "even a cop: {body}");
    assert!(error_text(&body, 400).contains("24 hex digits"), "{body}");
    let (status, body) = app
        .post(
            "/roles",
            &admin,
            json!({"name": "0123456789abcdef01234567"}),
        )
        .await;
    assert!(
        status == 400 && error_text(&body, 400).contains("24 hex digits"),
        "{body}"
    );
    assert_eq!(
        role(&app, &admin, &managers).await["name"],
        "managers",
        "not renamed"
    );

    // The cop's reference by id (either case) reaches standard_user and nothing else.
    for (name, reference) in [
        ("newbie", standard.clone()),
        ("newbie2", standard.to_uppercase()),
    ] {
        let id = app
            .create_user_with(&admin, name, &[], &[reference.as_str()])
            .await;
        let created = role(&app, &admin, &id).await;
        assert_eq!(created["role"], json!(["standard_user"]), "{created}");
        assert_eq!(
            created["perm_total"],
            role(&app, &admin, &standard).await["perm"]
        );
    }
    let (status, body) = app
        .post(
            "/roles",
            &admin,
            json!({"name": "x1", "role": ["ffffffffffffffffffffffff"]}),
        )
        .await;
    assert_eq!(
        status, 404,
        "an unknown id is not looked up as a name: {body}"
    );
}

/// 60 parallel guesses for one name were all verified: the limit was checked before the hash and
/// counted after it. Now each attempt is counted first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_cannot_exceed_the_failed_login_limit() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user_with(&admin, "victim", &[], &["standard_user"])
        .await;
    let guesses = (0..60).map(|i| {
        let client = app.client.clone();
        let url = app.url("/login");
        async move {
            client
                .get(url)
                .query(&[
                    ("username", "victim".to_string()),
                    ("password", format!("guess-{i}")),
                ])
                .send()
                .await
                .expect("login")
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let evaluated = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(evaluated + refused, 60, "{statuses:?}");
    assert!(
        evaluated <= 10,
        "{evaluated} guesses were verified: {statuses:?}"
    );
    // The guesser's own budget is spent; the user, from elsewhere, still gets in.
    assert_eq!(
        login_status(&app, &app.client, "victim", "very secret").await,
        429
    );
    assert_eq!(
        login_status(&app, &client_from(2), "victim", "very secret").await,
        200
    );
}

/// 10 wrong passwords a minute from anywhere used to keep the admin out for good. Strangers now
/// spend budgets of their own (per name and address, per address) and, together, one per name
/// that does not apply where the user logged in before.
#[tokio::test]
async fn strangers_cannot_lock_a_user_out_of_where_it_logged_in_before() {
    let mut settings = test_settings(&fresh_database().await);
    settings.login_limit = LoginLimitSettings {
        max_failures: 3,
        max_failures_per_address: 100,
        max_failures_per_user: 6,
        window: 3600,
    };
    let app = spawn_app_with(settings).await;
    let home = client_from(1);
    let pw = core4_tests::ADMIN_PASSWORD;
    assert_eq!(login_status(&app, &home, "admin", pw).await, 200);

    // Three strangers, three guesses each: the third's are refused by the name's budget.
    let mut statuses = vec![];
    for last in [2, 3, 4] {
        let stranger = client_from(last);
        for _ in 0..3 {
            statuses.push(login_status(&app, &stranger, "admin", "wrong guess").await);
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 401, 429, 429, 429]);
    assert_eq!(
        login_status(&app, &client_from(2), "admin", "wrong guess").await,
        429
    );

    // The admin, at home, is not locked out; a stranger with the right password is, for now.
    for _ in 0..3 {
        assert_eq!(login_status(&app, &home, "admin", pw).await, 200);
    }
    assert_eq!(login_status(&app, &client_from(9), "admin", pw).await, 429);
    // Other names are not affected, from the strangers' addresses either.
    let admin = app.admin_token().await;
    app.create_user_with(&admin, "alice", &[], &["standard_user"])
        .await;
    assert_eq!(
        login_status(&app, &client_from(2), "alice", "very secret").await,
        200
    );
}

/// A user with role rights but not `cop` set another user's password, gave the shared
/// `standard_user` a password and logged in as it, and renamed or deleted shared roles.
#[tokio::test]
async fn a_delegated_role_manager_cannot_take_over_peers_or_seeded_roles() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user_with(&admin, "manager", &[ROLE_HANDLER], &["standard_user"])
        .await;
    let manager = app.login("manager", "very secret").await;
    let peer = app
        .create_user_with(&admin, "peer", &[], &["standard_user"])
        .await;
    let standard = id_of(&app, &admin, "standard_user").await;
    let peer_before = role(&app, &admin, &peer).await;
    let standard_before = role(&app, &admin, &standard).await;

    let refusals = [
        (
            &peer,
            json!({"password": "taken over"}),
            "another account's password",
        ),
        (
            &peer,
            json!({"email": "mallory@example.com"}),
            "another account's email",
        ),
        (
            &standard,
            json!({"email": "std@example.com", "password": "taken over"}),
            "seeded role",
        ),
        (&standard, json!({"name": "renamed"}), "seeded role"),
        (&standard, json!({"realname": "mine"}), "seeded role"),
    ];
    for (id, change, phrase) in refusals {
        let mut body = change.clone();
        body["etag"] = role(&app, &admin, id).await["etag"].clone();
        let (status, reply) = app.put(&format!("/roles/{id}"), &manager, body).await;
        assert_eq!(status, 403, "{change}: {reply}");
        assert!(
            error_text(&reply, 403).contains(phrase),
            "{change}: {reply}"
        );
    }
    let etag = standard_before["etag"].as_str().unwrap();
    let (status, reply) = app
        .delete(&format!("/roles/{standard}?etag={etag}"), &manager)
        .await;
    assert_eq!(status, 403, "deleting standard_user: {reply}");

    // A role it created itself does not become an account either.
    let (status, body) = app.post("/roles", &manager, json!({"name": "team"})).await;
    assert_eq!(status, 200, "{body}");
    let team = body["data"]["_id"].as_str().unwrap().to_string();
    let (status, reply) = app
        .put(
            &format!("/roles/{team}"),
            &manager,
            json!({"email": "team@example.com", "password": "team password", "etag": body["data"]["etag"]}),
        )
        .await;
    assert_eq!(status, 403, "{reply}");
    assert!(error_text(&reply, 403).contains("a role"), "{reply}");

    // Nothing changed; the peer still logs in with its own password, standard_user cannot.
    assert_eq!(role(&app, &admin, &peer).await, peer_before);
    assert_eq!(role(&app, &admin, &standard).await, standard_before);
    assert!(role(&app, &admin, &team).await.get("email").is_none());
    app.login("peer", "very secret").await;
    assert_eq!(
        login_status(&app, &app.client, "standard_user", "taken over").await,
        401
    );
    // What a delegated manager is for still works: a peer's real name.
    let (status, reply) = app
        .put(
            &format!("/roles/{peer}"),
            &manager,
            json!({"realname": "Peer", "etag": peer_before["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
}

/// `аdmin` (Cyrillic a), `ａdmin` (fullwidth) and `admin\u{ad}` were accepted and showed as
/// `admin` in lists and as chat authors.
#[tokio::test]
async fn look_alike_names_are_refused_or_are_the_same_name() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let cases = [
        ("\u{430}dmin", 400, "mix scripts"),
        ("admin\u{ad}", 400, "U+00AD"),
        ("ad\u{200b}min", 400, "U+200B"),
        ("\u{202e}nimda", 400, "U+202E"),
        ("ａｄｍｉｎ", 409, "name or email exists"),
        ("ADMIN", 409, "name or email exists"),
        ("adrnin", 409, "name or email exists"),
        ("standard_usеr", 400, "mix scripts"),
    ];
    for (name, want, phrase) in cases {
        let (status, body) = app
            .post(
                "/roles",
                &admin,
                json!({"name": name, "email": "x@example.com", "password": "very secret"}),
            )
            .await;
        assert_eq!(status, want, "{name:?}: {body}");
        assert!(error_text(&body, want).contains(phrase), "{name:?}: {body}");
    }
    // A rename into a look-alike is refused the same way.
    let alice = app
        .create_user_with(&admin, "alice", &[], &["standard_user"])
        .await;
    let etag = role(&app, &admin, &alice).await["etag"].clone();
    let (status, body) = app
        .put(
            &format!("/roles/{alice}"),
            &admin,
            json!({"name": "adm1n", "etag": etag}),
        )
        .await;
    // `1` and `l` share a skeleton, `i` does not: adm1n is a different name from admin.
    assert_eq!(status, 200, "{body}");
    let etag = body["data"]["etag"].clone();
    let (status, body) = app
        .put(
            &format!("/roles/{alice}"),
            &admin,
            json!({"name": "a\u{1d5bd}min", "etag": etag}),
        )
        .await;
    assert_eq!(status, 409, "mathematical sans-serif d is NFKC d: {body}");
    // Compatibility forms are stored in their normal form.
    let (status, body) = app.post("/roles", &admin, json!({"name": "ｂｏｂ"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["name"], "bob");
    let (_, names) = app.get("/roles/distinct", &admin).await;
    assert_eq!(
        names["data"],
        json!(["adm1n", "admin", "bob", "standard_user"])
    );
}

/// A `realname` of about 2,700 characters overflowed the btree index: POST/PUT /roles and PUT
/// /profile answered 500. Every string field has a documented maximum and a 400 naming it.
#[tokio::test]
async fn overlong_fields_get_a_400_naming_the_field() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let long: String = (0..2700)
        .map(|i| char::from_u32(0x4e00 + i).unwrap())
        .collect();
    let alice = app
        .create_user_with(&admin, "alice", &[], &["standard_user"])
        .await;
    let alice_token = app.login("alice", "very secret").await;
    let before = role(&app, &admin, &alice).await;
    let etag = before["etag"].clone();
    let many: Vec<String> = (0..300).map(|i| format!("app://x{i}")).collect();
    let attempts = [
        (
            "POST /roles",
            json!({"name": "r1", "realname": long}),
            "realname",
        ),
        ("POST /roles", json!({"name": "r2", "perm": many}), "perm"),
        (
            "POST /roles",
            json!({"name": "r3", "role": vec!["standard_user"; 300]}),
            "role",
        ),
        (
            "POST /roles",
            json!({"name": "r4", "email": format!("{}@example.com", "a".repeat(300))}),
            "email",
        ),
        ("POST /roles", json!({"name": "x".repeat(65)}), "name"),
        (
            "PUT /roles",
            json!({"realname": long, "etag": etag}),
            "realname",
        ),
        (
            "PUT /roles",
            json!({"realname": "ok", "etag": "e".repeat(100)}),
            "etag",
        ),
        (
            "PUT /profile",
            json!({"realname": long, "etag": etag}),
            "realname",
        ),
    ];
    for (what, body, field) in attempts {
        let (status, reply) = match what {
            "POST /roles" => app.post("/roles", &admin, body).await,
            "PUT /roles" => app.put(&format!("/roles/{alice}"), &admin, body).await,
            _ => app.put("/profile", &alice_token, body).await,
        };
        assert_eq!(status, 400, "{what} {field}: {reply}");
        assert!(
            error_text(&reply, 400).contains(&format!("[{field}]")),
            "{what}: {reply}"
        );
    }
    assert_eq!(role(&app, &admin, &alice).await, before);
    // The maximum itself fits, in the widest characters.
    let widest: String = std::iter::repeat_n('\u{1d4d0}', 256).collect();
    let (status, body) = app
        .put(
            &format!("/roles/{alice}"),
            &admin,
            json!({"realname": widest, "etag": etag}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The spec states the limits.
    let spec = app.spec().await;
    let create = &spec["components"]["schemas"]["RoleCreate"]["properties"];
    assert_eq!(create["realname"]["maxLength"], 256, "{create}");
    assert_eq!(create["perm"]["maxItems"], 256, "{create}");
}

/// Reads from `stream` until the server closes it or `limit` passes; returns what arrived.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: std::time::Duration,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A body trickled in a byte at a time (each byte resets the idle timer) held a connection and
/// its buffered body for good; the request deadline now ends it with 408.
#[tokio::test]
async fn a_trickled_request_body_is_cut_off_with_408() {
    use tokio::io::AsyncWriteExt;
    let mut settings = test_settings(&fresh_database().await);
    settings.http.request_timeout_secs = 1;
    settings.http.idle_timeout_secs = 30;
    let app = spawn_app_with(settings).await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    stream
        .write_all(b"POST /core4/api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if stream.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    // The reply arrives while the client is still trickling.
    let mut reply = String::new();
    tokio::select! {
        _ = trickle => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => {}
    }
    reply.push_str(&read_until_closed(&mut stream, std::time::Duration::from_secs(5)).await);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
    assert!(reply.contains("http.request_timeout_secs"), "{reply:?}");
}

/// Connections are capped per peer address (and in all): one address cannot hold every
/// connection slot, and others are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_limit_are_closed_at_once() {
    use tokio::io::AsyncWriteExt;
    let mut settings = test_settings(&fresh_database().await);
    settings.http.max_connections_per_address = 3;
    settings.http.idle_timeout_secs = 60;
    let app = spawn_app_with(settings).await;
    let connect_from = |last: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind((Ipv4Addr::new(127, 0, 0, last), 0).into())
            .unwrap();
        socket
            .connect(([127, 0, 0, 1], app.port).into())
            .await
            .unwrap()
    };
    let health = b"GET /core4/api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut held = vec![];
    for _ in 0..3 {
        held.push(connect_from(5).await);
    }
    // The fourth from the same address is closed without a reply.
    let mut fourth = connect_from(5).await;
    let _ = fourth.write_all(health).await;
    let reply = read_until_closed(&mut fourth, std::time::Duration::from_secs(20)).await;
    assert_eq!(reply, "", "served over the limit");
    // Another address is served.
    let mut other = connect_from(6).await;
    other.write_all(health).await.unwrap();
    let reply = read_until_closed(&mut other, std::time::Duration::from_secs(20)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    // A held connection still works, and once one closes the address gets a slot again.
    let mut first = held.remove(0);
    first.write_all(health).await.unwrap();
    let reply = read_until_closed(&mut first, std::time::Duration::from_secs(20)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    let mut again = None;
    for _ in 0..50 {
        let mut next = connect_from(5).await;
        let _ = next.write_all(health).await;
        let reply = read_until_closed(&mut next, std::time::Duration::from_secs(20)).await;
        if reply.starts_with("HTTP/1.1 200") {
            again = Some(reply);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the freed slot was never given back");
}

/// `GET /logout` ended the session from a cross-site link or image; the cookie alone from
/// another site no longer logs anyone out.
#[tokio::test]
async fn a_cross_site_logout_link_does_not_end_the_session() {
    let app = spawn_app().await;
    let token = app.admin_token().await;
    let logout = |site: &'static str| {
        app.client
            .get(app.url("/logout"))
            .header("cookie", format!("token={token}"))
            .header("sec-fetch-site", site)
            .send()
    };
    for site in ["cross-site", "same-site"] {
        let status = logout(site).await.unwrap().status().as_u16();
        assert_eq!(status, 403, "{site}");
        assert_eq!(
            app.get("/profile", &token).await.0,
            200,
            "still logged in after {site}"
        );
    }
    assert_eq!(logout("same-origin").await.unwrap().status().as_u16(), 200);
    assert_eq!(app.get("/profile", &token).await.0, 401);
}

/// The stats read every stored message: only a cop may ask for them.
#[tokio::test]
async fn only_a_cop_may_read_the_event_stats() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, user) = app.create_user(&admin, "alice", "very secret").await;
    let (status, body) = app.get("/event/stats", &user).await;
    assert_eq!(status, 403, "{body}");
    assert!(error_text(&body, 403).contains("only a cop"), "{body}");
    assert_eq!(app.get("/event/stats", &admin).await.0, 200);
}
