//! The API document and its Swagger UI page: what the page needs (title, icon, compression),
//! the statuses and examples the spec states, and the `Allow` header of a 405.

use core4_tests::{fresh_database, spawn_app, spawn_app_with, test_settings};
use serde_json::{Value, json};

fn committed_spec() -> Value {
    serde_json::from_str(include_str!("../../openapi/core4.json")).unwrap()
}

#[tokio::test]
async fn the_docs_page_is_titled_core4d_api_with_an_icon_that_is_found() {
    let app = spawn_app().await;
    let page = app
        .client
        .get(app.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<title>core4d API</title>"), "title missing");
    assert!(!page.contains("<title>Swagger UI</title>"));
    assert!(page.contains("rel=\"icon\""), "no icon link");
    let icon = app
        .client
        .get(format!("{}/favicon.ico", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    assert!(icon.text().await.unwrap().starts_with("<svg"));
}

#[tokio::test]
async fn the_docs_page_and_spec_are_compressed_when_the_client_asks() {
    let app = spawn_app().await;
    for path in ["/docs", "/openapi.json"] {
        let plain = app
            .client
            .get(app.url(path))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len();
        for encoding in ["gzip", "br"] {
            let resp = app
                .client
                .get(app.url(path))
                .header("accept-encoding", encoding)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-encoding"], encoding, "{path}");
            let sent = resp.bytes().await.unwrap().len();
            assert!(
                sent * 2 < plain,
                "{path} with {encoding}: {sent} bytes of {plain}"
            );
        }
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert!(resp.headers().get("content-encoding").is_none());
    }
}

#[tokio::test]
async fn a_405_names_the_allowed_methods() {
    let app = spawn_app().await;
    for (method, path, allow) in [
        ("PATCH", "/roles", "GET, POST, HEAD"),
        ("PUT", "/roles/distinct", "GET, HEAD"),
        (
            "POST",
            "/roles/5be414ccde8b69542b70f4d7",
            "DELETE, GET, PUT, HEAD",
        ),
        ("DELETE", "/health", "GET, HEAD"),
        ("PUT", "/login", "GET, POST, HEAD"),
    ] {
        let resp = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        let got = resp
            .headers()
            .get("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header"))
            .to_str()
            .unwrap();
        let mut got: Vec<&str> = got.split(", ").collect();
        let mut want: Vec<&str> = allow.split(", ").collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{method} {path}");
    }
}

#[test]
fn every_response_has_a_description_and_only_the_statuses_its_operation_gives() {
    let spec = committed_spec();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (status, resp) in op["responses"].as_object().unwrap() {
                let text = resp["description"].as_str().unwrap_or_default();
                assert!(!text.is_empty(), "{method} {path} {status}: no description");
                assert_ne!(
                    status, "500",
                    "{method} {path} documents a bug as an answer"
                );
            }
        }
    }
    let statuses = |path: &str, method: &str| -> Vec<String> {
        spec["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(statuses("/health", "get"), ["200", "503"]);
    assert_eq!(
        statuses("/roles/distinct", "get"),
        ["200", "401", "403", "503"]
    );
    assert!(!statuses("/_info", "get").contains(&"409".to_string()));
    assert!(statuses("/login", "get").contains(&"429".to_string()));
    assert!(!statuses("/roles", "get").contains(&"429".to_string()));
    assert_eq!(
        statuses("/event", "post"),
        ["200", "400", "401", "403", "413", "429", "503"]
    );
    assert_eq!(
        statuses("/event/stats", "get"),
        ["200", "401", "403", "503"]
    );
    assert!(!statuses("/event", "get").contains(&"409".to_string()));
}

#[test]
fn the_spec_states_the_constraints_core4d_enforces() {
    let spec = committed_spec();
    let schemas = &spec["components"]["schemas"];
    for name in ["RoleCreate", "RoleUpdate", "ProfileUpdate"] {
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
    }
    assert_eq!(schemas["RoleUpdate"]["required"], json!(["etag"]));
    assert_eq!(schemas["ProfileUpdate"]["required"], json!(["etag"]));
    assert_eq!(schemas["RoleCreate"]["required"], json!(["name"]));
    assert_eq!(schemas["RoleCreate"]["properties"]["name"]["maxLength"], 64);
    let param = |path: &str, method: &str, name: &str| -> Value {
        spec["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no {name}"))
            .clone()
    };
    for (path, method) in [
        ("/roles/{id}", "get"),
        ("/roles/{id}", "put"),
        ("/roles/{id}", "delete"),
        ("/roles/{id}/{etag}", "delete"),
    ] {
        assert_eq!(
            param(path, method, "id")["schema"]["pattern"],
            "^[0-9a-fA-F]{24}$"
        );
    }
    assert_eq!(param("/roles/{id}", "delete", "etag")["required"], true);
    let per_page = param("/roles", "get", "per_page");
    assert_eq!(per_page["schema"]["minimum"], 1);
    assert_eq!(per_page["schema"]["maximum"], 1000);
    assert_eq!(
        param("/roles", "get", "filter")["schema"],
        json!({"not": {}})
    );
    let login = &spec["paths"]["/login"]["post"]["requestBody"]["content"];
    assert!(login["application/json"].is_object(), "no JSON login body");
    assert!(
        login["application/x-www-form-urlencoded"].is_object(),
        "no form login body"
    );
}

/// Every request body's example, sent as shown (the etag is the only value that cannot be
/// known in advance: it is taken from the object first), succeeds.
#[tokio::test]
async fn every_request_body_example_succeeds_as_shown() {
    let spec = committed_spec();
    let schemas = &spec["components"]["schemas"];
    let example = |name: &str| schemas[name]["example"].clone();
    // The login example names the admin and a placeholder password: give the admin that one.
    let login = example("LoginBody");
    let mut settings = test_settings(&fresh_database().await);
    settings.admin_password = Some(login["password"].as_str().unwrap().to_string());
    let app = spawn_app_with(settings).await;

    let resp = app
        .client
        .post(app.url("/login"))
        .json(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "login example");
    let body: Value = resp.json().await.unwrap();
    let admin = body["data"]["token"].as_str().unwrap().to_string();
    let form: Vec<(String, String)> = login
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let resp = app
        .client
        .post(app.url("/login"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "login example as a form");

    let create = example("RoleCreate");
    assert!(
        !create.to_string().contains("\"string\""),
        "placeholder values in {create}"
    );
    let (status, body) = app.post("/roles", &admin, create.clone()).await;
    assert_eq!(status, 200, "POST /roles example: {body}");
    let id = body["data"]["_id"].as_str().unwrap().to_string();

    let mut update = example("RoleUpdate");
    update["etag"] = body["data"]["etag"].clone();
    let (status, body) = app.put(&format!("/roles/{id}"), &admin, update).await;
    assert_eq!(status, 200, "PUT /roles example: {body}");
    assert_ne!(body["data"], "no changes");

    let user = app
        .login(
            create["name"].as_str().unwrap(),
            create["password"].as_str().unwrap(),
        )
        .await;
    let (_, me) = app.get("/profile", &user).await;
    let mut profile = example("ProfileUpdate");
    profile["etag"] = me["data"]["etag"].clone();
    let (status, body) = app.put("/profile", &user, profile).await;
    assert_eq!(status, 200, "PUT /profile example: {body}");
}

/// Every description in `value`, with where it is.
fn descriptions(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("description", Value::String(text)) => {
                        out.push((at.to_string(), text.clone()))
                    }
                    _ => descriptions(v, &format!("{at}/{key}"), out),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                descriptions(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn the_websocket_document_shows_each_frame_as_sent_with_its_own_description() {
    let app = spawn_app().await;
    let spec = app.spec().await;
    let schemas = spec["components"]["schemas"].as_object().unwrap();

    // The example a reader copies is a whole frame that core4d accepts.
    let example = &schemas["ClientFrame"]["example"];
    assert!(
        example["type"].is_string(),
        "example without type: {example}"
    );
    serde_json::from_value::<core4_proto::ClientFrame>(example.clone())
        .unwrap_or_else(|e| panic!("ClientFrame example {example} does not parse: {e}"));

    for union in ["ClientFrame", "ServerReply"] {
        let parent = &schemas[union];
        let mapping = parent["discriminator"]["mapping"].as_object().unwrap();
        assert!(mapping.len() >= 3, "{union}: {mapping:?}");
        for (tag, target) in mapping {
            let name = target
                .as_str()
                .unwrap()
                .strip_prefix("#/components/schemas/")
                .unwrap();
            // No internal wrapper (`ClientFrame_TokenRequestFrame`) stands for the variant.
            assert!(
                !name.starts_with(&format!("{union}_")),
                "{union}.{tag}: {name}"
            );
            let variant = &schemas[name];
            assert_ne!(
                variant["description"], parent["description"],
                "{union}.{tag} repeats its parent's description"
            );
            assert!(variant["description"].is_string(), "{name}: no description");
            assert_eq!(
                variant["properties"]["type"]["enum"],
                json!([tag]),
                "{name}"
            );
            assert!(
                variant["required"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("type")),
                "{name}: type not required"
            );
        }
    }
    for name in schemas.keys() {
        assert!(
            !name.starts_with("ClientFrame_") && !name.starts_with("ServerReply_"),
            "internal wrapper schema {name} is shown"
        );
    }

    let socket = spec["paths"]["/event"]["get"]["description"]
        .as_str()
        .unwrap();
    assert!(
        socket.contains("ws://HOST:5001/core4/api/v1/event?token="),
        "no ws:// line in: {socket}"
    );

    let mut texts = Vec::new();
    descriptions(&spec, "", &mut texts);
    assert!(texts.len() > 100, "only {} descriptions", texts.len());
    for (at, text) in &texts {
        // Rustdoc links and escaped backticks are not Markdown; an odd count leaves a code
        // span open.
        assert!(!text.contains("[`") && !text.contains("`]"), "{at}: {text}");
        assert!(!text.contains("\\`"), "{at}: {text}");
        assert_eq!(text.matches('`').count() % 2, 0, "{at}: {text}");
        // Permission names are written out, not cut.
        for word in text.split_whitespace().filter(|w| w.contains("://")) {
            assert!(!word.contains('…'), "{at}: cut permission {word}");
        }
    }
}
