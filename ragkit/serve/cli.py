"""``ragkit serve`` (the HTTP API), ``ragkit serve keys add`` (an API key) and ``ragkit mcp`` (an MCP server).

Only argparse at import time: ``ragkit --help`` works without the ``serve`` extra; FastAPI, uvicorn and the
``mcp`` SDK are imported when a command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def add_serve_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    serve = commands.add_parser(
        "serve",
        parents=list(parents),
        help="serve an index over HTTP: retrieve, ask, OpenAI-compatible chat completions, documents, metrics",
    )
    serve.add_argument("--index", type=Path, help="index directory (default: $RAGKIT_INDEX or ./.ragkit)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; a public one needs --keys)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--keys", type=Path, help="API key file (ragkit serve keys add); without it: loopback only")
    actions = serve.add_subparsers(dest="serve_command")
    keys = actions.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    add = keys.add_parser("add", help="add an API key bound to a tenant; prints the secret once")
    add.add_argument("name", help="a name for the key (unique in the file)")
    add.add_argument("--tenant", required=True, help="the tenant every request with this key is confined to")
    add.add_argument("--scope", default="read", help="comma-separated: read, write (default: read)")
    add.add_argument("--keys", dest="keys_file", type=Path, help="key file (default: serve.keys in settings)")

    mcp = commands.add_parser(
        "mcp", parents=list(parents), help="an MCP server over stdio with retrieve and ask tools"
    )
    mcp.add_argument("--index", type=Path, help="index directory (default: $RAGKIT_INDEX or ./.ragkit)")


def cmd_serve(args: argparse.Namespace) -> int:
    raise NotImplementedError("ragkit serve is being built")


def cmd_mcp(args: argparse.Namespace) -> int:
    raise NotImplementedError("ragkit mcp is being built")
