"""What looks like a credential, decided in one place: `dist-al submit` refuses a config that carries one
(`credential_paths`), and every copy of a config that dist-al writes has them replaced (`redact`).

A key is judged by its words (``aws_secret_access_key`` is aws/secret/access/key, ``SSECustomerKey`` is
sse/customer/key), never by substring, so ``id_column``, ``key_dim`` or ``max_tokens`` are not credentials.

* Anywhere in a config: a word secret, password, passphrase, credential(s) or authorization, or a pair
  such as api_key, access_key, private_key, session_token, auth_token, sas_token, connection_string.
* Inside ``storage_options``, at any depth (all of it reaches the filesystem's authentication): any name
  with the word key or token too (s3fs's ``key`` and ``token``, gcsfs's ``token``, botocore's
  ``aws_session_token`` in ``client_kwargs``), except gcsfs's token modes (``anon``, ``cloud``, ...).
* Elsewhere (``model.kwargs``, a strategy option), a name with the word key or token holds a credential
  only when its value looks random (``hf_token: hf_...``, not ``pad_token: "[PAD]"``).
* ``..._key_id`` / ``..._token_id`` name an identifier (``SSEKMSKeyId``, ``pad_token_id``), not a secret; an
  access key id counts, and an AWS key id (AKIA/ASIA...) is caught by its value wherever it stands.

Values are judged by their shape wherever they stand: AWS access key ids, the password of a
``scheme://user:password@host`` URI, signatures and tokens in URL queries, Azure connection-string keys,
PEM private keys, JWTs, GitHub and Hugging Face tokens. Null, empty and true/false values carry nothing.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

_SECRET_WORDS = {
    "secret",
    "secrets",
    "password",
    "passwd",
    "passphrase",
    "credential",
    "credentials",
    "authorization",
    "apikey",
    "accesskey",
    "secretkey",
    "authtoken",
}
_SECRET_NOUNS = {"key", "token"}
_SECRET_QUALIFIERS = {
    "api",
    "access",
    "private",
    "account",
    "secret",
    "session",
    "auth",
    "security",
    "sas",
    "bearer",
    "refresh",
    "client",
    "master",
    "signing",
    "encryption",
    "shared",
    "customer",
}
_IDENTIFIER_WORDS = {"id", "ids"}
_GCSFS_TOKEN_MODES = {"anon", "cloud", "google_default", "cache", "browser"}

_VALUE_SHAPES = [
    re.compile(p)
    for p in (
        r"(?<![A-Z0-9])(?P<secret>(?:AKIA|ASIA)[A-Z0-9]{16})(?![A-Z0-9])",  # AWS access key id
        r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s:@]*:(?P<secret>[^/?#\s@]+)@",  # scheme://user:password@host
        r"(?i)[?&](?:x-amz-signature|x-amz-security-token|x-amz-credential|sig|signature|token|access_token)"
        r"=(?P<secret>[^&#\s]+)",
        r"(?i)(?:AccountKey|SharedAccessSignature|SharedAccessKey)=(?P<secret>[^;\s]+)",  # Azure connection strings
        r"(?s)(?P<secret>-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$))",
        r"(?P<secret>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+)",  # JWT
        r"(?P<secret>\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|hf_[A-Za-z0-9]{30,}))",
    )
]


def _words(name: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", str(name))]


def _names_a_secret(words: list[str]) -> bool:
    if _SECRET_WORDS.intersection(words):
        return True
    pairs = zip(words, words[1:], words[2:] + [""])
    return ("connection", "string") in zip(words, words[1:]) or any(
        noun in _SECRET_NOUNS
        and qualifier in _SECRET_QUALIFIERS
        and (after not in _IDENTIFIER_WORDS or qualifier == "access")
        for qualifier, noun, after in pairs
    )


def _has_noun(words: list[str]) -> bool:
    return any(w in _SECRET_NOUNS and after not in _IDENTIFIER_WORDS for w, after in zip(words, words[1:] + [""]))


def _looks_random(value: str) -> bool:
    """Holds a run of 20+ letters and digits, mixed: an API token or a hex secret, not a name or a path."""
    return any(re.search(r"\d", run) and re.search(r"[A-Za-z]", run) for run in re.findall(r"[A-Za-z0-9]{20,}", value))


def _credential_by_name(path: tuple[str, ...], value: Any) -> bool:
    """Is `value`, the entry at `path` of a mapping, a credential because of its key's name?"""
    if value is None or isinstance(value, bool) or value == "" or value == {} or value == []:
        return False
    words = _words(path[-1])
    if _names_a_secret(words):
        return True
    if not _has_noun(words):
        return False
    if "storage_options" in path[:-1]:
        return not (isinstance(value, str) and value in _GCSFS_TOKEN_MODES)
    return isinstance(value, str) and _looks_random(value)


def _walk(value: Any, path: tuple[str, ...], found: list[str]) -> Any:
    """`value` with every credential replaced by REDACTED; appends the dotted path of each one to `found`."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            here = (*path, str(key))
            if _credential_by_name(here, item):
                found.append(".".join(here))
                out[key] = REDACTED
            else:
                out[key] = _walk(item, here, found)
        return out
    if isinstance(value, (list, tuple)):
        return [
            _walk(item, (*path[:-1], f"{path[-1]}[{i}]") if path else (f"[{i}]",), found)
            for i, item in enumerate(value)
        ]
    if isinstance(value, str):
        redacted = value
        for shape in _VALUE_SHAPES:
            redacted = shape.sub(lambda m: m.group(0).replace(m.group("secret"), REDACTED), redacted)
        if redacted != value:
            found.append(".".join(path) or "<value>")
        return redacted
    return value


def credential_paths(value: Any) -> list[str]:
    """Dotted paths (e.g. ``pool.storage_options.client_kwargs.aws_session_token``) of the credentials in a
    config or any part of one; empty when there is none. Never the values."""
    found: list[str] = []
    _walk(value, (), found)
    return found


def redact(value: Any) -> Any:
    """A copy of a config (or any part of one) with every credential replaced by ``<redacted>``."""
    return _walk(value, (), [])


class Secret:
    """A credential: its value reaches the filesystem, never a print, a dump or a file.

    Pickles with its value (a Ray worker needs it to read the pool); ``repr``, ``str`` and every dump say
    ``<redacted>``; ``yaml.safe_dump`` and ``json.dumps`` of a raw Secret fail rather than leak.
    """

    __slots__ = ("_value",)

    def __init__(self, value: Any):
        self._value = value

    def reveal(self) -> Any:
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", repr(type(self._value))))

    def __reduce__(self):
        return Secret, (self._value,)


def reveal(value: Any) -> Any:
    """``value`` with every Secret inside replaced by what it holds: for the filesystem, never for output."""
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(reveal(v) for v in value)
    return value
