//! The real `core4d` binary: its help, configuration output, spec, and the embedded PostgreSQL
//! life cycle (first start, restart with data kept, no binaries, the database dying).

mod support;

use std::{path::Path, process::Command, time::Instant};

use support::{Daemon, core4d, embedded, login, runtime, temp_dir, walk_for};

#[test]
fn help_explains_configuration_and_secrets() {
    let out = core4d().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "DATABASE_URL",
        "CORE4_SECRET",
        "CORE4_ADMIN_PASSWORD",
        "--data-dir",
        "--listen",
        "config",
        "openapi",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

#[test]
fn config_prints_effective_values_with_secrets_redacted() {
    let out = core4d()
        .arg("config")
        .env("CORE4_SECRET", "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-xx")
        .env("CORE4_ADMIN_PASSWORD", "admin-pw-123")
        .env("DATABASE_URL", "postgres://core4:dbpass@db.example/core4")
        .env("CORE4_LISTEN", "127.0.0.1:6001")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:6001\""), "{text}");
    assert!(
        text.contains("postgres://core4:<redacted>@db.example/core4"),
        "{text}"
    );
    for secret in ["s3cr3t", "admin-pw-123", "dbpass"] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
}

/// Each layer overrides the one below it, key by key: defaults < TOML file < `CORE4_*` and
/// `DATABASE_URL` < flags; a key a higher layer leaves alone keeps the lower layer's value.
#[test]
fn configuration_layers_override_in_order_defaults_toml_env_flags() {
    let dir = temp_dir();
    let file = dir.path().join("core4d.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:7001"
database_url = "postgres://toml@db.example/core4"
token_expiration = 100
max_per_page = 50

[events]
max_frame_bytes = 1111
ping_interval_secs = 7
"#,
    )
    .unwrap();
    let config = |env: &[(&str, &str)], flags: &[&str]| {
        let mut cmd = core4d();
        cmd.arg("--config").arg(&file).args(flags).arg("config");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut events = false;
        let mut values = std::collections::BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('[') {
                events = line == "[events]";
            } else if let Some((k, v)) = line.split_once(" = ") {
                let key = if events {
                    format!("events.{k}")
                } else {
                    k.to_string()
                };
                values.insert(key, v.trim_matches('"').to_string());
            }
        }
        values
    };
    let env = [
        ("CORE4_LISTEN", "127.0.0.1:7002"),
        ("DATABASE_URL", "postgres://env@db.example/core4"),
        ("CORE4_TOKEN_EXPIRATION", "200"),
        ("CORE4_EVENTS__MAX_FRAME_BYTES", "2222"),
    ];
    let flags = [
        "--listen",
        "127.0.0.1:7003",
        "--database-url",
        "postgres://flag@db.example/core4",
    ];

    let file_only = config(&[], &[]);
    let with_env = config(&env, &[]);
    let with_flags = config(&env, &flags);
    let get = |values: &std::collections::BTreeMap<String, String>, key: &str| {
        values
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {values:?}"))
            .clone()
    };
    for (key, file, env, flag) in [
        (
            "listen",
            "127.0.0.1:7001",
            "127.0.0.1:7002",
            "127.0.0.1:7003",
        ),
        (
            "database_url",
            "postgres://toml@db.example/core4",
            "postgres://env@db.example/core4",
            "postgres://flag@db.example/core4",
        ),
        ("token_expiration", "100", "200", "200"),
        ("events.max_frame_bytes", "1111", "2222", "2222"),
        ("max_per_page", "50", "50", "50"),
        ("events.ping_interval_secs", "7", "7", "7"),
        // Untouched by every layer: the default.
        ("token_refresh", "3600", "3600", "3600"),
    ] {
        assert_eq!(
            [
                get(&file_only, key),
                get(&with_env, key),
                get(&with_flags, key)
            ],
            [file, env, flag],
            "{key}: file, file+env, file+env+flags"
        );
    }
}

#[test]
fn invalid_configuration_is_a_clear_error_with_exit_code_2() {
    let out = core4d()
        .arg("config")
        .env("CORE4_SECRET", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret must be at least 32 characters"));
}

/// The committed spec must be what the binary prints; regenerate with
/// `cargo run -p core4d -- openapi > openapi/core4.json`.
#[test]
fn committed_openapi_spec_is_current() {
    let out = core4d().arg("openapi").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/core4.json"),
    )
    .unwrap_or_default();
    assert!(
        printed.trim() == committed.trim(),
        "openapi/core4.json is stale: run `cargo run -p core4d -- openapi > openapi/core4.json`"
    );
    let spec: serde_json::Value = serde_json::from_str(&printed).unwrap();
    for path in [
        "/login",
        "/logout",
        "/profile",
        "/roles",
        "/roles/{id}",
        "/health",
    ] {
        assert!(spec["paths"].get(path).is_some(), "spec lacks {path}");
    }
}

#[test]
fn embedded_first_start_generates_the_admin_password_and_restart_keeps_data() {
    let rt = runtime();
    let dir = temp_dir();

    let started = Instant::now();
    let mut first = Daemon::start(embedded(dir.path()));
    let line = first.wait_for("with the password: ");
    let password = line
        .rsplit("with the password: ")
        .next()
        .unwrap()
        .trim()
        .to_string();
    let port = first.port();
    eprintln!("embedded first start to ready: {:?}", started.elapsed());
    let role_id = rt.block_on(async {
        let resp = login(port, "admin", &password).await;
        assert_eq!(resp.status(), 200);
        let token = resp.json::<serde_json::Value>().await.unwrap()["data"]["token"]
            .as_str()
            .unwrap()
            .to_string();
        let created: serde_json::Value = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/core4/api/v1/roles"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"name": "kept", "perm": ["app://kept"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        created["data"]["_id"].as_str().unwrap().to_string()
    });
    assert!(first.terminate().success(), "{}", first.seen.join("\n"));

    let started = Instant::now();
    let mut second = Daemon::start(embedded(dir.path()));
    let port = second.port();
    eprintln!("embedded restart to ready: {:?}", started.elapsed());
    assert!(
        !second.seen.iter().any(|l| l.contains("with the password")),
        "a restart must not make a new admin password"
    );
    rt.block_on(async {
        let resp = login(port, "admin", &password).await;
        assert_eq!(resp.status(), 200, "the admin password survives a restart");
        let token = resp.json::<serde_json::Value>().await.unwrap()["data"]["token"]
            .as_str()
            .unwrap()
            .to_string();
        let got = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{port}/core4/api/v1/roles/{role_id}"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            got.status(),
            200,
            "the role created before the restart is still there"
        );
    });
    assert!(second.terminate().success());
}

#[test]
fn no_postgres_binaries_is_one_clear_error_naming_both_fixes() {
    let dir = temp_dir();
    let empty = temp_dir();
    let mut cmd = embedded(dir.path());
    cmd.env("CORE4_PG_BIN_DIR", empty.path());
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("install PostgreSQL") && err.contains("DATABASE_URL"),
        "{err}"
    );
}

#[test]
fn core4d_exits_non_zero_when_its_embedded_database_dies() {
    let dir = temp_dir();
    let mut daemon = Daemon::start(embedded(dir.path()));
    daemon.port();
    let pid_file = walk_for(dir.path(), "postmaster.pid").expect("postmaster.pid in the data dir");
    let pid = std::fs::read_to_string(pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    // SIGQUIT: PostgreSQL's immediate shutdown, as if it had crashed.
    assert!(
        Command::new("kill")
            .args(["-QUIT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = daemon.wait_exit();
    assert!(!status.success());
    assert!(
        daemon
            .seen
            .iter()
            .any(|l| l.contains("embedded PostgreSQL stopped")),
        "{}",
        daemon.seen.join("\n")
    );
}
