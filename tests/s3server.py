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
