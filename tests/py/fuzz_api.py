#!/usr/bin/env python3
"""Schemathesis against a real core4d, from the spec core4d serves: all checks, as a `cop` and as
a `standard_user`, then the login and logout operations on their own.

- Run "cop" and "standard_user": every operation but login, logout and the two event streams,
  authenticated with a Bearer header; all phases, the stateful one included (it follows the
  spec's links from a created user to its update and delete). Logout would revoke the run's own
  token; login exchanges any Bearer token, so with the run's header it accepts any body. The
  WebSocket (GET /event) and Server-Sent Events (GET /event/stream) are streams, not request and
  reply, so they cannot be fuzzed as such (tests/api covers them).
- Run "login": login without any header, so only what the request carries counts.
- Run "logout": logout with a token of its own.

All checks run. One is relaxed: core4d enforces rules a JSON schema cannot state (names of one
script and unlike any other name, `password` and `passwd` agreeing, an email needed with a
password), so a schema-valid request may get 400 (`positive_data_acceptance` allows it). Fails
when any run finds a failure (a 5xx, a status or body the spec does not list, ...), when fewer
than MIN_CASES cases ran in all, or when POST /roles or PUT /roles/{id} never got a 200 as the
cop, PUT /profile as the standard_user, or POST /event or GET /event/history in either run. (As a
standard_user, PUT /profile may change the user's own password early in the run, which rightly
ends the run's token: the rest of that run sees 401. The cop run leaves PUT /profile out for
that reason: it must reach PUT /roles.) Prints the counts.

Usage: fuzz_api.py CORE4D_BINARY [--max-examples N]
"""

import argparse
import collections
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from core4d_proc import Core4d  # noqa: E402

MIN_CASES = 1000
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""
PROFILE_PUT_SUMMARY = "Change my real name, email or password"
ID = re.compile(r"/[0-9a-fA-F]{24}(?=/|$)")


def call(core4d, method, path, token=None, body=None):
    req = urllib.request.Request(
        core4d.api(path),
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json"},
    )
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


def login(core4d, username, password):
    return call(core4d, "POST", "/login", body={"username": username, "password": password})[
        "data"
    ]["token"]


def schemathesis(core4d, name, workdir, args, token=None):
    """One `st run`; returns (exit code, cases generated, Counter of (method, route, status))."""
    har = os.path.join(workdir, f"{name}.har")
    config = os.path.join(workdir, "schemathesis.toml")
    cmd = [
        "st", "--config-file", config, "--no-color", "run", core4d.api("/openapi.json"),
        "--url", core4d.api(""), "--checks", "all", "--report-har-path", har,
    ] + args
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    # In the work dir: schemathesis keeps a cache of crashes in its current directory.
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    text = out.stdout + out.stderr
    found = re.search(r"(\d+) generated", text)
    cases = int(found.group(1)) if found else 0
    statuses = collections.Counter()
    if os.path.exists(har):
        with open(har) as f:
            for entry in json.load(f)["log"]["entries"]:
                path = entry["request"]["url"].split("/core4/api/v1", 1)[-1].split("?")[0]
                route = ID.sub("/{id}", path)
                statuses[(entry["request"]["method"], route, entry["response"]["status"])] += 1
    if out.returncode != 0:
        print(text[-8000:], file=sys.stderr)
    return out.returncode, cases, statuses


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("core4d")
    parser.add_argument("--max-examples", type=int, default=40)
    args = parser.parse_args()
    admin_password = secrets.token_urlsafe(12)
    user_password = secrets.token_urlsafe(12)
    n = ["--max-examples", str(args.max_examples)]
    # The WebSocket and the SSE stream are not request and reply: they cannot be fuzzed as such.
    not_auth = [
        "--exclude-operation-id", "event_socket", "--exclude-operation-id", "event_stream",
        "--exclude-operation-id", "login_get", "--exclude-operation-id", "login_post",
        "--exclude-operation-id", "logout_get", "--exclude-operation-id", "logout_post",
    ]
    without_links = ["--phases", "examples,coverage,fuzzing"]
    with Core4d(args.core4d, admin_password) as core4d, tempfile.TemporaryDirectory() as work:
        with open(os.path.join(work, "schemathesis.toml"), "w") as f:
            f.write(CONFIG)
        admin = login(core4d, "admin", admin_password)
        call(core4d, "POST", "/roles", admin, {
            "name": "fuzzer", "email": "fuzzer@example.com", "password": user_password,
            "role": ["standard_user"],
        })
        user = login(core4d, "fuzzer", user_password)
        # standard_user first: the cop run may change that user's password, ending its tokens.
        # The cop's own password change would end the cop run's token part way (and, run before
        # them, leave PUT /roles without a 200): the standard_user run covers PUT /profile.
        own_password = ["--exclude-by", f"/summary == {json.dumps(PROFILE_PUT_SUMMARY)}"]
        runs = [
            ("standard_user", not_auth + n, user),
            ("cop", not_auth + own_password + n, admin),
            ("login", ["--include-path-regex", "^/login$"] + without_links + n, None),
            ("logout", ["--include-path-regex", "^/logout$"] + without_links + n,
             login(core4d, "fuzzer", user_password)),
        ]
        failed = []
        total = 0
        per_run = {}
        for name, run_args, token in runs:
            code, cases, statuses = schemathesis(core4d, name, work, run_args, token)
            total += cases
            per_run[name] = statuses
            print(f"schemathesis {name}: {cases} cases, exit {code}")
            for (method, route, status), count in sorted(statuses.items()):
                print(f"  {method:7} {route:22} {status}: {count}")
            if code != 0:
                failed.append(name)
        problems = [f"schemathesis found failures in the {r} run" for r in failed]
        if total < MIN_CASES:
            problems.append(f"only {total} cases ran, fewer than {MIN_CASES}")
        for runs_, method, route in [
            (["cop"], "POST", "/roles"),
            (["cop"], "PUT", "/roles/{id}"),
            (["standard_user"], "PUT", "/profile"),
            (["cop", "standard_user"], "POST", "/event"),
            (["cop", "standard_user"], "GET", "/event/history"),
        ]:
            if sum(per_run[r][(method, route, 200)] for r in runs_) == 0:
                problems.append(f"{method} {route} never got a 200 ({' or '.join(runs_)})")
        if any(k[:2] == ("PUT", "/profile") for k in per_run["cop"]):
            problems.append("the cop run changed its own profile: has its summary changed?")
        print(f"schemathesis: {total} cases in all")
        for p in problems:
            print(f"FAILED: {p}", file=sys.stderr)
        if problems:
            print("core4d log (end):\n" + "".join(core4d.log[-20:]), file=sys.stderr)
            sys.exit(1)
        print("schemathesis: all checks passed")


if __name__ == "__main__":
    main()
