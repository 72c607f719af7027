//! Existing core4 clients, unchanged: the seed document's `requests` calls and a chat client
//! that talks like core4's `chat.py` (websocket-client), run by the real Python against a real
//! core4d. Needs `python3 -m pip install requests websocket-client` (CI installs them).

use core4_tests::{run_python_client, spawn_app};

#[tokio::test]
async fn the_seed_documents_python_clients_work_unchanged() {
    let app = spawn_app().await;
    let stdout = run_python_client(&app, "seed_and_chat.py", "requests, websocket").await;
    assert!(stdout.starts_with("OK: "), "{stdout}");
}
