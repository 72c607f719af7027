//! The daemon's surface outside users and events: health, info, errors of the router, the served
//! spec and Swagger UI, metrics, request ids.

use core4_tests::{error_text, spawn_app};
use serde_json::Value;

#[tokio::test]
async fn health_is_public_and_reports_the_database() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["database"], true);
    assert_eq!(body["code"], 200);
    assert_eq!(body["message"], "OK");
    assert!(body["version"].as_str().unwrap().starts_with("core4d/"));
}

#[tokio::test]
async fn health_is_503_when_the_database_is_unreachable() {
    let app = spawn_app().await;
    let admin = core4d::startup::connect(&core4_tests::db_url("postgres"), 1)
        .await
        .unwrap();
    let db = app
        .database_url
        .split("/t_")
        .nth(1)
        .map(|rest| format!("t_{}", rest.split('?').next().unwrap()))
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS false"
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db)
        .execute(&admin)
        .await
        .unwrap();
    let resp = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    let text = error_text(&body, 503);
    assert!(
        !text.contains("ALLOW") && !text.contains("SQL"),
        "no database internals in the reply: {text}"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS true"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_error_envelope() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/xxx")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(error_text(&body, 404), "not found");
    let resp = app.client.patch(app.url("/login")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.unwrap();
    error_text(&body, 405);
}

#[tokio::test]
async fn the_request_id_header_matches_the_envelope_id() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/profile")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let header = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["_id"], header.as_str());
    assert_eq!(error_text(&body, 401), "authentication required");
}

#[tokio::test]
async fn info_version_needs_a_login_and_names_the_project() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/_info?version"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let admin = app.admin_token().await;
    let (status, body) = app.get("/_info?version", &admin).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["project"], "core4d");
    assert_eq!(body["data"]["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn the_served_spec_equals_the_committed_one_and_swagger_ui_is_there() {
    let app = spawn_app().await;
    let served = app.spec().await;
    let committed: Value = serde_json::from_str(include_str!("../../openapi/core4.json")).unwrap();
    assert!(
        served == committed,
        "regenerate openapi/core4.json with `cargo run -p core4d -- openapi > openapi/core4.json`"
    );
    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(
        docs.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("swagger")
    );
}

/// Every documented operation is routed: with an admin token and placeholder ids, none answers
/// with the router's 404 or 405.
#[tokio::test]
async fn every_documented_operation_answers() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let spec: Value = serde_json::from_str(include_str!("../../openapi/core4.json")).unwrap();
    let mut checked = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", "5be414ccde8b69542b70f4d7")
            .replace("{etag}", "5be414ccde8b69542b70f4d8");
        for method in ops.as_object().unwrap().keys() {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let resp = app
                .client
                .request(method.clone(), app.url(&concrete))
                .bearer_auth(&admin)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let streaming = resp
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "text/event-stream");
            // An event stream does not end: its first bytes are answer enough.
            let text = if streaming {
                String::new()
            } else {
                resp.text().await.unwrap()
            };
            assert_ne!(status, 405, "{method} {path}: {text}");
            if status == 404 {
                assert!(
                    !text.contains("\"error\":\"not found\""),
                    "{method} {path} is not routed: {text}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} operations documented");
}

/// What the README promises: `/metrics`, `/health`, the OpenAPI document and Swagger UI are
/// served without a login; every other documented operation answers 401 without credentials.
#[tokio::test]
async fn only_metrics_health_and_the_api_documents_need_no_login() {
    let app = spawn_app().await;
    for url in [
        format!("{}/metrics", app.address),
        app.url("/health"),
        app.url("/openapi.json"),
        app.url("/docs"),
    ] {
        let resp = app.client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
    }
    let spec: Value = serde_json::from_str(include_str!("../../openapi/core4.json")).unwrap();
    let mut refused = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        if path == "/health" {
            continue;
        }
        let concrete = path
            .replace("{id}", "5be414ccde8b69542b70f4d7")
            .replace("{etag}", "5be414ccde8b69542b70f4d8");
        for method in ops.as_object().unwrap().keys() {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let resp = app
                .client
                .request(method.clone(), app.url(&concrete))
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            assert_eq!(status, 401, "{method} {path} without a login: {body}");
            error_text(&body, 401);
            refused += 1;
        }
    }
    assert!(refused >= 15, "only {refused} operations documented");
}

#[tokio::test]
async fn metrics_count_http_requests_by_route_and_status() {
    let app = spawn_app().await;
    app.client.get(app.url("/health")).send().await.unwrap();
    let text = app.metrics().await;
    assert!(text.contains("core4d_http_requests_total{method=\"GET\",route=\"/core4/api/v1/health\",status=\"200\"} 1"), "{text}");
    assert!(text.contains("# TYPE core4d_event_connections gauge"));
}

#[tokio::test]
async fn oversized_bodies_get_413_before_anything_reads_them() {
    let app = spawn_app().await;
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let resp = app
        .client
        .post(app.url("/roles"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert!(error_text(&body, 413).contains("limit"));
}

/// PostgreSQL cannot store a NUL byte in text; that is the client's input, so 400, never 500.
#[tokio::test]
async fn unstorable_characters_are_a_400_not_a_500() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (status, body) = app.get("/roles?q=%00", &admin).await;
    assert_eq!(status, 400, "{body}");
    error_text(&body, 400);
    let (status, body) = app
        .post(
            "/roles",
            &admin,
            serde_json::json!({"name": "nul", "realname": "a\u{0}b"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}
