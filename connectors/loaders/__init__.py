"""Document loaders: text, Markdown, HTML, PDF, JSON Lines and CSV files, and folders of them.

``load_sources`` yields a Document for each readable file (or row) and a LoadError for each one that is not,
and never raises for bad input::

    from ragkit.connectors.loaders import load_sources

    for item in load_sources(["docs/"], include=["**/*.md"]):
        ...
"""

from ragkit.connectors.loaders.common import path_source
from ragkit.connectors.loaders.rows import RowFields, load_csv, load_jsonl
from ragkit.connectors.loaders.walk import SUPPORTED_SUFFIXES, glob_regex, load_file, load_sources

__all__ = [
    "SUPPORTED_SUFFIXES",
    "RowFields",
    "glob_regex",
    "load_csv",
    "load_file",
    "load_jsonl",
    "load_sources",
    "path_source",
]
