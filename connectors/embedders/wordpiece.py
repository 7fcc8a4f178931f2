"""Batch tokenization for BERT-style WordPiece tokenizers with numpy and a word cache, identical to the Rust one.

The Hugging Face tokenizer spends its time per character and per word in Rust objects (normalized strings with
alignments, pre-token strings, token strings): about 215-235 µs for a 265-character chunk on one core of the 2-core
machine, which keeps a 16-core host below the rate of MiniLM's forward on an H200. Yet for a BERT tokenizer every
step but one is a function of a single character, and the remaining one, WordPiece, of a single word:

- added tokens such as ``[SEP]`` are cut out of the raw text first (leftmost-longest) and become one id each;
- the ``BertNormalizer`` maps each character on its own to nothing (control characters, and accents once NFD has
  split them off), to a space, to one character (lowercased, accent stripped), or to `` c `` (CJK ideographs);
- the ``BertPreTokenizer`` splits the result on whitespace and isolates each punctuation character;
- ``WordPiece`` turns each of those words into ids, independently of the others.

:class:`WordPieceBatcher` therefore asks the Rust normalizer and pre-tokenizer once about every character of the
Basic Multilingual Plane and keeps the answers in two tables. A batch is then one array of code points, classified
and mapped by table lookups, cut into words and hashed by numpy; each word's ids come from a cache that the Rust
WordPiece model fills on a miss. A text with a character the tables cannot vouch for is left to the Rust
tokenizer: a character outside the BMP or unassigned in Python's Unicode tables, or one whose normalized form has
another shape than the above or combines (a non-zero canonical combining class: NFD may reorder it against its
neighbours). Words are keyed by two independent 64-bit hashes, and a word whose first hash another word already
holds is never cached.
"""

from __future__ import annotations

import copy
import json
import threading
import unicodedata
from typing import TYPE_CHECKING, TypeGuard

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

WORD, SPACE, ALONE, DROP, OTHER = range(5)  # a character: in a word, a separator, a word alone, removed, unvouched
_BMP, _UNICODE = 0x10000, 0x110000  # code points from _UNICODE on stand for added tokens (and one for DROP)
_LONG = 128  # hash salts by word length; longer words share one (beyond WordPiece's 100 characters: [UNK])


class WordPieceBatcher:
    """Padded int32 ids and lengths for a batch of texts, equal to what the Rust tokenizer gives the model.

    ``tokenizer`` is a Hugging Face fast tokenizer whose shape :meth:`supports`; ``max_length`` counts the special
    tokens, as ``Transformer.max_seq_length`` does (texts are truncated on the right). The ids of text ``i`` are
    ``ids[i, : lengths[i]]``, padded with the pad id. Threads may share one batcher, and so its word cache.

    >>> batcher = WordPieceBatcher(embedder.tokenizer, 256)       # doctest: +SKIP
    >>> ids, lengths = batcher(["A volcano erupts.", ""])        # doctest: +SKIP
    >>> ids.tolist(), lengths.tolist()                           # doctest: +SKIP
    ([[101, 1037, 12779, 7861, 22798, 1012, 102], [101, 102, 0, 0, 0, 0, 0]], [7, 2])
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, max_length: int, *, max_cached: int = 1 << 22) -> None:
        if not self.supports(tokenizer):
            raise ValueError("WordPieceBatcher needs a BertNormalizer -> BertPreTokenizer -> WordPiece tokenizer")
        rust = copy.deepcopy(tokenizer.backend_tokenizer)
        rust.no_padding()
        rust.no_truncation()
        one = rust.encode("a")
        inner = [i for i, special in enumerate(one.special_tokens_mask) if not special]
        self.prefix = np.array(one.ids[: inner[0]], dtype=np.int32)  # [CLS]
        self.suffix = np.array(one.ids[inner[-1] + 1 :], dtype=np.int32)  # [SEP]
        self.room = max_length - len(self.prefix) - len(self.suffix)  # word-piece ids a text keeps
        rust.enable_truncation(max_length)
        self.rust = rust
        self.pad_id = tokenizer.pad_token_id or 0
        added = rust.get_added_tokens_decoder()
        self.added = [token.content for token in added.values()]
        self.kind, self.mapped = character_tables(rust, len(added))
        self.drop_point = _UNICODE + len(added)
        rng = np.random.default_rng(0x5EED)
        odd = [int(b) * 2 + 1 for b in rng.integers(0, 2**63, size=2, dtype=np.uint64)]
        self.bases = [(np.uint64(b), np.uint64(pow(b, -1, 2**64))) for b in odd]  # each with its inverse
        self.salts = rng.integers(0, 2**63, size=(2, _LONG + 1), dtype=np.uint64)
        self._tables: tuple = ((np.zeros(0, dtype=np.uint64),),)  # powers of the bases, grown by _powers
        self.max_cached = max_cached
        self._lock = threading.Lock()
        nothing = np.zeros(0, dtype=np.uint64)
        # Sorted first hashes, their second hashes, each word's offset and count in one array of ids, and the words
        # not merged yet (first hash -> (second hash, ids)). Merging replaces the tuple and leaves the old one
        # whole, so a thread reads a consistent cache without the lock.
        self._cache: tuple = (nothing, nothing, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                              np.zeros(0, dtype=np.int32), {})
        stand_ins = np.arange(_UNICODE, _UNICODE + len(added), dtype=np.uint64)
        singles = np.arange(len(added))
        for key, check, token_id in zip(*self._hashes(stand_ins, singles, singles + 1), added, strict=True):
            self._remember(int(key), int(check), np.array([token_id], dtype=np.int32), merge=False)

    @staticmethod
    def supports(tokenizer: object) -> TypeGuard[PreTrainedTokenizerFast]:
        """True for a fast tokenizer made of ``BertNormalizer``, ``BertPreTokenizer`` and ``WordPiece`` whose added
        tokens match the raw text as they are (not normalized, not stripping, not whole words only)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return False
        spec = json.loads(backend.to_str())
        parts = [(spec.get(part) or {}).get("type") for part in ("normalizer", "pre_tokenizer", "model")]
        plain = all(
            not (t.normalized or t.lstrip or t.rstrip or t.single_word) and t.content
            for t in backend.get_added_tokens_decoder().values()
        )
        return parts == ["BertNormalizer", "BertPreTokenizer", "WordPiece"] and plain

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(texts)
        # One array of code points, each text followed by a space, so that no word runs from one into the next.
        joined = " ".join(texts) + " "
        points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).copy()
        ends = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=n) + 1)
        self._cut_added(joined, points, ends)
        kind = self.kind[points]
        by_rust = np.unique(np.searchsorted(ends, np.flatnonzero(kind == OTHER), side="right"))
        for row in by_rust:
            kind[ends[row] - len(texts[row]) - 1 : ends[row] - 1] = SPACE
        if (kind == DROP).any():  # removed characters join what is on either side of them
            kept = kind != DROP
            ends = np.cumsum(kept)[ends - 1]
            points, kind = points[kept], kind[kept]

        # Words: a run of word characters, or a character alone. `first` and `last` index their characters.
        inside = kind != SPACE
        word = kind == WORD
        joined_on = word[1:] & word[:-1]
        starts, stops = inside.copy(), inside.copy()
        starts[1:] &= ~joined_on
        stops[:-1] &= ~joined_on
        first, last = np.flatnonzero(starts), np.flatnonzero(stops)
        chars = self.mapped[points].astype(np.uint64)
        offsets, counts, store = self._ids(chars, first, last + 1)

        # Ids: each text's words' ids, truncated to `room`, between the prefix and the suffix.
        word_text = np.searchsorted(ends, first, side="right")
        per_text = np.bincount(word_text, weights=counts, minlength=n).astype(np.int64)
        total = int(counts.sum())
        ids = store[np.repeat(offsets - (np.cumsum(counts) - counts), counts) + np.arange(total)]
        token_text = np.repeat(word_text, counts)
        slot = np.arange(total) - np.repeat(np.cumsum(per_text) - per_text, per_text)
        kept = np.minimum(per_text, self.room)
        lengths = kept + len(self.prefix) + len(self.suffix)
        rust_ids = [e.ids for e in self.rust.encode_batch_fast([texts[i] for i in by_rust])] if len(by_rust) else []
        lengths[by_rust] = [len(row) for row in rust_ids]
        out = np.full((n, int(lengths.max(initial=0))), self.pad_id, dtype=np.int32)
        inner = slot < self.room
        out[token_text[inner], slot[inner] + len(self.prefix)] = ids[inner]
        out[:, : len(self.prefix)] = self.prefix
        out[np.arange(n)[:, None], (kept + len(self.prefix))[:, None] + np.arange(len(self.suffix))] = self.suffix
        for row, row_ids in zip(by_rust, rust_ids, strict=True):
            out[row] = self.pad_id
            out[row, : len(row_ids)] = row_ids
        return out, lengths

    def _cut_added(self, joined: str, points: np.ndarray, ends: np.ndarray) -> None:
        """Replaces each added token in the texts by its stand-in code point followed by removed ones."""
        found = []
        for k, token in enumerate(self.added):
            at = joined.find(token)
            while at >= 0:
                found.append((at, -len(token), k))
                at = joined.find(token, at + 1)
        reach = 0
        for at, minus_size, k in sorted(found):  # leftmost, then longest, as the Rust tokenizer's matcher
            end = at - minus_size
            if at < reach or np.searchsorted(ends, at, side="right") != np.searchsorted(ends, end - 1, side="right"):
                continue
            points[at], points[at + 1 : end], reach = _UNICODE + k, self.drop_point, end

    def _hashes(self, chars: np.ndarray, first: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two polynomial hashes (random odd bases, modulo 2**64) of each word ``chars[first:stop]``, from prefix
        sums over the whole batch, plus a random salt by length."""
        hashes = []
        for (power, inverse), salts in zip(self._powers(len(chars)), self.salts, strict=True):
            prefix = np.zeros(len(chars) + 1, dtype=np.uint64)
            np.cumsum(chars * power[: len(chars)], out=prefix[1:])
            hashes.append((prefix[stop] - prefix[first]) * inverse[first] + salts[np.minimum(stop - first, _LONG)])
        return hashes[0], hashes[1]

    def _powers(self, size: int) -> tuple:
        """Both bases' powers and inverse powers 0 .. ``size`` - 1 (or more), grown by doubling."""
        if len(self._tables[0][0]) < size:
            with self._lock:
                if len(self._tables[0][0]) < size:
                    size = max(size, 2 * len(self._tables[0][0]))
                    self._tables = tuple(
                        tuple(np.cumprod(np.r_[np.uint64(1), np.full(size - 1, b, dtype=np.uint64)]) for b in pair)
                        for pair in self.bases
                    )
        return self._tables

    def _ids(self, chars: np.ndarray, first: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, ...]:
        """Each word's offset and count of ids in the returned array of ids: from the cache, else from the Rust
        WordPiece model (once per distinct word in a batch)."""
        keys, checks, offsets, counts, store, pending = self._cache
        key, check = self._hashes(chars, first, stop)
        # Distinct words, looked up in sorted order (several times faster than in text order); a word whose first
        # hash another word of the batch shares is looked up on its own.
        unique, index, inverse = np.unique(key, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        clash = np.flatnonzero(check != check[index][inverse])
        if len(clash):
            index = np.concatenate([index, clash])
            inverse[clash] = len(unique) + np.arange(len(clash))
            unique = key[index]
        at = np.minimum(np.searchsorted(keys, unique), max(len(keys) - 1, 0))
        hit = (keys[at] == unique) & (checks[at] == check[index]) if len(keys) else np.zeros(len(unique), bool)
        word_offsets = np.where(hit, offsets[at], 0) if len(keys) else np.zeros(len(unique), dtype=np.int64)
        word_counts = np.where(hit, counts[at], 0) if len(keys) else np.zeros(len(unique), dtype=np.int64)
        missed = np.flatnonzero(~hit)
        found = []
        for w in index[missed].tolist():
            known = pending.get(int(key[w]))
            if known is not None and known[0] == check[w]:
                found.append(known[1])
                continue
            text = chars[first[w] : stop[w]].astype(np.uint32).tobytes().decode("utf-32-le")
            found.append(np.array([t.id for t in self.rust.model.tokenize(text)], dtype=np.int32))
            self._remember(int(key[w]), int(check[w]), found[-1])
        if found:
            sizes = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
            word_offsets[missed] = len(store) + np.cumsum(sizes) - sizes
            word_counts[missed] = sizes
            store = np.concatenate([store, *found])
        return word_offsets[inverse], word_counts[inverse], store

    def _remember(self, key: int, check: int, ids: np.ndarray, *, merge: bool = True) -> None:
        """Caches a word's ids unless its first hash is taken. Pending words are merged into the sorted arrays
        once they are 1/64 of them, so that merging costs O(64) per word, amortized."""
        with self._lock:
            keys, checks, offsets, counts, store, pending = self._cache
            at = np.searchsorted(keys, np.uint64(key))
            taken = key in pending or (at < len(keys) and keys[at] == key)
            if taken or len(keys) + len(pending) >= self.max_cached:
                return
            pending[key] = (check, ids)
            if not merge or len(pending) < max(64, len(keys) // 64):
                return
            added = sorted(pending.items())
            new_keys = np.array([k for k, _ in added], dtype=np.uint64)
            sizes = np.array([len(ids) for _, (_, ids) in added], dtype=np.int64)
            places = np.searchsorted(keys, new_keys)
            self._cache = (
                np.insert(keys, places, new_keys),
                np.insert(checks, places, np.array([c for _, (c, _) in added], dtype=np.uint64)),
                np.insert(offsets, places, len(store) + np.cumsum(sizes) - sizes),
                np.insert(counts, places, sizes),
                np.concatenate([store, *(ids for _, (_, ids) in added)]),
                {},
            )


def character_tables(rust: Tokenizer, added: int) -> tuple[np.ndarray, np.ndarray]:
    """Each character's kind and normalized code point, as the Rust normalizer and pre-tokenizer treat it, then
    the stand-ins for ``added`` tokens (words alone) and one removed stand-in."""
    normalize, split = rust.normalizer.normalize_str, rust.pre_tokenizer.pre_tokenize_str
    kind = np.full(_UNICODE + added + 1, OTHER, dtype=np.uint8)
    mapped = np.zeros(len(kind), dtype=np.uint32)
    for point in range(_BMP):
        char = chr(point)
        if 0xD800 <= point < 0xE000 or unicodedata.category(char) == "Cn":
            continue
        out = normalize(char)
        if not out:
            kind[point] = DROP
        elif not any(unicodedata.combining(c) for c in out):
            pieces = [piece for piece, _ in split(f"a{out}a")]
            if pieces == ["a", "a"]:
                kind[point] = SPACE
            elif len(pieces) == 3 and pieces[0] == pieces[2] == "a" and len(pieces[1]) == 1:
                kind[point], mapped[point] = ALONE, ord(pieces[1])
            elif pieces == [f"a{out}a"] and len(out) == 1:
                kind[point], mapped[point] = WORD, ord(out)
    kind[_UNICODE:-1], kind[-1] = ALONE, DROP
    mapped[_UNICODE:] = np.arange(_UNICODE, len(kind))
    return kind, mapped


class AsciiWordPiece:
    """One ASCII text's ids exactly as the Rust tokenizer gives them, in Python with a word cache: the query path.

    Right after the encoder's forward the Rust ``encode`` of a query runs with cold caches (170-180 µs on the
    2-core machine); this takes 50-65 µs. Each ASCII character is classified once, by asking the Rust normalizer
    and pre-tokenizer about it (as :func:`character_tables` does for the whole BMP): removed, a separator, a word
    on its own (punctuation) or part of a word, lowercased. A text is then one ``str.translate`` and ``split``
    into words, each word's ids come from a cache that the Rust WordPiece model fills on a miss, and the
    post-processor's special tokens go around them (the probes at construction check where). Anything else is
    left to Rust (``__call__`` returns None): text that is not ASCII, or that holds the first character of an
    added token such as ``[MASK]``. :meth:`of` gives None for a tokenizer whose parts it cannot vouch for.
    """

    PROBES = ("", "a", "Hello, World!", "x-ray's 42nd\tTAB\x0bcontrol\x7f  end.", "naïve", "a " * 300)

    def __init__(self, rust: Tokenizer, *, max_cached: int = 1 << 16) -> None:
        from tokenizers import models

        if not isinstance(rust.model, models.WordPiece):
            raise ValueError("not a WordPiece model")
        self._wordpiece = rust.model
        self._table: dict[int, str | None] = {}
        normalize, split = rust.normalizer.normalize_str, rust.pre_tokenizer.pre_tokenize_str
        for point in range(128):
            out = normalize(chr(point))
            pieces = [piece for piece, _ in split(f"a{out}a")] if len(out) == 1 else []
            if not out:
                self._table[point] = None
            elif pieces == ["a", "a"]:
                self._table[point] = " "
            elif pieces == ["a", out, "a"]:
                self._table[point] = f" {out} "
            elif pieces == [f"a{out}a"] and out.isascii() and not out.isspace():
                self._table[point] = out
            else:
                raise ValueError(f"character {point} is not one kind")
        added = [token.content for token in rust.get_added_tokens_decoder().values()]
        self._added_starts = {c for token in added for c in (token[:1], normalize(token)[:1]) if c}
        empty, one = rust.encode("").ids, rust.encode("a").ids
        cut = next((i for i, (x, y) in enumerate(zip(empty, one, strict=False)) if x != y), len(empty))
        self._first, self._last = list(empty[:cut]), list(empty[cut:])
        truncation = rust.truncation or {}
        if truncation and truncation.get("direction", "right") != "right":
            raise ValueError("truncation from the left")
        limit = truncation.get("max_length")
        self._budget = None if limit is None else limit - len(empty)
        self._words: dict[str, list[int]] = {}
        self._max_cached = max_cached
        for probe in self.PROBES:
            if (mine := self(probe)) is not None and mine != rust.encode(probe).ids:
                raise ValueError(f"differs from the Rust tokenizer on {probe!r}")

    @classmethod
    def of(cls, rust: Tokenizer) -> AsciiWordPiece | None:
        """The fast path for ``rust`` (its truncation included), or None where it cannot vouch for its parts."""
        try:
            return cls(rust)
        except (ValueError, AttributeError, TypeError):
            return None

    def __call__(self, text: str) -> list[int] | None:
        if not text.isascii() or any(c in text for c in self._added_starts):
            return None
        ids = list(self._first)
        words = self._words
        for word in text.translate(self._table).split():
            pieces = words.get(word)
            if pieces is None:
                pieces = [token.id for token in self._wordpiece.tokenize(word)]
                if len(words) < self._max_cached:
                    words[word] = pieces
            ids += pieces
        if self._budget is not None and len(ids) - len(self._first) > self._budget:
            del ids[len(self._first) + self._budget :]
        ids += self._last
        return ids
