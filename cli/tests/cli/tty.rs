//! The interactive paths on a real terminal: util-linux `script` gives core4ctl a pty, so the
//! password prompt (without echo) and the delete confirmation run as they do for a person.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use crate::helpers::{ADMIN, ADMIN_PASSWORD, Cli, TestServer};

/// Runs core4ctl on a pty, typing each of `keys` after a pause; returns (exit code, what the
/// terminal showed).
fn on_terminal(cli: &Cli, args: &[&str], keys: &[&str]) -> (i32, String) {
    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_core4ctl"))
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let probe = Command::new("script").arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "these tests need util-linux `script`"
    );
    let home = cli.home.path();
    let mut child = Command::new("script")
        .args(["-qfec", &quoted.join(" "), "/dev/null"])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("CORE4_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script runs");
    let mut stdin = child.stdin.take().unwrap();
    for key in keys {
        // Type only once the program is waiting for it, as a person would.
        std::thread::sleep(Duration::from_millis(700));
        stdin.write_all(key.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(stdin);
    let out = child.wait_with_output().expect("script finishes");
    let shown =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), shown)
}

#[test]
fn login_prompts_for_the_password_without_echoing_it() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    let (code, shown) = on_terminal(
        &cli,
        &["login", "--server", &server.url, "--username", ADMIN],
        &[&format!("{ADMIN_PASSWORD}\r")],
    );
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("Password"), "no prompt: {shown}");
    assert!(shown.contains("Logged in"), "{shown}");
    assert!(
        !shown.contains(ADMIN_PASSWORD),
        "the password was echoed: {shown}"
    );
    assert!(cli.config()["hosts"][&server.url]["token"].is_string());
}

#[test]
fn delete_on_a_terminal_asks_first_and_only_yes_deletes() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    cli.run(&["roles", "create", "scratch"]).success();

    let (code, shown) = on_terminal(&cli, &["roles", "delete", "scratch"], &["n\r"]);
    assert_ne!(code, 0, "answering no must not succeed: {shown}");
    assert!(shown.contains("[y/N]"), "no question asked: {shown}");
    cli.run(&["roles", "get", "scratch"]).success();

    let (code, shown) = on_terminal(&cli, &["roles", "delete", "scratch"], &["y\r"]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("Deleted"), "{shown}");
    cli.run(&["roles", "get", "scratch"])
        .failure(4, "not found");
}
