//! Retention: `[[events.retention]]` rules prune stored messages, and a resume or history request
//! that reaches below what was kept is told so (`truncated`), rather than finding a silent gap.

use std::time::Duration;

use core4_tests::{TestApp, fresh_database, spawn_app_with, test_settings};
use core4d::{events::retention, settings::RetentionRule};
use serde_json::{Value, json};

use super::events::Ws;

fn rule(channel: &str, max_count: Option<u64>, max_age_secs: Option<u64>) -> RetentionRule {
    RetentionRule {
        channel: channel.into(),
        max_count,
        max_age_secs,
    }
}

async fn app_with_rules(rules: Vec<RetentionRule>, interval_secs: u64) -> TestApp {
    let mut settings = test_settings(&fresh_database().await);
    settings.events.retention = rules;
    settings.events.retention_interval_secs = interval_secs;
    spawn_app_with(settings).await
}

async fn publish_n(ws: &mut Ws, channel: &str, n: usize) -> Vec<i64> {
    let mut ids = vec![];
    for i in 0..n {
        ids.push(
            ws.publish(channel, json!(format!("{channel} {i}")))
                .await
                .parse()
                .unwrap(),
        );
    }
    ids
}

fn ids_of(page: &Value) -> Vec<i64> {
    page["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|e| e["_id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// The same pruning the background task runs every interval, run once now.
async fn prune_now(app: &TestApp, rules: &[RetentionRule]) -> u64 {
    let pool = core4d::startup::connect(&app.database_url, 2)
        .await
        .unwrap();
    let n = retention::prune_round(&pool, rules).await.expect("pruning");
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_rules_keep_the_newest_and_resumes_are_told_what_is_gone() {
    let rules = vec![rule("logs*", Some(5), None)];
    let app = app_with_rules(rules.clone(), 3600).await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    let logs = publish_n(&mut ws, "logs-a", 12).await;
    let chat = publish_n(&mut ws, "message", 3).await;
    let more = publish_n(&mut ws, "logs-a", 1).await;

    assert_eq!(prune_now(&app, &rules).await, 8);
    assert_eq!(
        prune_now(&app, &rules).await,
        0,
        "a second round finds nothing to do"
    );
    let kept: Vec<i64> = logs[8..].iter().chain(&more).copied().collect();

    // History: the newest five, and the page that reaches the oldest says what is gone.
    let (status, page) = app
        .get("/event/history?channel=logs-a&per_page=3", &admin)
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total_count"], 5);
    assert!(
        page.get("truncated").is_none(),
        "the newest page reaches nothing pruned: {page}"
    );
    let (_, last) = app
        .get("/event/history?channel=logs-a&per_page=3&page=1", &admin)
        .await;
    let first = kept[0].to_string();
    assert_eq!(
        last["truncated"],
        json!({"channel": "logs-a", "first": first}),
        "{last}"
    );
    assert_eq!(ids_of(&last), [kept[1], kept[0]]);
    let (_, chat_page) = app.get("/event/history?channel=message", &admin).await;
    assert_eq!(
        ids_of(&chat_page),
        chat.iter().rev().copied().collect::<Vec<_>>()
    );
    assert!(
        chat_page.get("truncated").is_none(),
        "no rule matches `message`: {chat_page}"
    );

    // A resume from before the pruned messages: truncated first, then exactly what is kept.
    let mut reader = Ws::connect(&app, &admin).await;
    reader
        .send(json!({"type": "interest", "data": ["logs-a", "message"], "since": "0"}))
        .await;
    assert_eq!(reader.recv().await["type"], "interest");
    let notice = reader.recv().await;
    assert_eq!(
        notice,
        json!({"type": "truncated", "channel": "logs-a", "first": first})
    );
    let mut replayed = vec![];
    for _ in 0..kept.len() + chat.len() {
        replayed.push(
            reader.recv().await["_id"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
    }
    let mut want: Vec<i64> = kept.iter().chain(&chat).copied().collect();
    want.sort_unstable();
    assert_eq!(replayed, want);
    // A resume after the pruned range is not told anything.
    let mut late = Ws::connect(&app, &admin).await;
    late.send(json!({"type": "interest", "data": ["logs-a"], "since": first}))
        .await;
    assert_eq!(late.recv().await["type"], "interest");
    assert_eq!(late.recv().await["_id"], kept[1].to_string());

    // Stats name what is stored and what retention took.
    let (status, stats) = app.get("/event/stats", &admin).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        stats["data"],
        json!([
            {"channel": "logs-a", "count": 5, "oldest": first, "newest": more[0].to_string(),
             "bytes": stats["data"][0]["bytes"], "pruned_through": logs[7].to_string()},
            {"channel": "message", "count": 3, "oldest": chat[0].to_string(),
             "newest": chat[2].to_string(), "bytes": stats["data"][1]["bytes"]},
        ])
    );
    assert!(stats["data"][0]["bytes"].as_i64().unwrap() > 5 * 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_task_prunes_by_age_and_an_emptied_channel_still_says_so() {
    let rules = vec![
        rule("old*", None, Some(1)),
        rule("*", Some(1_000_000), None),
    ];
    let app = app_with_rules(rules, 1).await;
    let admin = app.admin_token().await;
    let mut ws = Ws::connect(&app, &admin).await;
    let old = publish_n(&mut ws, "old-news", 3).await;
    let kept = publish_n(&mut ws, "message", 2).await;
    // The task runs every second; wait (with a hang guard) until it has pruned `old-news`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let page = loop {
        let (_, page) = app.get("/event/history?channel=old-news", &admin).await;
        if page["total_count"] == 0 {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never pruned: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let next = (old[2] + 1).to_string();
    assert_eq!(
        page["truncated"],
        json!({"channel": "old-news", "first": next}),
        "{page}"
    );
    let (_, chat) = app.get("/event/history?channel=message", &admin).await;
    assert_eq!(
        ids_of(&chat),
        [kept[1], kept[0]],
        "a generous rule keeps everything"
    );
}
