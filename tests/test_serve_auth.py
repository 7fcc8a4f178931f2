"""API keys and tenant confinement (ragkit.serve.auth): what the key file holds, who authenticates, what a
request's ``where`` may reach. The HTTP side (401/403, tenants across endpoints) is tested with the app."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from ragkit import Index
from ragkit.errors import ConfigError
from ragkit.serve.auth import (
    LOCAL_PRINCIPAL,
    SECRET_PREFIX,
    TENANT_TAG,
    KeyRing,
    Principal,
    add_key,
    tenant_where,
)
from ragkit.testing import HashingEmbedder
from ragkit.types import Document

# -- the key file ------------------------------------------------------------------------------------------------


def test_add_key_stores_only_a_hash_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    secret = add_key(path, "alice", tenant="acme", scopes=["read", "write"])

    assert secret.startswith(SECRET_PREFIX) and len(secret) >= 40
    text = path.read_text(encoding="utf-8")
    assert secret not in text
    assert secret[len(SECRET_PREFIX) :] not in text  # not even the random part
    assert "sha256:" + hashlib.sha256(secret.encode()).hexdigest() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.toml"]  # no temporary file left behind


def test_add_key_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        add_key(tmp_path / "keys.toml", "alice", tenant="acme", scopes=["read"])
        add_key(tmp_path / "keys.toml", "bob", tenant="acme", scopes=["read"])
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "keys.toml").stat().st_mode) == 0o600


def test_secrets_are_random(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    secrets_ = {add_key(path, f"k{i}", tenant="acme", scopes=["read"]) for i in range(5)}
    assert len(secrets_) == 5
    assert len(KeyRing.load(path)) == 5


def test_authenticate_accepts_the_right_key_and_refuses_others(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    alice = add_key(path, "alice", tenant="acme", scopes=["read", "write"], rate_per_s=2.5, max_concurrent=3)
    bob = add_key(path, "bob", tenant="globex", scopes="read")
    ring = KeyRing.load(path)

    assert len(ring) == 2 and "alice" in ring and "carol" not in ring
    principal = ring.authenticate(alice)
    assert principal == Principal("alice", "acme", frozenset({"read", "write"}), rate_per_s=2.5, max_concurrent=3)
    assert principal.allows("write") and principal.allows("read")
    other = ring.authenticate(bob)
    assert other is not None and other.tenant == "globex" and other.scopes == frozenset({"read"})
    assert not other.allows("write")
    assert other.rate_per_s is None and other.max_concurrent is None

    flipped = alice[:-1] + ("A" if alice[-1] != "A" else "B")
    for wrong in (flipped, alice + "x", alice[:-1], "", "rk_", alice.upper(), alice + "é", "x" * 10_000):
        assert ring.authenticate(wrong) is None, wrong
    # the stored hash itself is not a credential
    digest = "sha256:" + hashlib.sha256(alice.encode()).hexdigest()
    assert ring.authenticate(digest) is None


def test_add_key_refuses_bad_input_and_keeps_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    first = add_key(path, "alice", tenant="acme", scopes=["read"])
    before = path.read_bytes()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "alice", "tenant": "acme", "scopes": ["read"]}, "already exists"),
        ({"name": "carol", "tenant": "acme", "scopes": ["read", "admin"]}, "admin"),
        ({"name": "carol", "tenant": "acme", "scopes": []}, "at least one scope"),
        ({"name": "carol", "tenant": "", "scopes": ["read"]}, "tenant"),
        ({"name": "carol", "tenant": " acme", "scopes": ["read"]}, "tenant"),
        ({"name": "carol", "tenant": "a\nb", "scopes": ["read"]}, "tenant"),
        ({"name": "has space", "tenant": "acme", "scopes": ["read"]}, "key name"),
        ({"name": "x]\n[keys.evil", "tenant": "acme", "scopes": ["read"]}, "key name"),
        ({"name": "carol", "tenant": "acme", "scopes": ["read"], "rate_per_s": 0}, "rate_per_s"),
        ({"name": "carol", "tenant": "acme", "scopes": ["read"], "rate_per_s": float("inf")}, "rate_per_s"),
        ({"name": "carol", "tenant": "acme", "scopes": ["read"], "max_concurrent": 0}, "max_concurrent"),
    ]
    for kwargs, problem in cases:
        name = kwargs.pop("name")
        with pytest.raises(ConfigError, match=problem):
            add_key(path, name, **kwargs)
    assert path.read_bytes() == before
    assert KeyRing.load(path).authenticate(first) is not None


def test_tenant_names_with_quotes_and_unicode_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    tenant = 'Acme "Corp" \\ Zürich 東京'
    secret = add_key(path, "alice", tenant=tenant, scopes=["read"])
    principal = KeyRing.load(path).authenticate(secret)
    assert principal is not None and principal.tenant == tenant


def test_concurrent_add_key_loses_no_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def add(name: str) -> None:
        try:
            results[name] = add_key(path, name, tenant="acme", scopes=["read"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(f"key{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    ring = KeyRing.load(path)
    assert len(ring) == 8
    assert all(ring.authenticate(secret) == ring.authenticate(secret) is not None for secret in results.values())
    assert {ring.authenticate(s).name for s in results.values()} == set(results)  # type: ignore[union-attr]


# -- a tampered or invalid key file ---------------------------------------------------------------------------

GOOD_HASH = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[keys.alice\ntenant = 'acme'", "not valid TOML"),
        ('[keys.alice]\ntenant = "acme"\nscopes = ["read"]\n', "missing hash"),
        (f'[keys.alice]\nscopes = ["read"]\nhash = "{GOOD_HASH}"\n', "missing tenant"),
        ('[keys.alice]\ntenant = "acme"\nscopes = ["read"]\nhash = "sha256:xyz"\n', "hash must be"),
        (f'[keys.alice]\ntenant = "acme"\nscopes = ["read"]\nhash = "{GOOD_HASH.upper()}"\n', "hash must be"),
        (f'[keys.alice]\ntenant = "acme"\nscopes = ["root"]\nhash = "{GOOD_HASH}"\n', "root"),
        (f'[keys.alice]\ntenant = "acme"\nscopes = "read"\nhash = "{GOOD_HASH}"\n', "scopes must be"),
        (f'[keys.alice]\ntenant = ""\nscopes = ["read"]\nhash = "{GOOD_HASH}"\n', "tenant"),
        (f'[keys.alice]\ntenant = 7\nscopes = ["read"]\nhash = "{GOOD_HASH}"\n', "tenant"),
        (f'[keys.alice]\ntenant = "acme"\nscopes = ["read"]\nhash = "{GOOD_HASH}"\nadmin = true\n', "unknown field"),
        (f'[keys.alice]\ntenant = "a"\nscopes = ["read"]\nhash = "{GOOD_HASH}"\nrate_per_s = -1\n', "rate_per_s"),
        (
            f'[keys.alice]\ntenant = "a"\nscopes = ["read"]\nhash = "{GOOD_HASH}"\nmax_concurrent = 1.5\n',
            "max_concurrent",
        ),
        (
            f'[keys.a]\ntenant = "x"\nscopes = ["read"]\nhash = "{GOOD_HASH}"\n'
            f'[keys.b]\ntenant = "y"\nscopes = ["read"]\nhash = "{GOOD_HASH}"\n',
            "same hash",
        ),
        ('keys = "all"\n', "must be a table"),
        ('[users.alice]\ntenant = "acme"\n', "unknown top-level"),
        ('[keys]\nalice = "secret"\n', "must be a table"),
    ],
)
def test_invalid_key_file_is_a_config_error_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=problem) as caught:
        KeyRing.load(path)
    assert str(path) in str(caught.value)


def test_missing_binary_and_shared_key_files_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as caught:
        KeyRing.load(missing)
    assert str(missing) in str(caught.value)

    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[keys]")
    binary.chmod(0o600)
    with pytest.raises(ConfigError, match="UTF-8"):
        KeyRing.load(binary)

    shared = tmp_path / "shared.toml"
    add_key(shared, "alice", tenant="acme", scopes=["read"])
    shared.chmod(0o666)  # anyone could add a key of their own
    with pytest.raises(ConfigError, match="writable by other users"):
        KeyRing.load(shared)
    with pytest.raises(ConfigError, match="writable by other users"):
        add_key(shared, "bob", tenant="acme", scopes=["read"])


def test_tampering_with_a_stored_hash_locks_the_key_out(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    secret = add_key(path, "alice", tenant="acme", scopes=["read"])
    text = path.read_text(encoding="utf-8")
    digest = "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
    path.write_text(text.replace(digest, GOOD_HASH), encoding="utf-8")
    ring = KeyRing.load(path)
    assert len(ring) == 1 and ring.authenticate(secret) is None


def test_add_key_refuses_to_extend_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("[keys.alice\n", encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not valid TOML"):
        add_key(path, "bob", tenant="acme", scopes=["read"])
    assert path.read_text(encoding="utf-8") == "[keys.alice\n"


def test_principal_checks_its_fields() -> None:
    assert LOCAL_PRINCIPAL.tenant is None and LOCAL_PRINCIPAL.allows("read") and LOCAL_PRINCIPAL.allows("write")
    assert not LOCAL_PRINCIPAL.allows("admin")
    with pytest.raises(ConfigError, match="unknown scope"):
        Principal("x", "t", frozenset({"sudo"}))
    with pytest.raises(ConfigError, match="rate_per_s"):
        Principal("x", "t", frozenset({"read"}), rate_per_s=0.0)
    with pytest.raises(ConfigError, match="max_concurrent"):
        Principal("x", "t", frozenset({"read"}), max_concurrent=0)


# -- tenant_where ------------------------------------------------------------------------------------------------

ACME = Principal("alice", "acme", frozenset({"read"}))


def test_tenant_where_overrides_a_hostile_where() -> None:
    assert tenant_where(ACME, None) == {TENANT_TAG: "acme"}
    assert tenant_where(ACME, {}) == {TENANT_TAG: "acme"}
    assert tenant_where(ACME, {TENANT_TAG: "globex"}) == {TENANT_TAG: "acme"}
    assert tenant_where(ACME, {"lang": "en", TENANT_TAG: "globex", "year": 2024}) == {
        "lang": "en",
        "year": 2024,
        TENANT_TAG: "acme",
    }
    hostile = {TENANT_TAG: "globex"}
    tenant_where(ACME, hostile)
    assert hostile == {TENANT_TAG: "globex"}  # the caller's mapping is not modified


def test_tenant_where_for_the_keyless_server_passes_the_filter_through() -> None:
    assert tenant_where(LOCAL_PRINCIPAL, None) is None
    assert tenant_where(LOCAL_PRINCIPAL, {}) is None
    assert tenant_where(LOCAL_PRINCIPAL, {TENANT_TAG: "globex", "ok": True}) == {TENANT_TAG: "globex", "ok": True}


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ({"lang": ["en", "de"]}, "string, number or boolean"),
        ({"lang": {"$ne": "en"}}, "string, number or boolean"),
        ({"lang": None}, "string, number or boolean"),
        ({"score": float("nan")}, "finite"),
        ({"lang": "en\x00"}, "NUL"),
        ({"": "x"}, "non-empty string"),
        ({1: "x"}, "non-empty string"),
        ({'a"] OR 1=1 --': "x"}, "quote"),
        ("tenant = acme", "must be an object"),
        (["tenant", "acme"], "must be an object"),
    ],
)
def test_tenant_where_refuses_values_tags_cannot_hold(where: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        tenant_where(ACME, where)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=problem):
        tenant_where(LOCAL_PRINCIPAL, where)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def two_tenant_index(tmp_path_factory: pytest.TempPathFactory) -> Index:
    index = Index.create(tmp_path_factory.mktemp("tenants") / "idx", embedder=HashingEmbedder(64), graph=False)
    topics = ["solar panels on roofs", "tidal energy in estuaries", "wind turbines offshore"]
    for tenant in ("acme", "globex"):
        index.add_documents(
            [
                Document(id=f"{tenant}-{i}", text=f"{tenant} notes: {topic}. " * 3, source=f"{tenant}/{i}.txt")
                for i, topic in enumerate(topics)
            ],
            meta={TENANT_TAG: tenant, "lang": "en"},
        )
    return index


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_retrieval_through_tenant_where_never_returns_another_tenants_documents(
    two_tenant_index: Index, mode: str
) -> None:
    attempts = [None, {TENANT_TAG: "globex"}, {"lang": "en", TENANT_TAG: "globex"}, {"doc_id": "globex-0"}]
    for where in attempts:
        hits = two_tenant_index.retrieve("globex notes solar panels", k=6, mode=mode, where=tenant_where(ACME, where))
        assert all(hit.chunk.doc_id.startswith("acme-") for hit in hits), (where, [h.chunk.doc_id for h in hits])
        if where is None or TENANT_TAG in where:
            assert hits  # the tenant's own documents are still found
    # the unconfined principal does reach both tenants, so the test above can fail
    everything = two_tenant_index.retrieve(
        "notes solar panels", k=6, mode=mode, where=tenant_where(LOCAL_PRINCIPAL, None)
    )
    assert {hit.chunk.doc_id.split("-")[0] for hit in everything} == {"acme", "globex"}
