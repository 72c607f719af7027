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
    for args in [&["config"][..], &["--data-dir", "unused-data-dir"][..]] {
        let out = core4d()
            .args(args)
            .env("CORE4_SECRET", "short")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("secret must be at least 32 characters")
        );
    }
    assert!(!Path::new("unused-data-dir").exists());
}

/// `core4d config` with `env` and `args`; returns (exit code, stderr).
fn config_with(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = core4d();
    cmd.args(args).arg("config");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// A bad value is an error (exit 2) on one line naming where it came from — the variable, the
/// flag, or the file and key — and what is accepted, in core4d's words, not figment's.
#[test]
fn configuration_errors_name_the_source_and_the_key_and_what_is_valid() {
    for value in ["xml", "JSON"] {
        let (code, err) = config_with(&[("CORE4_LOG_FORMAT", value)], &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "CORE4_LOG_FORMAT: unknown value `{value}`; expected one of `text`, `json`"
            )),
            "{err}"
        );
    }
    let (code, err) = config_with(&[("CORE4_LOG_FORMAT", "json")], &[]);
    assert_eq!(code, Some(0), "{err}");

    let (code, err) = config_with(&[], &["--database-url", "notaurl"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--database-url: not a postgres:// URL")
            && err.contains("e.g. postgres://")
            && !err.contains("relative URL"),
        "{err}"
    );
    let (code, err) = config_with(&[("DATABASE_URL", "db.example.com:5432")], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("DATABASE_URL: "), "{err}");

    let dir = temp_dir();
    let file = dir.path().join("c1.toml");
    std::fs::write(&file, "foo = 1\n").unwrap();
    let (code, err) = config_with(&[], &["--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("{}: foo: unknown key `foo`", file.display())),
        "{err}"
    );
    for internal in ["default.", "TOML file", "for key"] {
        assert!(!err.contains(internal), "{internal}: {err}");
    }
    std::fs::write(&file, "log_format = \"xml\"\n").unwrap();
    let (code, err) = config_with(&[], &["--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{}: log_format: unknown value `xml`",
            file.display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

/// A misspelt `CORE4_*` variable is named with the setting it probably meant; the variables of
/// core4ctl and core4d's own non-setting ones are not warned about.
#[test]
fn an_unknown_core4_variable_is_named_once_with_the_closest_setting() {
    let (code, err) = config_with(
        &[
            ("CORE4_LISTN", "127.0.0.1:6001"),
            ("CORE4_SERVER", "http://127.0.0.1:5001"),
            ("CORE4_CACERT", "ca.pem"),
            ("CORE4_PG_BIN_DIR", "/usr/lib/postgresql/15/bin"),
            ("CORE4_LISTEN", "127.0.0.1:6002"),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(
            "CORE4_LISTN is not a core4d setting and is ignored; did you mean CORE4_LISTEN?"
        ),
        "{err}"
    );
}

/// `--listen` is offered only where it means something: serving, and `config`.
#[test]
fn listen_is_documented_with_its_variable_and_only_where_it_applies() {
    let help = |args: &[&str]| {
        let out = core4d().args(args).arg("--help").output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(help(&[]).contains("Also CORE4_LISTEN"), "{}", help(&[]));
    assert!(help(&["serve"]).contains("--listen"));
    assert!(help(&["config"]).contains("--listen"));
    for sub in [
        &["backup"][..],
        &["restore"],
        &["openapi"],
        &["admin", "reset-password"],
    ] {
        assert!(!help(sub).contains("--listen"), "{sub:?}: {}", help(sub));
    }
    let (code, err) = config_with(&[], &["--listen", "127.0.0.1:6003"]);
    assert_eq!(code, Some(0), "{err}");
    let out = core4d()
        .args(["config", "--listen", "127.0.0.1:6004"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("listen = \"127.0.0.1:6004\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An unreachable database is reported with its address and the reason (here: refused), not as
/// a pool timeout, and without the password.
#[test]
fn an_unreachable_database_is_reported_with_its_address_and_the_reason() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let files = temp_dir();
    let out = core4d()
        .args([
            "--database-url",
            &format!("postgres://core4:hunter2@127.0.0.1:{port}/core4"),
            "backup",
        ])
        .arg(files.path().join("x.dump"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}"))
            && err.to_lowercase().contains("connection refused"),
        "{err}"
    );
    assert!(
        !err.contains("hunter2") && !err.contains("pool timed out"),
        "{err}"
    );
}

/// `core4d config` says where the embedded cluster is (for root it may be outside data_dir):
/// the directory a start then really uses, with server.log in it.
#[test]
fn config_shows_the_embedded_cluster_directory_a_start_uses() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let out = core4d()
        .arg("--data-dir")
        .arg(&data)
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cluster = text
        .lines()
        .find_map(|l| l.strip_prefix("# embedded cluster: "))
        .unwrap_or_else(|| panic!("no cluster line:\n{text}"));
    let cluster = Path::new(cluster.split(" (").next().unwrap());
    assert!(!data.exists(), "config creates nothing");
    let mut daemon = Daemon::start(embedded(&data));
    daemon.port();
    assert!(daemon.terminate().success());
    assert!(
        cluster.join("server.log").is_file(),
        "{} has no server.log",
        cluster.display()
    );
    let out = core4d()
        .args(["--database-url", "postgres://u@db.example/core4", "config"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("# embedded cluster: not used"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
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
    let hint = first
        .seen
        .iter()
        .find(|l| l.contains("shown only this once"))
        .unwrap_or_else(|| panic!("{}", first.seen.join("\n")));
    assert!(
        hint.contains("`core4ctl roles update admin --password-prompt`")
            && hint.contains(&format!(
                "`core4d --data-dir {} admin reset-password --username admin`",
                dir.path().display()
            )),
        "{hint}"
    );
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
