//! Existing core4 clients, unchanged: the seed document's `requests` calls and a chat client
//! that talks like core4's `chat.py` (websocket-client), run by the real Python against a real
//! core4d. Needs `python3 -m pip install requests websocket-client` (CI installs them).

use core4_tests::{ADMIN_PASSWORD, spawn_app};

#[tokio::test]
async fn the_seed_documents_python_clients_work_unchanged() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import requests, websocket"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "this test runs core4's Python clients: install them with `python3 -m pip install requests websocket-client`"
    );
    let app = spawn_app().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/compat/seed_and_chat.py");
    let host = format!("127.0.0.1:{}", app.port);
    let out = tokio::process::Command::new("python3")
        .args([script, &host, ADMIN_PASSWORD])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("OK: "), "{stdout}");
}
