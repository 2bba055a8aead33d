"""Command line of the server: ``python main.py --config settings.toml --host H --port P``.

``framehub [serve]`` runs the server (the default command); ``framehub check-config [PATH]`` loads
and checks the settings file with the environment laid over it (see ``server.settings``) and
prints the effective settings as TOML, secrets shown as ``***``; ``framehub --version`` prints the
installed version. ``--host``, ``--port`` and ``--log-level`` win over the file and the
environment.

:func:`serve` runs the app with aiohttp's ``AppRunner`` rather than ``web.run_app`` so that
readiness is signalled only once the socket listens, and a stop runs in a known order: readiness
drops and systemd hears ``STOPPING=1``, the site stops accepting, the app's ordered stop (see
``server.app``) sends every session's last result and ends the batch jobs within ``[server]
shutdown_timeout``, then every cleanup context (executors, downloads, temp files) is torn down.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import importlib
import importlib.metadata
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from server.app import create_app, reload, stop
from server.errors import ClusterUnavailable
from server.keys import connection_guard_key, lifecycle_key
from server.ops.logs import REDACTED, redact, secrets_of, setup_logging
from server.ops.tasks import cancel_and_wait
from server.settings import Settings, SettingsError, load_settings, settings_as_toml
from server.web.connections import raise_file_limit
from server.web.tls import server_ssl_context

_LOGGER = logging.getLogger("server")

# tarfile's extraction filters, which the archive checks build on, came in Python 3.11.4.
MINIMUM_PYTHON = (3, 11, 4)
# The ordered stop has waited for requests until [server] shutdown_timeout already; aiohttp's own
# wait afterwards is only for connections to close.
RUNNER_SHUTDOWN_SLACK = 1.0
# Connections the kernel queues before accept(): room for a burst of cameras reconnecting.
LISTEN_BACKLOG = 1024


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, not {text!r}")
    return int(text)


def _add_settings_options(parser: argparse.ArgumentParser, command: bool) -> None:
    """``--config``, ``--host``, ``--port`` and ``--log-level``; a ``command``'s copies leave
    the values given before the command name alone unless given again after it."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if command else value

    parser.add_argument(
        "--config",
        type=Path,
        default=default(Path("settings.toml")),
        help="settings file (default ./settings.toml)",
    )
    parser.add_argument(
        "--host", default=default(None), help="address to listen on (overrides [server] host)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=default(None),
        help="port to listen on (overrides [server] port)",
    )
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=default(None),
        help="log level (overrides [server] log_level, default INFO)",
    )


def version() -> str:
    """The installed version of framehub."""
    try:
        return importlib.metadata.version("framehub")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="framehub", description="framehub camera frame server")
    parser.add_argument("--version", action="version", version=f"framehub {version()}")
    _add_settings_options(parser, command=False)
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help="run the server (the default)")
    _add_settings_options(serve_parser, command=True)
    check = commands.add_parser(
        "check-config",
        help="check the settings and the environment; print the effective settings as TOML",
        description="Load and check the settings file with the environment over it, then print "
        "every table and key as TOML, secrets shown as ***. Exit status 0, or 2 with one line "
        "saying what is wrong.",
    )
    check.add_argument("path", nargs="?", type=Path, help="settings file (default --config)")
    _add_settings_options(check, command=True)
    args = parser.parse_args(argv)
    if args.command is None:
        args.command = "serve"
    if args.command == "check-config" and args.path is not None:
        args.config = args.path
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; 2 for unusable settings or Python."""
    if sys.version_info < MINIMUM_PYTHON:
        print(python_too_old(sys.version_info), file=sys.stderr)
        return 2
    args = parse_args(argv)
    if args.command == "check-config":
        return check_config(args)
    setup_logging(args.log_level or "INFO")
    try:
        settings = effective_settings(args)
        setup_logging(args.log_level or settings.server.log_level, secrets_of(settings))
        tls = server_ssl_context(settings.server, args.config.name)
        loop_factory = event_loop_factory(settings.server.event_loop, args.config.name)
        app = create_app(settings)
    except SettingsError as exc:
        print(f"framehub: {exc}", file=sys.stderr)
        return 2

    def reload_settings() -> Settings:
        settings = effective_settings(args)
        setup_logging(args.log_level or settings.server.log_level, secrets_of(settings))
        return settings

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(app, settings, reload_settings, tls))
    except ClusterUnavailable as exc:  # [cluster] redis_url does not answer at start
        print(f"framehub: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # typically the port is taken
        print(
            f"framehub: cannot listen on {settings.server.host}:{settings.server.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    return 0


def check_config(args: argparse.Namespace) -> int:
    """``framehub check-config``: the effective settings on stdout and 0, or the error and 2."""
    try:
        settings = effective_settings(args)
        server_ssl_context(settings.server, args.config.name)
        event_loop_factory(settings.server.event_loop, args.config.name)
    except SettingsError as exc:
        print(f"framehub: {exc}", file=sys.stderr)
        return 2
    # Secret keys are masked by name; redact() also catches credentials inside URLs.
    print(redact(settings_as_toml(settings, REDACTED), secrets_of(settings)), end="")
    return 0


def effective_settings(args: argparse.Namespace) -> Settings:
    """The settings the command line names, with the environment laid over them and
    ``--host``, ``--port`` and ``--log-level`` over both."""
    settings = load_settings(args.config, os.environ)
    overrides = {
        key: value
        for key, value in (("host", args.host), ("port", args.port), ("log_level", args.log_level))
        if value is not None
    }
    if overrides:
        server = dataclasses.replace(settings.server, **overrides)
        settings = dataclasses.replace(settings, server=server)
    return settings


def event_loop_factory(
    choice: str, where: str = "settings"
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What ``[server] event_loop`` runs on: uvloop's loop, or None for asyncio's own; "auto" is
    uvloop when it can be imported."""
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "auto":
            return None
        raise SettingsError(
            f'{where}: server.event_loop is "uvloop", but uvloop is not installed: '
            'pip install uvloop, or set "auto" or "asyncio"'
        ) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def python_too_old(version: tuple[object, ...]) -> str:
    """The one line refusing a Python older than :data:`MINIMUM_PYTHON`."""
    needed = ".".join(map(str, MINIMUM_PYTHON))
    found = ".".join(map(str, version[:3]))
    return (
        f"framehub: needs Python {needed} or newer (for tarfile's extraction filters), not {found}"
    )


async def _reload(app: web.Application, reload_settings: Callable[[], Settings]) -> None:
    """One SIGHUP: new settings applied, or the running ones kept and the reason logged."""
    try:
        settings = reload_settings()
    except SettingsError as exc:
        _LOGGER.error("reload refused, running settings kept: %s", exc)
        return
    restart = await reload(app, settings)
    _LOGGER.info(
        "reloaded [processors], [webhooks], [recording] and log_level: %d processors, %d webhooks",
        len(settings.processors),
        len(settings.webhooks),
    )
    if restart:
        _LOGGER.warning(
            "settings changed that only a restart applies: %s",
            ", ".join(f"[{table}]" for table in restart),
        )


async def serve(
    app: web.Application,
    settings: Settings,
    reload_settings: Callable[[], Settings],
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve ``app`` (over HTTPS with ``tls``) until SIGTERM or SIGINT, then shut down in order
    (see the module docstring); on SIGHUP, apply ``reload_settings()`` (see
    :func:`server.app.reload`)."""
    loop = asyncio.get_running_loop()
    stop_signal = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_signal.set)
    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = loop.create_task(_reload(app, reload_settings), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=RUNNER_SHUTDOWN_SLACK)
    await runner.setup()
    lifecycle = app[lifecycle_key]
    listener: asyncio.Server | None = None
    sweeping: asyncio.Task[None] | None = None
    try:
        guard = app[connection_guard_key]
        guard.limit_connections(raise_file_limit())
        loop.set_exception_handler(guard.loop_exception_handler)
        # Our own listener rather than an aiohttp site: each connection goes through the guard
        # (server.web.connections) before aiohttp's protocol sees it.
        assert runner.server is not None
        listener = await loop.create_server(
            guard.protocol_factory(runner.server),
            settings.server.host,
            settings.server.port,
            ssl=tls,
            backlog=LISTEN_BACKLOG,
            ssl_handshake_timeout=settings.server.header_timeout if tls else None,
        )
        sweeping = asyncio.create_task(guard.sweep(), name="header-timeouts")
        _LOGGER.info(
            "listening on %s://%s:%d (event loop: %s, at most %d connections)",
            "https" if tls else "http",
            settings.server.host,
            settings.server.port,
            type(loop).__module__.partition(".")[0],
            guard.max_connections,
        )
        lifecycle.ready()
        # What start-up made (modules, the app, the demo index) lives as long as the process:
        # taking it out of the collector's view keeps full collections short on the event loop.
        gc.freeze()
        await stop_signal.wait()
        # Readiness drops and the listener closes, while connections are still read: the
        # ordered stop needs its clients' frames acked and its results delivered.
        lifecycle.stop()
        listener.close()
        await stop(app)
    finally:
        lifecycle.stop()
        if listener is not None:
            listener.close()
        if sweeping is not None:
            await cancel_and_wait([sweeping])
        await runner.cleanup()
        _LOGGER.info("stopped")
