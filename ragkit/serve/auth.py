"""API keys for ``ragkit serve``: each key is bound to one tenant, and the server confines every request to it.

Keys live in a TOML file that holds only their SHA-256 hashes, so a leaked file grants nothing::

    [keys.alice]
    tenant = "acme"
    scopes = ["read", "write"]
    hash = "sha256:9f2c..."
    prefix = "rk_3f9a"          # the secret's first characters, to tell keys apart in logs; not a credential
    rate_per_s = 20.0           # optional: requests per second (token bucket; see ragkit.serve.limits)
    max_concurrent = 4          # optional: requests in flight at once

>>> secret = add_key(Path("keys.toml"), "alice", tenant="acme", scopes=["read"])   # doctest: +SKIP
>>> KeyRing.load(Path("keys.toml")).authenticate(secret).tenant                    # doctest: +SKIP
'acme'

Only ``add_key`` writes the file (``ragkit serve keys add``); the server only reads it.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import stat
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ragkit.errors import ConfigError

TENANT_TAG: Final = "tenant"
"""The document tag (``Index.add(..., meta={"tenant": T})``) that a tenant's documents carry."""

SCOPES: Final = frozenset({"read", "write"})
"""``read``: retrieve, ask, chat, list documents, feedback; ``write``: upload and delete documents."""

SECRET_PREFIX: Final = "rk_"
_HASH_SCHEME: Final = "sha256:"
_HASH_PATTERN: Final = re.compile(r"sha256:[0-9a-f]{64}")
_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a TOML bare key, and a safe metrics label
_SHOWN_CHARS: Final = 4  # of the secret's ~256 random bits, the prefix shows 24: enough to tell keys apart
_MAX_SECRET_CHARS: Final = 256
_MAX_TENANT_CHARS: Final = 200
_ENTRY_FIELDS: Final = frozenset({"tenant", "scopes", "hash", "prefix", "rate_per_s", "max_concurrent"})


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a key's name, the tenant it is confined to, what it may do and its limits.

    ``tenant`` is None only for the keyless loopback server (``LOCAL_PRINCIPAL``), which sees every document.
    ``rate_per_s`` and ``max_concurrent`` of None mean the server's defaults.
    """

    name: str
    tenant: str | None
    scopes: frozenset[str]
    rate_per_s: float | None = None
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.scopes) - SCOPES
        if unknown:
            raise ConfigError(f"principal {self.name!r}: unknown scope(s) {sorted(unknown)}; valid: {sorted(SCOPES)}")
        if self.rate_per_s is not None and not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise ConfigError(f"principal {self.name!r}: rate_per_s must be a positive number, not {self.rate_per_s}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"principal {self.name!r}: max_concurrent must be at least 1, not {self.max_concurrent}")

    def allows(self, scope: str) -> bool:
        """Whether this principal may do what ``scope`` (``read`` or ``write``) covers."""
        return scope in self.scopes


LOCAL_PRINCIPAL: Final = Principal(name="local", tenant=None, scopes=SCOPES)
"""The principal of every request to a server without a key file; such a server binds to loopback only."""


def hash_secret(secret: str) -> str:
    """``sha256:<hex>`` of an API key.

    SHA-256 is the right tool here, not a slow password hash (bcrypt, scrypt, argon2): our secrets carry 256 random
    bits, so guessing one from its hash is infeasible however fast the hash, and a fast hash lets every request be
    checked in microseconds with a dictionary lookup instead of a deliberately slow comparison per stored key.
    """
    return _HASH_SCHEME + hashlib.sha256(secret.encode("ascii")).hexdigest()


class KeyRing:
    """The API keys of a key file, looked up by the hash of the secret a request presents (O(1) per request).

    >>> ring = KeyRing.load(Path("keys.toml"))            # doctest: +SKIP
    >>> ring.authenticate(request.headers["x-api-key"])   # doctest: +SKIP
    Principal(name='alice', tenant='acme', scopes=frozenset({'read'}), ...)
    """

    def __init__(self, principals_by_hash: Mapping[str, Principal], path: Path | None = None) -> None:
        self._by_hash = dict(principals_by_hash)
        self._hash_of = {principal.name: digest for digest, principal in self._by_hash.items()}
        self.path = path

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read and check a key file; every problem is a ConfigError naming the file and what is wrong."""
        path = Path(path)
        return cls._parse(path, _read_text(path))

    @classmethod
    def _parse(cls, path: Path, text: str) -> KeyRing:
        """The keys of ``text``, the contents of the key file ``path`` (named in errors)."""
        entries = _entries(path, text)
        by_hash: dict[str, Principal] = {}
        for name, entry in entries.items():
            digest, principal = _parse_entry(path, name, entry)
            if digest in by_hash:
                raise ConfigError(f"{path}: keys {by_hash[digest].name!r} and {name!r} have the same hash")
            by_hash[digest] = principal
        return cls(by_hash, path)

    def authenticate(self, secret: str) -> Principal | None:
        """The principal whose key ``secret`` is, or None for a wrong, empty or malformed secret."""
        if not isinstance(secret, str) or not secret or len(secret) > _MAX_SECRET_CHARS or not secret.isascii():
            return None
        digest = hash_secret(secret)
        principal = self._by_hash.get(digest)
        # The lookup is keyed by a SHA-256 digest, whose timing says nothing about the secret; compare_digest
        # keeps the final check constant-time all the same.
        if principal is None or not hmac.compare_digest(digest, self._hash_of[principal.name]):
            return None
        return principal

    def principals(self) -> list[Principal]:
        """Every key's principal, sorted by name (for listing keys; secrets are not known)."""
        return sorted(self._by_hash.values(), key=lambda p: p.name)

    def __contains__(self, name: object) -> bool:
        """Whether a key of this name exists."""
        return name in self._hash_of

    def __len__(self) -> int:
        return len(self._by_hash)


def add_key(
    path: Path,
    name: str,
    *,
    tenant: str,
    scopes: Iterable[str],
    rate_per_s: float | None = None,
    max_concurrent: int | None = None,
) -> str:
    """Add a key bound to ``tenant`` to the key file (created with mode 0600) and return its secret.

    The secret is shown to the caller once and never stored: the file keeps its hash. The file is rewritten
    atomically (a temporary file, then ``os.replace``) under a lock, so a reader never sees half a file and two
    concurrent ``add_key`` calls both land. Refuses a duplicate or malformed name, an unknown scope, an empty
    tenant and non-positive limits, naming the problem.
    """
    path = Path(path)
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"key name {name!r}: use 1-64 letters, digits, '_' or '-'")
    _check_tenant(f"key {name!r}", tenant)
    # "read,write" as the CLI's --scope gives it, or any iterable of scope names
    scope_names = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    if not all(isinstance(scope, str) for scope in scope_names):
        raise ConfigError(f"key {name!r}: scopes must be names from {sorted(SCOPES)}, not {scope_names!r}")
    scope_set = frozenset(scope.strip() for scope in scope_names if scope.strip())
    if not scope_set:
        raise ConfigError(f"key {name!r}: give at least one scope ({', '.join(sorted(SCOPES))})")
    principal = Principal(name, tenant, scope_set, _as_rate(name, rate_per_s), _as_limit(name, max_concurrent))
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    block = _entry_toml(principal, hash_secret(secret), secret[: len(SECRET_PREFIX) + _SHOWN_CHARS])
    with _directory_lock(path.parent):
        existing = _read_text(path) if path.exists() else ""
        if name in KeyRing._parse(path, existing):  # which also refuses to extend a file that is already broken
            raise ConfigError(f"{path}: a key named {name!r} already exists")
        text = existing.rstrip("\n") + "\n\n" + block if existing.strip() else block
        KeyRing._parse(path, text)  # what is written must read back: a bug in the writer must not break the file
        _atomic_write(path, text)
    return secret


def tenant_where(principal: Principal, where: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``where`` filter a request may run: its own conditions, always confined to the principal's tenant.

    A request's ``tenant`` condition is replaced, not merged, so no ``where`` can reach another tenant's
    documents. Values must be str, int, float or bool (what tags hold); anything else is a ConfigError naming it.
    Returns None when nothing filters (the keyless server and an empty ``where``).
    """
    if where is not None and not isinstance(where, Mapping):
        raise ConfigError(f"where must be an object of tag: value conditions, not {type(where).__name__}")
    result: dict[str, Any] = {}
    for key, value in (where or {}).items():
        _check_condition(key, value)
        result[key] = value
    if principal.tenant is not None:
        result[TENANT_TAG] = principal.tenant
    return result or None


def explained_chunks(explains: Iterable[Mapping[str, Any] | None]) -> set[str]:
    """The chunk ids that the graph paths of ``explains`` name (``path`` steps, nested explains included)."""
    found: set[str] = set()
    for explain in explains:
        for path in _paths(explain):
            found.update(step["chunk"] for step in path if isinstance(step.get("chunk"), str))
    return found


def confine_explains(
    explains: Sequence[Mapping[str, Any] | None], visible_chunks: set[str]
) -> list[dict[str, Any] | None]:
    """``explains`` without what a tenant may not see: a graph walk is confined to the tenant's chunks only at
    its end (the hits), so its explanation can name other tenants' chunks and entities.

    A path step is kept when its chunk is in ``visible_chunks``, or when it names no chunk (the question's linked
    entity, a relation hop) and its entity is vouched for: mentioned in a visible chunk, i.e. named by a kept step
    or by a hit's ``via_entities``. ``seed_entities`` (the question's links into the whole graph) keep only
    vouched-for names. Everything else (modes, scores, ranks) is kept as it was.
    """
    vouched: set[str] = set()
    for explain in explains:
        for nested in _explain_dicts(explain):
            vouched.update(e for e in nested.get("via_entities") or () if isinstance(e, str))
        for path in _paths(explain):
            vouched.update(
                step["entity"]
                for step in path
                if step.get("chunk") in visible_chunks and isinstance(step.get("entity"), str)
            )

    def confined(explain: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in explain.items():
            if isinstance(value, Mapping):
                result[key] = confined(value)
            elif key == "path" and isinstance(value, list):
                result[key] = [
                    step for step in value
                    if isinstance(step, Mapping) and (
                        step.get("chunk") in visible_chunks
                        or (step.get("chunk") is None and step.get("entity") in vouched)
                    )
                ]
            elif key == "seed_entities" and isinstance(value, list):
                result[key] = [name for name in value if name in vouched]
            else:
                result[key] = value
        return result

    return [None if explain is None else confined(explain) for explain in explains]


def _explain_dicts(explain: Mapping[str, Any] | None) -> Iterator[Mapping[str, Any]]:
    """``explain`` and the explains nested in it (``auto`` mode keeps the graph's under ``graph``)."""
    if explain is None:
        return
    yield explain
    for value in explain.values():
        if isinstance(value, Mapping):
            yield from _explain_dicts(value)


def _paths(explain: Mapping[str, Any] | None) -> Iterator[list[Mapping[str, Any]]]:
    for nested in _explain_dicts(explain):
        path = nested.get("path")
        if isinstance(path, list):
            yield [step for step in path if isinstance(step, Mapping)]


# -- checking --------------------------------------------------------------------------------------------------


def _check_condition(key: object, value: object) -> None:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"where: a tag name must be a non-empty string, not {key!r}")
    if _unstorable(key) or '"' in key or "\\" in key:
        raise ConfigError(f"where: tag name {key!r} holds a character tags cannot have (quote, backslash, NUL)")
    if not isinstance(value, str | int | float | bool):
        raise ConfigError(f"where[{key!r}]: a value must be a string, number or boolean, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"where[{key!r}]: {value} is not a finite number")
    if isinstance(value, str) and _unstorable(value):
        raise ConfigError(f"where[{key!r}]: the value holds a NUL character or a lone surrogate")


def _unstorable(text: str) -> bool:
    return "\x00" in text or any("\ud800" <= ch <= "\udfff" for ch in text)


def _check_tenant(what: str, tenant: object) -> None:
    if not isinstance(tenant, str) or not tenant or tenant != tenant.strip():
        raise ConfigError(f"{what}: tenant must be a non-empty string without surrounding spaces, not {tenant!r}")
    if len(tenant) > _MAX_TENANT_CHARS or not tenant.isprintable():
        raise ConfigError(f"{what}: tenant must be printable text of at most {_MAX_TENANT_CHARS} characters")


def _as_rate(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"key {name!r}: rate_per_s must be a positive number of requests per second, not {value!r}")
    return float(value)


def _as_limit(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"key {name!r}: max_concurrent must be a whole number of at least 1, not {value!r}")
    return value


# -- reading ---------------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """The key file's text; refused when other users could write it (and so add keys of their own)."""
    try:
        info = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: key file not found; create it with `ragkit serve keys add NAME --tenant T`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the key file ({exc.strerror})") from None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{path}: the key file is writable by other users; run `chmod 600 {path}`")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _entries(path: Path, text: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    extra = sorted(set(data) - {"keys"})
    if extra:
        raise ConfigError(f"{path}: unknown top-level entries {extra}; a key file holds only [keys.NAME] tables")
    keys = data.get("keys", {})
    if not isinstance(keys, dict):
        raise ConfigError(f"{path}: 'keys' must be a table of [keys.NAME] tables")
    return keys


def _parse_entry(path: Path, name: str, entry: object) -> tuple[str, Principal]:
    where = f"{path}: [keys.{name}]"
    if not _NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{where}: a key name must be 1-64 letters, digits, '_' or '-'")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table with tenant, scopes and hash")
    unknown = sorted(set(entry) - _ENTRY_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid: {sorted(_ENTRY_FIELDS)}")
    missing = sorted({"tenant", "scopes", "hash"} - set(entry))
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    digest = entry["hash"]
    if not isinstance(digest, str) or not _HASH_PATTERN.fullmatch(digest):
        raise ConfigError(f"{where}: hash must be 'sha256:' followed by 64 lowercase hex digits")
    scopes = entry["scopes"]
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise ConfigError(f"{where}: scopes must be a non-empty list of {sorted(SCOPES)}")
    _check_tenant(where, entry["tenant"])
    try:
        principal = Principal(
            name,
            entry["tenant"],
            frozenset(scopes),
            _as_rate(name, entry.get("rate_per_s")),
            _as_limit(name, entry.get("max_concurrent")),
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if "prefix" in entry and not isinstance(entry["prefix"], str):
        raise ConfigError(f"{where}: prefix must be a string")
    return digest, principal


# -- writing ---------------------------------------------------------------------------------------------------


def _toml_string(text: str) -> str:
    """A TOML basic string. JSON's escapes are a subset of TOML's for the printable text we allow."""
    return json.dumps(text, ensure_ascii=False)


def _entry_toml(principal: Principal, digest: str, prefix: str) -> str:
    lines = [
        f"[keys.{principal.name}]",
        f"tenant = {_toml_string(principal.tenant or '')}",
        "scopes = [" + ", ".join(_toml_string(s) for s in sorted(principal.scopes)) + "]",
        f"hash = {_toml_string(digest)}",
        f"prefix = {_toml_string(prefix)}",
    ]
    if principal.rate_per_s is not None:
        lines.append(f"rate_per_s = {principal.rate_per_s!r}")
    if principal.max_concurrent is not None:
        lines.append(f"max_concurrent = {principal.max_concurrent}")
    return "\n".join(lines) + "\n"


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on the key file's directory: writers of the same file take turns, readers never wait."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a 0600 temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)  # whatever the umask, only the owner reads the hashes
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
