"""Milvus (milvus-lite, a ``.db`` path in the index directory) passes the conformance suite: FLAT and HNSW."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ragkit.conformance import IndexFactory
from ragkit.errors import DimensionMismatchError, RagkitError
from ragkit.protocols import VectorIndex
from ragkit.testing import VectorIndexConformance

pytest.importorskip("pymilvus", reason="the Milvus backend needs the 'milvus' extra")
pytest.importorskip("milvus_lite", reason="the Milvus backend needs the 'milvus' extra")

from ragkit.connectors.vectors.milvus import MilvusIndex  # noqa: E402


@pytest.fixture(scope="module", params=["FLAT", "HNSW"])
def milvus_index_type(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def exact_search(milvus_index_type: str) -> bool:
    return milvus_index_type == "FLAT"


@pytest.fixture(scope="module")
def make_index(milvus_index_type: str) -> IndexFactory:
    def make(directory: Path, dim: int) -> VectorIndex:
        return MilvusIndex(directory / "milvus.db", dim, index_type=milvus_index_type)

    return make


class TestMilvusConformance(VectorIndexConformance):
    pass


# -- what the suite cannot see: expressions, the lite server's lifetime, server mode, missing extra --


def test_filter_expression_escapes_keys_and_values() -> None:
    from ragkit.connectors.vectors.milvus import filter_expression

    assert filter_expression(None) == ""
    assert filter_expression({"tenant": "acme", "n": 3, "ok": True, "x": 0.5}) == (
        '(meta["tenant"] == "acme") and (meta["n"] == 3) and (meta["ok"] == true) and (meta["x"] == 0.5)'
    )
    assert filter_expression({'we"ird': 'a"b\\c\nd'}) == '(meta["we\\"ird"] == "a\\"b\\\\c\\nd")'
    assert filter_expression({"doc_id": "d1", "source": 7}) == '(doc_id == "d1") and (meta["source"] == 7)'
    with pytest.raises(ValueError, match="only str, int, float and bool"):
        filter_expression({"tenant": ["acme"]})
    with pytest.raises(ValueError, match="finite"):
        filter_expression({"score": float("nan")})


def _lite_server_threads() -> list[str]:
    names = [thread.name for thread in threading.enumerate()]
    return [name for name in names if "_serve" in name or name.startswith("milvus_lite")]


def test_close_stops_the_lite_server_once_nobody_uses_the_path(tmp_path: Path) -> None:
    from milvus_lite.server_manager import server_manager_instance

    path = tmp_path / "milvus.db"
    baseline = len(_lite_server_threads())  # other tests' indexes may still be open
    first = MilvusIndex(path, 4)
    second = MilvusIndex(path, 4, collection="other")
    first.add(np.arange(3), np.eye(3, 4, dtype=np.float32), [{"tenant": "acme"}] * 3)
    first.close()
    assert len(second) == 0  # the server both shared still answers
    assert str(path) in server_manager_instance._servers
    second.close()
    assert str(path) not in server_manager_instance._servers
    for _ in range(50):  # the server's threads wind down asynchronously
        if len(_lite_server_threads()) <= baseline:
            break
        time.sleep(0.1)
    assert len(_lite_server_threads()) <= baseline
    with MilvusIndex(path, 4) as reopened:
        assert len(reopened) == 3
    with pytest.raises(RagkitError, match="closed"):
        reopened.search(np.eye(1, 4, dtype=np.float32), 1)


def test_server_uri(tmp_path: Path) -> None:
    """A ``http://`` URI goes through the server path (here a Milvus gRPC endpoint started on loopback)."""
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    server, database, port = start_server_in_thread(str(tmp_path / "server-data"), host="127.0.0.1", port=0)
    try:
        with MilvusIndex(f"http://127.0.0.1:{port}", 4, collection="remote", token="root:Milvus") as index:
            index.add(np.arange(4), np.eye(4, dtype=np.float32), [{"tenant": "acme"}, {"tenant": "b"}] * 2)
            scores, ids = index.search(np.eye(4, dtype=np.float32), 3, where={"tenant": "acme"})
            assert [set(row[:2]) for row in ids.tolist()] == [{0, 2}] * 4  # only acme's rows, all of them
            assert np.all(ids[:, 2] == -1)
            assert ids[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0)
            assert ids[2, 0] == 2 and scores[2, 0] == pytest.approx(1.0)
            assert len(index) == 4
        with pytest.raises(DimensionMismatchError, match="dimension 4, but 8"):
            MilvusIndex(f"http://127.0.0.1:{port}", 8, collection="remote")
    finally:
        server.stop(grace=1)
        database.close()


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(ImportError, match=r"pip install 'ragkit\[milvus\]'"):
        MilvusIndex(tmp_path / "milvus.db", 4)
