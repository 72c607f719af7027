"""Starts a real core4d binary for a test script: a free port (it binds port 0 and reports the
port in its "ready" log line), its own data directory with its own embedded PostgreSQL, a
known admin password; stopped with SIGTERM and its files removed afterwards."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading


class Core4d:
    def __init__(self, binary, admin_password, extra_env=None):
        self.binary = binary
        self.admin_password = admin_password
        self.extra_env = extra_env or {}
        self.proc = None
        self.log = []
        self.port = None

    def __enter__(self):
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.mkdtemp(prefix="core4d-script-", dir=base)
        # As root the cluster runs as `postgres`, which must be able to enter the data dir.
        os.chmod(self.dir, 0o755)
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        env.update(
            CORE4_ADMIN_PASSWORD=self.admin_password,
            CORE4_EMBEDDED_FSYNC="false",
            CORE4_LOG_FORMAT="text",
            RUST_LOG="info",
            NO_COLOR="1",
        )
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            [self.binary, "--listen", "127.0.0.1:0", "--data-dir", os.path.join(self.dir, "data")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                if self.port is None and "core4d is ready" in line:
                    m = re.search(r"\bport=(\d+)", line)
                    if m:
                        self.port = int(m.group(1))
                        ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        # A hang guard, not a timing assertion: the first start runs initdb.
        if not ready.wait(120) or self.port is None:
            self.__exit__(None, None, None)
            raise RuntimeError("core4d did not start:\n" + "".join(self.log[-30:]))
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def api(self, path):
        return f"{self.url}/core4/api/v1{path}"
