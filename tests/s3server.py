"""A real S3 endpoint on loopback for tests: moto's ThreadedMotoServer.

Tests talk to it over HTTP exactly as they would to S3 (s3fs/boto3 with an
``endpoint_url``), so listing, ranged GETs, PUTs and error codes are real; no
client code is patched.  One server runs per test session on a free port of
127.0.0.1; every test that asks for ``s3_bucket`` / ``s3_storage_options`` gets
a fresh bucket, so tests cannot see each other's objects.

Fixtures (registered for the whole suite by ``tests/conftest.py``):

* ``s3_server``          -- session: the endpoint URL, e.g. ``http://127.0.0.1:41234``.
* ``s3_bucket``          -- per test: name of a fresh, empty bucket.
* ``s3_storage_options`` -- per test: fsspec/s3fs ``storage_options`` for the
  server (endpoint_url, key, secret, region); requesting it also creates the
  test's fresh bucket (same one as ``s3_bucket``).

Fake credentials are put in the environment only while a test using these
fixtures runs (monkeypatch), together with settings that stop botocore from
reading real profiles or probing the EC2 metadata service.  s3fs filesystem
instances are cached by fsspec across calls; the fixtures drop their
directory-listing caches before and after each test (so no listing leaks
between tests) and drop the instances when the server stops.
"""

from __future__ import annotations

import logging
import uuid

import pytest

FAKE_KEY = "testing-key"
FAKE_SECRET = "testing-secret"
REGION = "us-east-1"


def start_s3_server(ip_address: str = "127.0.0.1"):
    """Start a moto S3 server on a free port; return (server, endpoint_url). Call ``server.stop()``."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request log lines
    server = ThreadedMotoServer(ip_address=ip_address, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def storage_options_for(endpoint_url: str) -> dict:
    """fsspec storage_options that reach the test server with the fake credentials."""
    return {
        "endpoint_url": endpoint_url,
        "key": FAKE_KEY,
        "secret": FAKE_SECRET,
        "client_kwargs": {"region_name": REGION},
    }


def s3_filesystem(storage_options: dict, fresh: bool = False):
    """An s3fs filesystem for the given options: fsspec's cached instance, or a new one if ``fresh``."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=fresh, **storage_options)


def create_bucket(endpoint_url: str, name: str) -> None:
    """Create a bucket on the test server (boto3: us-east-1 takes no LocationConstraint)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=FAKE_KEY,
        aws_secret_access_key=FAKE_SECRET,
        region_name=REGION,
    )
    client.create_bucket(Bucket=name)


def clear_s3fs_caches(drop_instances: bool = False) -> None:
    """Drop the directory-listing caches of every cached s3fs instance (and the instances too if asked).

    Instances are kept by default: each holds a warm botocore client, which
    costs ~0.3 s of CPU to build; stale listings are what leaks between tests.
    """
    try:
        import s3fs
    except ImportError:  # pragma: no cover
        return
    for fs in list(s3fs.S3FileSystem._cache.values()):
        fs.invalidate_cache()
    if drop_instances:
        s3fs.S3FileSystem.clear_instance_cache()


def _set_fake_aws_env(monkeypatch, endpoint_url: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    # Loopback must never go through a proxy.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of a moto S3 server on 127.0.0.1, shared by the session."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server, endpoint = start_s3_server()
    try:
        yield endpoint
    finally:
        clear_s3fs_caches(drop_instances=True)  # their clients point at this server
        server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """Name of a fresh, empty bucket on the test server (fake credentials set meanwhile)."""
    _set_fake_aws_env(monkeypatch, s3_server)
    clear_s3fs_caches()
    name = f"test-{uuid.uuid4().hex[:16]}"
    create_bucket(s3_server, name)
    try:
        yield name
    finally:
        clear_s3fs_caches()


@pytest.fixture
def s3_storage_options(s3_server, s3_bucket):
    """storage_options for the test server; the test's fresh bucket is ``s3_bucket``."""
    return storage_options_for(s3_server)


# ------------------------------------------------------------------------------------ fault proxy


class FaultProxy:
    """An HTTP proxy on loopback in front of the S3 server that fails chosen requests, then forwards.

    ``add(method, pattern, kind, times)``: the next ``times`` requests whose method is
    ``method`` (or any, for ``"*"``) and whose path matches the regex ``pattern`` are
    answered with ``kind``: ``"503"`` (S3's ``SlowDown`` error, as S3 sends when throttling),
    ``"400"`` (S3's ``InvalidRequest``, which s3fs maps to EINVAL as it maps 412),
    ``"reset"`` (the TCP connection is reset before any reply) or ``"lost-reply"`` (the
    request reaches the server and is carried out, then the connection is reset instead of
    the reply); ``times=None`` fails them forever.  Everything else goes to the server
    unchanged.  ``hits`` counts the failures served per rule.  Point a client's ``endpoint_url`` at ``proxy.url``.
    """

    SLOW_DOWN = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )
    INVALID_REQUEST = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidRequest</Code>'
        b"<Message>The request is not valid.</Message></Error>"
    )

    def __init__(self, upstream: str):
        import http.server
        import threading
        from urllib.parse import urlparse

        self.upstream = urlparse(upstream)
        self.rules: list[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = proxy._fault(self.command, self.path)
                if kind == "lost-reply":
                    proxy._forward(self.command, self.path, dict(self.headers), body)
                if kind in ("reset", "lost-reply"):
                    import socket
                    import struct

                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if kind in ("503", "400"):
                    error = proxy.SLOW_DOWN if kind == "503" else proxy.INVALID_REQUEST
                    self.send_response(int(kind))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                status, headers, data = proxy._forward(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, method: str, pattern: str, kind: str, times: int | None = 1) -> dict:
        import re

        assert kind in ("503", "400", "reset", "lost-reply")
        rule = {"method": method, "pattern": re.compile(pattern), "kind": kind, "left": times, "hits": 0}
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def _fault(self, method: str, path: str) -> str | None:
        with self.lock:
            for rule in self.rules:
                if rule["method"] in ("*", method) and rule["pattern"].search(path) and rule["left"] != 0:
                    if rule["left"] is not None:
                        rule["left"] -= 1
                    rule["hits"] += 1
                    return rule["kind"]
        return None

    def _forward(self, method: str, path: str, headers: dict, body: bytes):
        import http.client

        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in headers.items() if k.lower() not in ("connection", "proxy-connection")}
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
