"""A non-Rust client of core4d's Server-Sent Events, as a script would write one with `requests`
streaming: it reads two published messages, drops the connection, and resumes with
Last-Event-ID, expecting exactly the messages it missed.

    python3 sse_requests.py HOST:PORT ADMIN_PASSWORD

Exits 0 when the stream behaved, 1 with a reason otherwise.
"""

import json
import sys

import requests

HOST, ADMIN_PASSWORD = sys.argv[1], sys.argv[2]
API = "http://%s/core4/api/v1" % HOST


def fail(reason):
    print("FAIL: " + reason)
    sys.exit(1)


def events(resp):
    """Yields (event, id, data) of a text/event-stream response, skipping comments."""
    event, ident, data = None, None, []
    for line in resp.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield event or "message", ident, json.loads("\n".join(data))
            event, ident, data = None, None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "id":
                ident = value
            elif field == "data":
                data.append(value)


token = requests.get("http://%s/core4/api/login?username=admin&password=%s"
                     % (HOST, ADMIN_PASSWORD)).json()["data"]["token"]
auth = {"Authorization": "Bearer " + token}


def publish(text):
    rv = requests.post(API + "/event", headers=auth, json={"channel": "message", "text": text})
    if rv.status_code != 200:
        fail("publish: %s %s" % (rv.status_code, rv.text))
    return rv.json()["data"]["message_id"]


stream = requests.get(API + "/event/stream", params={"channel": "message"}, headers=auth,
                      stream=True, timeout=20)
if stream.headers.get("content-type") != "text/event-stream":
    fail("content type %r" % stream.headers.get("content-type"))
it = events(stream)
kind, _, first = next(it)
if kind != "interest" or first["data"] != ["message"]:
    fail("first event: %r %r" % (kind, first))
ids = [publish("one"), publish("two")]
for want in ids:
    kind, ident, frame = next(it)
    if (kind, ident, frame["_id"]) != ("message", want, want):
        fail("expected %s, got %r %r %r" % (want, kind, ident, frame))
stream.close()

missed = [publish("three"), publish("four")]
stream = requests.get(API + "/event/stream", params={"channel": "message"},
                      headers=dict(auth, **{"Last-Event-ID": ids[-1]}), stream=True, timeout=20)
got = []
for kind, ident, frame in events(stream):
    if kind == "message":
        got.append(ident)
        if len(got) == len(missed):
            break
stream.close()
if got != missed:
    fail("resumed with %r, expected %r" % (got, missed))
print("OK: read %d events and resumed after %s" % (len(ids) + len(got), ids[-1]))
