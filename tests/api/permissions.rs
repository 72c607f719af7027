//! Section C of core4's tests (test_grant.py, test_role.py's test_access): what `api://`
//! permissions grant per method, the profile, and the escalations core4 allowed and core4d does not.

use core4_tests::{TestApp, error_text, spawn_app};
use serde_json::{Value, json};

const ROLE_HANDLER: &str = "api://core4.api.v1.request.role";

/// Creates a user with these permissions and roles and logs it in; returns (id, token).
async fn user_with(
    app: &TestApp,
    admin: &str,
    name: &str,
    perm: &[&str],
    role: &[&str],
) -> (String, String) {
    let id = app.create_user_with(admin, name, perm, role).await;
    (id, app.login(name, "very secret").await)
}

async fn profile(app: &TestApp, token: &str) -> Value {
    let (status, body) = app.get("/profile", token).await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn forbidden(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 403, "{what}: {body}");
    error_text(body, 403);
}

/// test_server_test, for the endpoints core4d has (no /system, /setting or /jobs).
#[tokio::test]
async fn a_standard_user_reaches_its_endpoints_but_not_roles() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, token) = app.create_user(&admin, "user", "very secret").await;

    assert_eq!(profile(&app, &token).await["name"], "user");
    let (status, body) = app.get("/_info", &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["core4"], "1.0.10");
    for path in ["/roles", "/roles/distinct"] {
        let (status, body) = app.get(path, &token).await;
        forbidden(status, &body, path);
    }
    let (status, body) = app.post("/roles", &token, json!({"name": "x"})).await;
    forbidden(status, &body, "POST /roles");
    let (status, body) = app.get("/xxx", &token).await;
    assert_eq!(status, 404);
    assert_eq!(error_text(&body, 404), "not found");
    let (status, body) = app.post("/profile", &token, json!({})).await;
    assert_eq!(status, 405);
    error_text(&body, 405);
    let (status, body) = app.get("/logout", &token).await;
    assert_eq!((status, &body["data"]), (200, &json!("OK")));
}

/// test_restricted_user: the permission change reaches a token issued before it.
#[tokio::test]
async fn a_restricted_user_loses_access_when_its_perms_are_cleared() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (id, token) = user_with(&app, &admin, "user", &["api://core4.api.v1"], &[]).await;
    let (status, body) = app.get(&format!("/roles/{id}"), &admin).await;
    assert_eq!((status, &body["data"]["name"]), (200, &json!("user")));
    let (_, list) = app.get("/roles?name=user", &admin).await;
    assert_eq!(list["total_count"], 1);
    let me = profile(&app, &token).await;
    assert_eq!(me["name"], "user");
    let (status, _) = app.get("/roles", &token).await;
    assert_eq!(status, 200, "api://core4.api.v1 covers the roles handler");

    let (status, body) = app
        .put(
            &format!("/roles/{id}"),
            &admin,
            json!({"perm": [], "etag": me["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.get("/profile", &token).await;
    forbidden(status, &body, "the old token");
    let fresh = app.login("user", "very secret").await;
    let (status, body) = app.get("/profile", &fresh).await;
    forbidden(status, &body, "a fresh login");
}

/// test_profile_cascade.
#[tokio::test]
async fn the_profile_shows_the_cascade_and_the_token_expiry() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for (name, perm) in [
        ("test_reg_role", "api://core4.api.v1.abc"),
        ("test_reg_role2", "api://core4.api.v1.aaa"),
    ] {
        let (status, body) = app
            .post("/roles", &admin, json!({"name": name, "perm": [perm]}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = app
        .post(
            "/roles",
            &admin,
            json!({"name": "reg", "realname": "Reg User", "email": "reg@example.com",
                   "password": "very secret", "perm": ["api://core4.api.v1.request"],
                   "role": ["test_reg_role2", "test_reg_role"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["_id"].clone();
    let token = app.login("reg", "very secret").await;

    let (status, reply) = app.get("/profile", &token).await;
    assert_eq!(status, 200, "{reply}");
    let me = &reply["data"];
    assert_eq!(me["name"], "reg");
    assert_eq!(me["_id"], id);
    assert_eq!(me["email"], "reg@example.com");
    assert_eq!(me["realname"], "Reg User");
    assert_eq!(me["is_active"], true);
    assert_eq!(strings(&me["perm"]), ["api://core4.api.v1.request"]);
    assert_eq!(
        strings(&me["perm_total"]),
        [
            "api://core4.api.v1.aaa",
            "api://core4.api.v1.abc",
            "api://core4.api.v1.request"
        ]
    );
    assert_eq!(strings(&me["role"]), ["test_reg_role", "test_reg_role2"]);
    assert_eq!(
        strings(&me["role_total"]),
        ["test_reg_role", "test_reg_role2"]
    );
    assert!(me["last_login"].as_str().is_some(), "{me}");
    assert!(me.get("password").is_none());
    let expires = me["token_expires"].as_str().expect("token_expires");
    let now = reply["timestamp"].as_str().expect("timestamp");
    assert_eq!(
        expires.len(),
        now.len(),
        "core4's format: {expires} vs {now}"
    );
    assert!(expires > now, "{expires} after {now}");
}

/// test_method_permission. Differs on purpose (reference §9.11): with `…role/u` core4 let a user
/// PUT its own `perm`; core4d answers 403 and keeps the rest of the `u` right.
#[tokio::test]
async fn method_permissions_grant_exactly_their_letters() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for letters in ["r", "c", "u", "d", "rd", "rcd"] {
        let name = format!("user_{letters}");
        let perm = format!("{ROLE_HANDLER}/{letters}");
        let (id, token) = user_with(&app, &admin, &name, &[&perm], &["standard_user"]).await;
        let has = |l: char| letters.contains(l);
        let want = |l: char| if has(l) { 200 } else { 403 };

        let (status, body) = app.get("/roles", &token).await;
        assert_eq!(status, want('r'), "{letters} GET: {body}");
        let (status, body) = app.get(&format!("/roles/{id}"), &token).await;
        assert_eq!(status, want('r'), "{letters} GET one: {body}");
        let (status, body) = app
            .post(
                "/roles",
                &token,
                json!({"name": format!("made_by_{letters}")}),
            )
            .await;
        assert_eq!(status, want('c'), "{letters} POST: {body}");

        let etag = profile(&app, &token).await["etag"].clone();
        let (status, body) = app
            .put(
                &format!("/roles/{id}"),
                &token,
                json!({"realname": "changed", "etag": etag}),
            )
            .await;
        assert_eq!(status, want('u'), "{letters} PUT: {body}");
        if has('u') {
            let etag = body["data"]["etag"].clone();
            let (status, body) = app
                .put(
                    &format!("/roles/{id}"),
                    &token,
                    json!({"perm": [ROLE_HANDLER], "etag": etag}),
                )
                .await;
            forbidden(status, &body, "u may not change its own perm");
            let (status, body) = app
                .put(
                    &format!("/roles/{id}"),
                    &token,
                    json!({"name": format!("{name}_2"), "email": format!("{name}_2@example.com"),
                           "password": "another secret", "etag": etag}),
                )
                .await;
            assert_eq!(status, 200, "name, email and password: {body}");
            assert_eq!(app.get("/profile", &token).await.0, 401, "password changed");
            let token = app.login(&format!("{name}_2"), "another secret").await;
            assert_eq!(profile(&app, &token).await["realname"], "changed");
            continue;
        }

        let etag = profile(&app, &token).await["etag"].clone();
        let (status, body) = app
            .delete(
                &format!("/roles/{id}?etag={}", etag.as_str().unwrap()),
                &token,
            )
            .await;
        assert_eq!(status, want('d'), "{letters} DELETE: {body}");
        if has('d') {
            assert_eq!(app.get("/profile", &token).await.0, 401, "deleted itself");
        }
    }
}

/// core4's escalation defect (reference §9.11): only a `cop` may grant perms, roles or change
/// `is_active`, and only a `cop` may change or delete a `cop`.
#[tokio::test]
async fn a_non_cop_cannot_escalate_or_touch_a_cop() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (status, admins) = app
        .post("/roles", &admin, json!({"name": "admins", "perm": ["cop"]}))
        .await;
    assert_eq!(status, 200);
    let (indirect_id, _) = user_with(&app, &admin, "indirect", &[], &["admins"]).await;
    let (_, indirect) = app.get(&format!("/roles/{indirect_id}"), &admin).await;
    let indirect = indirect["data"].clone();
    let (me_id, token) =
        user_with(&app, &admin, "climber", &[ROLE_HANDLER], &["standard_user"]).await;
    let me = profile(&app, &token).await;
    let admin_profile = profile(&app, &admin).await;
    let my_path = format!("/roles/{me_id}");

    for change in [
        json!({"perm": ["cop"]}),
        json!({"perm": []}),
        json!({"role": ["admins"]}),
        json!({"role": ["standard_user"]}),
        json!({"is_active": true}),
    ] {
        let mut body = change.clone();
        body["etag"] = me["etag"].clone();
        let (status, reply) = app.put(&my_path, &token, body).await;
        forbidden(status, &reply, &change.to_string());
        assert!(error_text(&reply, 403).contains("only a cop"), "{reply}");
    }

    let cops = [
        (admin_profile["_id"].clone(), admin_profile["etag"].clone()),
        (
            admins["data"]["_id"].clone(),
            admins["data"]["etag"].clone(),
        ),
        // A cop only through a role, with its real etag: only the permission check can refuse.
        (indirect["_id"].clone(), indirect["etag"].clone()),
    ];
    for (id, etag) in &cops {
        let id = id.as_str().expect("id");
        let path = format!("/roles/{id}");
        let (status, reply) = app
            .put(&path, &token, json!({"realname": "pwned", "etag": etag}))
            .await;
        forbidden(status, &reply, "changing a cop");
        let (status, reply) = app
            .put(
                &path,
                &token,
                json!({"password": "taken over", "etag": etag}),
            )
            .await;
        forbidden(status, &reply, "setting a cop's password");
        let (status, reply) = app
            .delete(
                &format!("{path}?etag={}", etag.as_str().unwrap_or("x")),
                &token,
            )
            .await;
        forbidden(status, &reply, "deleting a cop");
    }

    for create in [
        json!({"name": "sock", "perm": ["cop"]}),
        json!({"name": "sock", "perm": [ROLE_HANDLER]}),
        json!({"name": "sock", "role": ["admins"]}),
        json!({"name": "sock", "is_active": false}),
    ] {
        let (status, reply) = app.post("/roles", &token, create.clone()).await;
        forbidden(status, &reply, &create.to_string());
    }
    let (status, reply) = app.post("/roles", &token, json!({"name": "sock"})).await;
    assert_eq!(
        status, 200,
        "creating a plain role is what `c` is for: {reply}"
    );

    let after = profile(&app, &token).await;
    assert_eq!(after["etag"], me["etag"]);
    assert_eq!(strings(&after["perm_total"]), strings(&me["perm_total"]));
    let admin_after = profile(&app, &admin).await;
    assert_eq!(admin_after["etag"], admin_profile["etag"]);
    assert_eq!(admin_after["realname"], "admin user");
    app.login("admin", core4_tests::ADMIN_PASSWORD).await;
    // The role and the user that are cops through it: unchanged, the password still the old one.
    let (_, admins_after) = app
        .get(
            &format!("/roles/{}", admins["data"]["_id"].as_str().unwrap()),
            &admin,
        )
        .await;
    assert_eq!(admins_after["data"]["etag"], admins["data"]["etag"]);
    let (status, indirect_after) = app.get(&format!("/roles/{indirect_id}"), &admin).await;
    assert_eq!(status, 200, "{indirect_after}");
    assert_eq!(indirect_after["data"]["etag"], indirect["etag"]);
    assert_eq!(indirect_after["data"]["realname"], indirect["realname"]);
    app.login("indirect", "very secret").await;
}

/// test_access: a prefix permission without `.*`, and the profile's own changes. Differs on
/// purpose: 409 for a stale etag or a taken email, and a password change ends the user's tokens.
#[tokio::test]
async fn the_profile_changes_realname_email_and_password_with_the_etag() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, token) = user_with(
        &app,
        &admin,
        "access",
        &["api://core4.api.v1.request.standard"],
        &[],
    )
    .await;
    let me = profile(&app, &token).await;
    let (status, body) = app.get("/roles", &token).await;
    forbidden(status, &body, "roles");

    let (status, body) = app
        .put("/profile", &token, json!({"realname": "Real Name"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(error_text(&body, 400), "Missing argument etag");

    let (status, body) = app
        .put(
            "/profile",
            &token,
            json!({"realname": "Real Name", "etag": me["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["realname"], "Real Name");
    let etag = body["data"]["etag"].clone();
    assert_ne!(etag, me["etag"]);
    let now = profile(&app, &token).await;
    assert_eq!(
        (&now["realname"], &now["etag"]),
        (&json!("Real Name"), &etag)
    );

    let (status, body) = app
        .put(
            "/profile",
            &token,
            json!({"realname": "Real Name", "etag": etag}),
        )
        .await;
    assert_eq!((status, &body["data"]), (200, &json!("no changes")));
    let (status, body) = app
        .put(
            "/profile",
            &token,
            json!({"realname": "Other", "etag": me["etag"]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(error_text(&body, 409).contains("with etag"));

    let (status, body) = app
        .post(
            "/roles",
            &admin,
            json!({"name": "other", "email": "ACCESS@example.com", "password": "very secret"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_text(&body, 409), "name or email exists");
    let (status, _) = app
        .post(
            "/roles",
            &admin,
            json!({"name": "other", "email": "other@example.com", "password": "very secret"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .put(
            "/profile",
            &token,
            json!({"email": "Other@Example.com", "etag": etag}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_text(&body, 409), "name or email exists");
    let (status, body) = app
        .put(
            "/profile",
            &token,
            json!({"email": "no-email", "etag": etag}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error_text(&body, 400).contains("field [email]"));
    let (status, body) = app
        .put(
            "/profile",
            &token,
            json!({"email": "Free@Example.com", "etag": etag}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["email"], "free@example.com");
    let etag = body["data"]["etag"].clone();

    let (status, body) = app
        .put(
            "/profile",
            &token,
            json!({"password": "short", "etag": etag}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error_text(&body, 400).contains("at least 8 characters"));
    let (status, body) = app
        .put(
            "/profile",
            &token,
            json!({"passwd": "a new secret", "etag": etag}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.get("/profile", &token).await;
    assert_eq!(status, 401, "a new password ends this token too: {body}");
    let resp = app
        .client
        .get(app.url("/login"))
        .query(&[("username", "access"), ("password", "very secret")])
        .send()
        .await
        .expect("login");
    assert_eq!(resp.status(), 401);
    let token = app.login("access", "a new secret").await;
    assert_eq!(profile(&app, &token).await["realname"], "Real Name");
}

/// `/profile` changes only realname, email and password: `perm`, `role`, `name` and
/// `is_active` are unknown fields there (core4 ignored them).
#[tokio::test]
async fn the_profile_refuses_name_role_perm_and_is_active() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, token) = app.create_user(&admin, "user", "very secret").await;
    let me = profile(&app, &token).await;
    for (field, value) in [
        ("perm", json!(["cop"])),
        ("role", json!(["standard_user"])),
        ("name", json!("boss")),
        ("is_active", json!(true)),
    ] {
        let (status, body) = app
            .put(
                "/profile",
                &token,
                json!({field: value, "etag": me["etag"]}),
            )
            .await;
        assert_eq!(status, 400, "{field}: {body}");
        assert!(
            error_text(&body, 400).contains(&format!("[{field}]")),
            "{field}: {body}"
        );
    }
    let after = profile(&app, &token).await;
    assert_eq!(after["etag"], me["etag"]);
    assert_eq!(after["perm_total"], me["perm_total"]);

    let resp = app
        .client
        .put(app.url("/profile"))
        .json(&json!({"realname": "x", "etag": me["etag"]}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401, "no token");
}

/// An inactive role grants nothing, to tokens already issued too.
#[tokio::test]
async fn an_inactive_role_grants_nothing() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (status, readers) = app
        .post(
            "/roles",
            &admin,
            json!({"name": "readers", "perm": [format!("{ROLE_HANDLER}/r")]}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, token) = user_with(&app, &admin, "reader", &[], &["standard_user", "readers"]).await;
    assert_eq!(app.get("/roles", &token).await.0, 200);

    let path = format!("/roles/{}", readers["data"]["_id"].as_str().expect("id"));
    let (status, body) = app
        .put(
            &path,
            &admin,
            json!({"is_active": false, "etag": readers["data"]["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.get("/roles", &token).await;
    forbidden(status, &body, "through an inactive role");
    assert_eq!(app.get("/profile", &token).await.0, 200);

    let (status, _) = app
        .put(
            &path,
            &admin,
            json!({"is_active": true, "etag": body_etag(&app, &admin, &path).await}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.get("/roles", &token).await.0, 200);
}

async fn body_etag(app: &TestApp, token: &str, path: &str) -> Value {
    let (status, body) = app.get(path, token).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["etag"].clone()
}

/// Setting another user's password takes over that user's rights, so a non-cop may only change
/// users and roles whose rights it holds itself.
#[tokio::test]
async fn a_non_cop_cannot_take_over_a_user_with_more_rights() {
    let app = core4_tests::spawn_app().await;
    let admin = app.admin_token().await;
    let (status, _) = app
        .post(
            "/roles",
            &admin,
            serde_json::json!({"name": "editor", "email": "editor@example.com", "password": "editor-pw-1",
                "role": ["standard_user"], "perm": ["api://core4.api.v1.request.role/ru"]}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .post(
            "/roles",
            &admin,
            serde_json::json!({"name": "boss", "email": "boss@example.com", "password": "boss-pw-123",
                "role": ["standard_user"], "perm": ["api://core4.api.v1.request.role", "app://secret"]}),
        )
        .await;
    assert_eq!(status, 200);
    let (boss_id, boss_etag) = (
        body["data"]["_id"].as_str().unwrap().to_string(),
        body["data"]["etag"].as_str().unwrap().to_string(),
    );
    let (status, body) = app
        .post(
            "/roles",
            &admin,
            serde_json::json!({"name": "peer", "email": "peer@example.com", "password": "peer-pw-123", "role": ["standard_user"]}),
        )
        .await;
    assert_eq!(status, 200);
    let (peer_id, peer_etag) = (
        body["data"]["_id"].as_str().unwrap().to_string(),
        body["data"]["etag"].as_str().unwrap().to_string(),
    );
    let editor = app.login("editor", "editor-pw-1").await;
    let (status, body) = app
        .put(
            &format!("/roles/{boss_id}"),
            &editor,
            serde_json::json!({"etag": boss_etag, "password": "taken-over"}),
        )
        .await;
    assert_eq!(status, 403);
    assert!(
        core4_tests::error_text(&body, 403).contains("another account's password"),
        "{body}"
    );
    let (status, body) = app
        .put(
            &format!("/roles/{boss_id}"),
            &editor,
            serde_json::json!({"etag": boss_etag, "realname": "Boss"}),
        )
        .await;
    assert_eq!(status, 403);
    assert!(core4_tests::error_text(&body, 403).contains("rights the caller lacks"));
    let (status, body) = app
        .put(
            &format!("/roles/{peer_id}"),
            &editor,
            serde_json::json!({"etag": peer_etag, "realname": "Peer"}),
        )
        .await;
    assert_eq!(
        status, 200,
        "a user with no more rights than the editor may be changed: {body}"
    );
}
