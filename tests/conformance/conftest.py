"""Registers the VectorIndex suite's shared fixtures for every backend module in this folder."""

from .vector_index_suite import conformance_corpus, exact_search, shared_index

__all__ = ["conformance_corpus", "exact_search", "shared_index"]
