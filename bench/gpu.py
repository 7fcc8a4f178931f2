"""GPU throughput: batched embedding (end to end vs the model's raw forward rate) and batched local generation.

    python bench/gpu.py [--embed-model DIR] [--gen-model DIR | --gen-config DIR] [--chunks N] [--questions N]
                        [--no-warm-up] [--skip-generation]

Embedding, as a user's fresh process meets it: the model's load is timed first (on CUDA it ends with the
embedder's warm-up, which runs every padded batch shape once: counted as load, printed apart), then N chunks of
at most 128 tokens go through ``SentenceTransformerEmbedder.embed_documents`` in the process's first embedding
call (texts in, normalized float32 vectors out: tokenization, transfer, forward, pooling, copy back), then again
(the warm rate), next to the forward pass alone on the same pre-tokenized batches. ``--no-warm-up`` loads the
embedder without its warm-up. Target (issue 16): >= 50,000 chunks/s on one H100 in the first call.

Generation: the same questions answered one at a time and with ``generate_many`` (batched), in generated tokens
per second. Target: batched >= 10x one at a time. ``--gen-config DIR`` builds a model of that config and
tokenizer with random weights (same architecture and cost; for machines the real weights cannot reach).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # ragkit parallelizes across batches itself

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ragkit.connectors.embedders.sentence_transformers import SentenceTransformerEmbedder  # noqa: E402
from ragkit.types import Chunk, Hit  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def corpus_sentences() -> list[str]:
    words = " ".join(p.read_text() for p in sorted(DOCS.glob("*.md"))).split()
    return [" ".join(words[i : i + 60]) for i in range(0, len(words) - 60, 7)]


def make_chunks(embedder: SentenceTransformerEmbedder, n: int, max_tokens: int = 128) -> list[str]:
    """``n`` chunks of 32 to ``max_tokens`` - 2 tokens of docs/ prose (the same chunks as one text at a time,
    tokenized and decoded in batches: one at a time took over 100 s for 200,000 on the GPU machine)."""
    rng = random.Random(0)
    sentences = corpus_sentences()
    texts, cuts = [], []
    for _ in range(n):
        texts.append(" ".join(rng.sample(sentences, 3)))
        cuts.append(rng.randint(32, max_tokens - 2))
    chunks: list[str] = []
    for start in range(0, n, 10_000):
        rows = embedder.tokenizer(texts[start : start + 10_000], add_special_tokens=False)["input_ids"]
        cut = cuts[start : start + 10_000]
        chunks += embedder.tokenizer.batch_decode([row[:c] for row, c in zip(rows, cut, strict=True)])
    return chunks


def progress(message: str) -> None:
    """A line on stderr as each step ends, so that a run cut off still tells how far it got."""
    print(f"[gpu.py] {message}", file=sys.stderr, flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_embedding(model: str, n: int, warm_up: bool = True) -> dict:
    sync()
    started = time.perf_counter()
    embedder = SentenceTransformerEmbedder(model, warm_up=warm_up)
    sync()
    load_s = time.perf_counter() - started
    progress(f"model loaded in {load_s:.1f} s")
    began = time.perf_counter()
    texts = make_chunks(embedder, n)
    progress(f"{n:,} chunks made in {time.perf_counter() - began:.1f} s (not timed)")
    sync()
    started = time.perf_counter()
    vectors = embedder.embed_documents(texts)  # the first call of this process: nothing embedded before it
    sync()
    first_s = time.perf_counter() - started
    progress(f"first call: {n / first_s:,.0f} chunks/s ({first_s:.2f} s)")
    started = time.perf_counter()
    embedder.embed_documents(texts)
    sync()
    second_s = time.perf_counter() - started
    progress(f"second call: {n / second_s:,.0f} chunks/s")

    transformer = embedder.model[0]
    order = np.argsort([-len(t) for t in texts], kind="stable")
    batches = [
        {
            k: v.to(embedder.device)
            for k, v in transformer.tokenizer(
                [texts[i] for i in order[s : s + embedder.batch_size]], padding=True, truncation=True,
                max_length=transformer.max_seq_length, return_tensors="pt",
            ).items()
        }
        for s in range(0, n, embedder.batch_size)
    ]
    sync()
    started = time.perf_counter()
    with torch.inference_mode():
        for inputs in batches:
            hidden = transformer.auto_model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            (hidden * mask).sum(1) / mask.sum(1)
    sync()
    forward = n / (time.perf_counter() - started)
    reference = embedder.model.encode(texts[:256], normalize_embeddings=True, convert_to_numpy=True)
    agreement = float(np.min(np.sum(reference * vectors[:256], axis=1)))
    return {
        "chunks": n, "max_tokens": 128, "device": embedder.device, "batch_size": embedder.batch_size,
        "warm_up_at_load": warm_up, "load_s": round(load_s, 3), "warm_up_s": round(embedder.warm_up_seconds, 3),
        "first_call_s": round(first_s, 3), "end_to_end_chunks_per_s": round(n / first_s),
        "with_load_chunks_per_s": round(n / (load_s + first_s)), "warm_chunks_per_s": round(n / second_s),
        "forward_chunks_per_s": round(forward), "ratio": round(n / first_s / forward, 3),
        "target_chunks_per_s": 50_000, "min_cosine_vs_sentence_transformers_encode": round(agreement, 5),
    }


def random_model(config_dir: str) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = Path(tempfile.mkdtemp(prefix="ragkit-random-model-"))
    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(target)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(target)
    return str(target)


def bench_generation(model: str | None, questions: int, max_new_tokens: int, batch_size: int) -> dict:
    from ragkit.connectors.generators.local import LocalGenerator

    generator = LocalGenerator(model, max_new_tokens=max_new_tokens, batch_size=batch_size)
    passages = corpus_sentences()
    asked = [f"What does ragkit do with {word}?" for word in ("chunks", "vectors", "shards", "graphs", "PDFs")]
    qs = [asked[i % len(asked)] + f" (case {i})" for i in range(questions)]
    hits = [
        [Hit(Chunk(f"c{i}-{j}", f"d{i}", passages[(i * 3 + j) % len(passages)], 0, 1), 1.0, "dense", "docs")
         for j in range(3)]
        for i in range(questions)
    ]
    generator.generate_many(qs[:2], hits[:2])  # warm up
    sync()
    started = time.perf_counter()
    single = [generator.generate(q, h) for q, h in zip(qs, hits, strict=True)]
    single_s = time.perf_counter() - started
    started = time.perf_counter()
    batched = generator.generate_many(qs, hits)
    batched_s = time.perf_counter() - started
    single_tokens = sum(a.meta["new_tokens"] for a in single)
    batched_tokens = sum(a.meta["new_tokens"] for a in batched)
    same = sum(a.text == b.text for a, b in zip(single, batched, strict=True))
    return {
        "model": generator.model_name, "device": generator.device, "questions": questions,
        "batch_size": batch_size, "max_new_tokens": max_new_tokens,
        "one_at_a_time_tokens_per_s": round(single_tokens / single_s, 1),
        "batched_tokens_per_s": round(batched_tokens / batched_s, 1),
        "speedup": round((batched_tokens / batched_s) / (single_tokens / single_s), 2), "target_speedup": 10,
        "identical_answers": f"{same}/{questions}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embed-model", default="all-MiniLM-L6-v2", help="name or directory")
    parser.add_argument("--gen-model", default=None, help="local model directory (default: packaged SmolLM2)")
    parser.add_argument("--gen-config", help="build a random-weight model from this config/tokenizer directory")
    parser.add_argument("--chunks", type=int, default=200_000)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--no-warm-up", action="store_true", help="load the embedder without its warm-up")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    figures: dict = {"gpu": gpu, "torch": torch.__version__}
    figures["embedding"] = e = bench_embedding(args.embed_model, args.chunks, warm_up=not args.no_warm_up)
    met = "met" if e["end_to_end_chunks_per_s"] >= e["target_chunks_per_s"] else "MISSED"
    print(f"GPU: {gpu}")
    print(f"model load                 {e['load_s']:>9.2f} s        (of which warm-up {e['warm_up_s']:.2f} s: every "
          f"padded batch shape run once, counted as load{'' if e['warm_up_at_load'] else '; off'})")
    print(f"embedding, first call      {e['end_to_end_chunks_per_s']:>9,} chunks/s ({e['first_call_s']:.2f} s for "
          f"{e['chunks']:,} chunks; target >= 50,000: {met})")
    print(f"  ... counting the load    {e['with_load_chunks_per_s']:>9,} chunks/s")
    print(f"embedding, second call     {e['warm_chunks_per_s']:>9,} chunks/s (warm)")
    print(f"forward alone              {e['forward_chunks_per_s']:>9,} chunks/s (first call / forward {e['ratio']})")
    if not args.skip_generation:
        model = random_model(args.gen_config) if args.gen_config else args.gen_model
        figures["generation"] = g = bench_generation(model, args.questions, args.max_new_tokens, args.questions)
        figures["generation"]["weights"] = "random (same config)" if args.gen_config else "real"
        print(f"generation one at a time {g['one_at_a_time_tokens_per_s']:>9} tokens/s")
        print(f"generation batched       {g['batched_tokens_per_s']:>9} tokens/s   "
              f"speedup {g['speedup']}x (target >= 10x)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
