"""The ``ragkit`` command: index, ask, stats, delete, repair, eval, serve, mcp.

Exit codes: 0 success, 1 fatal error, 2 bad usage, 3 partial success (some files failed, the rest is indexed).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ragkit import registry
from ragkit.config import Settings, default_index_dir, load_settings
from ragkit.errors import RagkitError

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def _key_values(pairs: Sequence[str] | None, flag: str) -> dict[str, str]:
    result = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{flag} expects KEY=VALUE, got {pair!r}")
        result[key] = value
    return result


def build_parser() -> argparse.ArgumentParser:
    # --config and --debug work before or after the command; SUPPRESS keeps a subcommand's default from
    # overwriting a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default=argparse.SUPPRESS, help="settings file (default: ./ragkit.toml when present)"
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an unexpected error"
    )
    parser = argparse.ArgumentParser(
        prog="ragkit", description="Index documents and answer questions about them.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_parser = functools.partial(commands.add_parser, parents=[common])

    def with_index(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--index", type=Path, help="index directory (default: $RAGKIT_INDEX or ./.ragkit)")
        sub.add_argument("--json", action="store_true", help="print machine-readable JSON")

    index = add_parser("index", help="index files and directories (only changed documents)")
    index.add_argument("sources", nargs="+", help="files or directories")
    with_index(index)
    index.add_argument("--sync", action="store_true", help="also remove documents whose files are gone")
    index.add_argument("--no-graph", action="store_true", help="skip knowledge-graph extraction (new index only)")
    index.add_argument(
        "--backend", choices=registry.vector_backends.names(), help="vector backend (new index only)"
    )
    index.add_argument("--uri", help="Milvus or Chroma server URI (new index only)")
    index.add_argument("--shards", type=int, help="number of vector shards (new index only)")
    index.add_argument("--meta", action="append", metavar="KEY=VALUE", help="tag every chunk (repeatable)")
    index.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="follow symbolic links that lead outside the folders being indexed (default: report and skip them)",
    )

    ask = add_parser("ask", help="answer a question from the index, with numbered sources")
    ask.add_argument("question", nargs="?", help="the question")
    with_index(ask)
    ask.add_argument("--file", type=Path, help="answer every line of this file (JSON lines with --json)")
    ask.add_argument("--mode", choices=registry.retrieval_modes.names())
    ask.add_argument("--k", type=int)
    ask.add_argument(
        "--generator",
        choices=("auto", *registry.generators.names()),
        help="default auto: the --base-url server if set, the local model on a GPU, else extractive",
    )
    ask.add_argument("--model", help="generator model (local directory, or the server's model name)")
    ask.add_argument("--base-url", help="OpenAI-compatible server URL, e.g. http://localhost:8000/v1")
    ask.add_argument("--where", action="append", metavar="KEY=VALUE", help="only chunks tagged so (repeatable)")
    ask.add_argument(
        "--rerank", nargs="?", const=True, metavar="MODEL",
        help="re-score the mode's top hits with a cross-encoder: the configured retrieval.rerank, or MODEL (a local "
        "directory or an installed package; nothing is downloaded)",
    )
    ask.add_argument("--explain", action="store_true", help="show why each cited chunk was retrieved")
    ask.add_argument(
        "--stream", action="store_true",
        help="print the answer as it is generated, then its sources (one QUESTION; not with --json or --file)",
    )

    stats = add_parser("stats", help="counts and settings of an index")
    with_index(stats)

    delete = add_parser("delete", help="delete a document by id, or every document of a source")
    delete.add_argument("target", metavar="DOC_ID_OR_SOURCE")
    with_index(delete)

    repair = add_parser(
        "repair", help="bring the saved vectors and BM25 index up to the catalog (after a crash); readers never do"
    )
    with_index(repair)

    from ragkit.eval.cli import add_eval_parser

    add_eval_parser(commands, parents=[common])
    from ragkit.serve.cli import add_serve_parsers

    add_serve_parsers(commands, parents=[common])
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def _index_dir(args: argparse.Namespace) -> Path:
    return args.index or default_index_dir()


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)  # never split a path across lines


def cmd_index(args: argparse.Namespace) -> int:
    from ragkit.index import Index

    settings = _settings(args)
    settings = settings.merged(
        vectors={"backend": args.backend, "uri": args.uri, "shards": args.shards},
        graph={"enabled": False} if args.no_graph else {},
        loaders={"follow_symlinks": True} if args.follow_symlinks else {},
    )
    tags = _key_values(args.meta, "--meta")
    path = _index_dir(args)
    interactive = sys.stderr.isatty() and not args.json
    with Index.create(path, settings, exist_ok=True) as index:
        if interactive:
            report = _index_with_progress(index, args.sources, tags, args.sync)
        else:
            report = index.add(args.sources, meta=tags, sync=args.sync)
        summary = {**report.as_dict(), "index": str(path), **index.catalog.counts()}
    if args.json:
        print(json.dumps(summary))
    else:
        from rich.markup import escape

        err = _console(stderr=True)
        for error in report.errors:
            err.print(f"[red]error[/red] {escape(f'[{error.stage}] {error.source}: {error.reason}')}")
        print(
            f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
            f"{report.removed} removed, {report.failed} failed; {report.chunks} chunks embedded "
            f"({report.embedded} new vectors) in {report.seconds:.1f}s -> {path} "
            f"({summary['documents']} documents, {summary['chunks']} chunks)"
        )
    return EXIT_PARTIAL if report.failed else EXIT_OK


def _index_with_progress(index: Any, sources: list[str], tags: dict[str, str], sync: bool) -> Any:
    with _progress_bars(_console(stderr=True)) as bar:
        return _IndexProgress(bar).add(index, sources, tags=tags, sync=sync)


def _progress_bars(console: Any) -> Any:
    """A rich Progress showing each task's label, bar, count (``3/120``) and time remaining."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=False)


class _IndexProgress:
    """The bars of ``ragkit index`` on a terminal: files loaded out of the files counted first (so that rich
    shows an ETA), then chunks embedded and the graph built, as the pipeline reports them.

    The pipeline's ``progress("load", ...)`` counts documents, and a CSV or JSONL file holds many: the files are
    counted by the loaders' own walk (``iter_files``) and the bar advances as the loaded items' sources move on
    to the next file. Example::

        with _progress_bars(Console(stderr=True)) as bar:
            report = _IndexProgress(bar).add(index, ["docs/"], sync=True)
    """

    LABELS = {"load": "loading files", "embed": "embedding chunks", "graph": "building graph"}

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.tasks: dict[str, Any] = {}

    def add(self, index: Any, sources: Sequence[str], *, tags: dict[str, str] | None = None, sync: bool = False) -> Any:
        """What ``index.add(sources, meta=tags, sync=sync)`` does, with the progress shown on ``self.bar``."""
        from ragkit.connectors.loaders import load_sources
        from ragkit.connectors.loaders.walk import iter_files
        from ragkit.pipelines import indexing

        # indexing.add_sources with the loaded items watched (tests/test_progress.py checks that they agree)
        loaders = index.settings.loaders
        walk = {"include": loaders.include, "exclude": loaders.exclude, "follow_symlinks": loaders.follow_symlinks}
        self.tasks["load"] = self.bar.add_task("counting files", total=None)
        files = self._file_sources(iter_files(sources, **walk))
        self.bar.update(self.tasks["load"], description=self.LABELS["load"], total=len(files))
        items = self._track_files(load_sources(sources, fields=loaders.row_fields(), **walk), files)
        return indexing.add_items(
            index.store, items, tags=tags or {}, sync_scope=sources if sync else None, progress=self,
            replace_row_files=True,
        )

    @staticmethod
    def _file_sources(paths: Iterable[Path]) -> set[str]:
        from ragkit.connectors.loaders.common import file_source

        return {file_source(path) for path in paths}

    def _track_files(self, items: Iterable[Any], files: set[str]) -> Iterator[Any]:
        """``items`` unchanged; a counted file is done when the items of the next one begin, or at the end."""
        from ragkit.types import LoadError

        started = 0
        for item in items:
            source = item.source
            if source not in files and isinstance(item, LoadError):
                source = source.rpartition(":")[0]  # a row of a CSV or JSONL file is "path:row"
            if source in files:
                files.discard(source)
                self.bar.update(self.tasks["load"], completed=started)
                started += 1
            yield item
        self.bar.update(self.tasks["load"], completed=started)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "load":  # documents, not files: _track_files moves the files bar
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(self.LABELS.get(stage, stage), total=total or None)
        self.bar.update(self.tasks[stage], completed=done, total=total or None)


def cmd_ask(args: argparse.Namespace) -> int:
    from ragkit.connectors.generators import from_settings
    from ragkit.index import Index
    from ragkit.pipelines.query import ground_answers, stream_answer

    if (args.question is None) == (args.file is None):
        print("ragkit ask: give a QUESTION or --file, not both", file=sys.stderr)
        return EXIT_USAGE
    if args.stream and (args.json or args.file):
        print(
            "ragkit ask: --stream prints one answer as it is generated; it cannot be combined with "
            f"{'--json' if args.json else '--file'} (drop --stream for complete answers)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    settings = _settings(args)
    settings = settings.merged(
        generator={"name": args.generator, "model": args.model, "base_url": args.base_url},
        retrieval={"mode": args.mode, "k": args.k, "rerank": args.rerank if isinstance(args.rerank, str) else None},
    )
    rerank = True if args.rerank is not None else None  # without --rerank: as configured
    where = _key_values(args.where, "--where") or None
    questions = [args.question] if args.question else _read_questions(args.file)
    with Index.open(_index_dir(args), settings) as index:
        generator = from_settings(settings.generator)
        started = time.perf_counter()
        hits = index.retrieve_many(questions, where=where, rerank=rerank)
        retrieved = time.perf_counter()
        if args.json or args.file:
            generate_many = getattr(generator, "generate_many", None)
            answers = generate_many(questions, hits) if generate_many else [
                generator.generate(q, h) for q, h in zip(questions, hits, strict=False)
            ]
            generated = time.perf_counter()
            answers = ground_answers(index.store, answers, hits)
            timings = {
                "retrieve": (retrieved - started) * 1000,
                "generate": (generated - retrieved) * 1000,
                "ground": (time.perf_counter() - generated) * 1000,
            }
            for question, answer, question_hits in zip(questions, answers, hits, strict=False):
                payload = _answer_json(question, answer, question_hits, timings, len(questions))
                print(json.dumps(payload, ensure_ascii=False)) if args.json else _print_answer(
                    answer, question_hits, args.explain
                )
            return EXIT_OK
        stream = stream_answer(index.store, questions[0], hits[0], generator)
        if args.stream:
            _print_streamed(stream, hits[0], args.explain)
        else:
            _print_answer(_draft_while_generating(stream), hits[0], args.explain)
    return EXIT_OK


def _read_questions(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RagkitError(f"{path}: cannot read questions ({exc})") from None
    return [line.strip() for line in lines if line.strip()]


def _draft_while_generating(stream: Any) -> Any:
    """Show an ``AnswerStream`` on a terminal as it is generated; return its checked answer.

    The streamed text is a draft: it is cleared when generation ends, and the caller prints the answer once it
    has been checked against its sources (markers renumbered, unsupported sentences marked). Off a terminal only
    that final answer is printed.
    """
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    if stream.generator.name == "extractive":  # no model: nothing to wait for
        return stream.answer
    shown = ""
    draft = Console(highlight=False)  # wraps long lines, so that clearing the draft clears all of it
    with Live(Text(""), console=draft, auto_refresh=False, transient=True) as live:
        for delta in stream:
            shown += delta
            live.update(Text(shown, style="dim"), refresh=True)
    return stream.answer


def _print_streamed(stream: Any, hits: list[Any], explain: bool) -> None:
    """``ask --stream``: each delta of an ``AnswerStream`` printed as it comes, then what follows the answer in
    :func:`_print_answer`'s output. Text already printed cannot be marked: when checking the answer against its
    sources changed it (citations corrected), the checked answer follows; otherwise the unsupported sentences are
    listed after the text."""
    from rich.text import Text

    for delta in stream:
        sys.stdout.write(delta)
        sys.stdout.flush()
    answer = stream.answer
    sys.stdout.write("\n")
    sys.stdout.flush()
    out = _console()
    if answer.text != stream.draft:
        out.print("\n[dim]checked against the sources:[/dim]")
        out.print(_marked_text(answer))
    elif answer.unsupported:
        out.print()
        for sentence in answer.unsupported:
            out.print(Text.assemble(("unsupported:", "yellow"), " ", sentence))
    _print_sources(out, answer, hits, explain)


def _answer_json(question: str, answer: Any, hits: list[Any], timings: dict[str, float], batch: int) -> dict:
    """``ask --json``'s line: the answer as the server's ``/v1/ask`` writes it (one shared definition,
    ``ragkit.serve.schemas.answer_json``), with this run's timings per question."""
    from ragkit.serve.schemas import answer_json

    return answer_json(question, answer, hits) | {
        "timings_ms": {k: round(v / batch, 2) for k, v in timings.items()} | {"batch": batch}
    }


UNSUPPORTED_MARK = " [unsupported]"


def _marked_text(answer: Any) -> Any:
    """The answer as rich Text, each sentence that no source supports followed by a yellow ``[unsupported]``."""
    from rich.text import Text

    text, cursor = Text(), 0
    for sentence in answer.unsupported:
        at = answer.text.find(sentence, cursor)
        if at < 0:
            continue
        text.append(answer.text[cursor : at + len(sentence)])
        text.append(UNSUPPORTED_MARK, style="yellow")
        cursor = at + len(sentence)
    text.append(answer.text[cursor:])
    return text


def _print_answer(answer: Any, hits: list[Any], explain: bool) -> None:
    out = _console()
    out.print(_marked_text(answer))
    _print_sources(out, answer, hits, explain)


def _print_sources(out: Any, answer: Any, hits: list[Any], explain: bool) -> None:
    """What follows an answer's text: who answered (degraded or not, unsupported sentences), then its sources."""
    from rich.markup import escape

    note = f" (degraded: {escape(answer.reason)})" if answer.degraded else ""
    if answer.unsupported:
        count = len(answer.unsupported)
        note += f"; {count} sentence{'s' if count > 1 else ''} supported by no source"
    out.print(f"\n[dim]answered by {answer.generator}{note}[/dim]")
    numbered = list(enumerate(answer.citations, start=1))
    if not numbered:  # the answer cites nothing: show what was retrieved
        out.print("[bold]Retrieved[/bold]")
        numbered = list(enumerate(hits, start=1))
    else:
        out.print("[bold]Sources[/bold]")
    for number, hit in numbered:
        where = f"{hit.source}:{hit.chunk.start}-{hit.chunk.end}"
        page = f" p.{hit.chunk.meta['page']}" if "page" in hit.chunk.meta else ""
        out.print(f"  [{number}] {where}{page}  (score {hit.score:.3f})", markup=False)
        if explain and hit.explain:
            for line in _explain_lines(hit.explain):
                out.print(f"      {line}", markup=False)


RERANK_KEYS = ("rerank_score", "first_stage_rank")


def _explain_lines(explain: Any) -> list[str]:
    """Why a hit was retrieved: what its mode said (a graph path, seeds), then the reranker's score and the rank
    the mode gave it."""
    from ragkit.pipelines.graph_query import describe

    lines = []
    first_stage = {key: value for key, value in explain.items() if key not in RERANK_KEYS}
    if first_stage:
        lines.append(f"why: {describe(first_stage)}")
    if "rerank_score" in explain:
        rank = explain.get("first_stage_rank")
        lines.append(
            f"reranked: cross-encoder score {explain['rerank_score']:.3f}"
            + (f", rank {rank} before reranking" if rank is not None else "")
        )
    return lines


def cmd_stats(args: argparse.Namespace) -> int:
    from ragkit.index import Index

    with Index.open(_index_dir(args), _settings(args)) as index:
        stats = index.stats()
    if args.json:
        print(json.dumps(stats))
    else:
        for key, value in stats.items():
            print(f"{key:>12}: {value}")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    from ragkit.index import Index

    with Index.open(_index_dir(args), _settings(args)) as index:
        removed = index.delete(args.target)
    if args.json:
        print(json.dumps({"removed": removed}))
    elif removed:
        print(f"removed {len(removed)} document(s): {', '.join(removed[:10])}{' ...' if len(removed) > 10 else ''}")
    else:
        print(f"nothing matched {args.target!r}", file=sys.stderr)
        return EXIT_FATAL
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    from ragkit.index import Index

    with Index.open(_index_dir(args), _settings(args)) as index:
        before = index.repair()
        after = index.store.saved_generations()
    if args.json:
        print(json.dumps({"before": before, "after": after}))
        return EXIT_OK
    behind = [name for name in ("vectors", "bm25") if before[name] != before["catalog"]]
    if behind:
        print(f"repaired {' and '.join(behind)}: now at catalog generation {after['catalog']}")
    else:
        print(f"nothing to repair: everything is at catalog generation {after['catalog']}")
    return EXIT_OK


COMMANDS = {"index": cmd_index, "ask": cmd_ask, "stats": cmd_stats, "delete": cmd_delete, "repair": cmd_repair}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.config, args.debug = getattr(args, "config", None), getattr(args, "debug", False)
    # TOKENIZERS_PARALLELISM is left as the user set it (on by default): indexing tokenizes documents in batches
    # spread over the cores, and ragkit starts no process by fork (the spaCy workers are spawned)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # model loading bars are noise in a CLI
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # each bad PDF is reported once, as a LoadError
    try:
        if args.command == "eval":
            from ragkit.eval.cli import cmd_eval

            return cmd_eval(args)
        if args.command in ("serve", "mcp"):
            from ragkit.serve.cli import cmd_mcp, cmd_serve

            return cmd_serve(args) if args.command == "serve" else cmd_mcp(args)
        return COMMANDS[args.command](args)
    except argparse.ArgumentTypeError as exc:
        print(f"ragkit {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RagkitError, OSError, ImportError) as exc:
        if args.debug:
            raise
        print(f"ragkit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("interrupted; the index keeps its last committed state", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug must still end in one clear line, not a traceback
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"ragkit {args.command}: unexpected error: {type(exc).__name__}"
            f"{': ' + message if message else ''} (run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())
