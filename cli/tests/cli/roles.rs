use crate::helpers::{Cli, TestServer};

fn create_user(cli: &Cli, name: &str, extra: &[&str]) {
    let email = format!("{name}@example.com");
    let mut args = vec![
        "roles",
        "create",
        name,
        "--email",
        &email,
        "--password-stdin",
    ];
    args.extend_from_slice(extra);
    cli.run_with_stdin(&args, Some("secret-pw\n")).success();
}

#[test]
fn a_created_user_shows_up_in_the_list() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();

    let out = cli
        .run_with_stdin(
            &[
                "roles",
                "create",
                "alice",
                "--realname",
                "Alice A.",
                "--email",
                "alice@example.com",
                "--password-stdin",
                "--role",
                "standard_user",
            ],
            Some("alice-pw\n"),
        )
        .success();
    assert!(out.stdout.starts_with("Created user alice (id "), "{out:?}");

    let out = cli.run(&["roles", "list"]).success();
    let header = out.stdout.lines().next().unwrap();
    for column in [
        "NAME",
        "REALNAME",
        "EMAIL",
        "ROLES",
        "PERMISSIONS",
        "ACTIVE",
        "CREATED",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("alice"))
        .expect("alice is listed");
    assert!(
        row.contains("Alice A.")
            && row.contains("alice@example.com")
            && row.contains("standard_user"),
        "{row}"
    );

    // The new user can log in with the password given on stdin.
    let alice = Cli::new();
    alice.login(&server, "alice", "alice-pw").success();
}

#[test]
fn json_output_parses_and_keeps_its_field_names() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    create_user(&cli, "bob", &[]);

    let list = cli.run(&["roles", "list", "-o", "json"]).success().json();
    let items = list.as_array().expect("a JSON array");
    let bob = items
        .iter()
        .find(|i| i["name"] == "bob")
        .expect("bob listed");
    let mut keys: Vec<&str> = bob
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_id",
            "created",
            "email",
            "etag",
            "is_active",
            "name",
            "perm",
            "realname",
            "role",
            "updated"
        ]
    );

    let detail = cli
        .run(&["roles", "get", "bob", "-o", "json"])
        .success()
        .json();
    for key in [
        "_id",
        "name",
        "etag",
        "role",
        "perm",
        "role_total",
        "perm_total",
    ] {
        assert!(detail.get(key).is_some(), "get JSON lacks {key}: {detail}");
    }
    let created = cli
        .run(&[
            "roles",
            "create",
            "viewers",
            "--perm",
            "api://core4.api.v1.request.role/r",
            "-o",
            "json",
        ])
        .success()
        .json();
    assert_eq!(created["name"], "viewers");
    assert_eq!(created["perm"][0], "api://core4.api.v1.request.role/r");
}

#[test]
fn get_shows_cascaded_roles_and_permissions_by_name_or_id() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    cli.run(&[
        "roles",
        "create",
        "editors",
        "--perm",
        "api://core4.api.v1.request.role/r",
    ])
    .success();
    cli.run(&[
        "roles",
        "create",
        "chiefs",
        "--role",
        "editors",
        "--perm",
        "app://store/chief",
    ])
    .success();
    create_user(&cli, "carol", &["--role", "chiefs"]);

    let carol = cli
        .run(&["roles", "get", "carol", "-o", "json"])
        .success()
        .json();
    assert_eq!(carol["role"], serde_json::json!(["chiefs"]));
    let role_total = carol["role_total"].as_array().unwrap();
    assert!(
        role_total.iter().any(|r| r == "editors") && role_total.iter().any(|r| r == "chiefs"),
        "{carol}"
    );
    let perm_total = carol["perm_total"].as_array().unwrap();
    assert!(
        perm_total
            .iter()
            .any(|p| p == "api://core4.api.v1.request.role/r"),
        "{carol}"
    );

    let id = carol["_id"].as_str().unwrap();
    let out = cli.run(&["roles", "get", id]).success();
    assert!(out.stdout.contains("Roles (cascaded):"), "{out:?}");
    assert!(out.stdout.contains("editors"), "{out:?}");
    assert!(out.stdout.contains("Permissions (cascaded):"), "{out:?}");

    // A role given by id is sent by name.
    let editors = cli
        .run(&["roles", "get", "editors", "-o", "json"])
        .success()
        .json();
    cli.run(&[
        "roles",
        "create",
        "dave",
        "--role",
        editors["_id"].as_str().unwrap(),
    ])
    .success();
    let dave = cli
        .run(&["roles", "get", "dave", "-o", "json"])
        .success()
        .json();
    assert_eq!(dave["role"], serde_json::json!(["editors"]));
}

#[test]
fn update_adds_and_removes_roles_and_permissions() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    cli.run(&["roles", "create", "editors"]).success();
    create_user(
        &cli,
        "erin",
        &["--role", "standard_user", "--perm", "app://store/a"],
    );

    let out = cli
        .run(&[
            "roles",
            "update",
            "erin",
            "--add-role",
            "editors",
            "--remove-role",
            "standard_user",
            "--add-perm",
            "app://store/b",
            "--remove-perm",
            "app://store/a",
            "--realname",
            "Erin E.",
        ])
        .success();
    assert!(out.stdout.contains("Updated user erin"), "{out:?}");
    let erin = cli
        .run(&["roles", "get", "erin", "-o", "json"])
        .success()
        .json();
    assert_eq!(erin["role"], serde_json::json!(["editors"]));
    assert_eq!(erin["perm"], serde_json::json!(["app://store/b"]));
    assert_eq!(erin["realname"], "Erin E.");

    cli.run(&["roles", "update", "erin", "--inactive"])
        .success();
    let erin = cli
        .run(&["roles", "get", "erin", "-o", "json"])
        .success()
        .json();
    assert_eq!(erin["is_active"], false);

    let out = cli
        .run(&["roles", "update", "erin", "--realname", "Erin E."])
        .success();
    assert!(out.stdout.contains("No changes"), "{out:?}");

    cli.run(&["roles", "update", "erin"])
        .failure(2, "nothing to change");
}

#[test]
fn a_stale_etag_is_a_conflict_and_nothing_is_overwritten() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    create_user(&cli, "frank", &[]);
    let read = cli
        .run(&["roles", "get", "frank", "-o", "json"])
        .success()
        .json();
    let stale = read["etag"].as_str().unwrap().to_owned();

    // Someone else changes frank after we read him.
    cli.run(&["roles", "update", "frank", "--realname", "Frank One"])
        .success();

    let out = cli
        .run(&[
            "roles",
            "update",
            "frank",
            "--realname",
            "Frank Two",
            "--etag",
            &stale,
        ])
        .failure(5, "changed since the etag given with --etag was read");
    assert!(out.stderr.contains("nothing was written"), "{out:?}");
    // Running it again would fail the same way: it says how to get the current etag instead.
    assert!(
        out.stderr.contains("core4ctl roles get frank")
            && !out.stderr.contains("run the command again"),
        "{out:?}"
    );
    let frank = cli
        .run(&["roles", "get", "frank", "-o", "json"])
        .success()
        .json();
    assert_eq!(frank["realname"], "Frank One");

    cli.run(&["roles", "delete", "frank", "--yes", "--etag", &stale])
        .failure(5, "fetch the current version");
    cli.run(&["roles", "get", "frank"]).success();
}

#[test]
fn an_unknown_role_is_not_found() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    cli.run(&["roles", "get", "nobody"])
        .failure(4, "role [nobody] not found");
    cli.run(&["roles", "get", "0123456789abcdef01234567"])
        .failure(4, "not found");
    cli.run(&["roles", "create", "gina", "--role", "nobody"])
        .failure(4, "nobody");
    cli.run(&["roles", "delete", "nobody", "--yes"])
        .failure(4, "not found");
    cli.run(&["roles", "update", "nobody", "--realname", "x"])
        .failure(4, "not found");
}

#[test]
fn an_invalid_permission_is_rejected_with_a_hint() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let out = cli
        .run(&["roles", "create", "r1", "--perm", "bla"])
        .failure(2, "invalid permission");
    assert!(out.stderr.contains("bla"), "{out:?}");
    assert!(
        out.stderr.contains("api://"),
        "the hint shows valid forms: {out:?}"
    );
}

#[test]
fn a_taken_name_is_a_conflict() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    cli.run(&["roles", "create", "twins"]).success();
    cli.run(&["roles", "create", "twins"])
        .failure(5, "name or email exists");
}

#[test]
fn delete_asks_for_yes_without_a_terminal() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    cli.run(&["roles", "create", "temp"]).success();
    cli.run(&["roles", "delete", "temp"])
        .failure(2, "pass --yes");
    cli.run(&["roles", "get", "temp"]).success();
    let out = cli.run(&["roles", "delete", "temp", "--yes"]).success();
    assert!(out.stdout.contains("Deleted role temp"), "{out:?}");
    cli.run(&["roles", "get", "temp"]).failure(4, "not found");
}

/// The names in the rows of a `roles list` table (header skipped), in order.
fn table_names(stdout: &str) -> Vec<String> {
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    let at = header
        .iter()
        .position(|c| c.eq_ignore_ascii_case("name"))
        .expect("a name column");
    lines
        .map(|row| {
            row.split_whitespace()
                .nth(at)
                .expect("a name cell")
                .to_string()
        })
        .collect()
}

fn json_names(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

fn teams(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("team{i:02}")).collect()
}

#[test]
fn list_pages_filters_sorts_and_fetches_all() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    for i in 0..12 {
        cli.run(&["roles", "create", &format!("team{i:02}")])
            .success();
    }
    // admin, standard_user and the 12 teams, by name: admin, standard_user, team00 .. team11.
    let mut by_name = vec!["admin".to_string(), "standard_user".to_string()];
    by_name.extend(teams(0..=11));

    let out = cli
        .run(&["roles", "list", "--per-page", "5", "--sort", "name"])
        .success();
    assert_eq!(table_names(&out.stdout), by_name[..5], "{out:?}");
    assert!(out.stderr.contains("page 1 of 3"), "{out:?}");
    let out = cli
        .run(&[
            "roles",
            "list",
            "--per-page",
            "5",
            "--page",
            "3",
            "--sort",
            "name",
        ])
        .success();
    assert_eq!(
        table_names(&out.stdout),
        by_name[10..],
        "the last four: {out:?}"
    );

    let all = cli
        .run(&[
            "roles",
            "list",
            "--all",
            "--per-page",
            "4",
            "--sort",
            "name",
            "-o",
            "json",
        ])
        .success()
        .json();
    assert_eq!(json_names(&all), by_name, "every page, once each, in order");

    let desc = cli
        .run(&[
            "roles", "list", "--sort", "name", "--desc", "-q", "team", "-o", "json",
        ])
        .success()
        .json();
    // The default page is 10: team11 down to team02.
    let mut expected = teams(2..=11);
    expected.reverse();
    assert_eq!(json_names(&desc), expected);

    let one = cli
        .run(&["roles", "list", "--filter", "name=TEAM03", "-o", "json"])
        .success()
        .json();
    assert_eq!(json_names(&one), ["team03"]);
    let none = cli
        .run(&[
            "roles",
            "list",
            "--filter",
            "email=nobody@example.com",
            "-o",
            "json",
        ])
        .success()
        .json();
    assert_eq!(json_names(&none), Vec::<String>::new());
}

#[test]
fn a_deactivated_users_token_is_reported_as_revoked_by_what_can_revoke_it() {
    let server = TestServer::spawn();
    let admin = Cli::new();
    admin.login_admin(&server).success();
    create_user(&admin, "gina", &["--role", "standard_user"]);
    let gina = Cli::new();
    gina.login(&server, "gina", "secret-pw").success();
    gina.run(&["whoami"]).success();

    admin
        .run(&["roles", "update", "gina", "--inactive"])
        .success();
    let out = gina.run(&["whoami"]).failure(3, "revoked");
    assert!(out.stderr.contains("deactivation"), "{out:?}");
    assert!(!out.stderr.contains("(logged out)"), "{out:?}");
}

#[test]
fn a_user_without_a_password_is_created_with_a_warning_saying_how_to_set_one() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let fix = "core4ctl roles update bob --password-prompt";

    let out = cli
        .run(&["roles", "create", "bob", "--email", "bob@example.com"])
        .success();
    assert!(out.stdout.starts_with("Created user bob"), "{out:?}");
    assert!(
        out.stderr.contains("bob has no password and cannot log in") && out.stderr.contains(fix),
        "{out:?}"
    );
    // The warning is true: bob cannot log in.
    cli.login(&server, "bob", "any-password-1")
        .failure(3, "wrong username or password");
    // With a password, or for a role, there is nothing to warn about.
    let out = cli
        .run_with_stdin(
            &[
                "roles",
                "create",
                "carol",
                "--email",
                "carol@example.com",
                "--password-stdin",
            ],
            Some("carol-pw-1\n"),
        )
        .success();
    assert!(out.stderr.is_empty(), "{out:?}");
    let out = cli.run(&["roles", "create", "editors"]).success();
    assert!(out.stderr.is_empty(), "{out:?}");

    // A role given an email becomes a user without a password.
    let out = cli
        .run(&["roles", "update", "editors", "--email", "ed@example.com"])
        .success();
    assert!(out.stdout.contains("Updated user editors"), "{out:?}");
    assert!(
        out.stderr.contains("editors is now a user")
            && out.stderr.contains("no password")
            && out
                .stderr
                .contains("core4ctl roles update editors --password-prompt"),
        "{out:?}"
    );
    // A user's email changing is no news.
    let out = cli
        .run(&["roles", "update", "carol", "--email", "c@example.com"])
        .success();
    assert!(out.stderr.is_empty(), "{out:?}");
}

/// The `roles create --help` example makes an account that can log in and use core4d.
#[test]
fn the_help_example_user_can_log_in_and_read_its_profile() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let help = cli.run(&["roles", "create", "--help"]).success().stdout;
    let example = help
        .split("core4ctl roles create bot ")
        .nth(1)
        .and_then(|rest| rest.split("\n  core4ctl").next())
        .expect("the bot example is in the help");
    let args: Vec<&str> = example.split_whitespace().filter(|a| *a != "\\").collect();
    let mut command = vec!["roles", "create", "bot"];
    command.extend(&args);
    cli.run_with_stdin(&command, Some("bot-password-1\n"))
        .success();
    assert!(help.contains("not even read its own profile"), "{help}");

    let bot = Cli::new();
    bot.login(&server, "bot", "bot-password-1").success();
    bot.run(&["whoami"]).success();

    // Without a role it can log in, but not read its profile: what the help says.
    create_user(&cli, "bare", &[]);
    let bare = Cli::new();
    bare.login(&server, "bare", "secret-pw").success();
    bare.run(&["whoami"]).failure(3, "forbidden");
}

#[test]
fn paging_past_the_end_says_so_and_page_0_is_refused_plainly() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let out = cli.run(&["roles", "list", "--page", "9"]).success();
    assert!(out.stdout.is_empty(), "{out:?}");
    // admin and standard_user.
    assert!(
        out.stderr
            .contains("page 9 is past the end: 2 users and roles match, on 1 page(s) of 10"),
        "{out:?}"
    );
    let out = cli.run(&["roles", "list", "-q", "no-such-thing"]).success();
    assert!(out.stderr.contains("no users or roles match"), "{out:?}");
    let out = cli
        .run(&["roles", "list", "--page", "0"])
        .failure(2, "must be at least 1");
    assert!(!out.stderr.contains("18446744073709551615"), "{out:?}");
    cli.run(&["event", "history", "message", "--page", "0"])
        .failure(2, "must be at least 1");
}

#[test]
fn changing_your_own_password_says_to_log_in_again() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    create_user(&cli, "dave", &["--role", "standard_user"]);
    // Someone else's password: no note.
    let out = cli
        .run_with_stdin(
            &["roles", "update", "dave", "--password-stdin"],
            Some("dave-password-2\n"),
        )
        .success();
    assert!(out.stderr.is_empty(), "{out:?}");

    let out = cli
        .run_with_stdin(
            &["roles", "update", "admin", "--password-stdin"],
            Some("admin-password-2\n"),
        )
        .success();
    assert!(
        out.stderr.contains("ended all your sessions") && out.stderr.contains("core4ctl login"),
        "{out:?}"
    );
    cli.run(&["whoami"]).failure(3, "revoked");
    cli.login(&server, "admin", "admin-password-2").success();
}

#[test]
fn the_search_help_names_every_field_searched() {
    let cli = Cli::new();
    let help = cli.run(&["roles", "list", "--help"]).success().stdout;
    assert!(
        help.contains("name, real name, email and permissions"),
        "{help}"
    );
    let help = cli.run(&["roles", "update", "--help"]).success().stdout;
    let email = help
        .split("--email <EMAIL>")
        .nth(1)
        .expect("--email is listed");
    assert!(
        email
            .trim_start()
            .starts_with("Email; a role given one becomes a user"),
        "{help}"
    );
}
