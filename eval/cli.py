"""``ragkit eval``: build (or reuse) an index of a dataset's corpus and score every retrieval mode on it.

With ``--answers`` it also answers each question and scores the answers against the gold answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ragkit import registry
from ragkit.connectors.rerankers import RERANK_SUFFIX
from ragkit.types import sha1_hex

if TYPE_CHECKING:
    from ragkit.config import Settings
    from ragkit.eval.answers import Answerer
    from ragkit.eval.datasets import BeirDataset, ResolvedGold
    from ragkit.index import Index
    from ragkit.types import Hit

T = TypeVar("T")
DEFAULT_ANSWER_K = 5


def add_eval_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    sub = commands.add_parser(
        "eval",
        parents=list(parents),
        help="measure recall@k, hit@k, MRR, nDCG... of each retrieval mode on a dataset; --answers: the answers too",
        description="DATASET is a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv), or a JSONL file "
        'of {"query": ..., "gold": [doc ids or file paths]} lines evaluated against an existing --index.',
    )
    sub.add_argument("dataset", type=Path)
    sub.add_argument(
        "--modes", default="dense,bm25,hybrid",
        help="comma-separated retrieval modes; MODE+rerank is MODE re-scored by the retrieval.rerank cross-encoder",
    )
    sub.add_argument(
        "--rerank", nargs="?", const=True, metavar="MODEL",
        help="also evaluate each mode re-scored by a cross-encoder, reported as MODE+rerank: the configured "
        "retrieval.rerank, or MODEL (a local directory or an installed package; nothing is downloaded)",
    )
    sub.add_argument("--k", default="1,2,5,10,20", help="comma-separated cutoffs")
    sub.add_argument("--split", default="test")
    sub.add_argument("--index", type=Path, help="index to use or build (default: a cache keyed by the settings)")
    sub.add_argument("--chunking", action="store_true", help="use the configured chunker, not one chunk per passage")
    sub.add_argument("--backend", choices=registry.vector_backends.names(), help="vector backend of a new index")
    sub.add_argument("--batch-size", type=int, default=64)
    sub.add_argument("--latency-queries", type=int, default=None, help="queries timed alone (default: all)")
    sub.add_argument("--json", action="store_true", help="print the results as JSON")
    sub.add_argument("--report", type=Path, help="write JSON, Markdown, a recall@k plot and per-query results here")
    sub.add_argument("--limit", type=int, help="evaluate only the first N queries (file order)")
    sub.add_argument(
        "--allow-missing-gold", action="store_true",
        help="evaluate a gold file even when none of its gold ids or paths matches a document of the index "
        "(default: refuse; some missing is a warning)",
    )
    answers = sub.add_argument_group(
        "answers", "score generated answers against the dataset's gold answers (queries' metadata.answer)"
    )
    answers.add_argument(
        "--answers", action="store_true",
        help="also answer each question and report exact match, F1, containment, citations, unsupported share "
        "and latency",
    )
    answers.add_argument(
        "--generator", choices=("auto", *registry.generators.names()),
        help="generator for --answers (default: the configured one; auto: the --base-url server if set, the local "
        "model on a GPU, else extractive)",
    )
    answers.add_argument("--model", help="generator model (local directory, or the server's model name)")
    answers.add_argument("--base-url", help="OpenAI-compatible server URL, e.g. http://localhost:8000/v1")
    answers.add_argument(
        "--answer-k", type=int, help=f"chunks retrieved for each answer (default: {DEFAULT_ANSWER_K})"
    )


def _csv(value: str, flag: str, cast: Callable[[str], T]) -> list[T]:
    try:
        items = [cast(part.strip()) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag}: cannot read {value!r}") from None
    if not items:
        raise argparse.ArgumentTypeError(f"{flag}: give at least one value")
    return items


def _cache_root() -> Path:
    base = os.environ.get("RAGKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ragkit"
    )
    return Path(base) / "eval"


def eval_index_dir(dataset: BeirDataset, settings: Settings) -> Path:
    """A cache directory for the index of ``dataset`` built with ``settings``: same inputs, same index."""
    corpus = dataset.corpus_file().resolve()
    stat = corpus.stat()
    from ragkit.connectors.embedders import encoder_name, resolve_backend

    embedder = settings.embedder
    if (embedder.backend, embedder.precision) != ("torch", "fp32"):  # MODEL@onnx...; torch fp32 keeps its old key
        backend = resolve_backend(embedder.model, embedder.backend, embedder.precision, embedder.device)
        model = encoder_name(embedder.model, backend, embedder.precision)
    else:
        model = embedder.model
    key = json.dumps(
        [str(corpus), stat.st_size, int(stat.st_mtime), model,
         settings.chunking.model_dump(), settings.vectors.model_dump(), settings.graph.enabled],
        sort_keys=True,
    )
    return _cache_root() / f"{dataset.name}-{sha1_hex(key)[:12]}"


def _check_answers(dataset: BeirDataset, args: argparse.Namespace) -> None:
    """``--answers`` on a dataset without gold answers is an error, said before any work is done."""
    from ragkit.eval.datasets import DatasetFormatError

    if args.answers and not dataset.has_answers:
        raise DatasetFormatError(
            f"--answers: dataset {dataset.name!r} has no gold answers (no query carries metadata.answer); "
            "answer metrics need a question-answering set such as hotpotqa-train100 or musique-train100"
        )


def _check_gold(path: Path, gold: ResolvedGold, allow_missing: bool) -> None:
    """Gold that matches no document of the index: a warning naming the first few, or an error when none of
    the file's gold matches (usually ids from another index, or paths that were indexed from elsewhere)."""
    from ragkit.eval.datasets import DatasetFormatError

    unmatched = gold.unmatched
    if not unmatched:
        return
    if len(unmatched) == gold.entries and not allow_missing:
        raise DatasetFormatError(
            f"{path}: none of its {gold.entries} gold ids matches a document of the index; gold names document "
            "ids or the files they came from (as indexed, or relative to the current directory): check the ids "
            "against the sources of the index, or pass --allow-missing-gold to evaluate anyway"
        )
    shown = ", ".join(f"{qid}: {name!r}" for qid, name in unmatched[:3]) + (", ..." if len(unmatched) > 3 else "")
    print(
        f"warning: {len(unmatched)} of {gold.entries} gold ids match no document in the index ({shown}); "
        "they count as misses",
        file=sys.stderr,
    )


def _generator_label(settings: Settings) -> str:
    """How the report names the generator: the one that runs (``auto`` resolved), and its model when chosen."""
    from ragkit.connectors.generators import resolve_name

    generator = settings.generator
    name = resolve_name(generator)
    if generator.name == "auto":
        name = f"{name} (auto)"
    return f"{name}:{generator.model}" if generator.model else name


def _answerer(index: Index, settings: Settings) -> Answerer:
    """``answerer(questions, hits)`` for the runner: the configured generator through the query pipeline.

    The generator is built once (a local model loads once) and answers through ``answer_many``, the path
    ``Index.ask_many`` takes, so whatever that path adds to an answer (grounding) is measured too.
    """
    from ragkit.connectors.generators import from_settings
    from ragkit.pipelines.query import answer_many

    generator = from_settings(settings.generator)
    return lambda questions, hits: answer_many(index.store, list(questions), list(hits), generator)


class LabelledModes:
    """The index as ``run_eval`` sees it: ``MODE+rerank`` is MODE re-scored by the configured cross-encoder, any
    other mode is never reranked (whatever ``retrieval.rerank`` says), so each label in the report means one thing.
    """

    def __init__(self, index: Index) -> None:
        self.index = index

    def retrieve_many(self, queries: list[str], k: int, mode: str) -> list[list[Hit]]:
        base = mode.removesuffix(RERANK_SUFFIX)
        return self.index.retrieve_many(queries, k, base, rerank=base != mode)


def cmd_eval(args: argparse.Namespace) -> int:
    from ragkit.config import load_settings
    from ragkit.eval.datasets import load_beir, load_gold_dataset, resolve_gold
    from ragkit.eval.report import format_table, write_report
    from ragkit.eval.runner import run_eval
    from ragkit.index import Index

    modes = _csv(args.modes, "--modes", str)
    if args.rerank is not None:
        modes = [label for mode in modes for label in (mode, mode.removesuffix(RERANK_SUFFIX) + RERANK_SUFFIX)]
    modes = list(dict.fromkeys(modes))  # --rerank beside a MODE+rerank already asked for: once
    unknown = [m for m in modes if m.removesuffix(RERANK_SUFFIX) not in registry.retrieval_modes]
    if unknown:
        valid = ", ".join(registry.retrieval_modes.names())
        raise argparse.ArgumentTypeError(f"--modes: unknown {unknown} (valid: {valid})")
    ks = _csv(args.k, "--k", int)
    answer_options = {"--generator": args.generator, "--model": args.model, "--base-url": args.base_url,
                      "--answer-k": args.answer_k}
    given = [flag for flag, value in answer_options.items() if value is not None]
    if given and not args.answers:
        raise argparse.ArgumentTypeError(f"{', '.join(given)}: only used with --answers; add --answers")
    answer_k = DEFAULT_ANSWER_K if args.answer_k is None else args.answer_k
    if answer_k < 1 or (args.limit is not None and args.limit < 1):
        raise argparse.ArgumentTypeError("--answer-k and --limit must be at least 1")
    settings = load_settings(args.config)
    needs_graph = any(
        getattr(registry.retrieval_modes.get(mode.removesuffix(RERANK_SUFFIX)), "needs_graph", False) for mode in modes
    )
    settings = settings.merged(
        chunking={} if args.chunking else {"strategy": "none"},
        vectors={"backend": args.backend},
        graph={"enabled": needs_graph},
        generator={"name": args.generator, "model": args.model, "base_url": args.base_url},
        retrieval={"rerank": args.rerank if isinstance(args.rerank, str) else None},
    )
    if settings.retrieval.rerank is None and any(m.endswith(RERANK_SUFFIX) for m in modes):
        raise argparse.ArgumentTypeError(
            "--rerank: no cross-encoder is configured; give --rerank MODEL (a local directory or an installed "
            "package) or set retrieval.rerank"
        )
    if args.dataset.is_file():
        if args.index is None:
            raise argparse.ArgumentTypeError("a gold JSONL file is evaluated against an existing index: pass --index")
        index = Index.open(args.index, settings)
        try:
            gold = resolve_gold(
                load_gold_dataset(args.dataset, passages=index.catalog.counts()["documents"]), index.catalog
            )
            _check_gold(args.dataset, gold, args.allow_missing_gold)
            dataset = gold.dataset
            _check_answers(dataset, args)
        except BaseException:
            index.close()
            raise
    else:
        dataset = load_beir(args.dataset, split=args.split)
        _check_answers(dataset, args)  # before the index is built: that can take minutes
        path = args.index or eval_index_dir(dataset, settings)
        index = Index.create(path, settings, exist_ok=True)
        report = index.add([dataset.corpus_file()])
        if report.failed:
            for error in report.errors[:10]:
                print(f"warning: {error}", file=sys.stderr)
    if args.limit is not None:
        dataset = dataset.first(args.limit)
    with index:
        answerer = _answerer(index, settings) if args.answers else None
        result = run_eval(
            dataset, LabelledModes(index), modes, ks, batch_size=args.batch_size,
            overfetch=3 if args.chunking else 1, latency_queries=args.latency_queries,
            answerer=answerer, answer_k=answer_k, generator_name=_generator_label(settings),
        )
    if args.report:
        write_report(result, args.report)
    if args.json:
        print(result.to_json())
    else:
        print(format_table(result))
        if args.report:
            print(f"report written to {args.report}")
    return 0
