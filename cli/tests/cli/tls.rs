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
