//! core4ctl against a core4d serving HTTPS and WSS with a self-signed certificate, trusted
//! through `--cacert` or `CORE4_CACERT`.

use crate::helpers::{ADMIN_PASSWORD, Cli, TestServer};

#[test]
fn cacert_lets_core4ctl_use_https_and_wss_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = core4_tests::self_signed_cert(dir.path(), "server");
    let server = TestServer::spawn_with(|s| {
        s.tls.cert_file = Some(cert.clone());
        s.tls.key_file = Some(key.clone());
    });
    let https = format!("https://127.0.0.1:{}", server.port);
    let cacert = cert.to_str().unwrap();
    let cli = Cli::new();

    // Without it, the certificate is not trusted, and the message says what to do.
    let login = [
        "login",
        "--server",
        &https,
        "--username",
        "admin",
        "--password-stdin",
    ];
    let password = format!("{ADMIN_PASSWORD}\n");
    let out = cli.run_with_stdin(&login, Some(&password));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("--cacert"), "{out:?}");

    let mut with_flag = vec!["--cacert", cacert];
    with_flag.extend(login);
    cli.run_with_stdin(&with_flag, Some(&password)).success();
    // `event send` speaks wss://; the environment variable works as the flag does.
    let env = [("CORE4_CACERT", cacert)];
    let out = cli
        .run_with_env(
            &["-o", "json", "event", "send", "message", "over wss"],
            &env,
        )
        .success();
    let id = out.json()["message_id"].as_str().unwrap().to_string();
    let out = cli
        .run_with_env(&["-o", "json", "event", "history", "message"], &env)
        .success();
    let history = out.json();
    assert_eq!(history[0]["_id"], id.as_str(), "{history}");
    assert_eq!(history[0]["data"], "over wss");

    let missing = dir.path().join("missing.pem");
    cli.run(&["--cacert", missing.to_str().unwrap(), "whoami"])
        .failure(2, "cannot use --cacert");
}

/// A TLS core4d and the path of the certificate it serves.
fn tls_server(dir: &std::path::Path) -> (TestServer, std::path::PathBuf) {
    let (cert, key) = core4_tests::self_signed_cert(dir, "server");
    let server = TestServer::spawn_with(|s| {
        s.tls.cert_file = Some(cert.clone());
        s.tls.key_file = Some(key.clone());
    });
    (server, cert)
}

/// Copies the token saved for `from` to `to`, as if core4ctl had logged in there.
fn reuse_token(cli: &Cli, from: &str, to: &str) {
    let mut config = cli.config();
    config["hosts"][to] = config["hosts"][from].clone();
    std::fs::write(cli.config_path(), config.to_string()).unwrap();
}

#[test]
fn the_cacert_given_at_login_is_remembered_for_that_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path());
    let https = format!("https://127.0.0.1:{}", server.port);
    let cli = Cli::new();
    let login = |extra: &[&str], cwd: &std::path::Path| {
        let mut args = extra.to_vec();
        args.extend(["login", "--server", &https, "--username", "admin"]);
        args.push("--password-stdin");
        let mut cmd = cli.command(&args);
        cmd.current_dir(cwd).stdin(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, format!("{ADMIN_PASSWORD}\n").as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    // A path relative to where login ran is saved absolute.
    let out = login(&["--cacert", "server.crt"], dir.path());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        cli.config()["hosts"][&https]["cacert"],
        cert.to_str().unwrap(),
        "{}",
        cli.config()
    );

    // Later commands trust it without --cacert, over https:// and wss:// alike.
    cli.run(&["whoami"]).success();
    cli.run(&["event", "send", "message", "no flag needed"])
        .success();
    // It outlives the session: logging out and in again needs no --cacert.
    cli.run(&["logout"]).success();
    assert_eq!(
        cli.config()["hosts"][&https]["cacert"],
        cert.to_str().unwrap()
    );
    let out = login(&[], cli.home.path());
    assert!(out.status.success(), "{out:?}");

    // Only for that server.
    cli.run(&["--server", &server.url, "whoami"])
        .failure(3, "not logged in");
    // A saved certificate that went away says where it came from.
    std::fs::remove_file(&cert).unwrap();
    cli.run(&["whoami"]).failure(2, "saved at login");
}

#[test]
fn the_wrong_scheme_gets_the_right_one_suggested() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert) = tls_server(dir.path());
    let plain = TestServer::spawn();
    let cli = Cli::new();
    let password = format!("{ADMIN_PASSWORD}\n");
    let login = |server: &str| {
        let args = [
            "--cacert",
            cert.to_str().unwrap(),
            "login",
            "--server",
            server,
            "--username",
            "admin",
            "--password-stdin",
        ];
        cli.run_with_stdin(&args, Some(&password))
    };

    // https:// to a plain-HTTP core4d.
    let (http, https) = (
        plain.url.clone(),
        format!("https://127.0.0.1:{}", plain.port),
    );
    let out = login(&https).failure(1, "does not speak TLS");
    assert!(
        out.stderr.contains(&format!("use --server {http}")),
        "{out:?}"
    );
    // wss:// too (the event socket).
    login(&http).success();
    reuse_token(&cli, &http, &https);
    cli.run(&["--server", &https, "event", "send", "message", "x"])
        .failure(
            1,
            &format!("does not speak TLS: it answered in plain HTTP — use --server {http}"),
        );

    // http:// to a TLS core4d.
    let (http, https) = (
        format!("http://127.0.0.1:{}", tls.port),
        format!("https://127.0.0.1:{}", tls.port),
    );
    let out = login(&http).failure(1, "seems to expect TLS");
    assert!(
        out.stderr.contains(&format!("use --server {https}")),
        "{out:?}"
    );
    login(&https).success();
    reuse_token(&cli, &https, &http);
    cli.run(&["--server", &http, "event", "send", "message", "x"])
        .failure(1, &format!("seems to expect TLS — use --server {https}"));
}
