"""Helpers shared by the backends that load Hugging Face models (embedders and the local generator)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


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
