//! The README holds no surprises: its configuration table names every key `core4d config`
//! prints, and its first-steps walk-through runs as written against a real core4d.

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    process::Command,
    time::{Duration, Instant},
};

use crate::browser::{core4d_binary, which, workspace_binary};

const README: &str = include_str!("../../README.md");

/// The text of the README's `## Configuration` section.
fn configuration_section() -> &'static str {
    let start = README
        .find("## Configuration")
        .expect("a Configuration section");
    let rest = &README[start..];
    &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)]
}

#[test]
fn the_readme_configuration_table_names_every_key_core4d_config_prints() {
    let printed = core4d::settings::Settings::default().redacted_toml();
    let table = configuration_section();
    let mut section = String::new();
    let mut missing = vec![];
    for line in printed.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let key = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
            .or_else(|| line.split_once(" = ").map(|(k, _)| k));
        let Some(key) = key else { continue };
        // The events section is summarised as `events.*`, pointing at `core4d config`.
        let named = if section.is_empty() {
            table.contains(&format!("`{key}`"))
        } else if section == "events" {
            table.contains("`events.*`")
        } else {
            table.contains(&format!("`{section}.{key}`")) || table.contains(&format!("`{key}`"))
        };
        if !named {
            missing.push(if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            });
        }
    }
    assert!(
        missing.is_empty(),
        "README's configuration table lacks {missing:?}"
    );
    assert!(
        !table.contains("lists everything"),
        "`core4d --help` does not list every key"
    );
}

/// The block after `<!-- walkthrough -->`, run by bash with `-e` in a fresh home. Only the port
/// is changed (5001 may be taken on a shared machine); `cargo run -p core4d` and
/// `cargo install --path cli --locked` are served by the binaries this test run built.
#[test]
fn the_readme_walkthrough_runs_as_written() {
    for tool in ["curl", "jq"] {
        assert!(which(tool).is_some(), "the walk-through needs {tool}");
    }
    let start = README
        .find("<!-- walkthrough -->\n```sh\n")
        .expect("a walk-through block");
    let block = &README[start..];
    let block = &block[block.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("\n```").expect("the block's end")];

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = block.replace("127.0.0.1:5001", &format!("127.0.0.1:{port}"));

    let home = tempfile::tempdir().unwrap();
    // As root the embedded cluster runs as `postgres`, which must be able to enter the home.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(
        workspace_binary("core4ctl", "core4ctl"),
        bin.join("core4ctl"),
    )
    .unwrap();
    let shim = bin.join("cargo");
    std::fs::write(
        &shim,
        format!(
            r#"#!/bin/sh
# Stands in for cargo: the binaries are built already.
case "$*" in
  "run -p core4d"*) shift 3; [ "${{1:-}}" = "--" ] && shift; exec '{core4d}' "$@" ;;
  "install --path cli --locked") exit 0 ;;
  *) echo "the walk-through ran an unexpected cargo command: cargo $*" >&2; exit 99 ;;
esac
"#,
            core4d = core4d_binary().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();

    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // Files, not pipes: core4d inherits them and logs every request, which could fill a pipe
    // nobody reads until the end.
    let out_file = home.path().join("stdout");
    let err_file = home.path().join("stderr");
    let mut child = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .env("PATH", path)
        .env("HOME", home.path())
        .env("CORE4_LISTEN", format!("127.0.0.1:{port}"))
        .env("CORE4_EMBEDDED_FSYNC", "false")
        .env("NO_COLOR", "1")
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .expect("bash");
    let group = format!("-{}", child.id());
    let signal = |sig: &str| {
        Command::new("kill")
            .args(["-s", sig, "--", &group])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // A hang guard, not a timing assertion: the first start runs initdb.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            signal("TERM");
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever happened, core4d (and its PostgreSQL) must be gone before the home is removed.
    let gone_by = Instant::now() + Duration::from_secs(30);
    while signal("0") {
        if Instant::now() > gone_by {
            signal("KILL");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stdout = std::fs::read_to_string(&out_file).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "the walk-through failed ({status:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    // What the block says its commands print.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.matches('.').count() == 2 && l.len() > 100),
        "no token printed: {stdout}"
    );
    assert_eq!(
        lines.iter().filter(|l| **l == "alice").count(),
        1,
        "{stdout}"
    );
}
