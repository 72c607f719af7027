"""The seed document, as an existing core4 user runs it: the preparation with `requests`, then two
terminal chat clients that behave like core4's docs/source/example/chat.py (websocket-client's
create_connection, a listener thread that json-decodes every frame and prints the ones with a
`channel` key as "author > data").

    python3 seed_and_chat.py HOST:PORT ADMIN_PASSWORD

Exits 0 when everything the seed document promises happened, 1 with a reason otherwise.
"""

import json
import sys
import threading
import time

from requests import get, post
from websocket import create_connection

HOST, ADMIN_PASSWORD = sys.argv[1], sys.argv[2]


def fail(reason):
    print("FAIL: " + reason)
    sys.exit(1)


# --- preparation, as written in the seed document (only host and admin password differ) --------
login = get("http://%s/core4/api/login?username=admin&password=%s" % (HOST, ADMIN_PASSWORD))
token = login.json()["data"]["token"]
for n in (1, 2):
    rv = post("http://%s/core4/api/v1/roles" % HOST,
              headers={"Authorization": "Bearer " + token},
              json={
                  "name": "user%d" % n,
                  "realname": "Test User %d" % n,
                  "email": "test%d@plan-net.com" % n,
                  "password": "very secret",
                  "role": ["standard_user"]
              })
    if rv.status_code != 200:
        fail("creating user%d: %s %s" % (n, rv.status_code, rv.text))
rv = get("http://%s/core4/api/v1/roles" % HOST, headers={"Authorization": "Bearer " + token})
names = [r["name"] for r in rv.json()["data"]]
if "user1" not in names or "user2" not in names:
    fail("roles list lacks the users: %s" % names)


# --- two chat clients, the way chat.py talks ---------------------------------------------------
class ChatClient:
    def __init__(self, user):
        # chat.py puts the password into the URL as typed, space included.
        login = get("http://%s/core4/api/login?username=%s&password=%s" % (HOST, user, "very secret"))
        if login.status_code != 200:
            fail("%s cannot log in: %s" % (user, login.text))
        self.ws = create_connection("ws://%s/core4/api/v1/event?token=%s" % (HOST, login.json()["data"]["token"]))
        self.printed = []
        self.crash = None
        self.ws.send(json.dumps({"type": "interest", "data": ["message"]}))
        threading.Thread(target=self.listening, daemon=True).start()

    def listening(self):
        try:
            while True:
                data = json.loads(self.ws.recv())   # chat.py dies on any non-JSON frame
                if "channel" in data:
                    self.printed.append("{} > {}".format(data["author"], data["data"]))
        except Exception as exc:  # noqa: BLE001 - a closed socket at the end is fine
            if not isinstance(exc, (OSError,)) and "closed" not in str(exc).lower():
                self.crash = repr(exc)

    def say(self, text):
        self.ws.send(json.dumps({"type": "message", "channel": "message", "text": text}))


alice, bob = ChatClient("user1"), ChatClient("user2")
time.sleep(0.3)  # let both interests land; chat.py does not wait either, but a person types slower
alice.say("hello from user1")
bob.say("hi user1")
# Bad input a user can produce must not kill the listener (every reply stays JSON).
bob.ws.send("this is not json")
bob.ws.send(json.dumps({"type": "message", "channel": "message"}))
bob.say("still here")

expected = ["user1 > hello from user1", "user2 > hi user1", "user2 > still here"]
deadline = time.time() + 10
while time.time() < deadline and not all(line in c.printed for c in (alice, bob) for line in expected):
    time.sleep(0.05)
for name, client in (("user1", alice), ("user2", bob)):
    if client.crash:
        fail("%s's listener crashed like chat.py would: %s" % (name, client.crash))
    missing = [line for line in expected if line not in client.printed]
    if missing:
        fail("%s did not print %s (printed %s)" % (name, missing, client.printed))
    if len(client.printed) != len(set(client.printed)):
        fail("%s printed a message twice: %s" % (name, client.printed))
print("OK: " + "; ".join(alice.printed))
