"""What the CPU encoders' tests share: texts that exercise tokenization and truncation, and checks."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

TEXTS = [
    "who wrote the origin of species?",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Ünïcödé façade — naïve café, 東京, emoji 🙂 and numbers 3.14159.",
    "x",
    " ".join(["Mitochondria regulate apoptosis through cytochrome c release."] * 60),  # truncated at 256 tokens
    "BRCA1 mutations increase the lifetime risk of breast and ovarian cancer.",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosines of unit vectors."""
    return np.asarray((a * b).sum(axis=1))


def modules_a_query_process_imports(embedder_name: str, cache: Path) -> list[str]:
    """Which of torch, transformers and sentence-transformers a fresh process imports to embed one query with the
    embedder ``embedder_name`` from the exported models in ``cache``."""
    from ragkit.connectors.embedders.onnx import CACHE_ENV

    code = (
        "import sys\n"
        "from ragkit.connectors.embedders import make_embedder\n"
        f"embedder = make_embedder({embedder_name!r})\n"
        "assert embedder.embed_query('a question').shape == (384,)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))\n"
    )
    env = {**os.environ, CACHE_ENV: str(cache)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return list(ast.literal_eval(done.stdout.strip()))
