//! What `/metrics` tells an operator beyond the event counters: request latency, the database
//! pool, held replies and the process itself.

use core4_tests::spawn_app;

/// The value of the series `name` (exactly, labels included) in `/metrics` text.
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_show_request_latency_the_pool_held_replies_and_the_process() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let before = app.metrics().await;
    for _ in 0..5 {
        let (status, _) = app.get("/profile", &admin).await;
        assert_eq!(status, 200);
    }
    let after = app.metrics().await;
    let count = "core4d_http_request_duration_seconds_count";
    // The five requests and the first scrape (a scrape is counted once it is answered).
    assert_eq!(metric(&after, count), metric(&before, count) + 6.0);
    assert!(
        metric(
            &after,
            "core4d_http_request_duration_seconds_bucket{le=\"+Inf\"}"
        ) == metric(&after, count)
    );
    assert!(metric(&after, "core4d_http_request_duration_seconds_sum") > 0.0);
    let idle = metric(&after, "core4d_db_pool_connections{state=\"idle\"}");
    let in_use = metric(&after, "core4d_db_pool_connections{state=\"in_use\"}");
    assert!(idle + in_use >= 1.0, "{after}");
    assert!(idle + in_use <= metric(&after, "core4d_db_pool_max_connections"));
    assert_eq!(metric(&after, "core4d_http_held_reply_bytes"), 0.0);
    assert!(metric(&after, "process_resident_memory_bytes") > 1e6);
    assert!(metric(&after, "process_open_fds") >= 3.0);
    assert!(metric(&after, "process_cpu_seconds_total") > 0.0);
    let started = metric(&after, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 24.0 * 3600.0,
        "{started} vs {now}"
    );
}
