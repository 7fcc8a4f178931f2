"""vLLM in process (``vllm.LLM``) for offline batch answering on a GPU; behind the ``vllm`` extra.

For a vLLM *server*, use the ``openai`` generator with ``base_url`` pointing at ``vllm serve``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from ragkit.connectors.generators.prompt import SYSTEM_PROMPT, Messages, build_messages, parse_citations
from ragkit.errors import missing_extra
from ragkit.types import Answer, Hit


def import_vllm() -> ModuleType:
    """The ``vllm`` module, or the ImportError that names ``pip install 'ragkit[vllm]'``."""
    try:
        import vllm
    except ImportError as exc:
        raise missing_extra("vllm", "vllm") from exc
    return vllm


class VLLMGenerator:
    """Answers with a vLLM engine in this process; ``generate_many`` sends all prompts as one batch.

    >>> generator = VLLMGenerator("/models/Qwen2.5-7B-Instruct", gpu_memory_utilization=0.8)
    >>> answers = generator.generate_many(questions, hits_per_question)
    """

    def __init__(
        self,
        model: str,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        context_tokens: int = 1536,
        system_prompt: str = SYSTEM_PROMPT,
        **engine_kwargs: Any,
    ) -> None:
        vllm = import_vllm()
        self.name = "vllm"
        self.model_name = model
        self.context_tokens = context_tokens
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.llm = vllm.LLM(model=model, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.sampling = vllm.SamplingParams(max_tokens=max_new_tokens, temperature=temperature)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _messages(self, question: str, hits: Sequence[Hit]) -> tuple[Messages, tuple[Hit, ...]]:
        return build_messages(question, hits, self.context_tokens, self.count_tokens, self.system_prompt)

    def generate_many(
        self, questions: Sequence[str], hits_per_question: Sequence[Sequence[Hit]]
    ) -> list[Answer]:
        if len(questions) != len(hits_per_question):
            raise ValueError(f"{len(questions)} questions but {len(hits_per_question)} hit lists")
        prompts = [self._messages(q, h) for q, h in zip(questions, hits_per_question, strict=True)]
        outputs = self.llm.chat([messages for messages, _ in prompts], self.sampling, use_tqdm=False)
        answers = []
        for output, (_, used) in zip(outputs, prompts, strict=True):
            completion = output.outputs[0]
            body, citations = parse_citations(completion.text.strip(), used)
            meta = {
                "model": self.model_name,
                "passages": tuple(hit.chunk.id for hit in used),
                "new_tokens": len(completion.token_ids),
                "finish_reason": completion.finish_reason,
            }
            answers.append(Answer(text=body, citations=citations, generator=self.name, meta=meta))
        return answers

    def generate(self, question: str, hits: Sequence[Hit]) -> Answer:
        return self.generate_many([question], [hits])[0]

    def stream(self, question: str, hits: Sequence[Hit]) -> Iterator[str]:
        """The offline engine has no token stream: the whole raw answer arrives as one piece."""
        messages, _ = self._messages(question, hits)
        output = self.llm.chat([messages], self.sampling, use_tqdm=False)[0]
        yield output.outputs[0].text.strip()

    def answer_from_stream(self, question: str, hits: Sequence[Hit], text: str) -> Answer:
        """The answer for the text :meth:`stream` produced, its ``[n]`` renumbered as :meth:`generate` does."""
        _, used = self._messages(question, hits)
        body, citations = parse_citations(text.strip(), used)
        meta = {"model": self.model_name, "passages": tuple(hit.chunk.id for hit in used)}
        return Answer(text=body, citations=citations, generator=self.name, meta=meta)
