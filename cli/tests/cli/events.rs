use std::time::Duration;

use crate::helpers::{ADMIN, ADMIN_PASSWORD, Cli, LossyRelay, Running, TestServer, WAIT};

fn ids(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .map(|l| {
            l.trim()
                .parse()
                .unwrap_or_else(|_| panic!("not an id: {l:?}"))
        })
        .collect()
}

/// The text after `author > ` on a tail line.
fn text(line: &str) -> &str {
    line.split_once(" > ")
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("not a message line: {line:?}"))
}

fn marker_number(line: &str) -> usize {
    let (_, rest) = line
        .rsplit_once("ready-")
        .unwrap_or_else(|| panic!("not a marker: {line}"));
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// Waits until a started tail follows `channel`: sends numbered markers until one shows up
/// (a marker sent before the tail took its starting point never does), then reads the markers
/// sent after it, so the next line the test reads is its own.
fn synced(tail: &mut Running, sender: &Cli, channel: &str) {
    let mut sent = 0;
    let seen = loop {
        sent += 1;
        assert!(sent <= 40, "the tail never showed a marker");
        sender
            .run(&["event", "send", channel, &format!("ready-{sent}")])
            .success();
        if let Some(line) = tail.line_within(Duration::from_millis(400)) {
            break marker_number(&line);
        }
    };
    // The markers sent after it arrive in order.
    for n in seen + 1..=sent {
        let line = tail.line(WAIT);
        assert!(line.contains(&format!("ready-{n}")), "{line}");
    }
}

#[test]
fn send_prints_the_message_id() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let first = ids(&cli
        .run(&["event", "send", "message", "hello"])
        .success()
        .stdout);
    let second = ids(&cli
        .run(&["event", "send", "message", "again"])
        .success()
        .stdout);
    assert_eq!(first.len(), 1);
    assert!(second[0] > first[0]);

    let out = cli
        .run(&[
            "event",
            "send",
            "message",
            "{\"n\": 1}",
            "--json",
            "-o",
            "json",
        ])
        .success();
    let ack: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(
        ack["message_id"].as_str().is_some() && ack["channel"] == "message",
        "{ack}"
    );
}

#[test]
fn send_dash_sends_each_line_of_stdin() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let out = cli
        .run_with_stdin(
            &["event", "send", "message", "-"],
            Some("one\ntwo\n\nthree\n"),
        )
        .success();
    let sent = ids(&out.stdout);
    assert_eq!(sent.len(), 3, "empty lines are skipped: {out:?}");
    assert!(sent.windows(2).all(|w| w[0] < w[1]), "{sent:?}");

    let history = cli
        .run(&["event", "history", "message", "-o", "json"])
        .success()
        .json();
    let texts: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["three", "two", "one"], "newest first");
}

#[test]
fn tail_receives_what_send_sends_from_another_process() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let mut tail = cli.spawn(&["event", "tail", "message"], false);
    synced(&mut tail, &cli, "message");

    cli.run(&["event", "send", "message", "hello from afar"])
        .success();
    let line = tail.line(WAIT);
    assert!(line.ends_with(" admin > hello from afar"), "{line}");
    let (hh, mm, ss) = (&line[0..2], &line[3..5], &line[6..8]);
    assert!(
        hh.parse::<u8>().is_ok() && mm.parse::<u8>().is_ok() && ss.parse::<u8>().is_ok(),
        "{line}"
    );

    let (code, stderr) = tail.interrupt();
    assert_eq!(code, 0, "Ctrl-C exits 0: {stderr}");
}

#[test]
fn tail_json_prints_one_object_per_line() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let mut tail = cli.spawn(&["event", "tail", "message", "system", "-o", "json"], false);
    synced(&mut tail, &cli, "message");
    cli.run(&["event", "send", "message", "first"]).success();
    let event: serde_json::Value = serde_json::from_str(&tail.line(WAIT)).unwrap();
    for key in ["_id", "created", "name", "author", "channel", "data"] {
        assert!(event.get(key).is_some(), "{key} missing: {event}");
    }
    assert_eq!(event["data"], "first");
    assert_eq!(event["author"], "admin");
    assert_eq!(event["channel"], "message");
}

#[test]
fn tail_last_and_since_replay_stored_messages() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let sent = ids(&cli
        .run_with_stdin(&["event", "send", "message", "-"], Some("m1\nm2\nm3\nm4\n"))
        .success()
        .stdout);

    let mut tail = cli.spawn(&["event", "tail", "message", "--last", "2"], false);
    assert_eq!(text(&tail.line(WAIT)), "m3");
    assert_eq!(text(&tail.line(WAIT)), "m4");
    cli.run(&["event", "send", "message", "m5"]).success();
    assert_eq!(text(&tail.line(WAIT)), "m5");
    drop(tail);

    let since = sent[1].to_string();
    let mut tail = cli.spawn(&["event", "tail", "message", "--since", &since], false);
    let replayed: Vec<String> = (0..3).map(|_| text(&tail.line(WAIT)).to_owned()).collect();
    assert_eq!(replayed, ["m3", "m4", "m5"]);
    assert!(
        tail.lines_within(Duration::from_millis(500)).is_empty(),
        "nothing twice"
    );
}

/// The "after" messages are sent through a second core4d on the same database while the one
/// the tail follows is down, so the tail can only get them by catching up from the stored
/// messages when it reconnects, never live.
#[test]
fn tail_resumes_across_a_core4d_restart_without_loss_or_duplicates() {
    let mut server = TestServer::spawn();
    let other = server.another_instance();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let via_other = Cli::new();
    via_other.login_admin(&other).success();
    let mut tail = cli.spawn(&["event", "tail", "message"], false);
    synced(&mut tail, &cli, "message");

    cli.run(&["event", "send", "message", "before-1"]).success();
    cli.run(&["event", "send", "message", "before-2"]).success();
    assert_eq!(text(&tail.line(WAIT)), "before-1");
    assert_eq!(text(&tail.line(WAIT)), "before-2");

    server.stop();
    for i in 1..=3 {
        via_other
            .run(&["event", "send", "message", &format!("after-{i}")])
            .success();
    }
    server.start();
    let caught_up: Vec<String> = (0..3).map(|_| text(&tail.line(WAIT)).to_owned()).collect();
    assert_eq!(caught_up, ["after-1", "after-2", "after-3"]);

    cli.run(&["event", "send", "message", "live"]).success();
    assert_eq!(text(&tail.line(WAIT)), "live");
    assert!(
        tail.lines_within(Duration::from_millis(700)).is_empty(),
        "nothing printed twice"
    );
    let (code, stderr) = tail.interrupt();
    assert_eq!(code, 0);
    assert!(
        stderr.contains("reconnecting"),
        "the reconnect is reported: {stderr}"
    );
}

/// The texts of `channel`'s stored messages, oldest first.
fn stored_texts(cli: &Cli, channel: &str) -> Vec<String> {
    let history = cli
        .run(&[
            "event",
            "history",
            channel,
            "--per-page",
            "100",
            "-o",
            "json",
        ])
        .success()
        .json();
    let mut texts: Vec<String> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_str().unwrap().to_owned())
        .collect();
    texts.reverse();
    texts
}

/// The ack of a stored line is lost with the connection: `send -` reconnects and sends the line
/// again with its key, and core4d acknowledges the stored message instead of storing it twice.
#[test]
fn send_dash_resends_a_line_whose_ack_was_lost_and_it_is_stored_once() {
    let server = TestServer::spawn();
    let relay = LossyRelay::to(&server);
    let cli = Cli::new();
    cli.login_at(&relay.url, ADMIN, ADMIN_PASSWORD).success();
    let direct = Cli::new();
    direct.login_admin(&server).success();

    let mut send = cli.spawn(&["event", "send", "message", "-"], true);
    send.write_line("first");
    let first_id = send.line(WAIT);
    relay.lose_replies();
    send.write_line("second");
    // core4d stores it, but its ack never reaches core4ctl.
    let guard = std::time::Instant::now() + WAIT;
    while stored_texts(&direct, "message") != ["first", "second"] {
        assert!(
            std::time::Instant::now() < guard,
            "`second` was never stored"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        send.line_within(Duration::from_millis(300)).is_none(),
        "no ack can have arrived"
    );
    relay.cut_and_heal();
    let second_id = send.line(WAIT);
    send.write_line("third");
    let third_id = send.line(WAIT);
    let (code, stderr) = send.wait();
    assert_eq!(code, 0, "{stderr}");

    assert_eq!(
        stored_texts(&direct, "message"),
        ["first", "second", "third"]
    );
    let history = direct
        .run(&["event", "history", "message", "-o", "json"])
        .success()
        .json();
    let stored_ids: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| e["_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        stored_ids,
        [first_id.trim(), second_id.trim(), third_id.trim()],
        "the resent line is acked with the id it was stored under"
    );
}

#[test]
fn history_pages_newest_first() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let lines: String = (1..=7).map(|i| format!("h{i}\n")).collect();
    cli.run_with_stdin(&["event", "send", "news", "-"], Some(&lines))
        .success();

    let out = cli
        .run(&["event", "history", "news", "--per-page", "3"])
        .success();
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert!(
        rows[0].contains("ID") && rows[0].contains("AUTHOR") && rows[0].contains("TEXT"),
        "{out:?}"
    );
    assert!(
        rows[1].ends_with("h7") && rows[3].ends_with("h5"),
        "{out:?}"
    );
    assert!(out.stderr.contains("page 1 of 3"), "{out:?}");

    let page3 = cli
        .run(&[
            "event",
            "history",
            "news",
            "--per-page",
            "3",
            "--page",
            "3",
            "-o",
            "json",
        ])
        .success()
        .json();
    let texts: Vec<&str> = page3
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["h1"]);
}

#[test]
fn chat_sends_typed_lines_and_prints_others_messages() {
    let server = TestServer::spawn();
    let admin = Cli::new();
    admin.login_admin(&server).success();
    admin
        .run_with_stdin(
            &[
                "roles",
                "create",
                "zoe",
                "--email",
                "zoe@example.com",
                "--password-stdin",
                "--role",
                "standard_user",
            ],
            Some("zoe-pw-123\n"),
        )
        .success();
    let zoe = Cli::new();
    zoe.login(&server, "zoe", "zoe-pw-123").success();

    let mut tail = admin.spawn(&["event", "tail", "message"], false);
    synced(&mut tail, &admin, "message");
    let mut chat = zoe.spawn(&["event", "chat"], true);
    chat.write_line("hi from zoe");
    assert!(tail.line(WAIT).ends_with(" zoe > hi from zoe"));

    admin.run(&["event", "send", "message", "hi zoe"]).success();
    let line = chat.line(WAIT);
    assert!(line.ends_with(" admin > hi zoe"), "{line}");
    assert!(
        chat.lines_within(Duration::from_millis(300)).is_empty(),
        "own lines are not echoed"
    );

    let (code, stderr) = chat.wait(); // stdin closed: like Ctrl-D
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn hostile_message_text_cannot_reach_the_terminal_raw() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let mut tail = cli.spawn(&["event", "tail", "message"], false);
    synced(&mut tail, &cli, "message");
    cli.run(&[
        "event",
        "send",
        "message",
        "\x1b]0;owned\x07\x1b[2Jboo\u{202e}",
    ])
    .success();
    let line = tail.line(WAIT);
    assert!(
        !line.contains('\x1b') && !line.contains('\x07') && !line.contains('\u{202e}'),
        "{line:?}"
    );
    assert!(
        line.ends_with("\\u{1b}]0;owned\\u{7}\\u{1b}[2Jboo\\u{202e}"),
        "{line:?}"
    );

    let history = cli
        .run(&["event", "history", "message", "-o", "json"])
        .success();
    assert!(!history.stdout.contains('\x1b') && !history.stdout.contains('\u{202e}'));
    assert_eq!(
        history.json()[0]["data"],
        "\x1b]0;owned\x07\x1b[2Jboo\u{202e}",
        "JSON keeps the value"
    );
}

#[test]
fn send_dash_waits_out_the_rate_limit_instead_of_dropping_lines() {
    let server = TestServer::spawn_with(|s| {
        s.events.messages_per_second = 10;
        s.events.burst = 3;
    });
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let lines: String = (1..=15).map(|i| format!("r{i}\n")).collect();
    let out = cli
        .run_with_stdin(&["event", "send", "message", "-"], Some(&lines))
        .success();
    assert_eq!(ids(&out.stdout).len(), 15, "{out:?}");
    let history = cli
        .run(&[
            "event",
            "history",
            "message",
            "--per-page",
            "100",
            "-o",
            "json",
        ])
        .success()
        .json();
    assert_eq!(history.as_array().unwrap().len(), 15);
}

#[test]
fn channels_without_permission_exit_3_with_a_hint() {
    let server = TestServer::spawn();
    let admin = Cli::new();
    admin.login_admin(&server).success();
    admin
        .run_with_stdin(
            &[
                "roles",
                "create",
                "yuri",
                "--email",
                "yuri@example.com",
                "--password-stdin",
                "--role",
                "standard_user",
            ],
            Some("yuri-pw-123\n"),
        )
        .success();
    let yuri = Cli::new();
    yuri.login(&server, "yuri", "yuri-pw-123").success();
    yuri.run(&["event", "send", "message", "allowed"]).success();
    yuri.run(&["event", "send", "secret", "not allowed"])
        .failure(3, "event://secret/w");
    yuri.run(&["event", "tail", "secret"])
        .failure(3, "forbidden");
}

#[test]
fn tail_renews_its_token_before_the_socket_would_expire() {
    let server = TestServer::spawn_with(|s| {
        s.token_expiration = 4;
        s.token_refresh = 1;
    });
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let mut tail = cli.spawn(&["event", "tail", "message"], false);
    synced(&mut tail, &cli, "message");
    // The token the tail started with expires after 4 s; the tail saves each refreshed one.
    let first = cli.saved_token(&server).expect("a saved token");
    cli.wait_for_saved_token_other_than(&server, &first);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        profile_status(&server, &first),
        401,
        "the first token has expired by now"
    );

    let sender = Cli::new();
    sender.login_admin(&server).success();
    sender
        .run(&["event", "send", "message", "still here"])
        .success();
    assert_eq!(text(&tail.line(WAIT)), "still here");
    let (code, stderr) = tail.interrupt();
    assert_eq!(code, 0);
    assert!(
        !stderr.contains("reconnecting"),
        "the socket stayed open: {stderr}"
    );
}

#[test]
fn a_tail_that_falls_behind_fills_the_gap_from_history_in_order() {
    let server = TestServer::spawn_with(|s| {
        s.events.outbound_queue = 4;
        s.events.messages_per_second = 100_000;
        s.events.burst = 100_000;
    });
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let start = ids(&cli
        .run(&["event", "send", "message", "start"])
        .success()
        .stdout)[0];

    // Nobody reads this tail's output for now: its pipe, then its socket, fill up.
    let since = start.to_string();
    let (mut tail, go) = cli.spawn_paused(&["event", "tail", "message", "--since", &since]);
    let filler = "x".repeat(8000);
    let count = 600;
    let lines: String = (1..=count).map(|i| format!("{i:04} {filler}\n")).collect();
    std::thread::sleep(Duration::from_millis(500));
    cli.run_with_stdin(&["event", "send", "message", "-"], Some(&lines))
        .success();

    go.send(()).unwrap();
    for i in 1..=count {
        let line = tail.line(WAIT);
        let number: usize = text(&line)[..4].parse().unwrap();
        assert_eq!(number, i, "in order, none lost or repeated");
    }
    assert!(tail.lines_within(Duration::from_millis(500)).is_empty());
    let (code, stderr) = tail.interrupt();
    assert_eq!(code, 0);
    assert!(
        stderr.contains("came from history"),
        "a gap happened and was filled: {stderr}"
    );
}

#[test]
fn send_dash_survives_stdin_quieter_than_the_ping_timeout() {
    let server = TestServer::spawn_with(|s| s.events.ping_interval_secs = 1);
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let mut send = cli.spawn(&["event", "send", "message", "-"], true);
    send.write_line("before the pause");
    let first = send.line(WAIT);
    std::thread::sleep(Duration::from_millis(3500));
    send.write_line("after the pause");
    let second = send.line(WAIT);
    let (code, stderr) = send.wait();
    assert_eq!(code, 0, "{stderr}");
    let sent = ids(&format!("{first}\n{second}\n"));
    assert_eq!(sent.len(), 2, "{first:?} {second:?}");
    let history = cli
        .run(&["event", "history", "message", "-o", "json"])
        .success()
        .json();
    let texts: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["after the pause", "before the pause"]);
}

#[test]
fn tail_waits_out_the_per_user_socket_limit_instead_of_exiting() {
    let server = TestServer::spawn_with(|s| s.events.max_connections_per_user = 1);
    let cli = Cli::new();
    cli.login_admin(&server).success();
    cli.run(&["event", "send", "message", "stored"]).success();
    let first = cli.spawn(&["event", "tail", "message"], false);
    std::thread::sleep(Duration::from_millis(1500));
    let mut second = cli.spawn(&["event", "tail", "message", "--since", "0"], false);
    assert!(second.lines_within(Duration::from_millis(1500)).is_empty());
    assert!(
        second.child.try_wait().unwrap().is_none(),
        "the second tail gave up on the socket limit"
    );
    drop(first);
    let line = second.line(WAIT);
    assert!(line.ends_with("> stored"), "{line}");
}

#[test]
fn a_gap_is_filled_only_from_channels_the_server_granted() {
    let server = TestServer::spawn_with(|s| {
        s.events.outbound_queue = 4;
        s.events.messages_per_second = 100_000;
        s.events.burst = 100_000;
    });
    let admin = Cli::new();
    admin.login_admin(&server).success();
    admin
        .run_with_stdin(
            &[
                "roles",
                "create",
                "yuri",
                "--email",
                "yuri@example.com",
                "--password-stdin",
                "--role",
                "standard_user",
            ],
            Some("yuri-pw-123\n"),
        )
        .success();
    let yuri = Cli::new();
    yuri.login(&server, "yuri", "yuri-pw-123").success();
    let start = ids(&admin
        .run(&["event", "send", "message", "start"])
        .success()
        .stdout)[0];

    let since = start.to_string();
    let (mut tail, go) =
        yuri.spawn_paused(&["event", "tail", "message", "secret", "--since", &since]);
    let filler = "x".repeat(8000);
    let count = 600;
    let lines: String = (1..=count).map(|i| format!("{i:04} {filler}\n")).collect();
    std::thread::sleep(Duration::from_millis(500));
    admin
        .run_with_stdin(&["event", "send", "message", "-"], Some(&lines))
        .success();

    go.send(()).unwrap();
    for i in 1..=count {
        let line = tail.line(WAIT);
        let number: usize = text(&line)[..4].parse().unwrap();
        assert_eq!(number, i, "in order, none lost or repeated");
    }
    let (code, stderr) = tail.interrupt();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("came from history"), "{stderr}");
}

#[test]
fn tail_exits_1_when_its_output_cannot_be_written() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut tail = cli
        .command(&["event", "tail", "message"])
        .stdout(full)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = tail.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = tail.kill();
            let _ = tail.wait();
            panic!("the tail kept running with nowhere to write");
        }
        cli.run(&["event", "send", "message", "hello"]).success();
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(tail.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("I/O error"), "{stderr}");
    assert!(!stderr.contains("reconnecting"), "{stderr}");
}

#[test]
fn send_dash_carries_on_past_invalid_utf8() {
    use std::io::Write;
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let mut send = cli
        .command(&["event", "send", "message", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = send.stdin.take().unwrap();
    stdin.write_all(b"bad \xff byte\nnext line\n").unwrap();
    drop(stdin);
    let out = send.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ids(&stdout).len(), 2, "{stdout}");
    let history = cli
        .run(&["event", "history", "message", "-o", "json"])
        .success()
        .json();
    assert_eq!(history[0]["data"], "next line");
    assert_eq!(history[1]["data"], "bad \u{fffd} byte");
}

/// The status of `GET /profile` with this token.
fn profile_status(server: &TestServer, token: &str) -> u16 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/core4/api/v1/profile", server.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("core4d answers")
            .status()
            .as_u16()
    })
}

#[test]
fn chat_saves_refreshed_tokens_and_outlives_the_first_one() {
    let server = TestServer::spawn_with(|s| {
        s.token_expiration = 4;
        s.token_refresh = 1;
    });
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let first = cli.saved_token(&server).expect("a saved token");
    let mut chat = cli.spawn(&["chat"], true);
    cli.wait_for_saved_token_other_than(&server, &first);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        profile_status(&server, &first),
        401,
        "the first token has expired"
    );

    // Still connected and allowed to write: what it sends arrives.
    let reader = Cli::new();
    reader.login_admin(&server).success();
    let mut tail = reader.spawn(&["event", "tail", "message"], false);
    synced(&mut tail, &reader, "message");
    chat.write_line("typed after the first token expired");
    assert_eq!(
        text(&tail.line(WAIT)),
        "typed after the first token expired"
    );
    let (code, stderr) = chat.wait();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stderr.contains("reconnecting"),
        "the socket stayed open: {stderr}"
    );
}

/// Retention deleted the oldest messages: stats say how many are left, history and a resuming
/// tail say on stderr that older messages are gone, and the tail prints exactly what is kept.
#[test]
fn retention_shows_in_stats_history_and_tail() {
    let server = TestServer::spawn_with(|s| {
        s.events.retention = vec![core4d::settings::RetentionRule {
            channel: "news*".into(),
            max_count: Some(3),
            max_age_secs: None,
        }];
        s.events.retention_interval_secs = 1;
    });
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let lines: String = (1..=7).map(|i| format!("n{i}\n")).collect();
    let sent = ids(&cli
        .run_with_stdin(&["event", "send", "news", "-"], Some(&lines))
        .success()
        .stdout);
    // Retention runs every second: wait (with a hang guard) until it pruned.
    let deadline = std::time::Instant::now() + WAIT;
    let stats = loop {
        let stats = cli.run(&["event", "stats", "-o", "json"]).success().json();
        if stats[0]["count"] == 3 {
            break stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never pruned: {stats}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stats[0]["channel"], "news");
    assert_eq!(stats[0]["oldest"], sent[4].to_string());
    assert_eq!(stats[0]["pruned_through"], sent[3].to_string());
    let table = cli.run(&["event", "stats"]).success();
    assert!(table.stdout.contains("PRUNED THROUGH"), "{table:?}");
    assert!(table.stdout.contains(&sent[6].to_string()), "{table:?}");

    let history = cli.run(&["event", "history", "news"]).success();
    let gone = format!("before {} are no longer stored", sent[4]);
    assert!(history.stderr.contains(&gone), "{history:?}");
    assert!(
        history.stdout.contains("n5") && !history.stdout.contains("n4"),
        "{history:?}"
    );

    let mut tail = cli.spawn(&["event", "tail", "news", "--since", "0"], false);
    let replayed: Vec<String> = (0..3).map(|_| text(&tail.line(WAIT)).to_owned()).collect();
    assert_eq!(replayed, ["n5", "n6", "n7"]);
    let (code, stderr) = tail.interrupt();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&gone), "{stderr}");
}

#[test]
fn chat_waits_out_the_rate_limit_and_keeps_the_lines_in_order() {
    let server = TestServer::spawn_with(|s| {
        s.events.messages_per_second = 10;
        s.events.burst = 3;
    });
    let cli = Cli::new();
    cli.login_admin(&server).success();
    let mut chat = cli.spawn(&["chat"], true);
    for i in 1..=12 {
        chat.write_line(&format!("c{i}"));
    }
    let (code, stderr) = chat.wait();
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("rate limit"), "{stderr}");
    let texts = stored_texts(&cli, "message");
    let expected: Vec<String> = (1..=12).map(|i| format!("c{i}")).collect();
    assert_eq!(texts, expected, "every line once, in input order");
}

#[test]
fn tail_since_beyond_the_newest_id_prints_new_messages() {
    let server = TestServer::spawn();
    let cli = Cli::new();
    cli.login_admin(&server).success();
    cli.run(&["event", "send", "message", "old"]).success();
    let mut tail = cli.spawn(&["event", "tail", "message", "--since", "4711"], false);
    synced(&mut tail, &cli, "message");
    cli.run(&["event", "send", "message", "new"]).success();
    assert_eq!(text(&tail.line(WAIT)), "new");
}

#[test]
fn chat_on_a_read_only_channel_warns_once_at_the_start_and_sends_nothing() {
    let server = TestServer::spawn();
    let admin = Cli::new();
    admin.login_admin(&server).success();
    admin
        .run_with_stdin(
            &[
                "roles",
                "create",
                "rob",
                "--email",
                "rob@example.com",
                "--password-stdin",
                "--role",
                "standard_user",
                "--perm",
                "event://announce/r",
            ],
            Some("rob-pw-123\n"),
        )
        .success();
    let rob = Cli::new();
    rob.login(&server, "rob", "rob-pw-123").success();

    let mut chat = rob.spawn(&["event", "chat", "announce"], true);
    synced(&mut chat, &admin, "announce");
    chat.write_line("rob was here");
    chat.write_line("and here");
    admin.run(&["event", "send", "announce", "after"]).success();
    let line = chat.line(WAIT);
    assert!(line.ends_with(" admin > after"), "{line}");
    let (code, stderr) = chat.wait();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.starts_with("warning: your account may not send to announce"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "one warning, no refusal per line: {stderr}"
    );
    let stored = admin
        .run(&["event", "history", "announce", "-o", "json"])
        .success()
        .json();
    assert!(
        stored
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["author"] == "admin"),
        "{stored}"
    );
}
