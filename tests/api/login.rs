use core4_tests::{ADMIN_PASSWORD, error_text, spawn_app};
use serde_json::json;

/// The seed document's preparation, literally: the legacy login URL, the seed's JSON with
/// `password` (not core4's `passwd`) and `role`, then each user logs in.
#[tokio::test]
async fn seed_document_preparation_works_unchanged() {
    let app = spawn_app().await;
    let login = app
        .client
        .get(format!(
            "{}/core4/api/login?username=admin&password={ADMIN_PASSWORD}",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let body: serde_json::Value = login.json().await.unwrap();
    let token = body["data"]["token"].as_str().unwrap().to_string();
    for (name, real, email) in [
        ("user1", "Test User 1", "test1@plan-net.com"),
        ("user2", "Test User 2", "test2@plan-net.com"),
    ] {
        let rv = app
            .client
            .post(app.url("/roles"))
            .header("Authorization", format!("Bearer {token}"))
            .json(&json!({"name": name, "realname": real, "email": email, "password": "very secret", "role": ["standard_user"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(rv.status(), 200);
    }
    let (status, list) = app.get("/roles", &token).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"user1") && names.contains(&"user2"),
        "{names:?}"
    );
    assert_eq!(list["total_count"], 4);
    for name in ["user1", "user2"] {
        let t = app.login(name, "very secret").await;
        let (status, profile) = app.get("/profile", &t).await;
        assert_eq!(status, 200);
        assert_eq!(profile["data"]["name"], name);
    }
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_401() {
    let app = spawn_app().await;
    let mut texts = vec![];
    for (u, p) in [("admin", "wrong-password"), ("nobody", "wrong-password")] {
        let resp = app
            .client
            .get(app.url("/login"))
            .query(&[("username", u), ("password", p)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().get("www-authenticate").is_none());
        let body: serde_json::Value = resp.json().await.unwrap();
        texts.push(error_text(&body, 401));
    }
    assert_eq!(texts[0], texts[1]);
}
