"""Document loaders: text, Markdown, HTML, PDF, JSON Lines and CSV files, and folders of them.

A loader is chosen by file suffix through ``ragkit.registry.loaders``, where plugins add suffixes of their own.

``load_sources`` yields a Document for each readable file (or row) and a LoadError for each one that is not,
and never raises for bad input::

    from ragkit.connectors.loaders import load_sources

    for item in load_sources(["docs/"], include=["**/*.md"]):
        ...
"""

from ragkit.connectors.loaders.common import path_source
from ragkit.connectors.loaders.rows import RowFields, load_csv, load_jsonl
from ragkit.connectors.loaders.walk import glob_regex, load_file, load_sources, supported_suffixes

__all__ = [
    "SUPPORTED_SUFFIXES",
    "RowFields",
    "glob_regex",
    "load_csv",
    "load_file",
    "load_jsonl",
    "load_sources",
    "path_source",
    "supported_suffixes",
]


def __getattr__(name: str) -> frozenset[str]:
    if name == "SUPPORTED_SUFFIXES":  # the suffixes of ragkit.registry.loaders, plugins' included, read when asked
        return supported_suffixes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
