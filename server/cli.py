"""Command line of the server: ``python main.py --config settings.toml --host H --port P``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from aiohttp import web

from server.app import create_app
from server.settings import SettingsError, load_settings

_LOGGER = logging.getLogger("server")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="framehub", description="framehub camera frame server")
    parser.add_argument("--config", type=Path, default=Path("settings.toml"), help="settings file")
    parser.add_argument("--host", help="address to listen on (overrides [server] host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides [server] port)")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default INFO)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; 2 for unusable settings."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings(args.config)
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        if overrides:
            server = dataclasses.replace(settings.server, **overrides)
            settings = dataclasses.replace(settings, server=server)
        app = create_app(settings)
    except SettingsError as exc:
        print(f"framehub: {exc}", file=sys.stderr)
        return 2
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        shutdown_timeout=settings.server.shutdown_timeout,
        print=None,
        access_log=None,
    )
    return 0
