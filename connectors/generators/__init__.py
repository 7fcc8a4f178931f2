"""Generation backends: a question and its retrieved hits become an Answer whose citations map to sources.

``extractive`` needs no model; ``local`` runs a transformers model (the packaged SmolLM2 by default);
``openai`` talks to any OpenAI-compatible server (vLLM, TGI, llama.cpp, hosted APIs); ``vllm`` runs vLLM in
process. :class:`FallbackGenerator` degrades any of them to the extractive answer when it fails or times out.
Backends are imported only when asked for, so ``import ragkit.connectors.generators`` loads no model library.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from ragkit.errors import ConfigError
from ragkit.registry import generators

if TYPE_CHECKING:
    from ragkit.config import GeneratorSettings
    from ragkit.protocols import Generator

GeneratorName = Literal["extractive", "local", "openai", "vllm"]  # the built-in ones
GENERATOR_NAMES: tuple[str, ...] = get_args(GeneratorName)  # with plugins': ragkit.registry.generators.names()

__all__ = [
    "GENERATOR_NAMES",
    "ExtractiveGenerator",
    "FallbackGenerator",
    "GeneratorName",
    "LocalGenerator",
    "OpenAIGenerator",
    "VLLMGenerator",
    "from_settings",
    "make_generator",
    "resolve_name",
]


def _generator_class(name: str) -> type:
    """The class registered as ``name`` in ``ragkit.registry.generators`` (built-ins and plugins alike)."""
    return cast(type, generators.get(name))


def make_generator(name: GeneratorName | str, **options: Any) -> Generator:
    """A generator by its name in ``ragkit.registry.generators``; ``options`` are its constructor's keyword arguments.

    >>> make_generator("openai", base_url="http://127.0.0.1:8000/v1", timeout=30)
    """
    cls = _generator_class(name)
    parameters = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(options) - set(parameters))
    if unknown and not takes_any:
        valid = ", ".join(p for p in parameters if parameters[p].kind is not inspect.Parameter.VAR_POSITIONAL)
        raise ConfigError(
            f"generator {name!r}: unknown option(s) {', '.join(unknown)} (valid options: {valid})"
        )
    return cls(**options)


def resolve_name(settings: GeneratorSettings) -> GeneratorName | str:
    """The generator ``auto`` stands for: ``openai`` when a server is configured (``base_url``), ``local`` when
    a CUDA GPU is present, else ``extractive``.

    Measured on 2 CPU cores, the packaged SmolLM2-135M takes ~20 s an answer and often loops or invents; the
    extractive answer takes milliseconds and every sentence is a cited source sentence. Other names pass through.
    """
    if settings.name != "auto":
        return settings.name
    if settings.base_url:
        return "openai"
    from ragkit.devices import cuda_available

    return "local" if cuda_available() else "extractive"


def from_settings(settings: GeneratorSettings, *, degrade: bool = True) -> Generator:
    """The generator that a ``[generator]`` section of ragkit.toml describes.

    Model-backed generators are wrapped in :class:`FallbackGenerator` (unless ``degrade=False``), so a failure
    or a run past ``timeout_s`` yields the extractive answer marked degraded. A plugin's generator class is
    built by its ``from_settings(settings)`` classmethod when it has one, else given the settings its
    constructor names (``model``, ``max_new_tokens``, ``context_tokens``, ``base_url``, ``api_key``, ``timeout``).
    """
    name = resolve_name(settings)
    if name == "extractive":
        return make_generator("extractive")
    options: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "context_tokens": settings.context_tokens,
    }
    if name not in GENERATOR_NAMES:
        return _plugin_generator(name, settings, options, degrade=degrade)
    if name == "local":
        options["model"] = settings.model
    elif name == "openai":
        options.update(
            base_url=settings.base_url,
            api_key=settings.api_key,
            model=settings.model,
            timeout=settings.timeout_s,
        )
    elif name == "vllm":
        if not settings.model:
            raise ConfigError(
                "generator.model: the 'vllm' generator needs a model (a local directory or name)"
            )
        options["model"] = settings.model
    generator = make_generator(name, **options)
    if not degrade:
        return generator
    from ragkit.connectors.generators.fallback import FallbackGenerator

    return FallbackGenerator(generator, timeout_s=settings.timeout_s)


def _plugin_generator(name: str, settings: GeneratorSettings, options: dict[str, Any], *, degrade: bool) -> Generator:
    cls = _generator_class(name)
    build = getattr(cls, "from_settings", None)
    if callable(build):
        generator: Generator = build(settings)
    else:
        options.update(
            model=settings.model, base_url=settings.base_url, api_key=settings.api_key, timeout=settings.timeout_s
        )
        parameters = inspect.signature(cls).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        generator = make_generator(name, **{k: v for k, v in options.items() if takes_any or k in parameters})
    if not degrade:
        return generator
    from ragkit.connectors.generators.fallback import FallbackGenerator

    return FallbackGenerator(generator, timeout_s=settings.timeout_s)


def __getattr__(attribute: str) -> Any:
    """Lazy access to the backend classes, so importing this package stays cheap."""
    modules = {
        "ExtractiveGenerator": "extractive",
        "FallbackGenerator": "fallback",
        "LocalGenerator": "local",
        "OpenAIGenerator": "openai",
        "VLLMGenerator": "vllm",
    }
    if attribute in modules:
        import importlib

        module = importlib.import_module(f"ragkit.connectors.generators.{modules[attribute]}")
        return getattr(module, attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
