"""`codi2-agent mcp`: the agent tools for MCP clients (desktop assistants, IDEs, agent frameworks)."""

from __future__ import annotations

import enum
import socket
from pathlib import Path
from typing import Annotated

import typer

from codi2_agent.cli._common import ModelOption, StepsOption, _fail, _load


class Transport(enum.StrEnum):
    stdio = "stdio"
    http = "http"


def _check_can_listen(host: str, port: int) -> None:
    """A one-line error for an address in use or not of this machine (uvicorn would say it late)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as e:
        raise _fail(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def mcp(
    transport: Annotated[
        Transport,
        typer.Option(help="stdio (the client spawns this command) or http (streamable HTTP at /mcp)."),
    ] = Transport.stdio,
    host: Annotated[
        str, typer.Option(help="HTTP: the address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP: the port.", min=1, max=65535)] = 8000,
    model: ModelOption = "tiny",
    root: Annotated[
        Path, typer.Option(help="Session folder: artifacts, memory and checkpoints (the toolkit's default).")
    ] = Path("codi2-agent"),
    tenant: Annotated[str, typer.Option(help="Whose media and memory the tools read and write.")] = "default",
    thread: Annotated[
        str,
        typer.Option(help="stdio: the thread the client's calls form; http: the prefix of each session's."),
    ] = "mcp",
    media_root: Annotated[
        list[Path] | None,
        typer.Option("--media-root", help="A folder whose files the tools may read (repeat for several)."),
    ] = None,
    allow_urls: Annotated[bool, typer.Option(help="Let the tools fetch http(s) media.")] = False,
    steps: StepsOption = None,
    lock_timeout: Annotated[
        float, typer.Option(help="Seconds a call waits for another writer of its thread.", min=0)
    ] = 30.0,
) -> None:
    """Serve the agent tools (generate, edit, apply an example edit, describe, recall) over MCP.

    Images and sounds come back as MCP image/audio content with their @m: ids; refusals (an unknown
    id, a file outside --media-root) as error results. Over stdio nothing but the protocol is
    written to stdout. A desktop assistant's configuration runs, for example:
    `codi2-agent mcp --root ~/codi2 --media-root ~/Pictures`.
    """
    import anyio

    from codi2_agent.session import Session
    from codi2_agent.tools._mcp import CoDi2MCPServer

    roots = [Path(r).expanduser() for r in media_root or []]
    for folder in roots:
        if not folder.is_dir():
            raise _fail(f"--media-root {str(folder)!r} is not a folder")
    if transport is Transport.http:  # said before the model loads, not after
        _check_can_listen(host, port)
    loaded = _load(model)
    try:
        session = Session(
            loaded, thread=thread, root=root, tenant=tenant, progress=False,
            lock_timeout=lock_timeout, num_inference_steps=steps,
        )  # fmt: skip
    except (ValueError, OSError) as e:  # a bad tenant or thread name, an unusable folder
        raise _fail(str(e)) from None
    try:
        server = CoDi2MCPServer(
            session, media_roots=roots, allow_urls=allow_urls, thread_per_session=transport is Transport.http
        )
        if transport is Transport.stdio:
            anyio.run(server.serve_stdio)
        else:
            typer.secho(f"MCP server at http://{host}:{port}/mcp (Ctrl-C stops it)", err=True)
            anyio.run(server.serve_http, host, port)
    finally:
        session.close()
