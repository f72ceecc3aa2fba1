"""Credentials never leak: not printed, logged, stored, put on a child's command line or sent to another host.

Real pieces where they are cheap: HTTP servers on 127.0.0.1 (a redirecting /health), the CLI in a
subprocess against a closed port, MLflow's own command-line parser for what ``signflow-zoo ui`` hands its child.
"""

from __future__ import annotations

import base64
import http.server
import os
import socket
import subprocess
import sys
import threading
import urllib.parse

import pytest

from signflow_zoo.cli.commands import main
from signflow_zoo.common.errors import TrackingError
from signflow_zoo.results import store

PASSWORD = "p@ss:w0rd/X99"  # @, : and / in it: the hard cases
QUOTED = urllib.parse.quote(PASSWORD, safe="")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _use_uri(monkeypatch, uri: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # mlflow.set_tracking_uri() elsewhere in the session would win over the environment variable
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None, raising=False)
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)


# -- one redaction --------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, shown", [
    ("http://alice:p@ssw0rdX99@host:5000/x", "http://alice:***@host:5000/x"),  # @ in the password
    ("https://alice:a@b@c@host/", "https://alice:***@host/"),  # up to the last @
    ("http://bob:p%40ss@host:5000/x", "http://bob:***@host:5000/x"),  # percent-encoded
    ("postgresql://mlflow:s3cret@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    ("postgresql+psycopg2://u:pa/ss@db/m", "postgresql+psycopg2://u:***@db/m"),  # / unencoded: SQLAlchemy takes it
    ("mysql://u:p@ss:w@rd@db/x?y=1", "mysql://u:***@db/x?y=1"),
    ("http://alice@example.com:pw1@host", "http://alice@example.com:***@host"),  # a user name with @
    ("http://:pw1@host", "http://:***@host"),
    ("failed: https://bob:hunter22@h/api and postgresql://u:pw123@db:5432/m (retry)",
     "failed: https://bob:***@h/api and postgresql://u:***@db:5432/m (retry)"),
    ("http://a:pw1@host/?next=http://c:pw2@e", "http://a:***@host/?next=http://c:***@e"),
    # no password: unchanged
    ("http://host:5000/users/a@b", "http://host:5000/users/a@b"),
    ("http://user@host:5000/a@b", "http://user@host:5000/a@b"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://[::1]:5000/a@b", "http://[::1]:5000/a@b"), ("http://u:pw1@[::1]:5000/", "http://u:***@[::1]:5000/"),
    ("models:/signflow-zoo-tiny@latest-trained", "models:/signflow-zoo-tiny@latest-trained"),
])
def test_redact_hides_the_whole_password_of_any_scheme(given, shown, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert store.redact(given) == shown
    assert store.redact_uri(given) == shown


def test_split_credentials_takes_the_userinfo_up_to_the_last_at():
    assert store.split_credentials(f"http://alice:{PASSWORD}@127.0.0.1:5000/x") == \
        ("http://127.0.0.1:5000/x", "alice", PASSWORD)
    assert store.split_credentials(f"https://alice:{QUOTED}@h") == ("https://h", "alice", PASSWORD)
    assert store.split_credentials("http://bob:p%40ss@host:5000/x") == ("http://host:5000/x", "bob", "p@ss")
    assert store.split_credentials("http://tok@h/x") == ("http://h/x", "tok", None)
    # a database URI keeps its credentials (the driver reads them from the URI)
    assert store.split_credentials("postgresql://u:pw@db/m") == ("postgresql://u:pw@db/m", None, None)
    assert store.parse_credentials("postgresql://u:p@ss@db/m") == ("postgresql://db/m", "u", "p@ss")


def test_the_tracking_password_is_redacted_wherever_it_appears(monkeypatch):
    _use_uri(monkeypatch, f"http://alice:{QUOTED}@127.0.0.1:9")
    text = store.redact(f"error talking to 127.0.0.1 with {PASSWORD!r} / {QUOTED}")
    assert PASSWORD not in text and QUOTED not in text and text.count("***") == 2
    assert PASSWORD not in store.short_error(RuntimeError(f"auth failed for {PASSWORD}\nmore"))


# -- the /health probe ------------------------------------------------------------------------------------


class _Server:
    """An HTTP server on 127.0.0.1 that answers GET with ``answer(path) -> (status, headers)`` and keeps every
    request's path and Authorization header."""

    def __init__(self, answer):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                seen.append((self.path, self.headers.get("Authorization")))
                status, headers = answer(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made = []

    def make(answer):
        made.append(_Server(answer))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_a_redirect_to_another_host_gets_no_credentials(servers, monkeypatch):
    _use_uri(monkeypatch, "sqlite:///x.db")
    other = servers(lambda path: (200, {}))
    first = servers(lambda path: (302, {"Location": f"http://localhost:{other.port}/health"}))
    store.check_reachable(f"http://alice:{QUOTED}@127.0.0.1:{first.port}")
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert first.seen == [("/health", expected)]  # the server named in the URI gets the credentials
    assert other.seen == [("/health", None)]  # the one it redirects to does not
    # the same with MLflow's own variables instead of credentials in the URI, and with a port change only
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    same_host = servers(lambda path: (307, {"Location": f"http://127.0.0.1:{other.port}/health"}))
    store.check_reachable(f"http://127.0.0.1:{same_host.port}")
    assert same_host.seen == [("/health", expected)] and other.seen[-1] == ("/health", None)


def test_a_redirect_within_the_server_keeps_the_credentials(servers, monkeypatch):
    _use_uri(monkeypatch, "sqlite:///x.db")
    srv = servers(lambda path: (301, {"Location": "/health/"}) if path == "/health" else (200, {}))
    store.check_reachable(f"http://bob:{QUOTED}@127.0.0.1:{srv.port}")
    expected = "Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
    assert srv.seen == [("/health", expected), ("/health/", expected)]


def test_an_unreachable_server_error_names_no_password(monkeypatch):
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{_closed_port()}"
    _use_uri(monkeypatch, uri)
    with pytest.raises(TrackingError) as err:
        store.check_reachable(uri)
    assert "alice:***@127.0.0.1" in str(err.value) and "w0rd" not in str(err.value)


# -- what the commands print and store --------------------------------------------------------------------


def test_doctor_with_a_dead_server_prints_no_password(tmp_path):
    port = _closed_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://alice:{PASSWORD}@127.0.0.1:{port}/"}
    done = subprocess.run([sys.executable, "-m", "signflow_zoo.cli", "doctor"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert f"tracking store: http://alice:***@127.0.0.1:{port}/" in out, out
    for secret in (PASSWORD, "ss:w0rd", "w0rd/X99", QUOTED):
        assert secret not in out


def test_report_and_tracker_show_the_uri_redacted(monkeypatch, capsys):
    from signflow_zoo.results.tracking import Tracker

    port = _closed_port()
    _use_uri(monkeypatch, f"http://alice:{PASSWORD}@127.0.0.1:{port}")
    t = Tracker("signflow-zoo", quiet=True)
    assert not t.active
    assert t.uri == f"http://alice:***@127.0.0.1:{port}"  # what the bench log and the result file's tracking.uri hold
    assert "w0rd" not in t.reason and "***" in t.reason
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert f"alice:***@127.0.0.1:{port}" in err and "w0rd" not in err and "ss:" not in err


def test_ui_hands_the_store_to_its_child_in_the_environment(monkeypatch, capsys):
    uri = "postgresql://mlflow:s3cret-pw@db.example:5432/mlflow"
    _use_uri(monkeypatch, uri)
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: calls.append((cmd, kw)) or 0)
    assert main(["ui", "--port", "5055"]) == 0
    ((cmd, kw),) = calls
    assert "s3cret-pw" not in " ".join(cmd) and not any("postgresql" in a for a in cmd)  # nothing for ps to show
    assert cmd[1:4] == ["-m", "mlflow", "ui"] and cmd == store.ui_command("127.0.0.1", 5055)
    assert kw["env"]["MLFLOW_BACKEND_STORE_URI"] == uri
    err = capsys.readouterr().err
    assert "s3cret-pw" not in err and "postgresql://mlflow:***@db.example:5432/mlflow" in err

    # and `mlflow ui` reads it from there: MLflow's own parser, on the child's argv and environment
    from mlflow.cli import cli

    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", kw["env"]["MLFLOW_BACKEND_STORE_URI"])
    ctx = cli.make_context("mlflow", list(cmd[3:]), resilient_parsing=True)
    name, command, args = cli.resolve_command(ctx, list(cmd[3:]))
    sub = command.make_context(name, args, parent=ctx)
    assert sub.params["backend_store_uri"] == uri and sub.params["port"] == 5055
