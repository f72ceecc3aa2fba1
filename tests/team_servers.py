"""Real servers for the team tests: a throwaway PostgreSQL cluster, the MLflow server exactly as
docker-compose.yml declares it (run here without Docker), and a small basic-auth proxy."""

from __future__ import annotations

import base64
import glob
import http.client
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PostgreSQL ------------------------------------------------------------------------------------
def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server binaries (``apt-get install postgresql``), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_unprivileged(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` user (or ``nobody``)."""
    if os.geteuid() != 0:
        return cmd
    user = "postgres" if _user_exists("postgres") else "nobody"
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    return ["su", user, "-s", "/bin/sh", "-c", " ".join(_quote(c) for c in cmd)]


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


class PostgresCluster:
    """``initdb`` in a temp folder, ``pg_ctl start`` on 127.0.0.1 and a free port, password login."""

    def __init__(self, bindir: Path, user: str, password: str):
        self.bindir, self.user, self.password = bindir, user, password
        self.root = Path(tempfile.mkdtemp(prefix="sfz-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            owner = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.root, owner)
        pwfile = self.root / "pw"
        pwfile.write_text(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, owner)
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", user, "--pwfile", str(pwfile),
                   "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"])
        pwfile.unlink()
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                   "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off", "start"])

    def _run(self, cmd: list[str]) -> None:
        res = subprocess.run(_as_unprivileged(cmd), capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {res.stdout[-1500:]}{res.stderr[-1500:]}")

    def create_database(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()

    def stop(self) -> None:
        try:
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# -- the compose file's MLflow command -------------------------------------------------------------
def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (``$$`` stays a literal ``$``)."""
    def one(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        value = env.get(name)
        if op in (":-", "-"):
            return value if value else arg if op == ":-" or value is None else value
        if op in (":?", "?") and not value:
            raise ValueError(f"compose would refuse: {name}: {arg}")
        return value or ""
    return _VAR.sub(one, text).replace("$$", "$")


def compose_mlflow(env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The mlflow service's command and environment as docker compose would run them with ``env``."""
    import yaml

    svc = yaml.safe_load(COMPOSE.read_text())["services"]["mlflow"]
    cmd = [interpolate(str(c), env) for c in svc["command"]]
    environment = {k: interpolate(str(v), env) for k, v in (svc.get("environment") or {}).items()}
    return cmd, environment


def _set_option(cmd: list[str], flag: str, value: str) -> list[str]:
    i = cmd.index(flag)
    return [*cmd[:i + 1], value, *cmd[i + 2:]]


class MlflowServer:
    """The compose file's `mlflow server`, with the container-only parts replaced by this machine's: the
    database host ``postgres`` by the test cluster's 127.0.0.1 port, the bind address and port by
    127.0.0.1 and a free port, ``/mlartifacts`` by a temp folder. Killed and restarted on the same port
    and store by the fault tests."""

    def __init__(self, pg: PostgresCluster, database: str, root: Path, env: dict[str, str]):
        self.root = root
        self.port = free_port()
        cmd, environment = compose_mlflow(env)
        assert cmd[:2] == ["mlflow", "server"], cmd
        cmd = _set_option(cmd, "--host", "127.0.0.1")
        cmd = _set_option(cmd, "--port", str(self.port))
        cmd = _set_option(cmd, "--artifacts-destination", str(root / "mlartifacts"))
        cmd = _set_option(cmd, "--workers", "1")
        store = environment["MLFLOW_BACKEND_STORE_URI"]
        assert "@postgres:5432/" in store, store
        self.store_uri = store.replace("@postgres:5432/", f"@127.0.0.1:{pg.port}/").rsplit("/", 1)[0] + f"/{database}"
        self.argv = [sys.executable, "-m", "mlflow", *cmd[1:]]
        self.env = {**os.environ, **environment, "MLFLOW_BACKEND_STORE_URI": self.store_uri}
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.proc: subprocess.Popen | None = None
        self.uri = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self, timeout: float = 180) -> None:
        log = open(self.root / "mlflow-server.log", "a")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mlflow server exited: " + (self.root / "mlflow-server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer /health within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the server and every worker it started (no clean shutdown)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


# -- a reverse proxy that requires basic auth ------------------------------------------------------
class BasicAuthProxy:
    """Forwards every request to ``upstream`` when it carries ``user:password`` as basic auth (any request
    when ``user`` is None); 401 otherwise. Counts what it refused and passed, keeps every request line."""

    def __init__(self, upstream_port: int, user: str | None, password: str = ""):
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user else None
        proxy = self
        self.refused = 0
        self.passed = 0
        self.down = False
        self.request_lines: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                if proxy.down:  # the line is cut: drop the connection without an answer
                    self.close_connection = True
                    return
                proxy.request_lines.append(self.requestline)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if expected and self.headers.get("Authorization") != expected:
                    proxy.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                proxy.passed += 1
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host",
                                                                                     "connection")}
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def cut(self) -> None:
        """From now on every request, on a new or a kept-alive connection, is dropped unanswered."""
        self.down = True

    def close(self) -> None:
        self.down = True
        self.server.shutdown()
        self.server.server_close()
