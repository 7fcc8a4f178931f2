"""Readers for evaluation data: BEIR folders and a plain JSONL of users' own questions and gold passages.

BEIR layout (https://github.com/beir-cellar/beir): ``corpus.jsonl`` (``_id``, ``title``, ``text``),
``queries.jsonl`` (``_id``, ``text``, optional ``metadata``) and ``qrels/<split>.tsv`` (``query-id``,
``corpus-id``, ``score``, tab-separated, one header line). ``\\r\\n`` line endings and a UTF-8 byte-order
mark are accepted. Every malformed line is an error naming the file and the line number.

Gold are corpus ids: the evaluation ranks corpus passages, whatever chunks the index holds. A user's own gold
file may also name sources (the files documents came from); :func:`resolve_gold` turns them into the ids of
an index's documents and lists the gold that matches none. Gold *answers*
(for ``ragkit eval --answers``) come from each query's ``metadata``: ``answer`` (a string, or a list of them),
plus ``answer_aliases`` or ``answers`` (lists of strings), as HotpotQA and MuSiQue ship them.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ragkit.errors import RagkitError
from ragkit.types import Document

logger = logging.getLogger("ragkit.eval")

Qrels = Mapping[str, Mapping[str, int]]

ANSWER_KEYS: tuple[str, ...] = ("answer", "answers", "answer_aliases")


class DatasetFormatError(RagkitError, ValueError):
    """An evaluation file that is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class BeirDataset:
    """Queries and graded judgements to evaluate, with the corpus they refer to.

    ``queries`` (id -> text) holds only queries with at least one relevant (grade > 0) judgement; ``qrels``
    (query id -> {corpus id: grade}) holds the judgements of those queries. ``passages`` counts the corpus.
    ``corpus_path`` is None for gold sets evaluated against an existing index (:func:`load_gold_dataset`).
    ``unknown_gold`` lists ``(query id, corpus id)`` judgements whose passage is not in the corpus: they can
    never be retrieved and still count in recall's denominator, as in BEIR. ``query_metadata`` keeps the
    non-empty ``metadata`` object of each kept query; :meth:`gold_answers` reads the gold answers from it.

    >>> ds = load_beir("shared/data/scifact")            # doctest: +SKIP
    >>> len(ds.queries), ds.passages                      # doctest: +SKIP
    (300, 5183)
    """

    name: str
    queries: Mapping[str, str]
    qrels: Qrels
    passages: int
    corpus_path: Path | None = None
    split: str = "test"
    unknown_gold: tuple[tuple[str, str], ...] = ()
    query_metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def gold_answers(self, qid: str) -> tuple[str, ...]:
        """The gold answer of query ``qid`` followed by its aliases (no duplicates); ``()`` when it has none."""
        return _answers_of(self.query_metadata.get(qid, {}))

    @property
    def has_answers(self) -> bool:
        """Whether any query carries a gold answer (``metadata.answer``): what ``--answers`` needs."""
        return any(self.gold_answers(qid) for qid in self.queries)

    def first(self, n: int) -> BeirDataset:
        """The same dataset limited to its first ``n`` queries (file order), e.g. to time a slow generator."""
        if n < 1:
            raise ValueError(f"n must be at least 1 (got {n})")
        kept = dict(list(self.queries.items())[:n])
        return replace(
            self,
            queries=kept,
            qrels={q: self.qrels[q] for q in kept if q in self.qrels},
            unknown_gold=tuple(pair for pair in self.unknown_gold if pair[0] in kept),
            query_metadata={q: m for q, m in self.query_metadata.items() if q in kept},
        )

    def corpus_file(self) -> Path:
        """``corpus_path``, or a DatasetFormatError for a gold set that has none."""
        if self.corpus_path is None:
            raise DatasetFormatError(
                f"dataset {self.name!r} has no corpus file; evaluate it against an index"
            )
        return self.corpus_path

    def documents(self) -> Iterator[Document]:
        """The corpus as Documents (id = corpus id; title kept apart, so chunks embed title + " " + text)."""
        for _, doc in _read_corpus(self.corpus_file()):
            yield doc


def _open_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its ending) for each non-blank line; universal newlines."""
    try:
        with path.open("r", encoding="utf-8-sig", newline=None) as handle:
            for number, line in enumerate(handle, start=1):
                text = line.rstrip("\n")
                if text.strip():
                    yield number, text
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in _open_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DatasetFormatError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def _id_field(path: Path, number: int, record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DatasetFormatError(f"{path}:{number}: missing or invalid {key!r} (expected a string id)")
    return str(value)


def _text_field(path: Path, number: int, record: Mapping[str, Any], key: str, required: bool) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DatasetFormatError(f"{path}:{number}: missing or invalid {key!r} (expected a string)")
    return value


def _answers_of(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    answers: list[str] = []
    for key in ANSWER_KEYS:
        value = metadata.get(key)
        for item in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if isinstance(item, str) and item.strip() and item not in answers:
                answers.append(item)
    return tuple(answers)


def _check_answers(path: Path, number: int, metadata: Mapping[str, Any]) -> None:
    """Gold answers must be strings or lists of strings; anything else is an error naming file and line."""
    for key in ANSWER_KEYS:
        value = metadata.get(key)
        if value is None or isinstance(value, str):
            continue
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise DatasetFormatError(
                f"{path}:{number}: {key!r} must be a string or a list of strings (got {value!r:.60})"
            )


def _read_corpus(path: Path) -> Iterator[tuple[int, Document]]:
    seen: dict[str, int] = {}
    for number, record in _json_lines(path):
        doc_id = _id_field(path, number, record, "_id")
        if doc_id in seen:
            raise DatasetFormatError(
                f"{path}:{number}: duplicate _id {doc_id!r} (first on line {seen[doc_id]})"
            )
        seen[doc_id] = number
        title = _text_field(path, number, record, "title", required=False)
        text = _text_field(path, number, record, "text", required=True)
        yield number, Document(id=doc_id, text=text, source=f"{path}#{doc_id}", title=title)


def _parse_grade(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def read_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """BEIR qrels: ``query-id<TAB>corpus-id<TAB>score`` lines after an optional header line."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    where: dict[tuple[str, str], int] = {}
    first = True
    for number, line in _open_lines(path):
        fields = line.split("\t")
        if len(fields) != 3:
            raise DatasetFormatError(
                f"{path}:{number}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                f"got {len(fields)}: {line[:80]!r}"
            )
        qid, doc_id, raw_grade = (field.strip() for field in fields)
        grade = _parse_grade(raw_grade)
        if first and grade is None:
            first = False
            continue  # the header line
        first = False
        if grade is None:
            raise DatasetFormatError(f"{path}:{number}: score {raw_grade!r} is not an integer grade")
        if not qid or not doc_id:
            raise DatasetFormatError(f"{path}:{number}: empty query-id or corpus-id")
        previous = qrels.setdefault(qid, {}).get(doc_id)
        if previous is not None and previous != grade:
            raise DatasetFormatError(
                f"{path}:{number}: ({qid}, {doc_id}) judged {grade} here and {previous} on line "
                f"{where[(qid, doc_id)]}"
            )
        qrels[qid][doc_id] = grade
        where.setdefault((qid, doc_id), number)
    return qrels


def load_beir(directory: str | os.PathLike[str], split: str = "test") -> BeirDataset:
    """Read a BEIR folder; queries and qrels are limited to queries with a relevant judgement in ``split``.

    The corpus is read once to validate it, count passages and check that gold ids exist; it is not kept in
    memory (:meth:`BeirDataset.documents` streams it again).
    """
    root = Path(directory)
    if not root.is_dir():
        raise DatasetFormatError(
            f"{root}: no such dataset folder (expected corpus.jsonl, queries.jsonl, qrels/)"
        )
    corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for needed in (corpus_path, queries_path):
        if not needed.is_file():
            raise DatasetFormatError(
                f"{needed}: missing; a BEIR folder holds corpus.jsonl, queries.jsonl, qrels/"
            )
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise DatasetFormatError(
            f"{qrels_path}: missing; splits available: {', '.join(splits) or 'none'} "
            "(choose one with split=...)"
        )

    all_qrels = read_qrels(qrels_path)
    qrels = {qid: gold for qid, gold in all_qrels.items() if any(g > 0 for g in gold.values())}
    dropped = len(all_qrels) - len(qrels)
    if dropped:
        logger.info("%s: %d queries have no relevant judgement and are not evaluated", qrels_path, dropped)

    queries: dict[str, str] = {}
    metadata: dict[str, Mapping[str, Any]] = {}
    seen: dict[str, int] = {}
    for number, record in _json_lines(queries_path):
        qid = _id_field(queries_path, number, record, "_id")
        if qid in seen:
            raise DatasetFormatError(
                f"{queries_path}:{number}: duplicate _id {qid!r} (first on line {seen[qid]})"
            )
        seen[qid] = number
        text = _text_field(queries_path, number, record, "text", required=True)
        meta = record.get("metadata")
        if qid in qrels:
            queries[qid] = text
            if meta and isinstance(meta, dict):  # BEIR leaves it out or {}; only the answer keys are read
                _check_answers(queries_path, number, meta)
                metadata[qid] = meta
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise DatasetFormatError(
            f"{qrels_path}: {len(missing)} judged queries have no text in {queries_path} "
            f"(first: {', '.join(missing[:5])})"
        )
    if not queries:
        raise DatasetFormatError(f"{qrels_path}: no query has a relevant (score > 0) judgement")

    corpus_ids: set[str] = set()
    for _, doc in _read_corpus(corpus_path):
        corpus_ids.add(doc.id)
    unknown = tuple((qid, d) for qid in queries for d in qrels[qid] if d not in corpus_ids)
    if unknown:
        logger.warning("%s: %d judged passages are not in %s", qrels_path, len(unknown), corpus_path)
    return BeirDataset(
        name=root.name,
        queries=queries,
        qrels={qid: qrels[qid] for qid in queries},
        passages=len(corpus_ids),
        corpus_path=corpus_path,
        split=split,
        unknown_gold=unknown,
        query_metadata=metadata,
    )


def load_gold_jsonl(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Users' own gold: one ``{"query": "...", "gold": ["doc id", ...]}`` per line.

    Returns ``(queries, qrels)`` with query ids ``q1``, ``q2``, ... in file order. ``gold`` may also map
    doc id -> integer grade for graded relevance. A gold id may be a file path too; :func:`resolve_gold`
    matches ids and paths to an index's documents. Other keys are ignored here; :func:`load_gold_dataset` also
    keeps a gold ``answer`` (and ``answer_aliases``) for ``ragkit eval --answers``.
    """
    queries, qrels, _ = _read_gold_jsonl(path)
    return queries, qrels


def _read_gold_jsonl(
    path: str | os.PathLike[str],
) -> tuple[dict[str, str], dict[str, dict[str, int]], dict[str, Mapping[str, Any]]]:
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: no such gold file (one JSON object per line: query, gold)")
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    answers: dict[str, Mapping[str, Any]] = {}
    for number, record in _json_lines(path):
        query = record.get("query")
        if not isinstance(query, str) or not query.strip():
            raise DatasetFormatError(f"{path}:{number}: 'query' must be a non-empty string")
        gold = record.get("gold")
        if isinstance(gold, list):
            items = [(doc_id, 1) for doc_id in gold]
        elif isinstance(gold, dict):
            items = list(gold.items())
        else:
            raise DatasetFormatError(f"{path}:{number}: 'gold' must be a list of document ids")
        judgements: dict[str, int] = {}
        for doc_id, grade in items:
            if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or doc_id == "":
                raise DatasetFormatError(f"{path}:{number}: gold id {doc_id!r} is not a string id")
            if isinstance(grade, bool) or not isinstance(grade, int):
                raise DatasetFormatError(f"{path}:{number}: grade {grade!r} of {doc_id!r} is not an integer")
            judgements[str(doc_id)] = grade
        if not any(g > 0 for g in judgements.values()):
            raise DatasetFormatError(
                f"{path}:{number}: 'gold' lists no relevant document; add one or drop the line"
            )
        qid = f"q{len(queries) + 1}"
        queries[qid] = query
        qrels[qid] = judgements
        answer_fields = {key: record[key] for key in ANSWER_KEYS if key in record}
        if answer_fields:
            _check_answers(path, number, answer_fields)
            answers[qid] = answer_fields
    if not queries:
        raise DatasetFormatError(f"{path}: no questions (one JSON object per line: query, gold)")
    return queries, qrels, answers


def load_gold_dataset(path: str | os.PathLike[str], passages: int, name: str | None = None) -> BeirDataset:
    """:func:`load_gold_jsonl` wrapped as a corpus-less :class:`BeirDataset` for ``run_eval`` on an index.

    ``passages`` is the number of documents in the index being evaluated (reported, not checked). A line's
    ``answer`` (and ``answer_aliases``) become its gold answers, for ``ragkit eval --answers``. The gold are
    read as written; :func:`resolve_gold` matches them (ids or file paths) to the documents of an index.
    """
    queries, qrels, answers = _read_gold_jsonl(path)
    return BeirDataset(
        name=name or Path(path).stem, queries=queries, qrels=qrels, passages=passages, query_metadata=answers
    )


class GoldCatalog(Protocol):
    """What :func:`resolve_gold` reads from an index's catalog; :class:`ragkit.catalog.Catalog` is one."""

    def document_sources(self, doc_ids: Iterable[str]) -> dict[str, str]: ...

    def documents_of_sources(self, sources: Iterable[str]) -> list[str]: ...

    def sources(self) -> dict[str, list[str]]: ...


@dataclass(frozen=True)
class ResolvedGold:
    """A gold set matched against an index: ``dataset`` judges document ids, ``entries`` counts the gold
    entries as written (one per query and gold id or path), ``unmatched`` lists the ``(query id, gold)`` entries
    that match no document (kept in the qrels, so they count as misses)."""

    dataset: BeirDataset
    entries: int

    @property
    def unmatched(self) -> tuple[tuple[str, str], ...]:
        return self.dataset.unknown_gold


def _path_candidates(gold: str) -> list[str]:
    """``gold`` as the loaders would have written it as a source: as given, and resolved from the current
    directory (``path_source(Path(gold).resolve())``, like ``ragkit delete``)."""
    from ragkit.connectors.loaders import path_source

    candidates = [path_source(gold)]
    try:
        resolved = path_source(Path(gold).resolve())
    except (OSError, RuntimeError, ValueError):  # not a path at all (a NUL character), or a symlink loop
        return candidates
    return list(dict.fromkeys([*candidates, resolved]))


def _under(folder: str, sources: list[str]) -> list[str]:
    """The ``sources`` (sorted) below ``folder``."""
    prefix = folder if folder.endswith(os.sep) else folder + os.sep
    found = []
    for source in sources[bisect.bisect_left(sources, prefix) :]:
        if not source.startswith(prefix):
            break
        found.append(source)
    return found


def _match_gold(golds: Iterable[str], catalog: GoldCatalog) -> dict[str, list[str]]:
    """Each gold id or path -> the ids of the documents it names; ``[]`` when it names none.

    In order: a document id; a source (as stored, or a path resolved from the current directory), which names
    every document the file produced (rows of a CSV or JSONL file, parts of a large file); a folder, which names
    every document of the files under it.
    """
    from ragkit.connectors.loaders import path_source

    golds = list(dict.fromkeys(golds))
    as_ids = {gold: path_source(gold) for gold in golds}  # a name that is not UTF-8 is stored escaped
    known = catalog.document_sources(as_ids.values())
    matches = {gold: [as_ids[gold]] if as_ids[gold] in known else [] for gold in golds}
    rest = {gold: _path_candidates(gold) for gold in golds if not matches[gold]}
    if rest:
        doc_ids = catalog.documents_of_sources({c for candidates in rest.values() for c in candidates})
        by_source: dict[str, list[str]] = {}
        for doc_id, source in catalog.document_sources(doc_ids).items():
            by_source.setdefault(source, []).append(doc_id)
        for gold, candidates in rest.items():
            matches[gold] = sorted({d for c in candidates for d in by_source.get(c, [])})
    folders = {gold: candidates[-1] for gold, candidates in rest.items() if not matches[gold]}
    if folders:
        documents_by_source = catalog.sources()
        sources = sorted(documents_by_source)
        for gold, root in folders.items():
            matches[gold] = sorted({d for s in _under(root, sources) for d in documents_by_source[s]})
    return matches


def resolve_gold(dataset: BeirDataset, catalog: GoldCatalog) -> ResolvedGold:
    """Match a gold set's judgements to the documents of an index (``index.catalog``).

    A gold entry is a document id or a source: a file path as indexed (absolute, or relative to the current
    directory), which makes every document of that file relevant with the entry's grade, or a folder, which
    makes every document below it relevant. An entry that matches nothing stays in the qrels under its own name
    (a miss, as BEIR counts judged passages missing from the corpus) and is listed in ``unknown_gold``.

    >>> resolved = resolve_gold(load_gold_dataset("gold.jsonl", passages=0), index.catalog)   # doctest: +SKIP
    >>> resolved.unmatched                                                                   # doctest: +SKIP
    (('q7', 'docs/missing.md'),)
    """
    matches = _match_gold((gold for judgements in dataset.qrels.values() for gold in judgements), catalog)
    qrels: dict[str, dict[str, int]] = {}
    unmatched: list[tuple[str, str]] = []
    for qid, judgements in dataset.qrels.items():
        resolved: dict[str, int] = {}
        for gold, grade in judgements.items():
            targets = matches[gold] or [gold]
            if not matches[gold]:
                unmatched.append((qid, gold))
            for doc_id in targets:
                resolved[doc_id] = max(grade, resolved.get(doc_id, grade))
        qrels[qid] = resolved
    entries = sum(len(judgements) for judgements in dataset.qrels.values())
    return ResolvedGold(replace(dataset, qrels=qrels, unknown_gold=tuple(unmatched)), entries)
