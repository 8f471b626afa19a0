"""dist_al.credentials: what counts as a credential in a config, both ways (caught / left alone), and redaction."""

from __future__ import annotations

import copy
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from dist_al.credentials import REDACTED, credential_paths, redact

SECRET = "FAKESECRET-0f9e8d7c/+=x"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _so(**options) -> dict:
    return {"pool": {"uri": "s3://bucket/pool", "storage_options": options}}


CAUGHT = [
    (_so(key=AWS_KEY_ID, secret=SECRET), ["pool.storage_options.key", "pool.storage_options.secret"]),
    (_so(token=SECRET), ["pool.storage_options.token"]),  # s3fs's session token, gcsfs's token
    (
        _so(client_kwargs={"region_name": "us-east-1", "aws_secret_access_key": SECRET, "aws_session_token": SECRET}),
        [
            "pool.storage_options.client_kwargs.aws_secret_access_key",
            "pool.storage_options.client_kwargs.aws_session_token",
        ],
    ),
    (
        _so(s3_additional_kwargs={"SSECustomerKey": SECRET}),
        ["pool.storage_options.s3_additional_kwargs.SSECustomerKey"],
    ),
    (
        _so(token={"type": "service_account", "private_key_id": "1", "private_key": SECRET}),
        ["pool.storage_options.token"],
    ),  # gcsfs service-account info: the whole mapping goes
    (_so(account_name="acct", account_key=SECRET), ["pool.storage_options.account_key"]),  # adlfs
    (
        _so(connection_string=f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={SECRET}"),
        ["pool.storage_options.connection_string"],
    ),
    (
        _so(client_kwargs={"headers": {"Authorization": f"Bearer {SECRET}"}}),
        ["pool.storage_options.client_kwargs.headers.Authorization"],
    ),
    (_so(password=123456), ["pool.storage_options.password"]),  # YAML makes a number of it: still a credential
    ({"model": {"kwargs": {"api_key": "short"}}}, ["model.kwargs.api_key"]),  # named a credential: any value
    ({"model": {"kwargs": {"token": "3f2a9c0b7d1e4f5a6b8c9d0e1f2a3b4c"}}}, ["model.kwargs.token"]),  # random value
    ({"model": {"kwargs": {"layers": [{"password": SECRET}]}}}, ["model.kwargs.layers[0].password"]),
    # by the value's shape, whatever the key
    ({"model": {"kwargs": {"note": AWS_KEY_ID}}}, ["model.kwargs.note"]),
    ({"model": {"kwargs": {"ids": ["x", f"ASIA{'Q' * 16}"]}}}, ["model.kwargs.ids[1]"]),
    ({"eval": {"uri": f"https://alice:{quote(SECRET, safe='')}@data.example.com/eval"}}, ["eval.uri"]),
    (
        {"model": {"checkpoint": f"https://b.s3.amazonaws.com/m.pt?X-Amz-Credential=x&X-Amz-Signature={SECRET}"}},
        ["model.checkpoint"],
    ),
    (
        {"model": {"kwargs": {"cert": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"}}},
        ["model.kwargs.cert"],
    ),
    ({"model": {"kwargs": {"hub": "hf_" + "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vWx"}}}, ["model.kwargs.hub"]),
    (
        {"model": {"kwargs": {"auth": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl"}}},
        ["model.kwargs.auth"],
    ),  # a JWT
]

ORDINARY = [
    {
        "pool": {
            "uri": "s3://bucket/pool",
            "id_column": "id",
            "label_column": "label",
            "storage_options": {
                "endpoint_url": "http://127.0.0.1:9000",
                "anon": True,
                "use_ssl": False,
                "requester_pays": True,
                "default_block_size": 5242880,
                "profile": "default",
                "client_kwargs": {"region_name": "us-east-1"},
                "config_kwargs": {"signature_version": "s3v4", "max_pool_connections": 50},
                "s3_additional_kwargs": {
                    "ServerSideEncryption": "aws:kms",
                    "SSEKMSKeyId": "arn:aws:kms:us-east-1:1:key/abc",
                },
            },
        }
    },
    _so(token="anon"),
    _so(token="google_default"),
    _so(key=None, secret=""),
    _so(key=False),  # nothing carried
    {
        "model": {
            "factory": "my_nets:build",
            "kwargs": {
                "key_dim": 64,
                "n_keys": 8,
                "pad_token": "[PAD]",
                "pad_token_id": 0,
                "max_tokens": 512,
                "token_dim": 32,
                "tokenizer": "sentence-transformers/all-MiniLM-L6-v2",
                "key": "features",
            },
        }
    },
    {"workdir": "sftp://alice@host/work", "eval": {"uri": "s3://bucket/eval?versionId=3"}},
    {
        "inputs": {
            "reader": "dist_al.inputs:text",
            "kwargs": {"column": "text", "tokenizer": "s3://bucket/tokenizer.json", "pad_token": "[PAD]"},
        }
    },
    {"selection": {"strategy": "badge", "budget": 50, "seed": 0}, "cluster": {"address": "ray://head:10001"}},
]


@pytest.mark.parametrize("config, paths", CAUGHT, ids=[p[0] for _, p in CAUGHT])
def test_credentials_are_caught_at_any_depth_and_named_by_path(config, paths):
    assert credential_paths(config) == paths
    redacted = redact(config)
    shown = repr(redacted)
    assert REDACTED in shown
    assert not any(s in shown for s in (SECRET, quote(SECRET, safe=""), AWS_KEY_ID, f"ASIA{'Q' * 16}", "hf_aB3", "eyJ"))


@pytest.mark.parametrize("config", ORDINARY)
def test_ordinary_config_values_are_not_credentials(config):
    assert credential_paths(config) == []
    assert redact(config) == config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_the_shipped_configs_hold_no_credential(path):
    assert credential_paths(yaml.safe_load(path.read_text())) == []


def test_redaction_keeps_everything_but_the_secret_and_leaves_its_input_alone():
    config = {
        "pool": {
            "uri": f"ftp://alice:{quote(SECRET, safe='')}@host/pool",
            "id_column": "id",
            "storage_options": {
                "endpoint_url": "http://s3:9000",
                "secret": SECRET,
                "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": SECRET},
            },
        },
        "model": {"kwargs": {"dims": (64, 32)}},
    }
    before = copy.deepcopy(config)
    assert redact(config) == {
        "pool": {
            "uri": f"ftp://alice:{REDACTED}@host/pool",
            "id_column": "id",
            "storage_options": {
                "endpoint_url": "http://s3:9000",
                "secret": REDACTED,
                "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": REDACTED},
            },
        },
        "model": {"kwargs": {"dims": [64, 32]}},
    }
    assert config == before
