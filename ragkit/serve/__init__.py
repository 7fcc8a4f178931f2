"""``ragkit serve`` and ``ragkit mcp``: an index behind an HTTP API (OpenAI-compatible) or an MCP server.

Needs the ``serve`` extra (``pip install 'ragkit[serve]'``: FastAPI, uvicorn, prometheus-client, the ``mcp`` SDK).
Modules: ``app`` (the FastAPI application), ``batching`` (concurrent queries coalesced into ``retrieve_many``),
``auth`` (API keys bound to tenants), ``limits`` (per-key rate and concurrency limits, fair queueing),
``documents`` and ``jobs`` (uploads indexed while the server answers), ``metrics`` (Prometheus), ``mcp``
(the MCP server) and ``cli`` (the commands).
"""
