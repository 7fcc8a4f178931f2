"""A CPU query process never imports PyTorch: OpenVINO embeds, spaCy parses, the extractive answer answers.

Importing PyTorch costs about a second and 180 MB a process (``ragkit ask``: 4.0 s and 502 MB with it, 2.4 s and
318 MB without, on 2 cores). It is imported only where something needs it: a torch encoder, a GPU, a local model.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import run_ragkit

from ragkit.devices import nvidia_gpus

LOADED = (  # a line the process prints as it exits: which of these modules it imported
    "import atexit, sys; "
    "atexit.register(lambda: print('LOADED', sorted(m for m in ('torch', 'spacy', 'onnxruntime', 'openvino') "
    "if m in sys.modules)))"
)


def _python(code: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=cwd, timeout=600
    ).stdout


def _loaded(stdout: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith("LOADED "))
    return list(ast.literal_eval(line.removeprefix("LOADED ")))


@pytest.mark.skipif(nvidia_gpus() > 0, reason="this machine has an NVIDIA GPU: PyTorch is asked, as it should be")
def test_no_gpu_is_found_without_importing_torch():
    out = _python(f"{LOADED}; from ragkit.devices import cuda_available; print(cuda_available())")
    assert out.splitlines()[0] == "False"
    assert "torch" not in _loaded(out)


def test_spacy_loads_without_torch_and_annotates_as_with_it():
    text = "Marta Silva works at Kestrel Travel in Lisbon, which João Pereira founded in 2004."
    annotate = (
        f"from ragkit.graph.extract import load_pipeline; doc = load_pipeline()({text!r}); "
        "print([(t.text, t.tag_, t.dep_, t.head.i, t.ent_type_) for t in doc])"
    )
    without = _python(
        f"import sys; {annotate}; print('torch' in sys.modules); import torch; print(torch.ones(2).sum().item())"
    ).splitlines()
    assert without[1] == "False", "loading the spaCy pipeline imported PyTorch"
    assert without[2] == "2.0", "PyTorch must still import normally afterwards"
    with_torch = _python(f"import torch; {annotate}").splitlines()[0]
    assert without[0] == with_torch, "the same annotations with or without PyTorch loaded"


def test_ragkit_ask_with_defaults_imports_no_torch(tmp_path):
    if nvidia_gpus() > 0:
        pytest.skip("this machine has an NVIDIA GPU: the default encoder and generator may be PyTorch's")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "firm.md").write_text(
        "# Kestrel Travel\n\nKestrel Travel was founded by João Pereira in 2004. Marta Silva works at Kestrel "
        "Travel in Lisbon.\n",
        encoding="utf-8",
    )
    assert run_ragkit("index", "notes", cwd=tmp_path).returncode == 0
    manifest = json.loads((tmp_path / ".ragkit" / "manifest.json").read_text())
    assert manifest["graph"] and manifest["embedder"] == "all-MiniLM-L6-v2@openvino"
    code = (
        f"{LOADED}; import sys; from ragkit.cli import main; "
        "sys.argv = ['ragkit', 'ask', 'Who founded the firm Marta Silva works at?']; main()"
    )
    out = _python(code, cwd=tmp_path)
    assert "João Pereira" in out
    assert _loaded(out) == ["openvino", "spacy"]
