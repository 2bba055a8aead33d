"""Logging set-up: one line per event in logfmt (``ts= level= logger= msg=``), secrets redacted.

Every record, tracebacks included, is rendered on a single line with stable keys so that
journald and log shippers keep events whole. :class:`RedactingFilter` replaces the configured
secrets (``api_token``, ``secret_key``, processor and webhook header values) and credentials
embedded in URLs (``https://user:password@host``) with ``***`` before anything is written.

Under systemd with stdout and stderr connected to the journal (systemd then sets
``$JOURNAL_STREAM``), each line starts with the sd-daemon priority prefix of its level (``<6>``
info, ``<4>`` warning, ... see sd-daemon(3)), which journald strips and stores as the priority,
so that ``journalctl -p warning`` filters framehub's levels. Elsewhere lines start with ``ts=``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping

from server.settings import Settings

REDACTED = "***"
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
# Secrets this short would redact common substrings of unrelated text; refuse to pretend.
_MIN_SECRET_LENGTH = 4
# sd-daemon(3) priorities, highest level first: a record takes the first whose level it reaches.
_JOURNAL_PRIORITIES = (
    (logging.CRITICAL, 2),  # crit
    (logging.ERROR, 3),  # err
    (logging.WARNING, 4),  # warning
    (logging.INFO + 1, 5),  # notice: custom levels between INFO and WARNING
    (logging.INFO, 6),  # info
)
_JOURNAL_DEBUG = 7


def secrets_of(settings: Settings) -> list[str]:
    """The values in ``settings`` that must never reach a log line."""
    values = [
        settings.server.api_token,
        settings.server.secret_key,
        *settings.server.old_secret_keys,
    ]
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
    """``ts=... level=... logger=... msg="..."`` on one line, with ``exc="..."`` when present.

    With ``journal`` the line starts with the record's sd-daemon priority prefix, e.g. ``<4>``.
    """

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        prefix = f"<{journal_priority(record.levelno)}>" if self.journal else ""
        line = (
            f"{prefix}ts={moment}.{int(record.msecs):03d}Z level={record.levelname} "
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


def journal_priority(levelno: int) -> int:
    """The sd-daemon priority (2 crit ... 7 debug) of a logging level."""
    for threshold, priority in _JOURNAL_PRIORITIES:
        if levelno >= threshold:
            return priority
    return _JOURNAL_DEBUG


def setup_logging(
    level: str, secrets: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> None:
    """Send every log line, redacted, to stderr; prefixed for the journal if ``environ``
    (``os.environ`` by default) has ``$JOURNAL_STREAM``."""
    journal = bool((os.environ if environ is None else environ).get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(journal))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library warnings (DeprecationWarning and the like) become log lines of the same shape.
    logging.captureWarnings(True)
