"""Hostile inputs through ``ragkit index`` with the default pipeline, as a user runs it (issue 17).

One tree holds good files beside every hostile input the issue lists. ``ragkit index TREE --index IDX --json``
runs with no other flag: the real MiniLM embedder and the knowledge graph (spaCy), as a new user gets them.
The run must exit 3 (partial), report each bad input in the JSON ``errors`` (``source``, ``reason``,
``stage``), index everything else, and leave every good document findable by ``ragkit ask``. A second run
finds the good documents unchanged and retries only the failed ones.

A file that vanishes or changes mid-run is made so honestly: the CLI runs with a ``sitecustomize`` on its
``PYTHONPATH`` that wraps the walk's ``load_file`` to delete one file and rewrite another after the walk
listed their folder, just before each is read. Every CLI run goes through ``run_ragkit``, which fails the
test on a traceback.

Expected outcomes (the loaders' docstrings say the same):

=========================================  ============================================================
the 5,000,000-character single line         indexed (chunks bounded in characters, spaCy fed in pieces)
1 MB of one repeated emoji                  indexed
zero-width and combining characters         indexed as written
a 10,000-column CSV                         each row indexed: text column as text, the rest as meta
a JSONL row with 100k nested brackets       that row reported ("bad JSON: nested too deeply")
HTML with 50,000 nested tags                reported ("HTML nested too deeply")
a PDF whose page tree loops                 reported ("corrupt PDF (... cyclic page references)")
a zip bomb renamed to .txt                  reported ("binary file, not text"), never decompressed
a file that vanishes mid-run                reported ("no such file or directory")
a file that changes mid-run                 indexed with the content read
a FIFO                                      reported ("not a regular file (named pipe)")
a file the user cannot read                 reported ("permission denied"); skipped as root
a symlink out of the tree                   reported ("... outside the indexed folder; not followed")
100 MB of NUL bytes (sparse)                reported ("binary file, not text"), read 8 KiB only
mixed encodings in one file                 reported, naming the first bad byte and its offset
a file name that is not valid UTF-8         indexed, its source written with ``\\xNN`` escapes
=========================================  ============================================================
"""

from __future__ import annotations

import base64
import json
import os
import random
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_run import run_ragkit
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

pytestmark = pytest.mark.slow

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
OUTSIDE = "outside the indexed folder; not followed (use --follow-symlinks)"
NON_UTF8_NAME = os.fsdecode(b"caf\xe9.txt")  # what Python makes of the byte 0xe9 in a name: "caf\udce9.txt"
NON_UTF8_SOURCE = "names/caf\\xe9.txt"  # how the index stores it
CHANGED_TEXT = "Nightjars hunt moths at dusk; this text was written while the run was under way."
MIXED = "Caf\u00e9 au lait, then ".encode() + "cr\u00e8me br\u00fbl\u00e9e".encode("latin-1") + b" and more text"

# Good files: relative path -> (content, a question whose answer only it holds). Rows of one file share it.
GOOD = {
    "good/owls.txt": ("Barn owls hunt voles at night over open meadows, guided by their hearing.",
                      "What do barn owls hunt at night?"),
    "good/ferns.md": ("# Ferns\n\nFerns reproduce with spores released from the underside of their fronds.\n",
                      "How do ferns reproduce?"),
    "good/kites.html": ("<html><head><title>Kites</title></head><body><article><h1>Red kites</h1><p>Red kites "
                        "circle above the hills of Wales looking for carrion to scavenge.</p></article></body>"
                        "</html>", "Where do red kites look for carrion?"),
    "good/ospreys.pdf": ("Ospreys plunge feet first into lakes to catch fish.", "How do ospreys catch fish?"),
    "good/rows.jsonl": ('{"_id": "puffins", "text": "Puffins nest in burrows dug into grassy sea cliffs."}\n',
                        "Where do puffins nest?"),
    "good/rows.csv": ("_id,text\nswallows,Swallows migrate to southern Africa every autumn.\n",
                      "Where do swallows migrate in autumn?"),
}


@dataclass(frozen=True)
class Case:
    """One hostile input: where it lies, and what must become of it."""

    source: str  # relative to the tree; rows as "file:ROW"
    reason: str | None = None  # a substring of the reported reason; None: indexed
    question: str | None = None  # for an indexed one: a question that finds it
    needs_non_root: bool = False


CASES = [
    Case("long/one_line.txt", question="needleword"),
    Case("long/emoji.txt"),
    Case("text/zero_width.txt", question="What does the kingfisher dive for?"),
    Case("rows/wide.csv", question="What do avocets sweep through the mud?"),
    Case("rows/nested.jsonl:2", "bad JSON: nested too deeply"),
    Case("rows/nested.jsonl", question="What do gannets dive into?"),  # the rows around the bad one
    Case("html/nested.html", "HTML nested too deeply (the parser stops at"),
    Case("pdf/page_loop.pdf", "corrupt PDF (PdfReadError: Detected cyclic page references.)"),
    Case("bin/zip_bomb.txt", "binary file, not text"),
    Case("race/a_vanishes.txt", "no such file or directory"),
    Case("race/b_changes.txt", question="What do nightjars hunt at dusk?"),
    Case("special/pipe.txt", "not a regular file (named pipe)"),
    Case("special/locked.txt", "permission denied", needs_non_root=True),
    Case("links/secret.txt", f"symbolic link to {{outside}}/secret.txt {OUTSIDE}"),
    Case("links/outside_folder", f"symbolic link to {{outside}} {OUTSIDE}"),
    Case("bin/nul_100mb.txt", "binary file, not text"),
    Case("text/mixed_encodings.txt", "not valid UTF-8 text (invalid byte 0xe8 at offset 22)"),
    Case(NON_UTF8_SOURCE, question="What are colonies of grey herons called?"),
]
REPORTED = [c for c in CASES if c.reason is not None]
# One per good file (their row files hold one row each) and per indexed hostile input, two rows of nested.jsonl,
# and a second part of the 5,000,000-character line (a text file over 4 MiB loads as parts of at most 4 MiB).
EXPECTED_DOCUMENTS = len(GOOD) + sum(c.reason is None for c in CASES) + 1 + 1

# Put first on the CLI's PYTHONPATH: wraps the walk's load_file so that, after the walk listed race/, one file
# is deleted and one rewritten just before each is read. The variable is removed at once: worker processes the
# CLI spawns never see it.
RACE_DRIVER = textwrap.dedent(
    f"""
    import os

    if os.environ.pop("RAGKIT_TEST_RACE", "") == "1":
        from pathlib import Path

        import ragkit.connectors.loaders.walk as walk

        real_load_file = walk.load_file

        def racing_load_file(path, *args, **kwargs):
            path = Path(path)
            if path.parent.name == "race" and path.name == "a_vanishes.txt":
                path.unlink()
            elif path.parent.name == "race" and path.name == "b_changes.txt":
                path.write_text({CHANGED_TEXT!r})
            return real_load_file(path, *args, **kwargs)

        walk.load_file = racing_load_file
    """
)


def write(root: Path, relative: str, data: str | bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def make_pdf(path: Path, text: str, *, loop: bool = False) -> None:
    """A one-page text PDF; ``loop``: its root ``/Pages`` node also lists itself among its ``/Kids``."""
    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica"),
    }))
    page = writer.add_blank_page(612, 792)
    fonts = DictionaryObject({NameObject("/F1"): font})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): fonts})
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1"))
    page[NameObject("/Contents")] = writer._add_object(stream)
    if loop:
        writer._pages.get_object()[NameObject("/Kids")].append(writer._pages)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        writer.write(handle)


def one_long_line(length: int, tail: str) -> str:
    """``length`` characters on one line: base32 text with no spaces (a token chunker sees one "word"),
    ending in `` tail``."""
    body = base64.b32encode(random.Random(17).randbytes(length * 5 // 8 + 5)).decode().lower()
    return body[: length - len(tail) - 2] + " " + tail + "\n"


def build_tree(root: Path, outside: Path) -> None:
    for relative, (content, _) in GOOD.items():
        if relative.endswith(".pdf"):
            make_pdf(root / relative, content)
        else:
            write(root, relative, content)
    write(root, "long/one_line.txt", one_long_line(5_000_000, "needleword"))
    write(root, "long/emoji.txt", "\U0001f989" * (2**20 // 4) + "\n")  # 1 MB: 262,144 owls
    write(root, "text/zero_width.txt", "The king\u200bfisher\u2060 dives for min\u200cnows; cafe\u0301 "
          "Z\u0351\u0352\u0353algo\u0301\u0302\u0303 te\u0300\u0301\u0302xt and a zero\u200dwidth joiner.\n")
    header = ",".join(["_id", "text", *(f"c{i}" for i in range(2, 10_000))])
    values = ",".join(str(i) for i in range(2, 10_000))
    write(root, "rows/wide.csv", f"{header}\nw1,Avocets sweep their upturned bills through the mud.,{values}\n")
    write(root, "rows/nested.jsonl", b'{"_id": "n1", "text": "Gannets dive into the sea from thirty metres."}\n'
          + b'{"_id": "n2", "text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
          + b'{"_id": "n3", "text": "Shags dry their wings on rocks."}\n')
    write(root, "html/nested.html", "<html><body>" + "<div>" * 50_000 + "deep" + "</div>" * 50_000 + "</body></html>")
    make_pdf(root / "pdf" / "page_loop.pdf", "Looping pages.", loop=True)
    (root / "bin").mkdir()
    with zipfile.ZipFile(root / "bin" / "zip_bomb.txt", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("zeros.bin", "w", force_zip64=True) as member:
            for _ in range(64):
                member.write(bytes(2**20))  # 64 MiB of zeros, about 64 KiB zipped
    with (root / "bin" / "nul_100mb.txt").open("wb") as handle:
        handle.truncate(100 * 2**20)  # sparse: costs no disk
    write(root, "race/a_vanishes.txt", "Written before the run, deleted after the walk listed it.")
    write(root, "race/b_changes.txt", "Old text about larks that is never indexed.")
    (root / "special").mkdir()
    os.mkfifo(root / "special" / "pipe.txt")
    if not IS_ROOT:
        write(root, "special/locked.txt", "Nobody may read this.").chmod(0)
    write(outside, "secret.txt", "The private key passphrase is hunter2.")
    (root / "links").mkdir()
    os.symlink(outside / "secret.txt", root / "links" / "secret.txt")
    os.symlink(outside, root / "links" / "outside_folder")
    write(root, "text/mixed_encodings.txt", MIXED)
    write(root, "names/" + NON_UTF8_NAME, "Grey herons nest in colonies called heronries.")


@dataclass
class Run:
    tree: Path
    outside: Path
    workspace: Path
    index: Path
    first: dict
    second: dict | None = None

    def relative(self, source: str) -> str:
        root = str(self.tree.resolve())
        assert source.startswith(root + "/"), source
        return source[len(root) + 1 :]

    def errors(self, summary: dict) -> dict[str, dict]:
        return {self.relative(e["source"]): e for e in summary["errors"]}

    def ask(self, questions: list[str]) -> list[dict]:
        """``ragkit ask --json --generator extractive`` for each question (one process, ``--file``)."""
        path = self.workspace / "questions.txt"
        path.write_text("\n".join(questions) + "\n")
        result = run_ragkit("ask", "--file", path, "--index", self.index, "--json", "--generator", "extractive",
                            cwd=self.workspace)
        assert result.returncode == 0, result.stderr[-3000:]
        answers = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        assert [a["question"] for a in answers] == questions
        return answers


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The tree indexed once with the default pipeline, files racing the run."""
    workspace = tmp_path_factory.mktemp("hostile-cli")
    tree, outside = workspace / "tree", workspace / "outside"
    build_tree(tree, outside)
    driver = workspace / "driver"
    write(driver, "sitecustomize.py", RACE_DRIVER)
    python_path = os.pathsep.join(p for p in (str(driver), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": python_path, "RAGKIT_TEST_RACE": "1", "RAGKIT_MAX_FILE_MB": ""}
    index = workspace / "idx"
    result = run_ragkit("index", tree, "--index", index, "--json", cwd=workspace, env=env)
    assert result.returncode == 3, f"exit {result.returncode}\n{result.stderr[-5000:]}"
    assert not (tree / "race" / "a_vanishes.txt").exists(), "the race driver did not run"
    return Run(tree, outside, workspace, index, json.loads(result.stdout))


SECRET_QUESTION = "What is the private key passphrase?"
OLD_QUESTION = "What old text about larks is there?"


@pytest.fixture(scope="module")
def answers(run: Run) -> dict[str, dict]:
    """Every question of this module, asked in one ``ragkit ask --file`` run (one model load, not twenty)."""
    questions = [q for _, q in GOOD.values()] + [c.question for c in CASES if c.question]
    questions += [SECRET_QUESTION, OLD_QUESTION]
    return dict(zip(questions, run.ask(questions), strict=True))


def top_sources(run: Run, answer: dict, k: int = 3) -> list[str]:
    return [run.relative(h["source"]) for h in answer["hits"][:k]]


def expected_reasons(run: Run) -> dict[str, str]:
    return {
        c.source: c.reason.format(outside=run.outside.resolve())
        for c in REPORTED
        if c.reason is not None and not (c.needs_non_root and IS_ROOT)
    }


def test_the_run_exits_3_reporting_exactly_the_bad_inputs(run: Run) -> None:
    errors = run.errors(run.first)
    assert run.first["failed"] == len(run.first["errors"]) == len(errors), run.first["errors"]
    assert sorted(errors) == sorted(expected_reasons(run)), [(s, e["reason"]) for s, e in errors.items()]
    assert run.first["added"] == run.first["documents"] == EXPECTED_DOCUMENTS, run.first


@pytest.mark.parametrize("case", CASES, ids=[c.source for c in CASES])
def test_each_hostile_input_is_indexed_or_reported(run: Run, answers: dict[str, dict], case: Case) -> None:
    if case.needs_non_root and IS_ROOT:
        pytest.skip("running as root: a mode-000 file is readable, so nothing would be refused")
    errors = run.errors(run.first)
    if case.reason is not None:
        assert case.source in errors, f"{case.source} not reported; errors: {sorted(errors)}"
        reason = case.reason.format(outside=run.outside.resolve())
        assert reason in errors[case.source]["reason"], errors[case.source]
        return
    reported = expected_reasons(run)
    unexpected = [s for s in errors if (s == case.source or s.startswith(case.source + ":")) and s not in reported]
    assert not unexpected, [errors[s] for s in unexpected]
    if case.question is not None:
        assert case.source in top_sources(run, answers[case.question]), case.question


def test_errors_name_the_stage_that_failed(run: Run) -> None:
    """Each error carries its stage; every input here fails while loading."""
    for error in run.first["errors"]:
        assert error.get("stage") == "load", error


def test_every_good_document_is_found_by_a_query(run: Run, answers: dict[str, dict]) -> None:
    for relative, (_, question) in GOOD.items():
        assert relative in top_sources(run, answers[question]), question
    # One question as a user types it, not from a file.
    result = run_ragkit("ask", "How do ferns reproduce?", "--index", run.index, "--json", "--generator",
                        "extractive", cwd=run.workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert run.relative(payload["hits"][0]["source"]) == "good/ferns.md"


def test_nothing_behind_a_link_out_of_the_tree_or_from_before_a_change_is_indexed(
    run: Run, answers: dict[str, dict]
) -> None:
    for hit in answers[SECRET_QUESTION]["hits"] + answers[OLD_QUESTION]["hits"]:
        assert "hunter2" not in hit["text"] and "larks" not in hit["text"], hit
        assert not hit["source"].startswith(str(run.outside.resolve())), hit


def test_a_second_run_leaves_good_documents_unchanged_and_retries_only_the_failed(run: Run) -> None:
    result = run_ragkit("index", run.tree, "--index", run.index, "--json", cwd=run.workspace,
                        env={"RAGKIT_MAX_FILE_MB": ""})
    assert result.returncode == 3, result.stderr[-3000:]
    second = json.loads(result.stdout)
    assert (second["added"], second["updated"], second["embedded"]) == (0, 0, 0), second
    assert second["unchanged"] == run.first["added"] + run.first["updated"] == run.first["documents"], second
    retried = run.errors(second)
    gone = {"race/a_vanishes.txt"}  # deleted during the first run: nothing left to retry
    assert sorted(retried) == sorted(set(run.errors(run.first)) - gone)
    for source, error in retried.items():
        assert error["reason"] == run.errors(run.first)[source]["reason"], source
