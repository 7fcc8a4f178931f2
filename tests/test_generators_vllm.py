"""The in-process vLLM generator: a clear ImportError without the extra; real batches where vLLM runs."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
from servers import shared_cache_root

from ragkit.connectors.generators import make_generator
from ragkit.connectors.generators.vllm import VLLMGenerator
from ragkit.types import Chunk, Hit


def make_hit(index: int, text: str) -> Hit:
    chunk = Chunk(id=f"chunk-{index}", doc_id=f"doc-{index}", text=text, start=0, end=len(text))
    return Hit(chunk=chunk, score=1.0 / (index + 1), retriever="test", source=f"file{index}.md")


HITS = [
    make_hit(0, "Paris is the capital and largest city of France."),
    make_hit(1, "Berlin is the capital of Germany."),
]


def test_without_vllm_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail, whether or not it is installed
    with pytest.raises(ImportError, match=r"pip install 'ragkit\[vllm\]'"):
        VLLMGenerator("any-model")
    with pytest.raises(ImportError, match=r"ragkit\[vllm\]"):
        make_generator("vllm", model="any-model")


def _vllm_runs_here() -> str | None:
    """None when vLLM can run here, else why not (printed in the skip reason)."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not importable here (install ragkit[vllm] on a CUDA machine to run this test)"
    import torch

    if not torch.cuda.is_available():
        return "vllm is installed but no CUDA device is present"
    return None


@pytest.mark.slow
def test_vllm_generates_a_cited_batch(tmp_path_factory: pytest.TempPathFactory) -> None:
    reason = _vllm_runs_here()
    if reason:
        pytest.skip(reason)
    from ragkit.connectors.generators.local import converted_model_dir

    model_dir = converted_model_dir(cache_dir=shared_cache_root(tmp_path_factory))
    generator = VLLMGenerator(
        str(model_dir), max_new_tokens=32, gpu_memory_utilization=0.3, enforce_eager=True
    )
    answers = generator.generate_many(
        ["What is the capital of France?", "What is the capital of Germany?"], [HITS, HITS]
    )
    assert "Paris" in answers[0].text and "Berlin" in answers[1].text
    for answer in answers:
        numbers = [int(n) for group in re.findall(r"\[([\d, ]+)\]", answer.text) for n in group.split(",")]
        assert list(dict.fromkeys(numbers)) == list(range(1, len(answer.citations) + 1))
        assert answer.generator == "vllm"
    assert "".join(generator.stream("What is the capital of France?", HITS)).strip()
