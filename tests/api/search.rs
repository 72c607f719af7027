//! Role search (`GET /roles?q=`): the same answers through the trigram index and without it
//! (no pg_trgm privilege), and the planner using the index for the SQL core4d runs.

use core4_tests::{TestApp, fresh_database, spawn_app, spawn_app_with, test_settings};
use core4d::storage::roles::{self, ListFilter, Paging, Search, SortKey};
use serde_json::{Value, json};

/// Percent-encodes everything but ASCII letters and digits.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Roles whose values sit in one field each, and pairs that only a pattern would confuse.
async fn seed(app: &TestApp, admin: &str) {
    for body in [
        json!({"name": "only_name_qwfpgj"}),
        json!({"name": "only_real", "realname": "Zyxwv Lmnop"}),
        json!({"name": "only_mail", "email": "needle.box@example.org", "password": "very secret"}),
        json!({"name": "only_perm", "perm": ["app://perm-haystack"]}),
        json!({"name": "pct_literal", "realname": "pay 50%off now"}),
        json!({"name": "pct_decoy", "realname": "pay 50 and off"}),
        json!({"name": "esc_xyz_abc"}),
        json!({"name": "esc_xyzqabc"}),
        json!({"name": "slash_literal", "realname": r"c:\dir"}),
        json!({"name": "slash_decoy", "realname": "c:dir"}),
    ] {
        let (status, reply) = app.post("/roles", admin, body.clone()).await;
        assert_eq!(status, 200, "creating {body}: {reply}");
    }
}

/// The names `q` finds, sorted, with the total the reply claims.
async fn search(app: &TestApp, admin: &str, q: &str) -> (Vec<String>, u64) {
    let (status, body) = app
        .get(
            &format!("/roles?per_page=1000&sort=name&q={}", encode(q)),
            admin,
        )
        .await;
    assert_eq!(status, 200, "q={q}: {body}");
    let names = body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {body}"))
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_string())
        .collect();
    (names, body["total_count"].as_u64().expect("total_count"))
}

/// What a case-insensitive substring search over name, real name, email and permissions finds,
/// computed here from the full listing.
fn expected(all: &[Value], q: &str) -> Vec<String> {
    let q = q.to_lowercase();
    let field = |r: &Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    let mut names: Vec<String> = all
        .iter()
        .filter(|r| {
            let perm: Vec<String> = r["perm"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| p.as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default();
            let haystack = format!(
                "{} {} {} {}",
                field(r, "name"),
                field(r, "realname"),
                field(r, "email"),
                perm.join(" ")
            )
            .to_lowercase();
            haystack.contains(&q)
        })
        .map(|r| field(r, "name"))
        .collect();
    names.sort();
    names
}

/// Each field is found, case-insensitively, also after a change; `%`, `_` and `\` match
/// themselves; terms with and without a trigram agree with the substring rule.
async fn assert_search_answers(app: &TestApp) {
    let admin = app.admin_token().await;
    seed(app, &admin).await;
    for (q, want) in [
        ("QWFPGJ", "only_name_qwfpgj"),
        ("xwv lmn", "only_real"),
        ("NEEDLE.box@", "only_mail"),
        ("perm-hay", "only_perm"),
        ("50%off", "pct_literal"),
        ("xyz_abc", "esc_xyz_abc"),
        (r"c:\d", "slash_literal"),
    ] {
        let (names, total) = search(app, &admin, q).await;
        assert_eq!(names, vec![want.to_string()], "q={q}");
        assert_eq!(total, 1, "q={q}");
    }
    // The stored search text follows a change.
    let (_, body) = app.get("/roles?name=only_real", &admin).await;
    let role = &body["data"][0];
    let (status, reply) = app
        .put(
            &format!("/roles/{}", role["_id"].as_str().expect("_id")),
            &admin,
            json!({"etag": role["etag"], "realname": "Renamed Person"}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(search(app, &admin, "xwv lmn").await.1, 0);
    assert_eq!(
        search(app, &admin, "renamed pers").await.0,
        vec!["only_real"]
    );
    let (status, body) = app.get("/roles?per_page=1000", &admin).await;
    assert_eq!(status, 200, "{body}");
    let all = body["data"].as_array().expect("data").clone();

    // Terms with and without a run of three letters or digits, hits and misses.
    for q in [
        "o",
        "_",
        "%",
        "zy",
        "50",
        "@",
        "only",
        "example",
        "pay 50",
        "api://",
        "nothing-here",
        "a_",
    ] {
        let (names, total) = search(app, &admin, q).await;
        assert_eq!(names, expected(&all, q), "q={q}");
        assert_eq!(total, names.len() as u64, "q={q}");
    }
}

#[tokio::test]
async fn role_search_finds_every_field_through_the_trigram_index() {
    let app = spawn_app().await;
    let pool = core4d::startup::connect(&app.database_url, 1)
        .await
        .expect("connect");
    assert_eq!(
        roles::search_mode(&pool).await.expect("mode"),
        Search::Trigram
    );
    assert_search_answers(&app).await;
}

/// An operator's database user that may create tables but not extensions: core4d starts, logs
/// the fallback and answers the same.
#[tokio::test]
async fn role_search_answers_the_same_without_the_privilege_to_create_pg_trgm() {
    let url = fresh_database().await;
    let user = format!("limited_{}", uuid::Uuid::new_v4().simple());
    let superuser = core4d::startup::connect(&url, 1).await.expect("connect");
    for sql in [
        format!("CREATE ROLE {user} LOGIN"),
        format!("GRANT USAGE, CREATE ON SCHEMA public TO {user}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&superuser)
            .await
            .expect("prepare the limited user");
    }
    let limited_url = url.replacen("postgres://postgres@", &format!("postgres://{user}@"), 1);
    assert_ne!(limited_url, url, "the test URL names the superuser");
    let app = spawn_app_with(test_settings(&limited_url)).await;

    let installed: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm')")
            .fetch_one(&superuser)
            .await
            .expect("query");
    assert!(!installed, "the limited user could create pg_trgm");
    assert_eq!(
        roles::search_mode(&superuser).await.expect("mode"),
        Search::Scan
    );
    assert_search_answers(&app).await;
}

/// Two instances starting at once on a new database: both start, one index is built.
#[tokio::test]
async fn instances_starting_together_build_one_search_index() {
    let url = fresh_database().await;
    let (a, b) = tokio::join!(
        spawn_app_with(test_settings(&url)),
        spawn_app_with(test_settings(&url))
    );
    let pool = core4d::startup::connect(&url, 1).await.expect("connect");
    assert_eq!(
        roles::search_mode(&pool).await.expect("mode"),
        Search::Trigram
    );
    let admin = a.admin_token().await;
    let (names, _) = search(&b, &admin, "admin").await;
    assert!(names.contains(&"admin".to_string()), "{names:?}");
    a.stop().await.expect("stop a");
    b.stop().await.expect("stop b");
    // Each start took its turn; no second index under another name.
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'roles' AND indexdef LIKE '%gin_trgm_ops%'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(indexes, 1);
}

/// Over 20,000 roles the planner uses the trigram index for both queries of a listing (the
/// count and the page), exactly as core4d sends them; a term too short for a trigram is matched
/// by reading every role.
#[tokio::test]
async fn role_search_over_many_roles_uses_the_trigram_index() {
    let app = spawn_app().await;
    let pool = core4d::startup::connect(&app.database_url, 1)
        .await
        .expect("connect");
    sqlx::query(
        "INSERT INTO roles (id, name, name_key, realname, email, perm, etag)
         SELECT lpad(to_hex(g), 24, '0'), 'bulk_' || g, 'bulk_' || g, 'Real ' || md5(g::text),
                'bulk' || g || '@example.com', ARRAY['app://bulk/' || (g % 100)], md5(g::text)
         FROM generate_series(1, 20000) g",
    )
    .execute(&pool)
    .await
    .expect("seed");
    sqlx::query("ANALYZE roles")
        .execute(&pool)
        .await
        .expect("analyze");
    let mode = roles::search_mode(&pool).await.expect("mode");
    assert_eq!(mode, Search::Trigram);
    let paging = Paging {
        sort: SortKey::Id,
        desc: false,
        limit: 10,
        offset: 0,
    };
    let filter = |q: &str| ListFilter {
        q: Some(q.into()),
        ..ListFilter::default()
    };

    let (count, page) = roles::explain_list(&pool, &filter("bulk4242@"), paging)
        .await
        .expect("explain");
    assert!(count.contains("roles_search"), "count plan:\n{count}");
    assert!(page.contains("roles_search"), "page plan:\n{page}");

    let (count, _) = roles::explain_list(&pool, &filter("k4"), paging)
        .await
        .expect("explain");
    assert!(!count.contains("roles_search"), "count plan:\n{count}");
    assert!(count.contains("Seq Scan"), "count plan:\n{count}");

    let admin = app.admin_token().await;
    let (names, total) = search(&app, &admin, "BULK4242@").await;
    assert_eq!((names, total), (vec!["bulk_4242".to_string()], 1));
}
