"""Logging set-up: one line per event in logfmt (``ts= level= logger= msg=``), secrets redacted.

Every record, tracebacks included, is rendered on a single line with stable keys so that
journald and log shippers keep events whole. :class:`RedactingFilter` replaces the configured
secrets (``api_token``, ``secret_key``, processor and webhook header values) and credentials
embedded in URLs (``https://user:password@host``) with ``***`` before anything is written.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable

from server.settings import Settings

REDACTED = "***"
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
# Secrets this short would redact common substrings of unrelated text; refuse to pretend.
_MIN_SECRET_LENGTH = 4


def secrets_of(settings: Settings) -> list[str]:
    """The values in ``settings`` that must never reach a log line."""
    values = [settings.server.api_token, settings.server.secret_key]
    for processor in settings.processors.values():
        values.extend(processor.headers.values())
    for webhook in settings.webhooks.values():
        values.extend(webhook.headers.values())
    return [value for value in values if len(value) >= _MIN_SECRET_LENGTH]


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret and every URL credential replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", text)


class RedactingFilter(logging.Filter):
    """Redacts the rendered message (and exception text) of every record it sees."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted(set(secrets), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self._secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self._secrets)
        return True


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."`` on one line, with ``exc="..."`` when present."""

    def format(self, record: logging.LogRecord) -> str:
        moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (
            f"ts={moment}.{int(record.msecs):03d}Z level={record.levelname} "
            f"logger={record.name} msg={_quote(record.getMessage())}"
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += f" exc={_quote(record.exc_text)}"
        return line


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Send every log line, redacted, to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library warnings (DeprecationWarning and the like) become log lines of the same shape.
    logging.captureWarnings(True)
