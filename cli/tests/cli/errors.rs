use crate::helpers::{Cli, TestServer};

#[test]
fn a_server_that_is_down_is_named_with_a_hint() {
    let mut server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    server.stop();
    let expected = format!("core4d is not reachable at {}: is it running?", server.url);
    cli.run(&["roles", "list"]).failure(1, &expected);
    cli.run(&["event", "send", "message", "x"])
        .failure(1, &expected);
    cli.run_with_stdin(
        &["login", "--username", "admin", "--password-stdin"],
        Some("hans\n"),
    )
    .failure(1, &expected);
}

#[test]
fn usage_errors_exit_2() {
    let cli = Cli::new();
    cli.run(&["roles", "frobnicate"])
        .failure(2, "unrecognized subcommand");
    cli.run(&["-o", "yaml", "whoami"])
        .failure(2, "invalid value");
    cli.run(&["--server", "ftp://x", "whoami"])
        .failure(2, "invalid server URL");
    cli.run(&["login"]).failure(2, "--username");
}

#[test]
fn mistyped_channel_commands_get_a_tip() {
    let cli = Cli::new();
    cli.run(&["event", "caht"])
        .failure(2, "a similar subcommand exists: 'chat'");
    // The channel commands live under `event`; only `chat` keeps its old spelling.
    cli.run(&["tail", "message"])
        .failure(2, "a similar subcommand exists: 'event tail'");
    cli.run(&["-o", "json", "history", "message"])
        .failure(2, "a similar subcommand exists: 'event history'");
    let help = cli.run(&["event", "--help"]).success().stdout;
    assert!(help.contains("\n  chat "), "{help}");
}

#[test]
fn help_has_examples_and_version_prints() {
    let cli = Cli::new();
    for args in [
        &["--help"][..],
        &["roles", "list", "--help"],
        &["event", "tail", "--help"],
        &["event", "chat", "--help"],
        &["chat", "--help"],
    ] {
        let out = cli.run(args).success();
        assert!(out.stdout.contains("Examples:"), "{args:?}: {out:?}");
    }
    let out = cli.run(&["--version"]).success();
    assert_eq!(
        out.stdout.trim(),
        concat!("core4ctl ", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_are_generated_for_three_shells() {
    let cli = Cli::new();
    assert!(
        cli.run(&["completions", "bash"])
            .success()
            .stdout
            .contains("complete -F")
    );
    assert!(
        cli.run(&["completions", "zsh"])
            .success()
            .stdout
            .contains("#compdef core4ctl")
    );
    assert!(
        cli.run(&["completions", "fish"])
            .success()
            .stdout
            .contains("complete -c core4ctl")
    );
}

#[test]
fn a_reader_closing_the_pipe_is_not_an_error() {
    let cli = Cli::new();
    let mut child = cli.command(&["completions", "bash"]).spawn().unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The string is planted in the database directly, so the test does not depend on what the
/// API accepts in a real name: whatever reaches core4ctl, the table must not pass it on raw.
#[test]
fn server_strings_are_sanitised_in_tables() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    cli.run(&["roles", "create", "shady"]).success();
    server.execute_sql(r"UPDATE roles SET realname = E'x\033[31mred\033[0m' WHERE name = 'shady'");
    let out = cli.run(&["roles", "list"]).success();
    assert!(!out.stdout.contains('\x1b'), "{out:?}");
    assert!(out.stdout.contains("x\\u{1b}[31mred"), "{out:?}");
    let json = cli
        .run(&["roles", "get", "shady", "-o", "json"])
        .success()
        .json();
    assert_eq!(
        json["realname"], "x\u{1b}[31mred\u{1b}[0m",
        "JSON keeps the value, escaped"
    );
}

/// A web server that is not core4d: answers every request with `reply`.
fn fake_server(reply: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 8192];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = std::io::Write::write_all(&mut conn, reply.as_bytes());
        }
    });
    url
}

#[test]
fn a_redirect_names_where_it_points_as_the_server_to_use() {
    let server = fake_server(
        "HTTP/1.1 301 Moved Permanently\r\n\
         Location: https://core4.example/core4/api/v1/login\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let cli = Cli::new();
    let out = cli
        .login_at(&server, "a", "password")
        .failure(1, "https://core4.example/core4/api/v1/login");
    assert!(
        out.stderr.contains("use --server https://core4.example"),
        "{out:?}"
    );
    assert!(!cli.config_path().exists());
}

#[test]
fn a_server_that_is_not_core4d_is_called_so() {
    // What `python3 -m http.server` answers a POST.
    let server = fake_server(
        "HTTP/1.0 501 Unsupported method ('POST')\r\nContent-Type: text/html\r\n\
         Connection: close\r\n\r\n<html><body>Error 501</body></html>",
    );
    let cli = Cli::new();
    cli.login_at(&server, "a", "password")
        .failure(1, &format!("{server} does not look like core4d"));
    // And a GET it cannot find.
    let server = fake_server(
        "HTTP/1.0 404 File not found\r\nContent-Type: text/html\r\n\
         Connection: close\r\n\r\n<html><body>Error 404</body></html>",
    );
    let mut config = serde_json::json!({"hosts": {}});
    config["hosts"][&server] = serde_json::json!({"token": "a.b.c"});
    std::fs::create_dir_all(cli.config_dir()).unwrap();
    std::fs::write(cli.config_path(), config.to_string()).unwrap();
    let out = cli
        .run(&["--server", &server, "whoami"])
        .failure(1, "does not look like core4d");
    assert!(out.stderr.contains("/core4/api/v1/profile"), "{out:?}");
}
