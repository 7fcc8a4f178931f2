"""Registers the VectorIndex suite's shared fixtures (shipped in ragkit.conformance) for every backend module in
this folder."""

from ragkit.conformance import conformance_corpus, exact_search, shared_index

__all__ = ["conformance_corpus", "exact_search", "shared_index"]
