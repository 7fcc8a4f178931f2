"""Conformance suites: one behaviour contract per protocol, passed by every backend that implements it."""
