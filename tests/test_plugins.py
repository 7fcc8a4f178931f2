"""Third-party plugins: the example numpy backend (examples/plugin) found through its entry point, checked by the
shipped conformance suite, and used by settings, the CLI and a real index; unknown names and broken plugins.

The plugin is "installed" without network or pip: its package and a ``.dist-info`` folder (METADATA and
entry_points.txt, what pip writes) go into a temporary folder put on ``sys.path``, then
``ragkit.registry.reload_plugins()`` reads the entry points again. Teardown undoes both.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cli_run import run_ragkit

import ragkit
from ragkit import registry
from ragkit.config import Settings, parse_settings
from ragkit.conformance import IndexFactory, conformance_corpus, exact_search, shared_index  # noqa: F401 - fixtures
from ragkit.errors import ConfigError, IndexFormatError, PluginError
from ragkit.protocols import VectorIndex
from ragkit.registry import vector_backends
from ragkit.testing import HashingEmbedder, VectorIndexConformance
from ragkit.types import RETRIEVAL_MODES, Document

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugin"
PACKAGE = "ragkit_numpy_backend"


def install_on_disk(
    site: Path, distribution: str, version: str, entry_points: dict[str, dict[str, str]], package: Path | None = None
) -> None:
    """What ``pip install --target site`` leaves: the package (when given) and its ``.dist-info`` metadata."""
    if package is not None:
        shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    lines = []
    for group, points in entry_points.items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {value}" for name, value in points.items())
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example plugin and a broken one "installed" in a folder on sys.path, for this module's tests."""
    site = tmp_path_factory.mktemp("site-packages")
    install_on_disk(
        site, "ragkit-numpy-backend", "0.1",
        {"ragkit.vector_backends": {"numpy": f"{PACKAGE}:open_numpy_index"}}, EXAMPLE / PACKAGE,
    )
    install_on_disk(
        site, "ragkit-broken-plugin", "0.3",
        {"ragkit.vector_backends": {"broken": "ragkit_no_such_module:open_index"}},
    )
    sys.path.insert(0, str(site))
    registry.reload_plugins()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]
        registry.reload_plugins()


# -- the registry sees the plugin, and so do settings and the CLI ------------------------------------------------


def test_the_plugin_is_listed_and_accepted_by_settings(plugin_site: Path) -> None:
    assert {"faiss", "milvus", "chroma", "numpy", "broken"} <= set(vector_backends.names())
    assert vector_backends.names() == tuple(sorted(vector_backends.names()))
    assert vector_backends.distribution("numpy") == "'ragkit-numpy-backend 0.1'"
    assert vector_backends.distribution("faiss") == "ragkit"
    assert parse_settings({"vectors": {"backend": "numpy"}}).vectors.backend == "numpy"
    assert Settings().merged(vectors={"backend": "numpy"}).vectors.backend == "numpy"


def test_the_cli_offers_the_plugin(plugin_site: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_site), os.environ.get("PYTHONPATH")]))}
    result = run_ragkit("index", "--help", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "{broken,chroma,faiss,milvus,numpy}" in result.stdout
    without = run_ragkit("index", "--help", cwd=tmp_path)
    assert "{chroma,faiss,milvus}" in without.stdout


def test_the_cli_indexes_and_answers_with_the_plugin(plugin_site: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_site), os.environ.get("PYTHONPATH")]))}
    (tmp_path / "ragkit.toml").write_text('[embedder]\nmodel = "hashing-64"\n')
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "volcano.md").write_text("# Volcanoes\n\nLava erupts from the volcano and flows down its slopes.\n")
    (docs / "bread.txt").write_text("Sourdough bread rises because wild yeast ferments the dough.\n")
    indexed = run_ragkit("index", "docs", "--index", "idx", "--backend", "numpy", "--no-graph", "--json",
                         cwd=tmp_path, env=env)
    assert indexed.returncode == 0, indexed.stderr
    assert (tmp_path / "idx" / "numpy" / "vectors.npz").is_file()
    asked = run_ragkit("ask", "wild yeast ferments dough", "--index", "idx", "--mode", "dense",
                       "--generator", "extractive", "--json", cwd=tmp_path, env=env)
    assert asked.returncode == 0, asked.stderr
    assert "bread.txt" in asked.stdout


# -- the shipped conformance suite, run against the plugin -------------------------------------------------------


@pytest.fixture(scope="module")
def make_index(plugin_site: Path) -> IndexFactory:
    def make(directory: Path, dim: int) -> VectorIndex:
        return vector_backends.get("numpy")(directory, dim, {"backend": "numpy"})

    return make


class TestNumpyPluginConformance(VectorIndexConformance):
    pass


def test_read_only_never_writes(plugin_site: Path, tmp_path: Path) -> None:
    opener = vector_backends.get("numpy")
    writer = opener(tmp_path, 4, {})
    writer.add(np.arange(3), np.eye(3, 4, dtype=np.float32), [{"n": i} for i in range(3)])
    writer.save()
    stored = (tmp_path / "numpy" / "vectors.npz").read_bytes()
    reader = opener(tmp_path, 4, {}, read_only=True)
    reader.delete(np.array([0]))
    assert len(reader) == 2 and len(writer) == 3
    with pytest.raises(IndexFormatError, match="read-only"):
        reader.save()
    assert (tmp_path / "numpy" / "vectors.npz").read_bytes() == stored
    opener(tmp_path / "nothing", 4, {}, read_only=True).search(np.eye(1, 4, dtype=np.float32), 2)
    assert not (tmp_path / "nothing").exists()


# -- a real index kept in the plugin's backend -------------------------------------------------------------------


def test_an_index_on_the_plugin_backend(plugin_site: Path, tmp_path: Path) -> None:
    settings = Settings().merged(vectors={"backend": "numpy"}, graph={"enabled": False})
    documents = [
        Document("volcano", "Lava erupts from the volcano and flows down its slopes.", "volcano.md"),
        Document("bread", "Sourdough bread rises because wild yeast ferments the dough.", "bread.txt"),
        Document("chess", "The knight moves in an L shape across the chess board.", "chess.txt"),
    ]
    with ragkit.Index.create(tmp_path / "idx", settings=settings, embedder=HashingEmbedder(64)) as index:
        report = index.add_documents(documents)
        assert report.failed == 0
        assert index.manifest.vectors["backend"] == "numpy"
        assert [h.chunk.doc_id for h in index.retrieve("wild yeast ferments dough", k=1, mode="dense")] == ["bread"]
    assert (tmp_path / "idx" / "numpy" / "vectors.npz").is_file()
    with ragkit.Index.open(tmp_path / "idx", embedder=HashingEmbedder(64)) as reopened:
        assert type(reopened.vectors).__module__ == PACKAGE
        assert len(reopened.vectors) == 3
        hits = reopened.retrieve("knight chess board", k=1, mode="dense")
        assert [h.chunk.doc_id for h in hits] == ["chess"]


# -- unknown names and broken plugins ----------------------------------------------------------------------------


def test_an_unknown_name_lists_the_valid_ones() -> None:
    """(Plugins of this module may be listed too: the module's fixture lives until its last test.)"""
    with pytest.raises(ConfigError, match=r"unknown vector backend 'pickledb' \(valid vector backends: .*chroma"):
        vector_backends.get("pickledb")
    with pytest.raises(ConfigError, match=r"'vectors.backend'.*'chroma', 'faiss',? .*'milvus'.*pickledb"):
        parse_settings({"vectors": {"backend": "pickledb"}})
    with pytest.raises(ConfigError, match=r"'retrieval.mode'.*'bm25', 'dense'.*fuzzy"):
        parse_settings({"retrieval": {"mode": "fuzzy"}})
    with pytest.raises(ConfigError, match=r"'generator.name'.*'auto', 'extractive'.*gpt"):
        parse_settings({"generator": {"name": "gpt"}})


def test_a_broken_plugin_fails_when_used_and_names_its_package(plugin_site: Path, tmp_path: Path) -> None:
    assert "broken" in vector_backends and "numpy" in vector_backends
    assert parse_settings({"vectors": {"backend": "broken"}}).vectors.backend == "broken"  # listing: no import
    with pytest.raises(PluginError, match=r"'ragkit-broken-plugin 0\.3'.*ragkit_no_such_module") as failure:
        vector_backends.get("broken")
    assert isinstance(failure.value, ImportError)
    from ragkit.connectors.vectors import open_vector_index

    with pytest.raises(PluginError, match="ragkit-broken-plugin"):
        open_vector_index(tmp_path, 4, {"backend": "broken"})
    assert vector_backends.get("numpy") is not None  # the others still work
    assert {"faiss", "numpy"} <= set(vector_backends.names())


def test_reload_plugins_forgets_a_removed_plugin(tmp_path: Path) -> None:
    install_on_disk(tmp_path, "ragkit-passing-plugin", "1.0", {"ragkit.retrieval_modes": {"sideways": "x:Y"}})
    sys.path.insert(0, str(tmp_path))
    try:
        registry.reload_plugins()
        assert "sideways" in registry.retrieval_modes
        assert parse_settings({"retrieval": {"mode": "sideways"}}).retrieval.mode == "sideways"
    finally:
        sys.path.remove(str(tmp_path))
        registry.reload_plugins()
    assert "sideways" not in registry.retrieval_modes


# -- the Registry itself -----------------------------------------------------------------------------------------


def test_registry_registers_objects_and_lazy_references() -> None:
    modes = registry.Registry("ragkit.tests.nothing", "widget")
    modes.register("real", dict)
    modes.register("lazy", "collections:OrderedDict")
    assert modes.names() == ("lazy", "real")
    assert modes.get("real") is dict
    import collections

    assert modes.get("lazy") is collections.OrderedDict
    with pytest.raises(ValueError, match="already registered"):
        modes.register("real", list)
    modes.register("real", list, replace=True)
    assert modes.get("real") is list
    modes.unregister("real")
    with pytest.raises(ConfigError, match=r"unknown widget 'real' \(valid widgets: lazy\)"):
        modes.get("real")


def test_builtins_are_registered_lazily() -> None:
    assert set(vector_backends.names()) >= {"faiss", "milvus", "chroma"}
    assert set(registry.generators.names()) >= {"extractive", "local", "openai", "vllm"}
    assert set(registry.retrieval_modes.names()) >= set(RETRIEVAL_MODES)
    assert set(registry.embedders.names()) >= {"hashing", "sentence-transformers"}
    assert ".md" in registry.loaders and "TXT" in registry.loaders  # suffixes, normalized
    from ragkit.connectors.loaders import SUPPORTED_SUFFIXES

    assert SUPPORTED_SUFFIXES == frozenset(registry.loaders.names())
