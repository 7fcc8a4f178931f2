"""``ragkit serve`` (the HTTP API), ``ragkit serve keys add`` (an API key) and ``ragkit mcp`` (an MCP server).

Only argparse at import time: ``ragkit --help`` works without the ``serve`` extra; FastAPI, uvicorn and the
``mcp`` SDK are imported when a command runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_FATAL, EXIT_USAGE = 1, 2  # as ragkit.cli's


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
    add.add_argument("--rate-per-s", type=float, help="requests per second for this key (default: serve.rate_per_s)")
    add.add_argument(
        "--max-concurrent", type=int, help="requests in flight for this key (default: serve.max_concurrent_per_key)"
    )

    mcp = commands.add_parser(
        "mcp", parents=list(parents), help="an MCP server over stdio with retrieve and ask tools"
    )
    mcp.add_argument("--index", type=Path, help="index directory (default: $RAGKIT_INDEX or ./.ragkit)")


def cmd_serve(args: argparse.Namespace) -> int:
    """``ragkit serve``: the HTTP API until SIGTERM (drains in-flight requests, exit 0) or Ctrl-C.

    Host, port and key file: the flags, else ``[serve]`` in ragkit.toml, else 127.0.0.1:8000 without keys. A
    server without keys answers every request as the local user, so it may bind only to a loopback address.
    """
    from ragkit.config import default_index_dir, load_settings

    settings = load_settings(getattr(args, "config", None))
    if getattr(args, "serve_command", None) == "keys":
        return _cmd_keys_add(args, settings)
    serve = settings.serve
    host = args.host or serve.host
    port = args.port if args.port is not None else serve.port
    keys_file = args.keys or (Path(serve.keys) if serve.keys else None)
    if not 0 < port < 65536:
        print(f"ragkit serve: --port must be between 1 and 65535 (got {port})", file=sys.stderr)
        return EXIT_USAGE
    if keys_file is None and not is_loopback(host):
        print(
            f"ragkit serve: refusing to serve on {host} without API keys: anyone who can reach it could read and "
            "change the index. Create keys (ragkit serve keys add NAME --tenant T --keys keys.toml) and pass "
            "--keys keys.toml, or bind to 127.0.0.1",
            file=sys.stderr,
        )
        return EXIT_USAGE

    import uvicorn

    from ragkit.serve.app import create_app, open_index
    from ragkit.serve.auth import KeyRing

    _log_to_stderr()
    keyring = KeyRing.load(keys_file) if keys_file is not None else None
    index = open_index(args.index or default_index_dir(), settings)
    try:
        app = create_app(index, keyring=keyring)
        if keyring is None:
            print(
                f"ragkit serve: no API keys: serving on loopback only, every request acts as the local user "
                f"(http://{_url_host(host)}:{port})",
                file=sys.stderr,
            )
        else:
            print(f"ragkit serve: {len(keyring)} API key(s) from {keys_file}", file=sys.stderr)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            timeout_graceful_shutdown=max(1, math.ceil(serve.shutdown_grace_s)),
            log_level="info",
            access_log=False,
            lifespan="on",
        )
        server = uvicorn.Server(config)
        # uvicorn re-raises the signal it stopped on once it has drained; a handler of ours takes that SIGTERM,
        # so a graceful stop exits 0 (SIGINT keeps Python's handler: Ctrl-C exits 130, as for every command)
        previous = signal.signal(signal.SIGTERM, _stopped)
        try:
            server.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        index.close()
    return 0 if server.started else EXIT_FATAL


def _log_to_stderr() -> None:
    """The server's own log lines (ready, failed requests, degraded answers) beside uvicorn's, on stderr."""
    logger = logging.getLogger("ragkit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _stopped(signum: int, frame: object) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): the only kind a keyless server may bind."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _cmd_keys_add(args: argparse.Namespace, settings: Any) -> int:
    """``ragkit serve keys add``: a new key in the key file; the secret is printed once, on stdout alone."""
    from ragkit.serve.auth import add_key

    path = args.keys_file or args.keys or (Path(settings.serve.keys) if settings.serve.keys else None)
    if path is None:
        print("ragkit serve keys add: name the key file: --keys FILE (or [serve] keys in ragkit.toml)", file=sys.stderr)
        return EXIT_USAGE
    scopes = [scope.strip() for scope in args.scope.split(",") if scope.strip()]
    secret = add_key(
        path, args.name, tenant=args.tenant, scopes=scopes, rate_per_s=args.rate_per_s,
        max_concurrent=args.max_concurrent,
    )
    print(
        f"added key {args.name!r} for tenant {args.tenant!r} (scopes: {', '.join(scopes)}) to {path}; "
        "its secret follows, shown only this once:",
        file=sys.stderr,
    )
    print(secret)
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve ``retrieve`` and ``ask`` tools over stdio until the client closes the pipe."""
    from ragkit.config import default_index_dir, load_settings
    from ragkit.serve.mcp import run_stdio

    run_stdio(args.index or default_index_dir(), load_settings(getattr(args, "config", None)))
    return 0
