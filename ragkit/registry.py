"""One registry per extension point: vector backends, embedders, generators, retrieval modes and file loaders.

A registry maps a name to a factory. ragkit's own entries register through the same :meth:`Registry.register`
call a plugin could use, as lazy ``"module:attribute"`` strings, so listing names (CLI choices, settings
validation, error messages) never imports a backend or a model library. Third-party packages add entries
through Python entry points, one group per registry::

    # the plugin's pyproject.toml
    [project.entry-points."ragkit.vector_backends"]
    numpy = "ragkit_numpy_backend:open_numpy_index"

Entry points are read once, on a registry's first lookup or listing, and their code is imported only when the
entry is used; a plugin whose import fails raises :class:`ragkit.errors.PluginError` naming its distribution
then, and leaves the other names usable. What a factory is depends on the registry (and its group):

- ``vector_backends`` (``ragkit.vector_backends``): ``open(directory: Path, dim: int, settings: Mapping, *,
  read_only: bool = False) -> VectorIndex``; ``settings`` is the index's ``[vectors]`` section.
- ``embedders`` (``ragkit.embedders``): ``make(name: str, *, device: str, batch_size: int | None) -> Embedder``;
  a name resolves exactly, then by family (``hashing-64`` -> ``hashing``), else to ``sentence-transformers``.
- ``generators`` (``ragkit.generators``): a ``Generator`` class, called with the generator's options.
- ``retrieval_modes`` (``ragkit.retrieval_modes``): a retriever class (see ``ragkit.pipelines.retrievers``).
- ``loaders`` (``ragkit.loaders``), named by file suffix (``.txt``): ``load(path: Path, fields: RowFields,
  max_file_bytes: int | None) -> Iterator[Document | LoadError]``.

>>> from ragkit.registry import vector_backends
>>> vector_backends.names()
('chroma', 'faiss', 'milvus')
>>> vector_backends.register("memory", "my_package.vectors:open_memory_index")  # or the function itself
"""

from __future__ import annotations

import importlib
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ragkit.errors import ConfigError, PluginError

if TYPE_CHECKING:
    import importlib.metadata

__all__ = [
    "Registry",
    "embedders",
    "generators",
    "load_reference",
    "loaders",
    "registries",
    "reload_plugins",
    "retrieval_modes",
    "vector_backends",
]

T = TypeVar("T")

BUILTIN = "ragkit"


@dataclass(frozen=True)
class _Entry:
    target: Any  # the factory itself, or "module:attribute"
    distribution: str = BUILTIN  # who registered it: "ragkit", or the plugin's distribution "name version"


def load_reference(reference: str) -> Any:
    """The object a ``"package.module:attribute.path"`` string names, importing the module."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{reference!r} is not a 'module:attribute' reference")
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


class Registry(Generic[T]):
    """Names to factories for one extension point, filled by ``register`` calls and the ``group`` entry points.

    ``what`` and ``plural`` word the errors (``unknown vector backend 'x' (valid vector backends: ...)``);
    ``normalize`` maps a name to its canonical form (loaders: ``"TXT"`` -> ``".txt"``).

    >>> modes = Registry("example.modes", "retrieval mode")
    >>> modes.register("dense", "ragkit.pipelines.retrievers:DenseRetriever")
    >>> modes.names()
    ('dense',)
    """

    def __init__(
        self,
        group: str,
        what: str,
        *,
        plural: str | None = None,
        normalize: Callable[[str], str] | None = None,
    ) -> None:
        self.group = group
        self.what = what
        self.plural = plural or f"{what}s"
        self._normalize = normalize or (lambda name: name)
        self._registered: dict[str, _Entry] = {}
        self._plugins: dict[str, _Entry] | None = None  # None: entry points not read yet
        self._merged: dict[str, _Entry] | None = None  # plugins', then registered entries (these win)
        self._loaded: dict[str, T] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Registry({self.group!r}, names={list(self.names())})"

    # -- writing -----------------------------------------------------------------------------------------

    def register(self, name: str, factory: T | str, *, replace: bool = False) -> None:
        """Add ``name``; ``factory`` is the object or a lazy ``"module:attribute"`` string imported on first use.

        A name registered this way wins over a plugin's entry point of the same name. Registering a taken
        name again raises ValueError unless ``replace``.
        """
        key = self._normalize(name)
        if not key:
            raise ValueError(f"a {self.what} needs a non-empty name")
        with self._lock:
            if key in self._registered and not replace:
                raise ValueError(f"{self.what} {key!r} is already registered (pass replace=True to replace it)")
            self._registered[key] = _Entry(factory)
            self._loaded.pop(key, None)
            self._merged = None

    def unregister(self, name: str) -> None:
        """Remove a name added with :meth:`register` (entry points come back with :meth:`reload_plugins`)."""
        key = self._normalize(name)
        with self._lock:
            self._registered.pop(key, None)
            self._loaded.pop(key, None)
            self._merged = None

    def reload_plugins(self) -> None:
        """Forget what the entry points said; they are read again on the next lookup or listing.

        Call it after installing a plugin into a running interpreter (or putting one on ``sys.path``);
        :func:`reload_plugins` does it for every registry.
        """
        importlib.invalidate_caches()  # also forgets importlib.metadata's cached view of sys.path folders
        _forget_entry_points()
        with self._lock:
            if self._plugins:
                for name in self._plugins:
                    if name not in self._registered:
                        self._loaded.pop(name, None)
            self._plugins = None
            self._merged = None

    # -- reading -----------------------------------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        """Every name, sorted: for CLI choices, settings validation and error messages."""
        return tuple(sorted(self._entries()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalize(name) in self._entries()

    def distribution(self, name: str) -> str:
        """Who provides ``name``: ``"ragkit"`` for a built-in or registered entry, else the plugin distribution."""
        return self._entry(name).distribution

    def get(self, name: str) -> T:
        """The factory registered as ``name``, imported on first use.

        Raises ConfigError naming the valid names for an unknown name, and PluginError naming the plugin's
        distribution when a plugin's code fails to import.
        """
        key = self._normalize(name) if isinstance(name, str) else name
        loaded = self._loaded.get(key)
        if loaded is not None:
            return loaded
        entry = self._entry(name)
        value = entry.target
        if isinstance(value, str):
            if entry.distribution == BUILTIN:
                value = load_reference(value)  # a built-in's ImportError already names the extra to install
            else:
                try:
                    value = load_reference(value)
                except Exception as exc:  # noqa: BLE001 - any failure of foreign code becomes one clear error
                    raise PluginError(
                        f"{self.what} {key!r} comes from the plugin distribution {entry.distribution}, which "
                        f"failed to load (entry point {self.group}: {key} = {entry.target}): "
                        f"{type(exc).__name__}: {exc}; reinstall or uninstall that package"
                    ) from exc
        with self._lock:
            self._loaded[key] = value
        return value

    def unknown(self, name: object) -> ConfigError:
        """The error for a name that is not registered, listing the valid ones."""
        return ConfigError(f"unknown {self.what} {name!r} (valid {self.plural}: {', '.join(self.names())})")

    # -- internals ---------------------------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        key = self._normalize(name) if isinstance(name, str) else name
        entry = self._entries().get(key)
        if entry is None:
            raise self.unknown(name)
        return entry

    def _entries(self) -> dict[str, _Entry]:
        merged = self._merged
        if merged is None:
            with self._lock:
                plugins = self._plugins if self._plugins is not None else self._discover()
                merged = self._merged = {**plugins, **self._registered}
        return merged

    def _discover(self) -> dict[str, _Entry]:
        """Read the group's entry points once (no plugin code is imported here)."""
        with self._lock:
            if self._plugins is not None:
                return self._plugins
            found: dict[str, _Entry] = {}
            for point in _entry_points(self.group):
                distribution = _distribution(point)
                key = self._normalize(point.name)
                if key in self._registered or key in found:
                    other = self._registered.get(key) or found[key]
                    warnings.warn(
                        f"{self.what} {key!r} of the plugin distribution {distribution} is ignored: "
                        f"{other.distribution} already provides it",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    continue
                found[key] = _Entry(point.value, distribution)
            self._plugins = found
            return found


_scan_lock = threading.Lock()
_scanned: dict[str, list[importlib.metadata.EntryPoint]] | None = None  # group -> entry points, all groups


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The entry points of ``group``; the installed distributions are read once for every registry."""
    global _scanned
    with _scan_lock:
        if _scanned is None:
            import importlib.metadata

            scanned: dict[str, list[importlib.metadata.EntryPoint]] = {}
            seen: set[str] = set()
            try:
                for dist in importlib.metadata.distributions():  # in sys.path order: the first copy of a name wins
                    # as importlib.metadata.entry_points() does: the name from the .dist-info folder, no parsing
                    name = getattr(dist, "_normalized_name", None) or str(dist.metadata["Name"]).lower()
                    if name in seen:
                        continue
                    seen.add(name)
                    for point in dist.entry_points:
                        scanned.setdefault(point.group, []).append(point)
            except Exception as exc:  # noqa: BLE001 - one package's broken metadata must not stop ragkit
                warnings.warn(f"cannot read the installed packages' entry points: {exc}", RuntimeWarning, stacklevel=4)
            _scanned = scanned
        return list(_scanned.get(group, ()))


def _forget_entry_points() -> None:
    global _scanned
    with _scan_lock:
        _scanned = None


def _distribution(point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    if dist is None:
        return "'(unknown distribution)'"
    try:
        return f"'{dist.name} {dist.version}'"
    except Exception:  # noqa: BLE001 - metadata without a name or a version
        return "'(unnamed distribution)'"


def _suffix(name: str) -> str:
    name = name.strip().lower()
    return name if not name or name.startswith(".") else f".{name}"


vector_backends: Registry[Any] = Registry("ragkit.vector_backends", "vector backend")
embedders: Registry[Any] = Registry("ragkit.embedders", "embedder")
generators: Registry[Any] = Registry("ragkit.generators", "generator")
retrieval_modes: Registry[Any] = Registry("ragkit.retrieval_modes", "retrieval mode")
loaders: Registry[Any] = Registry("ragkit.loaders", "file type", normalize=_suffix)

registries: dict[str, Registry[Any]] = {
    registry.group: registry for registry in (vector_backends, embedders, generators, retrieval_modes, loaders)
}


def reload_plugins() -> None:
    """Read every registry's entry points again on next use (after a plugin is installed or put on sys.path)."""
    for registry in registries.values():
        registry.reload_plugins()


# -- ragkit's own entries, registered the way a plugin registers: by name and lazy reference -----------------

vector_backends.register("faiss", "ragkit.connectors.vectors:open_faiss")
vector_backends.register("milvus", "ragkit.connectors.vectors:open_milvus")
vector_backends.register("chroma", "ragkit.connectors.vectors:open_chroma")

# An exact name first, then a family (``hashing-64`` -> ``hashing``), then sentence-transformers for any name.
embedders.register("sentence-transformers", "ragkit.connectors.embedders:sentence_transformer_embedder")
embedders.register("hashing", "ragkit.connectors.embedders:hashing_embedder")
embedders.register("onnx", "ragkit.connectors.embedders:onnx_embedder")
embedders.register("openvino", "ragkit.connectors.embedders:openvino_embedder")

generators.register("extractive", "ragkit.connectors.generators.extractive:ExtractiveGenerator")
generators.register("local", "ragkit.connectors.generators.local:LocalGenerator")
generators.register("openai", "ragkit.connectors.generators.openai:OpenAIGenerator")
generators.register("vllm", "ragkit.connectors.generators.vllm:VLLMGenerator")

retrieval_modes.register("auto", "ragkit.pipelines.retrievers:AutoRetriever")
retrieval_modes.register("dense", "ragkit.pipelines.retrievers:DenseRetriever")
retrieval_modes.register("bm25", "ragkit.pipelines.retrievers:BM25Retriever")
retrieval_modes.register("hybrid", "ragkit.pipelines.retrievers:HybridRetriever")
retrieval_modes.register("graph", "ragkit.pipelines.retrievers:PageRankRetriever")
retrieval_modes.register("multihop", "ragkit.pipelines.retrievers:MultiHopRetriever")
retrieval_modes.register("graph_hybrid", "ragkit.pipelines.retrievers:GraphHybridRetriever")

for _suffix_name, _loader in (
    (".txt", "walk:text_file"),
    (".md", "walk:text_file"),
    (".markdown", "walk:text_file"),
    (".html", "walk:html_file"),
    (".htm", "walk:html_file"),
    (".pdf", "walk:pdf_file"),
    (".jsonl", "rows:load_jsonl"),
    (".csv", "rows:load_csv"),
):
    loaders.register(_suffix_name, f"ragkit.connectors.loaders.{_loader}")
del _suffix_name, _loader
