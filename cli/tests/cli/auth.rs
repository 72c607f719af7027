use std::time::Duration;

use crate::helpers::{ADMIN, Cli, TestServer};

#[test]
fn login_saves_the_server_and_a_private_token() {
    let server = TestServer::spawn();
    let cli = Cli::new();

    let out = cli.login_admin(&server).success();
    assert!(
        out.stdout
            .contains(&format!("Logged in to {} as admin", server.url)),
        "{out:?}"
    );

    let config = cli.config();
    assert_eq!(config["current"], server.url.as_str());
    assert_eq!(config["hosts"][&server.url]["username"], ADMIN);
    assert!(
        config["hosts"][&server.url]["token"]
            .as_str()
            .is_some_and(|t| t.len() > 20)
    );

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(cli.config_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    let mode = std::fs::metadata(cli.config_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn whoami_shows_the_profile_and_token_expiry() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();

    let out = cli.run(&["whoami"]).success();
    assert!(out.stdout.contains("admin"), "{out:?}");
    assert!(out.stdout.contains("Token expires:"), "{out:?}");
    assert!(
        out.stdout.contains("(in 7h 59m)") || out.stdout.contains("(in 8h 0m)"),
        "{out:?}"
    );

    let profile = cli.run(&["whoami", "-o", "json"]).success().json();
    assert_eq!(profile["name"], ADMIN);
    assert_eq!(profile["server"], server.url.as_str());
    for field in [
        "_id",
        "name",
        "realname",
        "email",
        "role_total",
        "perm_total",
        "token_expires",
        "last_login",
    ] {
        assert!(
            profile.get(field).is_some(),
            "whoami JSON lacks {field}: {profile}"
        );
    }
    assert!(
        profile["perm_total"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "cop")
    );
}

#[test]
fn a_wrong_password_exits_3_and_saves_nothing() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login(&server, ADMIN, "not-the-password")
        .failure(3, "wrong username or password");
    assert!(!cli.config_path().exists());
}

#[test]
fn commands_before_login_say_to_log_in() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.run(&["--server", &server.url, "roles", "list"])
        .failure(3, "not logged in to");
    cli.run(&["--server", &server.url, "whoami"])
        .failure(3, "run `core4ctl login`");
}

#[test]
fn logout_revokes_the_token_on_the_server() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let saved = std::fs::read(cli.config_path()).unwrap();

    let out = cli.run(&["logout"]).success();
    assert!(out.stdout.contains("Logged out"), "{out:?}");
    assert!(cli.config()["hosts"][&server.url]["token"].is_null());
    cli.run(&["whoami"]).failure(3, "not logged in");

    // The old token, put back, no longer works: it was revoked, not just forgotten.
    std::fs::write(cli.config_path(), saved).unwrap();
    cli.run(&["whoami"]).failure(3, "revoked");
}

#[test]
fn logout_keeps_the_token_when_the_server_cannot_revoke_it() {
    let mut server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let token = cli.config()["hosts"][&server.url]["token"].clone();
    assert!(token.is_string());
    server.stop();
    cli.run(&["logout"])
        .failure(1, "run `core4ctl logout` again");
    assert_eq!(cli.config()["hosts"][&server.url]["token"], token);
    server.start();
    cli.run(&["logout"]).success();
    assert!(cli.config()["hosts"][&server.url]["token"].is_null());
}

#[test]
fn an_expired_token_says_to_log_in_again() {
    let server = TestServer::spawn_with(|s| {
        s.token_expiration = 2;
        s.token_refresh = 3600;
    });
    let cli = Cli::new();
    cli.login_admin(&server).success();
    std::thread::sleep(Duration::from_millis(3200));
    let out = cli
        .run(&["whoami"])
        .failure(3, "the token has expired — run `core4ctl login`");
    assert!(out.stdout.is_empty());
}

#[test]
fn refreshed_tokens_are_saved_as_they_arrive() {
    let server = TestServer::spawn_with(|s| {
        s.token_expiration = 3600;
        s.token_refresh = 1;
    });
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let first = cli.config()["hosts"][&server.url]["token"].clone();
    std::thread::sleep(Duration::from_millis(2100));
    cli.run(&["whoami"]).success();
    let second = cli.config()["hosts"][&server.url]["token"].clone();
    assert_ne!(first, second, "the refreshed token replaced the old one");
    cli.run(&["whoami"]).success();
}

/// The server is chosen by `--server`, else `CORE4_SERVER`, else the one saved at login.
#[test]
fn core4_server_overrides_the_saved_server_and_server_overrides_both() {
    let first = TestServer::spawn();
    let second = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&first).success();
    cli.login_admin(&second).success();
    let server_of = |out: crate::helpers::Out| out.success().json()["server"].clone();

    // Saved at the last login.
    assert_eq!(
        server_of(cli.run(&["whoami", "-o", "json"])),
        second.url.as_str()
    );
    let env = [("CORE4_SERVER", first.url.as_str())];
    assert_eq!(
        server_of(cli.run_with_env(&["whoami", "-o", "json"], &env)),
        first.url.as_str()
    );
    assert_eq!(
        server_of(cli.run_with_env(&["--server", &second.url, "whoami", "-o", "json"], &env)),
        second.url.as_str()
    );
    // The variable is used, not just echoed: a server core4ctl has no token for is refused.
    let unknown = "http://127.0.0.1:9";
    cli.run_with_env(&["whoami"], &[("CORE4_SERVER", unknown)])
        .failure(3, &format!("not logged in to {unknown}"));
    // And it did not change the saved default.
    assert_eq!(cli.config()["current"], second.url.as_str());
}

#[test]
fn logout_when_not_logged_in_still_prints_json() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    let out = cli
        .run(&["--server", &server.url, "logout", "-o", "json"])
        .success();
    let reply = out.json();
    assert_eq!(reply["server"], server.url.as_str(), "{out:?}");
    assert_eq!(reply["logged_out"], false, "{out:?}");
    cli.login_admin(&server).success();
    let reply = cli.run(&["logout", "-o", "json"]).success().json();
    assert_eq!(reply["logged_out"], true, "{reply}");
}

#[test]
fn the_api_url_works_as_the_server() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    let api = format!("{}/core4/api/v1/", server.url);
    cli.login_at(&api, ADMIN, crate::helpers::ADMIN_PASSWORD)
        .success();
    // Saved under the server's own URL, so both spellings find the token.
    assert_eq!(cli.config()["current"], server.url.as_str());
    cli.run(&["--server", api.trim_end_matches('/'), "whoami"])
        .success();
    cli.run(&["--server", &server.url, "whoami"]).success();
}

#[test]
fn a_password_prompt_without_a_terminal_says_to_use_password_stdin() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    let output = cli
        .command_without_terminal(&["login", "--server", &server.url, "--username", ADMIN])
        .output()
        .expect("setsid (util-linux) runs core4ctl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no terminal to prompt for the password")
            && stderr.contains("--password-stdin"),
        "{stderr}"
    );
    assert!(!stderr.contains("os error"), "{stderr}");
}
