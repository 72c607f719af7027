//! Section B of core4's tests (test_role.py) and the pager of section D: creating, listing,
//! changing and deleting users and roles, validation, etags, the cascade and its cycles.

use core4_tests::{TestApp, error_text, spawn_app};
use serde_json::{Value, json};

/// POSTs `body` to `/roles` and returns the created object; panics unless it is a 200.
async fn create(app: &TestApp, token: &str, body: Value) -> Value {
    let (status, reply) = app.post("/roles", token, body.clone()).await;
    assert_eq!(status, 200, "creating {body}: {reply}");
    reply["data"].clone()
}

async fn detail(app: &TestApp, token: &str, id: &str) -> Value {
    let (status, reply) = app.get(&format!("/roles/{id}"), token).await;
    assert_eq!(status, 200, "{reply}");
    reply["data"].clone()
}

fn id(v: &Value) -> String {
    v["_id"].as_str().expect("_id").to_string()
}

fn etag(v: &Value) -> String {
    v["etag"].as_str().expect("etag").to_string()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn names(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data list: {list}"))
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_string())
        .collect()
}

/// The classic three of test_role: role1 (`app://1`), role2 (holds role1, `app://2`) and user3
/// (holds both, `app://3`). Returns their ids.
async fn role_chain(app: &TestApp, admin: &str) -> (String, String, String) {
    let r1 = create(
        app,
        admin,
        json!({"name": "test_role1", "perm": ["app://1"]}),
    )
    .await;
    let r2 = create(
        app,
        admin,
        json!({"name": "test_role2", "role": ["test_role1"], "perm": ["app://2"]}),
    )
    .await;
    let r3 = create(
        app,
        admin,
        json!({"name": "test_role3", "email": "test3@plan-net.com", "password": "very secret",
               "role": ["test_role1", "test_role2"], "perm": ["app://3"]}),
    )
    .await;
    (id(&r1), id(&r2), id(&r3))
}

/// test_init, adjusted: passwords need 8 characters and `password` works besides `passwd`.
#[tokio::test]
async fn create_needs_a_name_and_a_user_needs_an_email() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;

    let (status, body) = app.post("/roles", &admin, json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(error_text(&body, 400), "Missing argument name");

    for body in [
        json!({"name": "mra", "passwd": "very secret"}),
        json!({"name": "mra", "realname": "Michael Rau", "password": "very secret"}),
        json!({"name": "mra", "passwd": "very secret", "email": ""}),
    ] {
        let (status, reply) = app.post("/roles", &admin, body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            error_text(&reply, 400).contains("requires email on creation"),
            "{reply}"
        );
    }

    let (status, body) = app
        .post(
            "/roles",
            &admin,
            json!({"name": "mra", "email": "m.rau-plan-net.com", "passwd": "very secret"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error_text(&body, 400).contains("field [email] must match"));

    let data = create(
        &app,
        &admin,
        json!({"name": "mra", "realname": " Michael Rau ", "email": "M.Rau@Plan-Net.com",
               "passwd": "very secret"}),
    )
    .await;
    assert_eq!(id(&data).len(), 24);
    assert_eq!(etag(&data).len(), 24);
    assert_eq!(data["name"], "mra");
    assert_eq!(data["realname"], "Michael Rau");
    assert_eq!(data["email"], "m.rau@plan-net.com", "emails are lowercased");
    assert_eq!(data["is_active"], true);
    assert_eq!(data["role"], json!([]));
    assert_eq!(data["perm"], json!([]));
    assert!(data["created"].as_str().is_some());
    for secret in ["password", "passwd", "password_hash"] {
        assert!(data.get(secret).is_none(), "{secret} leaked: {data}");
    }
    let token = app.login("mra", "very secret").await;
    assert_eq!(
        app.get("/profile", &token).await.0,
        403,
        "no permissions yet"
    );
}

/// test_init's body-less POST: 400, as in core4. Like core4, a JSON body sent without a
/// Content-Type is read as JSON.
#[tokio::test]
async fn create_without_a_json_body_is_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let resp = app
        .client
        .post(app.url("/roles"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    error_text(&body, 400);

    let resp = app
        .client
        .post(app.url("/roles"))
        .bearer_auth(&admin)
        .body(r#"{"name": "no-content-type", "perm": ["app://x"]}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.status(),
        200,
        "a JSON body without a Content-Type is read as JSON"
    );

    let (status, body) = app.post("/roles", &admin, json!(["name", "x"])).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body, 400).contains("JSON object"));
}

/// test_validate_name and the model's test_role_init (a mandatory name, `name=123` a type error).
#[tokio::test]
async fn bad_names_get_400_naming_the_field() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for (name, expect) in [
        (json!("m r a"), "field [name] must match"),
        (json!("tab\tname"), "field [name] must match"),
        (json!(""), "field [name] is mandatory"),
        (json!("   "), "field [name] is mandatory"),
        (json!(123), "field [name]"),
        (json!(["x"]), "field [name]"),
        (json!("x".repeat(65)), "field [name]"),
    ] {
        let (status, body) = app.post("/roles", &admin, json!({"name": name})).await;
        assert_eq!(status, 400, "{name}: {body}");
        let text = error_text(&body, 400);
        assert!(text.contains(expect), "{name}: {text}");
    }
    let (status, list) = app.get("/roles", &admin).await;
    assert_eq!((status, list["total_count"].clone()), (200, json!(2)));
}

/// test_validate_perm, plus test_method_permission's `…role/x` and `…role/rxc`.
#[tokio::test]
async fn bad_permissions_get_400_naming_them() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;

    let (status, body) = app
        .post("/roles", &admin, json!({"name": "mra", "perm": "bla"}))
        .await;
    assert_eq!(status, 400);
    assert!(error_text(&body, 400).contains("field [perm]"), "{body}");

    for (perm, bad) in [
        (json!(["bla"]), "bla"),
        (json!(["app:hello"]), "app:hello"),
        (json!(["app:/hello"]), "app:/hello"),
        (json!(["app://hello", "api:/bla"]), "api:/bla"),
        (
            json!(["api://core4.api.v1.request.role/x"]),
            "api://core4.api.v1.request.role/x",
        ),
        (
            json!(["api://core4.api.v1.request.role/rxc"]),
            "api://core4.api.v1.request.role/rxc",
        ),
        (json!(["job://core4.*/z"]), "job://core4.*/z"),
        (json!(["cop", "co p"]), "co p"),
    ] {
        let (status, body) = app
            .post("/roles", &admin, json!({"name": "mra", "perm": perm}))
            .await;
        assert_eq!(status, 400, "{perm}: {body}");
        let text = error_text(&body, 400);
        assert!(
            text.contains(&format!("invalid permission protocol [{bad}]")),
            "{perm}: {text}"
        );
    }

    let data = create(
        &app,
        &admin,
        json!({"name": "mra", "perm": ["app://hello", "api://bla", "app://hello"]}),
    )
    .await;
    assert_eq!(
        strings(&data["perm"]),
        ["api://bla", "app://hello"],
        "sorted, deduplicated"
    );
}

/// test_type_error and the model's "unknown field is rejected". Differs on purpose (reference
/// §9.13): core4 silently ignored unknown fields (so `password` got lost); core4d names them.
#[tokio::test]
async fn wrong_types_and_unknown_fields_get_400_naming_the_field() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for (body, field) in [
        (json!({"name": "mra", "is_active": "x"}), "is_active"),
        (json!({"name": "mra", "is_active": 1}), "is_active"),
        (json!({"name": "mra", "role": "standard_user"}), "role"),
        (json!({"name": "mra", "role": [1]}), "role"),
        (json!({"name": "mra", "email": 5}), "email"),
        (json!({"name": "mra", "realname": {}}), "realname"),
        (json!({"name": "mra", "bla": 1}), "bla"),
        (
            json!({"name": "mra", "etag": "5be414ccde8b69542b70f4d7"}),
            "etag",
        ),
        (json!({"name": "mra", "filter": "{}"}), "filter"),
    ] {
        let (status, reply) = app.post("/roles", &admin, body.clone()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        let text = error_text(&reply, 400);
        // `role: [1]` is reported as `field [role[0]]`.
        assert!(text.contains(&format!("[{field}")), "{body}: {text}");
    }

    let role = create(&app, &admin, json!({"name": "mra"})).await;
    let path = format!("/roles/{}", id(&role));
    for (body, field) in [
        (json!({"etag": etag(&role), "is_active": "x"}), "is_active"),
        (json!({"etag": etag(&role), "perm": "cop"}), "perm"),
        (json!({"etag": etag(&role), "bla": true}), "bla"),
        (json!({"etag": 5}), "etag"),
    ] {
        let (status, reply) = app.put(&path, &admin, body.clone()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        let text = error_text(&reply, 400);
        assert!(text.contains(&format!("[{field}]")), "{body}: {text}");
    }
    assert_eq!(detail(&app, &admin, &id(&role)).await["etag"], etag(&role));
}

/// test_create.
#[tokio::test]
async fn create_adds_exactly_one_document() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, before) = app.get("/roles", &admin).await;
    assert_eq!(names(&before), ["admin", "standard_user"]);
    create(
        &app,
        &admin,
        json!({"name": "mra", "email": "mra@plan-net.com"}),
    )
    .await;
    let (_, after) = app.get("/roles", &admin).await;
    assert_eq!(after["total_count"], 3);
    assert_eq!(after["count"], 3);
}

/// test_duplicate_name. Differs on purpose: 409 instead of 400, and names are unique
/// case-insensitively (core4's index was case-sensitive while login was not, §9.22).
#[tokio::test]
async fn duplicate_names_and_emails_get_409_also_case_insensitively() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let body = json!({"name": "mra", "email": "m.rau@plan-net.com", "password": "very secret"});
    create(&app, &admin, body.clone()).await;
    for dup in [
        body,
        json!({"name": "MRA"}),
        json!({"name": "Admin"}),
        json!({"name": "other", "email": "M.Rau@PLAN-NET.com"}),
    ] {
        let (status, reply) = app.post("/roles", &admin, dup.clone()).await;
        assert_eq!(status, 409, "{dup}: {reply}");
        assert_eq!(error_text(&reply, 409), "name or email exists");
    }
    let (_, list) = app.get("/roles", &admin).await;
    assert_eq!(list["total_count"], 3);
    let mut listed = names(&list);
    listed.sort();
    assert_eq!(listed, ["admin", "mra", "standard_user"]);
    let mra = &list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "mra")
        .unwrap();
    assert_eq!(mra["email"], "m.rau@plan-net.com");
}

/// test_unknown_role.
#[tokio::test]
async fn unknown_roles_get_404_naming_them() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    create(&app, &admin, json!({"name": "test_role1"})).await;
    create(&app, &admin, json!({"name": "test_role2"})).await;
    let (status, body) = app
        .post(
            "/roles",
            &admin,
            json!({"name": "mra", "role": ["test_role1", "test_role2", "test_role3"]}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_text(&body, 404), "role [test_role3] not found");
    let (_, list) = app.get("/roles?name=mra", &admin).await;
    assert_eq!(list["total_count"], 0, "nothing was created");

    let user = create(&app, &admin, json!({"name": "mra", "role": ["test_role1"]})).await;
    let (status, body) = app
        .put(
            &format!("/roles/{}", id(&user)),
            &admin,
            json!({"etag": etag(&user), "role": ["nope"]}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_text(&body, 404), "role [nope] not found");
    assert_eq!(
        detail(&app, &admin, &id(&user)).await["role"],
        json!(["test_role1"])
    );
}

/// test_role: `perm_total`/`role_total` through the chain; an update carrying `perm_total`
/// (ignored) and a password keeps the cascade.
#[tokio::test]
async fn perm_total_and_role_total_cascade_through_roles() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (r1, r2, r3) = role_chain(&app, &admin).await;

    let d1 = detail(&app, &admin, &r1).await;
    assert_eq!(strings(&d1["perm_total"]), ["app://1"]);
    assert_eq!(d1["role_total"], json!([]));
    let d2 = detail(&app, &admin, &r2).await;
    assert_eq!(strings(&d2["perm_total"]), ["app://1", "app://2"]);
    assert_eq!(strings(&d2["role"]), ["test_role1"]);
    assert_eq!(strings(&d2["role_total"]), ["test_role1"]);
    let d3 = detail(&app, &admin, &r3).await;
    assert_eq!(
        strings(&d3["perm_total"]),
        ["app://1", "app://2", "app://3"]
    );
    assert_eq!(strings(&d3["perm"]), ["app://3"]);
    assert_eq!(strings(&d3["role"]), ["test_role1", "test_role2"]);

    let (status, body) = app
        .put(
            &format!("/roles/{r3}"),
            &admin,
            json!({"name": "test_role3", "email": "test3@plan-net.com", "passwd": "new secret",
                   "role": ["test_role2", "test_role1"], "perm": ["app://3"],
                   "perm_total": ["cop"], "role_total": ["admin"], "etag": d3["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["data"]["etag"], d3["etag"]);
    assert!(body["data"].get("perm_total").is_none(), "{body}");
    let after = detail(&app, &admin, &r3).await;
    assert_eq!(strings(&after["perm"]), ["app://3"]);
    assert_eq!(strings(&after["role"]), ["test_role1", "test_role2"]);
    assert_eq!(after["perm_total"], d3["perm_total"]);
    assert!(after["updated"].as_str().is_some());
    app.login("test_role3", "new secret").await;
}

/// test_get, adjusted to lowercase realnames (core4's Mongo binary collation sorted uppercase
/// first; PostgreSQL's collation depends on the locale).
#[tokio::test]
async fn listing_sorts_and_pages_by_realname_descending() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for i in 0..10 {
        create(
            &app,
            &admin,
            json!({"name": format!("test_role_{i:03}"), "realname": format!("role{i:02}")}),
        )
        .await;
    }
    let mut seen = vec![];
    for page in 0..4 {
        let (status, body) = app
            .get(
                &format!("/roles?per_page=4&sort=realname&order=-1&page={page}"),
                &admin,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["page"], page);
        assert_eq!(body["per_page"], 4);
        assert_eq!(body["total_count"], 12, "an integer, not core4's 12.0");
        assert_eq!(body["page_count"], 3);
        let items = body["data"].as_array().expect("data");
        assert_eq!(body["count"], items.len());
        assert_eq!(items.len(), if page < 3 { 4 } else { 0 });
        seen.extend(
            items
                .iter()
                .map(|r| r["realname"].as_str().expect("realname").to_string()),
        );
    }
    let mut expected = seen.clone();
    expected.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, expected);
    assert_eq!(
        seen.first().map(String::as_str),
        Some("standard user group")
    );
    assert_eq!(seen.last().map(String::as_str), Some("admin user"));

    let (_, first) = app
        .get("/roles?per_page=4&sort=realname&order=-1", &admin)
        .await;
    let top = &first["data"][0];
    let d = detail(&app, &admin, &id(top)).await;
    assert_eq!(d["name"], "standard_user");
    assert_eq!(d["_id"], top["_id"]);
    assert!(d.get("password").is_none());
}

/// The default order is `_id`, which grows with creation: newest last.
#[tokio::test]
async fn roles_list_pages_newest_last() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut created = vec!["admin".to_string(), "standard_user".to_string()];
    for i in 0..8 {
        let name = format!("r{}", 9 - i);
        create(&app, &admin, json!({"name": name})).await;
        created.push(name);
    }
    let mut seen = vec![];
    for page in 0..4 {
        let (_, body) = app
            .get(&format!("/roles?per_page=3&page={page}"), &admin)
            .await;
        seen.extend(names(&body));
    }
    assert_eq!(seen, created);
}

/// test_empty and test_nested_regex, rewritten: core4d refuses raw `filter` (reference §9.5) and
/// offers `name`/`email` (exact, case-insensitive), `realname` (substring) and `q` (free text),
/// all matched literally.
#[tokio::test]
async fn listing_filters_match_literally() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for (i, real) in ["Liese", "Lisa", "Lieselotte"].iter().enumerate() {
        create(
            &app,
            &admin,
            json!({"name": format!("test_role_{:03}", i + 1), "realname": real}),
        )
        .await;
    }
    create(
        &app,
        &admin,
        json!({"name": "mailer", "email": "Mail.User@Example.com", "perm": ["app://marker"]}),
    )
    .await;

    let count = |query: &'static str| {
        let app = &app;
        let admin = admin.clone();
        async move {
            let (status, body) = app.get(&format!("/roles?{query}"), &admin).await;
            assert_eq!(status, 200, "{query}: {body}");
            assert_eq!(
                body["count"],
                body["data"].as_array().map(Vec::len).unwrap_or(99)
            );
            (body["total_count"].as_u64().expect("total_count"), body)
        }
    };
    for (query, want) in [
        ("name=admin", 1),
        ("name=ADMIN", 1),
        ("name=adm", 0),
        ("name=adm.*", 0),
        ("realname=Li", 3),
        ("realname=Liese", 2),
        ("realname=lisa", 1),
        ("realname=Li*", 0),
        ("realname=%25", 0),
        ("realname=_", 0),
        ("name=test_role_001&realname=L", 1),
        ("q=LIE", 2),
        ("q=marker", 1),
        ("q=example.com", 1),
        ("email=mail.user@example.com", 1),
        ("email=MAIL.USER@EXAMPLE.COM", 1),
        ("email=example.com", 0),
    ] {
        assert_eq!(count(query).await.0, want, "{query}");
    }
    let (total, body) = count("q=nothing-matches-this").await;
    assert_eq!(total, 0);
    assert_eq!(body["page_count"], 0);
    assert_eq!(body["data"], json!([]));

    let (status, body) = app
        .get(r#"/roles?filter={"name":{"$ne":"admin"}}"#, &admin)
        .await;
    assert_eq!(status, 400);
    assert!(error_text(&body, 400).contains("[filter]"), "{body}");
}

/// core4's pager rules (reference §2), with `per_page` validated instead of a 500.
#[tokio::test]
async fn paging_handles_out_of_range_negative_and_invalid_pages() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for i in 0..10 {
        create(&app, &admin, json!({"name": format!("role{i:02}")})).await;
    }
    // 12 items, 5 per page: pages 0..=2, the last holding 2.
    let (_, body) = app.get("/roles?per_page=5&page=99", &admin).await;
    assert_eq!(
        (
            &body["page"],
            &body["count"],
            &body["data"],
            &body["page_count"],
            &body["total_count"]
        ),
        (&json!(99), &json!(0), &json!([]), &json!(3), &json!(12))
    );
    let (_, last) = app.get("/roles?per_page=5&page=-1&sort=name", &admin).await;
    assert_eq!(last["page"], 2, "-1 resolves to the last page");
    assert_eq!(names(&last), ["role09", "standard_user"]);
    let (_, second_last) = app.get("/roles?per_page=5&page=-2&sort=name", &admin).await;
    assert_eq!(second_last["page"], 1);
    assert_eq!(second_last["count"], 5);
    let (status, far) = app.get("/roles?per_page=5&page=-9", &admin).await;
    assert_eq!((status, &far["data"]), (200, &json!([])));

    let (_, desc) = app
        .get("/roles?sort=name&order=-1&per_page=3", &admin)
        .await;
    assert_eq!(names(&desc), ["standard_user", "role09", "role08"]);
    let (_, asc) = app.get("/roles?sort=name&order=1&per_page=3", &admin).await;
    assert_eq!(names(&asc), ["admin", "role00", "role01"]);
    let (status, all) = app.get("/roles?per_page=1000", &admin).await;
    assert_eq!((status, all["count"].clone()), (200, json!(12)));

    for (query, field) in [
        ("per_page=0", "per_page"),
        ("per_page=1001", "per_page"),
        ("per_page=-1", "per_page"),
        ("per_page=x", "per_page"),
        ("page=x", "page"),
        ("sort=password_hash", "sort"),
        ("sort=bla", "sort"),
        ("order=0", "order"),
        ("order=2", "order"),
        ("order=desc", "order"),
    ] {
        let (status, body) = app.get(&format!("/roles?{query}"), &admin).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(error_text(&body, 400).contains(field), "{query}: {body}");
    }
}

/// test_empty's unknown id, and a malformed one.
#[tokio::test]
async fn unknown_ids_get_404_and_malformed_ids_400() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let unknown = "5be414ccde8b69542b70f4d7";
    let (status, body) = app.get(&format!("/roles/{unknown}"), &admin).await;
    assert_eq!(status, 404);
    assert_eq!(
        error_text(&body, 404),
        format!("role [{unknown}] not found")
    );
    let (status, body) = app
        .put(
            &format!("/roles/{unknown}"),
            &admin,
            json!({"etag": unknown, "realname": "x"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app
        .delete(&format!("/roles/{unknown}?etag={unknown}"), &admin)
        .await;
    assert_eq!(status, 404, "{body}");
    for bad in ["xyz", "5be414ccde8b69542b70f4dz", "5be414ccde8b69542b70f4d"] {
        let (status, body) = app.get(&format!("/roles/{bad}"), &admin).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(
            error_text(&body, 400),
            format!("failed to parse ObjectId [{bad}]")
        );
    }
}

/// test_delete: query and path etag forms, the role leaves its holders, missing etag, twice.
#[tokio::test]
async fn deleting_a_role_removes_it_from_its_holders() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let r1 = create(&app, &admin, json!({"name": "test_role1"})).await;
    let r2 = create(
        &app,
        &admin,
        json!({"name": "test_role2", "role": ["test_role1"]}),
    )
    .await;
    assert_eq!(strings(&r2["role"]), ["test_role1"]);

    let (status, body) = app
        .delete(&format!("/roles/{}?etag={}", id(&r1), etag(&r1)), &admin)
        .await;
    assert_eq!((status, &body["data"]), (200, &json!(true)), "{body}");
    let d2 = detail(&app, &admin, &id(&r2)).await;
    assert_eq!(d2["role"], json!([]));
    assert_eq!(
        d2["etag"], r2["etag"],
        "losing a role is not an edit of the holder"
    );

    let (status, body) = app.delete(&format!("/roles/{}", id(&r2)), &admin).await;
    assert_eq!(status, 400);
    assert_eq!(error_text(&body, 400), "Missing argument etag");

    let (status, body) = app
        .delete(&format!("/roles/{}/{}", id(&r2), etag(&r2)), &admin)
        .await;
    assert_eq!((status, &body["data"]), (200, &json!(true)), "{body}");
    let (status, _) = app.get(&format!("/roles/{}", id(&r2)), &admin).await;
    assert_eq!(status, 404);
    let (status, body) = app
        .delete(&format!("/roles/{}?etag={}", id(&r2), etag(&r2)), &admin)
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        error_text(&body, 404),
        format!("role [{}] not found", id(&r2))
    );
}

/// test_update. Differs on purpose: a duplicate name is a 409.
#[tokio::test]
async fn update_needs_the_etag_and_reports_no_changes() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let base = json!({"name": "mra", "realname": "M. Rau", "email": "m.rau@plan-net.com"});
    let user = create(&app, &admin, base.clone()).await;
    let path = format!("/roles/{}", id(&user));

    let (status, body) = app.put(&path, &admin, base.clone()).await;
    assert_eq!(status, 400);
    assert_eq!(error_text(&body, 400), "Missing argument etag");
    let (status, body) = app.put(&path, &admin, json!({"etag": ""})).await;
    assert_eq!(
        (status, error_text(&body, 400)),
        (400, "Missing argument etag".into())
    );

    let mut same = base.clone();
    same["etag"] = user["etag"].clone();
    let (status, body) = app.put(&path, &admin, same).await;
    assert_eq!(
        (status, &body["data"]),
        (200, &json!("no changes")),
        "{body}"
    );
    assert_eq!(detail(&app, &admin, &id(&user)).await["etag"], user["etag"]);

    let (status, body) = app
        .put(
            &path,
            &admin,
            json!({"realname": "Michael Rau", "etag": user["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["realname"], "Michael Rau");
    assert_eq!(
        body["data"]["email"], "m.rau@plan-net.com",
        "untouched fields stay"
    );
    let new_etag = body["data"]["etag"].clone();
    assert_ne!(new_etag, user["etag"]);
    let d = detail(&app, &admin, &id(&user)).await;
    assert_eq!(d["etag"], new_etag);
    assert_eq!(d["realname"], "Michael Rau");

    for taken in ["admin", "ADMIN", "standard_user"] {
        let (status, body) = app
            .put(&path, &admin, json!({"name": taken, "etag": new_etag}))
            .await;
        assert_eq!(status, 409, "{taken}: {body}");
        assert_eq!(error_text(&body, 409), "name or email exists");
        let d = detail(&app, &admin, &id(&user)).await;
        assert_eq!(
            (&d["name"], &d["etag"]),
            (&user["name"], &new_etag),
            "{taken}"
        );
    }
    let (status, body) = app
        .put(&path, &admin, json!({"name": "admin2", "etag": new_etag}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, distinct) = app.get("/roles/distinct", &admin).await;
    assert_eq!(
        distinct["data"],
        json!(["admin", "admin2", "standard_user"])
    );
}

/// test_update2, with passwords of 8+ characters.
#[tokio::test]
async fn a_password_set_by_update_works_and_can_be_changed_again() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = create(
        &app,
        &admin,
        json!({"name": "mra", "email": "m.rau@plan-net.com", "passwd": "very secret"}),
    )
    .await;
    let path = format!("/roles/{}", id(&user));
    let (status, body) = app
        .put(
            &path,
            &admin,
            json!({"passwd": "654321-pw", "perm": ["api://core4.*"], "etag": user["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = app.login("mra", "654321-pw").await;
    let (status, profile) = app.get("/profile", &token).await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["data"]["etag"], body["data"]["etag"]);

    let (status, body) = app
        .put(
            &path,
            &admin,
            json!({"password": "another-pw", "etag": profile["data"]["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.login("mra", "another-pw").await;
    let resp = app
        .client
        .get(app.url("/login"))
        .query(&[("username", "mra"), ("password", "654321-pw")])
        .send()
        .await
        .expect("login");
    assert_eq!(resp.status(), 401);
}

/// `password` (core4's docs) and `passwd` (core4's code) are both accepted; core4 silently
/// dropped `password`. Differs on purpose: passwords need 8 characters.
#[tokio::test]
async fn password_and_passwd_both_work_and_must_be_long_enough() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    create(
        &app,
        &admin,
        json!({"name": "a1", "email": "a1@example.com", "passwd": "passwd-field"}),
    )
    .await;
    create(
        &app,
        &admin,
        json!({"name": "a2", "email": "a2@example.com", "password": "password-field"}),
    )
    .await;
    app.login("a1", "passwd-field").await;
    app.login("a2", "password-field").await;

    let (status, body) = app
        .post(
            "/roles",
            &admin,
            json!({"name": "a3", "email": "a3@example.com", "password": "one secret", "passwd": "two secret"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error_text(&body, 400).contains("[password] and [passwd] differ"));
    for short in ["hans", "1234567"] {
        let (status, body) = app
            .post(
                "/roles",
                &admin,
                json!({"name": "a3", "email": "a3@example.com", "password": short}),
            )
            .await;
        assert_eq!(status, 400, "{short}");
        assert!(error_text(&body, 400).contains("at least 8 characters"));
    }
}

/// Differs on purpose (reference §9.12): core4 lowercased emails only on create and rejected
/// `+` and long TLDs.
#[tokio::test]
async fn emails_are_validated_and_normalised_on_every_write() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = create(
        &app,
        &admin,
        json!({"name": "tagged", "email": "First.Last+tag@Example.museum"}),
    )
    .await;
    assert_eq!(user["email"], "first.last+tag@example.museum");
    let path = format!("/roles/{}", id(&user));
    let (status, body) = app
        .put(
            &path,
            &admin,
            json!({"email": "NEW@Example.COM", "etag": user["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["email"], "new@example.com");
    for bad in [
        "m.rau-plan-net.com",
        "a@b",
        "a b@example.com",
        "@example.com",
    ] {
        let (status, reply) = app
            .put(
                &path,
                &admin,
                json!({"email": bad, "etag": body["data"]["etag"]}),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {reply}");
        assert!(error_text(&reply, 400).contains("field [email] must match"));
    }
    let (status, reply) = app
        .put(
            &path,
            &admin,
            json!({"email": "ADMIN@core4d.invalid", "etag": body["data"]["etag"]}),
        )
        .await;
    assert_eq!(status, 409, "the admin's email: {reply}");
    assert_eq!(error_text(&reply, 409), "name or email exists");
    let d = detail(&app, &admin, &id(&user)).await;
    assert_eq!(
        (&d["email"], &d["etag"]),
        (&json!("new@example.com"), &body["data"]["etag"])
    );
}

/// test_update_conflict and test_delete2. Differs on purpose: 409 instead of 400.
#[tokio::test]
async fn stale_etag_gets_409() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let role = create(&app, &admin, json!({"name": "mra", "realname": "one"})).await;
    let path = format!("/roles/{}", id(&role));
    let old = etag(&role);

    let (status, first) = app
        .put(&path, &admin, json!({"realname": "two", "etag": old}))
        .await;
    assert_eq!(status, 200, "{first}");
    let (status, body) = app
        .put(&path, &admin, json!({"realname": "three", "etag": old}))
        .await;
    assert_eq!(status, 409, "{body}");
    let text = error_text(&body, 409);
    assert_eq!(
        text,
        format!("update [{}] with etag [{old}] failed", id(&role))
    );
    // A stale etag is refused even when nothing would change (as core4).
    let (status, body) = app
        .put(&path, &admin, json!({"realname": "two", "etag": old}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(error_text(&body, 409).contains("with etag"));
    assert_eq!(detail(&app, &admin, &id(&role)).await["realname"], "two");

    let (status, body) = app.delete(&format!("{path}?etag={old}"), &admin).await;
    assert_eq!(status, 409, "{body}");
    assert!(error_text(&body, 409).contains("with etag"));
    let fresh = first["data"]["etag"].as_str().expect("etag");
    let (status, _) = app.delete(&format!("{path}?etag={fresh}"), &admin).await;
    assert_eq!(status, 200);
    let (status, _) = app.delete(&format!("{path}?etag={fresh}"), &admin).await;
    assert_eq!(status, 404);
}

/// test_recursive_delete. Differs on purpose (reference §9.19): the listing shows `role` as
/// names, as every other reply does, not as ids.
#[tokio::test]
async fn deleting_a_role_updates_the_cascade_of_its_holders() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (r1, r2, r3) = role_chain(&app, &admin).await;
    let (_, list) = app.get("/roles?name=test_role3", &admin).await;
    assert_eq!(list["total_count"], 1);
    assert_eq!(strings(&list["data"][0]["perm"]), ["app://3"]);
    assert_eq!(
        strings(&list["data"][0]["role"]),
        ["test_role1", "test_role2"]
    );
    let d3 = detail(&app, &admin, &r3).await;
    assert_eq!(
        strings(&d3["perm_total"]),
        ["app://1", "app://2", "app://3"]
    );

    let e1 = etag(&detail(&app, &admin, &r1).await);
    let (status, _) = app.delete(&format!("/roles/{r1}?etag={e1}"), &admin).await;
    assert_eq!(status, 200);
    let d3 = detail(&app, &admin, &r3).await;
    assert_eq!(strings(&d3["perm_total"]), ["app://2", "app://3"]);
    assert_eq!(strings(&d3["role"]), ["test_role2"]);
    assert_eq!(strings(&d3["role_total"]), ["test_role2"]);
    assert_eq!(detail(&app, &admin, &r2).await["role"], json!([]));
}

/// test_recursion: cycles are allowed, terminate, and the role itself is hidden.
#[tokio::test]
async fn role_cycles_terminate_and_hide_the_role_itself() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let r1 = create(
        &app,
        &admin,
        json!({"name": "test_role1", "perm": ["app://1"]}),
    )
    .await;
    create(
        &app,
        &admin,
        json!({"name": "test_role2", "perm": ["app://2"]}),
    )
    .await;
    let r3 = create(
        &app,
        &admin,
        json!({"name": "test_role3", "role": ["test_role1", "test_role2"], "perm": ["app://3"]}),
    )
    .await;
    let (status, body) = app
        .put(
            &format!("/roles/{}", id(&r1)),
            &admin,
            json!({"role": ["test_role2", "test_role3"], "etag": r1["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = app
        .put(
            &format!("/roles/{}", id(&r3)),
            &admin,
            json!({"role": ["test_role2", "test_role1"], "etag": r3["etag"]}),
        )
        .await;
    assert_eq!(
        (status, &body["data"]),
        (200, &json!("no changes")),
        "{body}"
    );

    let (status, body) = app
        .put(
            &format!("/roles/{}", id(&r3)),
            &admin,
            json!({"role": ["test_role1", "test_role2", "test_role3", "test_role3"], "etag": r3["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "self and a duplicate: {body}");
    let d3 = detail(&app, &admin, &id(&r3)).await;
    assert_eq!(strings(&d3["role"]), ["test_role1", "test_role2"]);
    assert_eq!(strings(&d3["role_total"]), ["test_role1", "test_role2"]);
    assert_eq!(
        strings(&d3["perm_total"]),
        ["app://1", "app://2", "app://3"]
    );
    let d1 = detail(&app, &admin, &id(&r1)).await;
    assert_eq!(strings(&d1["role"]), ["test_role2", "test_role3"]);
    assert_eq!(strings(&d1["role_total"]), ["test_role2", "test_role3"]);
    assert_eq!(
        strings(&d1["perm_total"]),
        ["app://1", "app://2", "app://3"]
    );

    // A user inside the cycle logs in and sees the whole cascade.
    let (uid, token) = app.create_user(&admin, "cyclist", "very secret").await;
    let u = detail(&app, &admin, &uid).await;
    let (status, body) = app
        .put(
            &format!("/roles/{uid}"),
            &admin,
            json!({"role": ["standard_user", "test_role3"], "etag": u["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, profile) = app.get("/profile", &token).await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(
        strings(&profile["data"]["role_total"]),
        ["standard_user", "test_role1", "test_role2", "test_role3"]
    );
    assert!(strings(&profile["data"]["perm_total"]).contains(&"app://1".to_string()));
}

/// core4's cascade skips an inactive role and does not descend into it.
#[tokio::test]
async fn inactive_roles_are_skipped_in_the_cascade() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let a = create(&app, &admin, json!({"name": "role_a", "perm": ["app://a"]})).await;
    let b = create(
        &app,
        &admin,
        json!({"name": "role_b", "role": ["role_a"], "perm": ["app://b"]}),
    )
    .await;
    let user = create(
        &app,
        &admin,
        json!({"name": "holder", "role": ["role_b"], "perm": ["app://own"]}),
    )
    .await;
    let d = detail(&app, &admin, &id(&user)).await;
    assert_eq!(
        strings(&d["perm_total"]),
        ["app://a", "app://b", "app://own"]
    );

    let (status, off) = app
        .put(
            &format!("/roles/{}", id(&b)),
            &admin,
            json!({"is_active": false, "etag": b["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "{off}");
    let d = detail(&app, &admin, &id(&user)).await;
    assert_eq!(
        strings(&d["perm_total"]),
        ["app://own"],
        "b and what lies behind it"
    );
    assert_eq!(d["role_total"], json!([]));
    assert_eq!(strings(&d["role"]), ["role_b"], "still held, just inactive");

    let (status, _) = app
        .put(
            &format!("/roles/{}", id(&b)),
            &admin,
            json!({"is_active": true, "etag": off["data"]["etag"]}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .put(
            &format!("/roles/{}", id(&a)),
            &admin,
            json!({"is_active": false, "etag": a["etag"]}),
        )
        .await;
    assert_eq!(status, 200);
    let d = detail(&app, &admin, &id(&user)).await;
    assert_eq!(strings(&d["perm_total"]), ["app://b", "app://own"]);
    assert_eq!(strings(&d["role_total"]), ["role_b"]);
}

/// test_auth_delegation / test_cookie_create.
#[tokio::test]
async fn the_login_cookie_alone_authorises_creating_a_user() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let resp = app
        .client
        .post(app.url("/roles"))
        .header("Cookie", format!("token={admin}"))
        .json(&json!({"name": "mra", "email": "m.rau@plan-net.com", "passwd": "very secret"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    app.login("mra", "very secret").await;
}

/// test_empty_mail and test_passwd_no_mail. Differs on purpose: core4 set a random password and
/// mailed a creation token (not implemented); such a user simply cannot log in yet. core4's
/// STALE expectation (PUT of the reply gives 400) is replaced by HEAD's "no changes".
#[tokio::test]
async fn users_without_password_and_roles_without_email() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = create(
        &app,
        &admin,
        json!({"name": "mra", "email": "m.rau@plan-net.com"}),
    )
    .await;
    let resp = app
        .client
        .get(app.url("/login"))
        .query(&[("username", "mra"), ("password", "anything-at-all")])
        .send()
        .await
        .expect("login");
    assert_eq!(resp.status(), 401);

    // The reply sent back as it is changes nothing.
    let (status, body) = app
        .put(&format!("/roles/{}", id(&user)), &admin, user.clone())
        .await;
    assert_eq!(
        (status, &body["data"]),
        (200, &json!("no changes")),
        "{body}"
    );

    let (status, body) = app
        .post(
            "/roles",
            &admin,
            json!({"name": "mra", "email": "", "passwd": ""}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let role = create(
        &app,
        &admin,
        json!({"name": "mra2", "email": "", "passwd": ""}),
    )
    .await;
    assert!(role["email"].is_null(), "a role: {role}");

    // A user with a password cannot lose its email.
    let pw = create(
        &app,
        &admin,
        json!({"name": "pw", "email": "pw@example.com", "password": "very secret"}),
    )
    .await;
    let (status, body) = app
        .put(
            &format!("/roles/{}", id(&pw)),
            &admin,
            json!({"email": "", "etag": pw["etag"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(error_text(&body, 400).contains("requires email and password"));
}

/// `/roles/distinct`: every name, sorted.
#[tokio::test]
async fn distinct_lists_every_name() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    create(&app, &admin, json!({"name": "zeta"})).await;
    create(
        &app,
        &admin,
        json!({"name": "beta", "email": "beta@example.com"}),
    )
    .await;
    let (status, body) = app.get("/roles/distinct", &admin).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"],
        json!(["admin", "beta", "standard_user", "zeta"])
    );
}

/// Differs on purpose (reference §5.7, §9.11): core4 let the last admin delete or demote itself.
#[tokio::test]
async fn the_last_active_cop_cannot_be_deleted_deactivated_or_demoted() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, me) = app.get("/profile", &admin).await;
    let me = me["data"].clone();
    let path = format!("/roles/{}", id(&me));

    let (status, body) = app
        .delete(&format!("{path}?etag={}", etag(&me)), &admin)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(error_text(&body, 409).contains("last active cop"));
    for change in [
        json!({"is_active": false}),
        json!({"perm": []}),
        json!({"perm": ["api://core4.api.v1"]}),
    ] {
        let mut body = change.clone();
        body["etag"] = me["etag"].clone();
        let (status, reply) = app.put(&path, &admin, body).await;
        assert_eq!(status, 409, "{change}: {reply}");
        assert!(error_text(&reply, 409).contains("last active cop"));
    }
    let unchanged = detail(&app, &admin, &id(&me)).await;
    assert_eq!(unchanged["etag"], me["etag"]);
    assert_eq!(unchanged["perm"], json!(["cop"]));
    // A role holding `cop` is no cop: it cannot log in.
    create(&app, &admin, json!({"name": "copless", "perm": ["cop"]})).await;
    let (status, _) = app
        .put(&path, &admin, json!({"perm": [], "etag": me["etag"]}))
        .await;
    assert_eq!(status, 409);

    // With a second cop (through a role) the first may step down.
    create(&app, &admin, json!({"name": "admins", "perm": ["cop"]})).await;
    let boss = create(
        &app,
        &admin,
        json!({"name": "boss", "email": "boss@example.com", "password": "boss-password", "role": ["admins"]}),
    )
    .await;
    let (status, body) = app
        .put(&path, &admin, json!({"perm": [], "etag": me["etag"]}))
        .await;
    assert_eq!(status, 200, "{body}");

    // Now boss is the last one, through `admins`.
    let boss_token = app.login("boss", "boss-password").await;
    let (_, admins) = app.get("/roles?name=admins", &boss_token).await;
    let admins = admins["data"][0].clone();
    let (status, body) = app
        .delete(
            &format!("/roles/{}?etag={}", id(&admins), etag(&admins)),
            &boss_token,
        )
        .await;
    assert_eq!(
        status, 409,
        "deleting the role that makes the last cop: {body}"
    );
    assert!(error_text(&body, 409).contains("last active cop"), "{body}");
    let (status, body) = app
        .put(
            &format!("/roles/{}", id(&admins)),
            &boss_token,
            json!({"is_active": false, "etag": admins["etag"]}),
        )
        .await;
    assert_eq!(status, 409, "deactivating it: {body}");
    assert!(error_text(&body, 409).contains("last active cop"), "{body}");
    let (status, body) = app
        .put(
            &format!("/roles/{}", id(&boss)),
            &boss_token,
            json!({"role": [], "etag": boss["etag"]}),
        )
        .await;
    assert_eq!(status, 409, "dropping it: {body}");
    assert!(error_text(&body, 409).contains("last active cop"), "{body}");
    // Nothing of the three was written.
    let admins_now = detail(&app, &boss_token, &id(&admins)).await;
    assert_eq!(
        (
            &admins_now["etag"],
            &admins_now["is_active"],
            &admins_now["perm"]
        ),
        (&admins["etag"], &json!(true), &json!(["cop"]))
    );
    let boss_now = detail(&app, &boss_token, &id(&boss)).await;
    assert_eq!(
        (&boss_now["etag"], &boss_now["role"]),
        (&boss["etag"], &json!(["admins"]))
    );

    let (status, body) = app
        .put(
            &format!("/roles/{}", id(&boss)),
            &boss_token,
            json!({"password": "new boss password", "etag": boss["etag"]}),
        )
        .await;
    assert_eq!(status, 200, "a password change keeps the cop: {body}");
    // The new password is the one that works, and boss is still a cop through `admins`.
    let (status, _) = app
        .call(
            reqwest::Method::GET,
            "/login?username=boss&password=boss-password",
            None,
            None,
        )
        .await;
    assert_eq!(status, 401, "the old password still works");
    let fresh = app.login("boss", "new boss password").await;
    let (_, profile) = app.get("/profile", &fresh).await;
    assert!(
        strings(&profile["data"]["perm_total"]).contains(&"cop".to_string()),
        "{profile}"
    );
    assert_eq!(profile["data"]["role"], json!(["admins"]), "{profile}");
}

/// A value a client sent is quoted back cut short, never whole: a 40 KB `sort` came back as a
/// 40 KB error. Values the domain types refuse (email, permission, role reference) are bounded
/// by the envelope's limit on `error`.
#[tokio::test]
async fn long_values_are_quoted_back_cut_short() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let long = "s".repeat(40 * 1024);
    let (status, body) = app.get(&format!("/roles?sort={long}"), &admin).await;
    assert_eq!(status, 400);
    let text = error_text(&body, 400);
    assert!(
        text.starts_with("parameter [sort] cannot be ["),
        "{text:.200}"
    );
    assert!(
        text.contains(&format!("[{}…]: use _id", "s".repeat(64))),
        "{text:.200}"
    );
    assert!(text.chars().count() < 200, "{} characters", text.len());

    let (status, body) = app
        .get(&format!("/roles/{}", "x".repeat(4000)), &admin)
        .await;
    assert_eq!(status, 400);
    let text = error_text(&body, 400);
    assert_eq!(
        text,
        format!("failed to parse ObjectId [{}…]", "x".repeat(64))
    );

    for (field, value) in [
        ("email", json!("e".repeat(100_000))),
        ("perm", json!(["p".repeat(100_000)])),
        ("role", json!(["r".repeat(100_000)])),
    ] {
        let (status, body) = app
            .post("/roles", &admin, json!({"name": "mra", field: value}))
            .await;
        assert!(status == 400 || status == 404, "{field}: {status}");
        let text = error_text(&body, status);
        // Cut where it is quoted: 64 characters of the value and `…`, inside the message.
        assert!(
            text.chars().count() <= 160,
            "{field}: {} characters",
            text.len()
        );
        assert!(
            text.contains(&format!(
                "{}…",
                &value.to_string().replace(['"', '[', ']'], "")[..64]
            )),
            "{field}: {text:.200}"
        );
    }
}

/// core4's pages are 0-based and a negative one counts from the end, so neither 0 nor -1 is
/// refused; a page before the first is empty, like one after the last, and keeps the number asked
/// for (it was shown "resolved": `page=-99999999999` answered `"page": -99999999991`).
#[tokio::test]
async fn a_page_before_the_first_is_empty_and_keeps_its_number() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for page in [-3, -99_999_999_999, i64::MIN] {
        let (status, body) = app
            .get(&format!("/roles?per_page=1&page={page}"), &admin)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (
                &body["page"],
                &body["count"],
                &body["data"],
                &body["page_count"]
            ),
            (&json!(page), &json!(0), &json!([]), &json!(2)),
            "page={page}"
        );
    }
    let (_, first) = app.get("/roles?per_page=1&page=-2", &admin).await;
    assert_eq!((&first["page"], &first["count"]), (&json!(0), &json!(1)));
    for query in [
        "page=-99999999999999999999",
        "page=99999999999999999999",
        "per_page=4294967296",
        "per_page=99999999999",
    ] {
        let (status, body) = app.get(&format!("/roles?{query}"), &admin).await;
        assert_eq!(status, 400, "{query}: {body}");
        let param = query.split('=').next().unwrap();
        assert!(error_text(&body, 400).contains(param), "{query}: {body}");
    }
}
