//! Operating the real `core4d` binary: the admin's bootstrap (once, a short configured password,
//! a busy port), `admin reset-password` with core4d running and stopped, `backup` and
//! `restore`, and a cluster of another PostgreSQL major version.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{
    Daemon, admin, cluster_dir, core4d, embedded, login, run, runtime, socket_url, temp_dir, text,
    walk_for,
};
use tokio_tungstenite::tungstenite::Message;

const FIRST_PASSWORD: &str = "first-pass-1";

fn api(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}/core4/api/v1{path}")
}

async fn token(port: u16, user: &str, password: &str) -> String {
    let resp = login(port, user, password).await;
    assert_eq!(resp.status(), 200, "login of {user}");
    resp.json::<Value>().await.unwrap()["data"]["token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn profile_status(port: u16, token: &str) -> u16 {
    reqwest::Client::new()
        .get(api(port, "/profile"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn create_user(port: u16, token: &str, name: &str, password: &str, perm: &[&str]) -> Value {
    reqwest::Client::new()
        .post(api(port, "/roles"))
        .bearer_auth(token)
        .json(&json!({
            "name": name,
            "email": format!("{name}@example.com"),
            "password": password,
            "perm": perm,
            "role": ["standard_user"],
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Publishes on `message` and returns the ids the server acknowledged (with `send`, or with
/// `interest` when the message also added the channel, as in core4).
async fn publish(port: u16, token: &str, texts: &[&str]) -> Vec<u64> {
    let url = format!("ws://127.0.0.1:{port}/core4/api/v1/event?token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut ids = vec![];
    for t in texts {
        let frame = json!({"type": "message", "channel": "message", "text": t});
        ws.send(Message::text(frame.to_string())).await.unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let msg = ws.next().await.expect("socket open").unwrap();
                if let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or_default())
                    && v["message_id"].is_string()
                {
                    return v;
                }
            }
        })
        .await
        .expect("an ack");
        ids.push(ack["message_id"].as_str().unwrap().parse().unwrap());
    }
    let _ = ws.close(None).await;
    ids
}

/// (id, text) of the `message` channel, oldest first.
async fn history(port: u16, token: &str) -> Vec<(u64, String)> {
    let body: Value = reqwest::Client::new()
        .get(api(port, "/event/history"))
        .query(&[("channel", "message"), ("per_page", "100")])
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut events: Vec<(u64, String)> = body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("history: {body}"))
        .iter()
        .map(|e| {
            (
                e["_id"].as_str().unwrap().parse().unwrap(),
                e["data"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    events.sort();
    events
}

fn with_admin_password(mut cmd: std::process::Command, password: &str) -> std::process::Command {
    cmd.env("CORE4_ADMIN_PASSWORD", password);
    cmd
}

/// The seed's walk-through logs in as admin/hans: a configured password shorter than the policy
/// is the operator's choice, accepted with a warning; passwords set through the API keep the policy.
#[test]
fn a_short_configured_admin_password_is_accepted_with_a_warning_but_not_through_the_api() {
    let rt = runtime();
    let dir = temp_dir();
    let mut daemon = Daemon::start(with_admin_password(embedded(dir.path()), "hans"));
    let warning = daemon.wait_for("SHORTER THAN 8 CHARACTERS");
    assert!(warning.contains("WARN"), "{warning}");
    let port = daemon.port();
    rt.block_on(async {
        let admin = token(port, "admin", "hans").await;
        let refused = create_user(port, &admin, "bob", "hans", &[]).await;
        assert_eq!(refused["code"], 400, "{refused}");
        assert!(
            refused["error"]
                .as_str()
                .unwrap_or_default()
                .contains("at least 8"),
            "{refused}"
        );
    });
    assert!(daemon.terminate().success());
}

/// The admin is created when the database is first initialised, never again: deleted, it stays
/// deleted while CORE4_ADMIN_PASSWORD stays set, and the log says why the password is ignored.
#[test]
fn a_deleted_admin_is_not_recreated_and_the_log_says_why_the_password_is_ignored() {
    let rt = runtime();
    let dir = temp_dir();
    let mut first = Daemon::start(with_admin_password(embedded(dir.path()), FIRST_PASSWORD));
    let port = first.port();
    rt.block_on(async {
        let admin = token(port, "admin", FIRST_PASSWORD).await;
        let boss = create_user(port, &admin, "boss", "boss-pass-1", &["cop"]).await;
        assert_eq!(boss["code"], 200, "{boss}");
        let boss = token(port, "boss", "boss-pass-1").await;
        let found: Value = reqwest::Client::new()
            .get(api(port, "/roles"))
            .query(&[("name", "admin")])
            .bearer_auth(&boss)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let row = &found["data"][0];
        let deleted = reqwest::Client::new()
            .delete(api(
                port,
                &format!("/roles/{}", row["_id"].as_str().unwrap()),
            ))
            .query(&[("etag", row["etag"].as_str().unwrap())])
            .bearer_auth(&boss)
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 200);
    });
    assert!(first.terminate().success());

    let mut second = Daemon::start(with_admin_password(embedded(dir.path()), FIRST_PASSWORD));
    let why = second.wait_for("is ignored");
    assert!(
        why.contains("only when the database is first initialised")
            && why.contains("deleted since")
            && why.contains(&format!(
                "`core4d --data-dir {} admin reset-password --username admin`",
                dir.path().display()
            )),
        "{why}"
    );
    let port = second.port();
    rt.block_on(async {
        assert_eq!(
            login(port, "admin", FIRST_PASSWORD).await.status(),
            401,
            "the deleted admin was re-created"
        );
        token(port, "boss", "boss-pass-1").await;
    });
    assert!(second.terminate().success());
}

/// core4d binds its port before it creates anything: a first start that finds the port busy
/// fails naming `--listen`, creates no admin, and the next start generates and shows the password.
#[test]
fn a_busy_port_fails_the_first_start_before_the_admin_exists_so_its_password_is_not_lost() {
    let rt = runtime();
    let dir = temp_dir();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = core4d()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", &addr])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--listen") && err.contains(&addr), "{err}");
    assert!(!err.contains("with the password"), "{err}");
    drop(busy);

    let mut daemon = Daemon::start(embedded(dir.path()));
    let line = daemon.wait_for("with the password: ");
    let password = line.rsplit("with the password: ").next().unwrap().trim();
    let password = password.to_string();
    let port = daemon.port();
    rt.block_on(async {
        token(port, "admin", &password).await;
    });
    assert!(daemon.terminate().success());
}

/// With core4d running, `admin reset-password` works on the embedded cluster through its socket
/// (and on the same database given as DATABASE_URL), and the old token stops working at once.
#[test]
fn reset_password_while_core4d_runs_ends_the_users_tokens() {
    let rt = runtime();
    let dir = temp_dir();
    let mut daemon = Daemon::start(with_admin_password(embedded(dir.path()), FIRST_PASSWORD));
    let port = daemon.port();
    let old = rt.block_on(token(port, "admin", FIRST_PASSWORD));
    assert_eq!(rt.block_on(profile_status(port, &old)), 200);

    let out = run(
        admin(
            dir.path(),
            &[
                "admin",
                "reset-password",
                "--username",
                "admin",
                "--password-stdin",
            ],
        ),
        "second-pass-2\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("set the password of user `admin`") && said.contains("running core4d"),
        "{said}"
    );
    rt.block_on(async {
        // The running core4d hears of it through NOTIFY; give it a generous while.
        let deadline = Instant::now() + Duration::from_secs(20);
        while profile_status(port, &old).await != 401 {
            assert!(Instant::now() < deadline, "the old token still works");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(login(port, "admin", FIRST_PASSWORD).await.status(), 401);
        token(port, "admin", "second-pass-2").await;
    });

    // An external database: the same cluster, named by URL.
    let mut cmd = core4d();
    cmd.args([
        "--database-url",
        &socket_url(dir.path()),
        "admin",
        "reset-password",
        "--username",
        "ADMIN",
        "--password-stdin",
    ]);
    let out = run(cmd, "third-pass-3");
    assert!(out.status.success(), "{}", text(&out.stderr));
    rt.block_on(async {
        token(port, "admin", "third-pass-3").await;
    });
    assert!(daemon.terminate().success());
}

/// With core4d stopped, `admin reset-password` starts the embedded cluster, changes the
/// password and stops the cluster again; bad input and unknown names have their own exit codes.
#[test]
fn reset_password_while_core4d_is_stopped_starts_and_stops_the_cluster() {
    let rt = runtime();
    let dir = temp_dir();
    let mut daemon = Daemon::start(with_admin_password(embedded(dir.path()), FIRST_PASSWORD));
    daemon.port();
    assert!(daemon.terminate().success());

    let reset = |user: &str, input: &str| {
        run(
            admin(
                dir.path(),
                &[
                    "admin",
                    "reset-password",
                    "--username",
                    user,
                    "--password-stdin",
                ],
            ),
            input,
        )
    };
    let out = reset("admin", "second-pass-2\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("running core4d"));
    assert!(
        walk_for(&cluster_dir(dir.path()), "postmaster.pid").is_none(),
        "the cluster the command started is stopped again"
    );

    let short = reset("admin", "hans\n");
    assert_eq!(short.status.code(), Some(2), "{}", text(&short.stderr));
    assert!(text(&short.stderr).contains("at least 8 characters"));
    let nobody = reset("nobody", "second-pass-2\n");
    assert_eq!(nobody.status.code(), Some(3), "{}", text(&nobody.stderr));
    assert!(text(&nobody.stderr).contains("no user `nobody`"));
    let role = reset("standard_user", "second-pass-2\n");
    assert_eq!(role.status.code(), Some(2), "{}", text(&role.stderr));
    // Without a terminal and without --password-stdin there is nobody to ask.
    let no_tty = run(
        admin(
            dir.path(),
            &["admin", "reset-password", "--username", "admin"],
        ),
        "",
    );
    assert_eq!(no_tty.status.code(), Some(2));
    assert!(text(&no_tty.stderr).contains("--password-stdin"));
    let empty = temp_dir();
    let no_cluster = run(
        admin(
            empty.path(),
            &[
                "admin",
                "reset-password",
                "--username",
                "admin",
                "--password-stdin",
            ],
        ),
        "second-pass-2",
    );
    assert_eq!(
        no_cluster.status.code(),
        Some(3),
        "{}",
        text(&no_cluster.stderr)
    );

    let mut daemon = Daemon::start(embedded(dir.path()));
    let port = daemon.port();
    rt.block_on(async {
        assert_eq!(login(port, "admin", FIRST_PASSWORD).await.status(), 401);
        token(port, "admin", "second-pass-2").await;
    });
    assert!(daemon.terminate().success());
}

/// A backup taken while core4d serves, restored into a fresh data directory, brings back users,
/// logins, history and ids; new messages continue after the restored ids. Restore refuses to
/// overwrite data without --force, and a database core4d is running on even with it.
#[test]
fn backup_and_restore_into_a_fresh_data_dir_keep_history_ids_and_logins() {
    let rt = runtime();
    let old_dir = temp_dir();
    let new_dir = temp_dir();
    let files = temp_dir();
    let file = files.path().join("core4d.dump");
    let by_url = files.path().join("by-url.dump");

    let mut old = Daemon::start(with_admin_password(
        embedded(old_dir.path()),
        FIRST_PASSWORD,
    ));
    let port = old.port();
    let stored = rt.block_on(async {
        let admin = token(port, "admin", FIRST_PASSWORD).await;
        let alice = create_user(port, &admin, "alice", "alice-pass-1", &[]).await;
        assert_eq!(alice["code"], 200, "{alice}");
        let alice = token(port, "alice", "alice-pass-1").await;
        publish(port, &alice, &["one", "two", "three"]).await;
        history(port, &alice).await
    });
    assert_eq!(stored.len(), 3);

    let out = run(
        admin(old_dir.path(), &["backup", file.to_str().unwrap()]),
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("messages: 3"),
        "{}",
        text(&out.stdout)
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "a backup holds password hashes");
    let mut cmd = core4d();
    cmd.args(["--database-url", &socket_url(old_dir.path()), "backup"])
        .arg(&by_url);
    let out = run(cmd, "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(old.terminate().success());

    let out = run(
        admin(new_dir.path(), &["restore", file.to_str().unwrap()]),
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("restored"),
        "{}",
        text(&out.stdout)
    );
    let again = run(
        admin(new_dir.path(), &["restore", file.to_str().unwrap()]),
        "",
    );
    assert_eq!(again.status.code(), Some(4), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );

    let mut new = Daemon::start(with_admin_password(
        embedded(new_dir.path()),
        "another-pass",
    ));
    new.wait_for("is ignored");
    let port = new.port();
    assert!(!new.seen.iter().any(|l| l.contains("with the password")));
    rt.block_on(async {
        token(port, "admin", FIRST_PASSWORD).await;
        let alice = token(port, "alice", "alice-pass-1").await;
        assert_eq!(
            history(port, &alice).await,
            stored,
            "history and ids intact"
        );
        let next = publish(port, &alice, &["four"]).await;
        let last_restored = stored.last().unwrap().0;
        assert_eq!(
            next,
            vec![last_restored + 1],
            "ids continue after the restored ones"
        );
    });
    let running = run(
        admin(
            new_dir.path(),
            &["restore", "--force", file.to_str().unwrap()],
        ),
        "",
    );
    assert_eq!(running.status.code(), Some(4), "{}", text(&running.stderr));
    assert!(text(&running.stderr).contains("stop it first"));
    assert!(new.terminate().success());

    // --force replaces everything, the message published after the restore included.
    let forced = run(
        admin(
            new_dir.path(),
            &["restore", "--force", by_url.to_str().unwrap()],
        ),
        "",
    );
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert!(text(&forced.stdout).contains("replaced"));
    assert!(
        text(&forced.stdout).contains("messages: 3"),
        "{}",
        text(&forced.stdout)
    );

    let not_a_backup = run(
        admin(new_dir.path(), &["restore", "--force", "Cargo.toml"]),
        "",
    );
    assert_eq!(not_a_backup.status.code(), Some(2));
}

/// A cluster written by another PostgreSQL major version than the installed binaries is refused
/// at start with one line saying what to do.
#[test]
fn a_cluster_of_another_postgresql_major_version_is_refused_with_what_to_do() {
    let dir = temp_dir();
    let mut daemon = Daemon::start(embedded(dir.path()));
    daemon.port();
    assert!(daemon.terminate().success());
    let pg_version = walk_for(&cluster_dir(dir.path()), "PG_VERSION").unwrap();
    let installed: u32 = std::fs::read_to_string(&pg_version)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let older = installed - 1;
    std::fs::write(&pg_version, format!("{older}\n")).unwrap();

    let out = embedded(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("core4d: "))
        .unwrap_or_else(|| panic!("{err}"));
    for needle in [
        format!("created by PostgreSQL {older}"),
        format!("are PostgreSQL {installed}"),
        "core4d backup".to_string(),
        "pg_upgrade".to_string(),
    ] {
        assert!(line.contains(&needle), "{needle} missing in: {line}");
    }
}

/// An operator running an administrative command as root on a service's data directory is told
/// to run it as the cluster's owner, instead of root looking for a cluster of its own elsewhere.
#[test]
fn a_cluster_of_another_user_names_the_user_to_run_as() {
    let dir = temp_dir();
    let cluster = cluster_dir(dir.path());
    std::fs::create_dir(&cluster).unwrap();
    let chowned = std::process::Command::new("chown")
        .args(["nobody"])
        .arg(&cluster)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !chowned {
        eprintln!("SKIP: only root can give the cluster directory to another user");
        return;
    }
    let files = temp_dir();
    let out = run(
        admin(
            dir.path(),
            &["backup", files.path().join("unused.dump").to_str().unwrap()],
        ),
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("belongs to user `nobody`: run core4d as that user"),
        "{}",
        text(&out.stderr)
    );
    // Serving is refused the same way, with the same exit code.
    let out = embedded(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("belongs to user `nobody`: run core4d as that user"),
        "{}",
        text(&out.stderr)
    );
}

/// A backup into a directory that does not exist names that directory (not the internal
/// `.partial` file) and is bad input (exit 2), before any database work; so is a directory.
#[test]
fn a_backup_into_a_missing_directory_names_it_and_exits_2() {
    let files = temp_dir();
    let missing = files.path().join("no").join("such");
    let out = run(
        admin(
            &files.path().join("data"),
            &["backup", missing.join("x.dump").to_str().unwrap()],
        ),
        "",
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "the directory {} does not exist",
            missing.display()
        )),
        "{err}"
    );
    assert!(!err.contains(".partial"), "{err}");
    let out = run(
        admin(
            &files.path().join("data"),
            &["backup", files.path().to_str().unwrap()],
        ),
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is a directory"),
        "{}",
        text(&out.stderr)
    );
    assert!(!files.path().join("data").exists(), "no cluster was made");
}

/// Restoring into a fresh data directory never mistakes core4d's own connection for a running
/// core4d: the cluster's start-up probe may still be exiting when the check runs, and it used to
/// refuse about one time in ten with "1 other sessions are connected". Five fresh restores in a
/// row succeed (the exact check is tested in embedded_pg.rs, the_session_check_...).
#[test]
fn restores_into_fresh_data_dirs_never_see_their_own_sessions() {
    let source = temp_dir();
    let files = temp_dir();
    let file = files.path().join("core4d.dump");
    let mut daemon = Daemon::start(with_admin_password(embedded(source.path()), FIRST_PASSWORD));
    daemon.port();
    assert!(daemon.terminate().success());
    let out = run(
        admin(source.path(), &["backup", file.to_str().unwrap()]),
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for round in 0..5 {
        let fresh = temp_dir();
        let out = run(
            admin(fresh.path(), &["restore", file.to_str().unwrap()]),
            "",
        );
        assert!(out.status.success(), "round {round}: {}", text(&out.stderr));
    }
}
