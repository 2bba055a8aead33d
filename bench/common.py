"""What every benchmark shares: the result row, the run context, and the tools to drive servers.

A benchmark module ``bench/<name>.py`` has one function ``run(ctx: BenchContext) -> list[Row]``.
It starts what it measures with :func:`start_framehub` or :func:`start_process` (each a context
manager that waits, bounded, until the server answers on 127.0.0.1 and stops it on exit; Redis,
for a cluster, with :func:`start_redis`), loads it with :func:`run_wrk`, reads memory and CPU time
with :func:`memory_use` and :func:`cpu_seconds` and returns rows; ``bench/__main__.py`` prints the
rows of every module as one table. Tools from Debian (wrk, nginx, redis-server) are found or
installed with :func:`ensure_tool`. Everything talks to 127.0.0.1 only, and every wait has a
deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

LOOPBACK = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Seconds of load per measurement; the quick mode is for checking the harness, not for figures.
DURATION = 10.0
QUICK_DURATION = 3.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
APT_TIMEOUT = 900.0
# nginx lives in /usr/sbin, which is not on an ordinary user's PATH.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
MB = 1_000_000
_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


# The settings a benchmark puts on top of the defaults: {table: {key: value}}.
Scalar = str | int | float | bool | Path
Value = Scalar | list[str]
Tables = Mapping[str, Mapping[str, Value]]


class BenchError(Exception):
    """A benchmark that could not be run; the message says what to do about it."""


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table; ``passed`` is None for figures without a target."""

    benchmark: str
    metric: str
    value: float
    unit: str
    reference: float | None = None
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None


@dataclass(frozen=True, slots=True)
class BenchContext:
    """What ``run(ctx)`` gets: its own temp folder, how long to measure, which framehub to run."""

    tmp: Path
    quick: bool = False
    python: Path = field(default_factory=lambda: Path(sys.executable))
    root: Path = PROJECT_ROOT

    @property
    def duration(self) -> float:
        """Seconds of load for one measurement."""
        return QUICK_DURATION if self.quick else DURATION


@dataclass(frozen=True, slots=True)
class Server:
    """A server started by :func:`start_process`."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str = "/") -> str:
        """The URL of ``path`` on this server."""
        return f"http://{LOOPBACK}:{self.port}{path}"


@dataclass(frozen=True, slots=True)
class MemoryUse:
    """Resident memory of a process, in bytes: now (VmRSS) and at its peak (VmHWM)."""

    rss: int
    peak: int


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What wrk measured: throughput, latency percentiles in ms, and anything that went wrong."""

    requests_per_second: float
    requests: int
    latency_ms: dict[int, float]
    non_2xx: int
    socket_errors: int
    output: str

    @property
    def errors(self) -> int:
        """Responses that were not 2xx/3xx plus connect, read, write and timeout errors."""
        return self.non_2xx + self.socket_errors


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def find_tool(name: str) -> str | None:
    """The path of executable ``name`` on PATH or in the sbin folders, or None."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN])
    return shutil.which(name, path=search)


def ensure_tool(name: str, package: str) -> str:
    """The path of ``name``; installs Debian ``package`` with apt-get first if missing and root."""
    path = find_tool(name)
    if path is not None:
        return path
    apt_get = shutil.which("apt-get")
    if os.geteuid() != 0 or apt_get is None:
        raise BenchError(
            f"{name} is not installed: install the Debian package {package} "
            f"(sudo apt-get install {package}) and run the benchmark again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Waits for another apt run's lock instead of failing; a stale package list gets one update.
    install = [apt_get, "-o", "DPkg::Lock::Timeout=600", "install", "-y", package]
    print(f"bench: installing {package} for {name}", file=sys.stderr)
    try:
        if subprocess.run(install, env=env, timeout=APT_TIMEOUT, check=False).returncode != 0:
            update = [apt_get, "-o", "DPkg::Lock::Timeout=600", "update"]
            subprocess.run(update, env=env, timeout=APT_TIMEOUT, check=False)
            subprocess.run(install, env=env, timeout=APT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"apt-get install {package} took over {APT_TIMEOUT:.0f} s") from None
    path = find_tool(name)
    if path is None:
        raise BenchError(f"{name} is still missing after apt-get install {package}")
    return path


def toml_text(tables: Tables) -> str:
    """A TOML document of flat tables of scalars and lists of strings, enough for a settings file."""
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, Message, bytes]:
    """Status, headers and body of ``GET url``, never through a proxy from the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers HTTP at all (any status)."""
    try:
        http_get(url, timeout=timeout)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def start_process(
    argv: list[str], port: int, log: Path, ready_path: str = "/", cwd: Path | None = None
) -> Iterator[Server]:
    """Run ``argv`` (a server listening on ``port``) until the block ends; waits until it answers."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd
        )
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(server.url(ready_path), timeout=1.0):
            if process.poll() is not None:
                raise BenchError(
                    f"{Path(argv[0]).name} exited with status {process.returncode} at start; "
                    f"log {log}:\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{Path(argv[0]).name} did not answer on port {port} within "
                    f"{START_TIMEOUT:.0f} s; log {log}:\n{_tail(log)}"
                )
            time.sleep(0.1)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def start_framehub(
    ctx: BenchContext,
    name: str,
    tables: Tables,
    ready_path: str = "/",
) -> Iterator[Server]:
    """Run framehub on a fresh ``settings.toml`` in ``ctx.tmp/name`` with ``tables`` on top."""
    folder = ctx.tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server: dict[str, Value] = {"host": LOOPBACK, "port": port, "state_dir": folder / "state"}
    merged = {**tables, "server": {**server, **tables.get("server", {})}}
    config = folder / "settings.toml"
    config.write_text(toml_text(merged))
    argv = [str(ctx.python), str(ctx.root / "main.py"), "--config", str(config)]
    argv += ["--port", str(port), "--log-level", "WARNING"]
    with start_process(argv, port, folder / "framehub.log", ready_path, cwd=ctx.root) as running:
        yield running


@contextlib.contextmanager
def start_redis(ctx: BenchContext, name: str = "redis") -> Iterator[Server]:
    """Debian's ``redis-server`` on a free port of 127.0.0.1, saving nothing to disk, until the
    block ends; waits until it answers ``PING``. Its URL is :func:`redis_url`."""
    redis = ensure_tool("redis-server", package="redis-server")
    folder = ctx.tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [redis, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(folder)]
    log = folder / "redis.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _pings(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(
                    f"redis-server did not answer on port {port}; log {log}:\n{_tail(log)}"
                )
            time.sleep(0.05)
        yield Server(process, port, log)
    finally:
        _stop(process)


def redis_url(server: Server) -> str:
    """The ``[cluster] redis_url`` of a server from :func:`start_redis`."""
    return f"redis://{LOOPBACK}:{server.port}/0"


def _pings(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def memory_use(pid: int) -> MemoryUse:
    """VmRSS and VmHWM of process ``pid`` from ``/proc/PID/status``, in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            amount, unit = value.split()
            if unit != "kB":
                raise BenchError(f"/proc/{pid}/status: unexpected unit {unit!r} for {key}")
            fields[key] = int(amount) * 1024
    return MemoryUse(rss=fields["VmRSS"], peak=fields["VmHWM"])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` and its live children (nginx's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # Fields after the command name, which is in parentheses and may hold spaces.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def run_wrk(
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int,
    script: Path | None = None,
    timeout_s: float = 2.0,
) -> WrkResult:
    """Load ``url`` with wrk for ``duration`` seconds and parse its report (with ``--latency``)."""
    wrk = ensure_tool("wrk", package="wrk")
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s"]
    argv += [f"--timeout={timeout_s:g}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    try:
        done = subprocess.run(
            [*argv, url], capture_output=True, text=True, timeout=duration + 60, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk on {url} did not finish within {duration + 60:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"wrk on {url} failed with status {done.returncode}: {done.stderr}")
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> WrkResult:
    """The figures of a ``wrk --latency`` report."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    if rps is None or total is None:
        raise BenchError(f"cannot read wrk's report:\n{output}")
    latency = {
        int(percent): float(amount) * _WRK_UNITS[unit]
        for percent, amount, unit in re.findall(
            r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE
        )
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        requests_per_second=float(rps.group(1)),
        requests=int(total.group(1)),
        latency_ms=latency,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        output=output,
    )


def format_value(value: float | None, unit: str = "") -> str:
    """A figure for the table: thousands separated, fewer decimals the larger it is."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,} {unit}".rstrip()
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}" if value == 0 or abs(value) >= 0.1 else f"{value:.3f}"
    return f"{text} {unit}".rstrip()


def format_table(rows: list[Row]) -> str:
    """The rows as one plain-text table."""
    header = ("benchmark", "metric", "framehub", "reference", "ratio", "target", "result")
    results = {True: "pass", False: "FAIL", None: "-"}
    body = [
        (
            row.benchmark,
            row.metric,
            format_value(row.value, row.unit),
            format_value(row.reference, row.unit),
            "-" if row.ratio is None else f"{row.ratio:.3f}",
            row.target or "-",
            results[row.passed],
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = {2, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])
