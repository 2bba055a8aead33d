"""A cluster under test: a real ``redis-server``, framehub processes on it, and nginx in front.

:class:`RedisServer` runs Debian's ``redis-server`` on a free loopback port with nothing written
to disk; a test may :meth:`~RedisServer.stop` it and :meth:`~RedisServer.start` it again on the same
port, as an outage would. :class:`FramehubCluster` runs ``main.py`` processes
(:class:`apps.ServerProcess`) on that Redis, each in a folder of its own with its own port, state
and ``[cluster] node``, all sharing one ``[repositories] dir`` and one cookie key, as
``deploy/framehub@.service`` runs them; each is waited for through ``GET /readyz``. :class:`Nginx`
runs Debian's nginx with ``deploy/nginx.conf`` itself, only its lines marked ``EDIT`` (the
processes, the listen address) replaced by :func:`nginx_conf`, and every path under the prefix.

The fixtures of ``conftest.py`` hand these out (``redis_server``, ``framehub_cluster``,
``nginx_proxy``) and skip, saying which Debian package to install, when a program is missing;
``.ci/run`` installs them, so CI never skips.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet

from apps import PROCESS_BOUND, ROOT, LiveClient, ServerProcess
from common import LIVE_TIMEOUT
from fakes import free_port
from server.settings import SessionSettings

REDIS_SERVER = Path("/usr/bin/redis-server")
NGINX = Path("/usr/sbin/nginx")
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
LOOPBACK = "127.0.0.1"
# deploy/nginx.conf marks the lines an installer edits with this comment.
EDIT_MARK = "# EDIT"
# Where a client puts its session id, the default that test clusters keep.
SESSION_ID_NAME = SessionSettings().session_id_name
_UPSTREAM_SERVER = re.compile(r"^(\s*)server\s+\S+;\s*# EDIT\b.*$")
_LISTEN = re.compile(r"^(\s*)listen\s+\S+;\s*# EDIT\b.*$")
# What every framehub process of a test cluster gets on top of ServerProcess's defaults: a quick
# stop, and small clips flushed soon, as the live_server fixture has them.
CLUSTER_DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {"shutdown_timeout": 2.0},
    "clips": {"frames": 4, "max_wait": 0.3, "fps": 10.0},
}


class RedisServer:
    """``redis-server`` on a loopback port picked once, so that it comes back on the same one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self.log_path = folder / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again) and wait until it answers ``PING``."""
        assert self.process is None, "redis-server is already running"
        argv = [str(REDIS_SERVER), "--port", str(self.port), "--bind", LOOPBACK]
        # Nothing on disk: no snapshot, no append-only file; the folder only as its working dir.
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + PROCESS_BOUND
        try:
            while not self.answers():
                assert self.process.poll() is None, f"redis-server exited: {self.log()}"
                assert time.monotonic() < deadline, f"redis-server not answering: {self.log()}"
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop it (SIGTERM, as a restart would) and wait until it has exited."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(PROCESS_BOUND)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(PROCESS_BOUND)
        self.process = None

    def restart(self) -> None:
        """Stop it, then start it again on the same port (its data gone, as nothing is saved)."""
        self.stop()
        self.start()

    def answers(self) -> bool:
        """Whether it answers ``PING`` with ``PONG`` right now."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def log(self) -> str:
        """What redis-server wrote so far."""
        return self.log_path.read_text(errors="replace")


class FramehubCluster:
    """framehub processes on one Redis, sharing a repositories folder and a cookie key.

    ``cluster.nodes[i]`` is the :class:`apps.ServerProcess` of node ``node-i``, in folder
    ``root/node-i``; ``cluster.repositories`` is the shared folder (fill it before starting, or
    at any time: folders are re-listed). :meth:`start` adds nodes and waits until each is ready.
    """

    def __init__(self, root: Path, redis: RedisServer) -> None:
        self.root = root
        self.redis = redis
        self.repositories = root / "repositories"
        self.repositories.mkdir(parents=True, exist_ok=True)
        self.secret_key = Fernet.generate_key().decode()
        self.nodes: list[ServerProcess] = []

    def start(
        self, count: int = 2, tables: dict[str, dict[str, Any]] | None = None, **env: str
    ) -> list[ServerProcess]:
        """``count`` more nodes with ``tables`` on top of :data:`CLUSTER_DEFAULTS` (the cluster's
        own keys always win) and ``env`` in their environment, each ready; the new nodes."""
        started = []
        for _ in range(count):
            name = f"node-{len(self.nodes)}"
            folder = self.root / name
            folder.mkdir()
            node_tables = {table: dict(values) for table, values in CLUSTER_DEFAULTS.items()}
            for table, values in (tables or {}).items():
                node_tables.setdefault(table, {}).update(values)
            node_tables.setdefault("server", {})["secret_key"] = self.secret_key
            node_tables.setdefault("repositories", {})["dir"] = str(self.repositories)
            cluster = node_tables.setdefault("cluster", {})
            cluster.update({"redis_url": self.redis.url, "node": name})
            node = ServerProcess(folder, node_tables, env)
            self.nodes.append(node)
            started.append(node)
        for node in started:
            node.wait_until_ready()
        return started

    def __getitem__(self, index: int) -> ServerProcess:
        return self.nodes[index]

    def state_dir(self, index: int) -> Path:
        """The ``[server] state_dir`` of node ``index``: its uploads, jobs and other state."""
        return self.root / f"node-{index}" / "state"

    def close(self) -> None:
        """Stop every node still running: SIGTERM to all at once, then SIGKILL the late ones."""
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(PROCESS_BOUND)
            node.kill()


def nginx_conf(text: str, upstreams: Sequence[str], listen: str) -> str:
    """``deploy/nginx.conf``'s ``text`` with its ``EDIT`` lines replaced: the upstream ``server``
    lines by one per address of ``upstreams`` (``host:port``), the ``listen`` line by ``listen``.

    Raises ValueError when the marked lines are not found, so that a change to the file that
    drops a mark fails the tests instead of testing something else.
    """
    lines: list[str] = []
    servers_found = listens_found = 0
    for line in text.splitlines():
        if found := _UPSTREAM_SERVER.match(line):
            if not servers_found:
                lines += [f"{found[1]}server {address};" for address in upstreams]
            servers_found += 1
        elif found := _LISTEN.match(line):
            lines.append(f"{found[1]}listen {listen};")
            listens_found += 1
        else:
            lines.append(line)
    if servers_found == 0 or listens_found != 1:
        raise ValueError(
            f"deploy/nginx.conf: expected upstream `server ...; {EDIT_MARK}` lines and one "
            f"`listen ...; {EDIT_MARK}` line, found {servers_found} and {listens_found}"
        )
    return "\n".join(lines) + "\n"


class Nginx:
    """nginx with ``deploy/nginx.conf`` in front of ``upstreams``, its prefix ``folder``; the conf
    is written at once, :meth:`start` runs it."""

    def __init__(self, folder: Path, upstreams: Sequence[str]) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.conf = folder / "nginx.conf"
        self.conf.write_text(
            nginx_conf(NGINX_CONF.read_text(), upstreams, f"{LOOPBACK}:{self.port}")
        )
        self.error_log = folder / "error.log"
        self.output_path = folder / "nginx.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Run nginx in the foreground and wait until it takes connections on its port."""
        with self.output_path.open("wb") as output:
            self.process = subprocess.Popen(
                self.argv("-g", global_directives()),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + PROCESS_BOUND
        while True:
            assert self.process.poll() is None, f"nginx exited: {self.log()}"
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                    return
            except OSError:
                assert time.monotonic() < deadline, f"nginx not listening: {self.log()}"
                time.sleep(0.02)

    def argv(self, *args: str) -> list[str]:
        """nginx's command line on this prefix and conf, with ``args``; ``-e`` sends the messages
        of start-up (before the conf's error_log applies) to the prefix as well."""
        prefix = f"{self.folder}/"
        return [str(NGINX), "-p", prefix, "-c", str(self.conf), "-e", str(self.error_log), *args]

    def test_conf(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on this conf: its exit status and messages."""
        return subprocess.run(
            self.argv("-t", "-g", global_directives()),
            capture_output=True,
            text=True,
            timeout=PROCESS_BOUND,
            check=False,
        )

    def log(self) -> str:
        """nginx's error log and output so far."""
        logs = (self.error_log, self.output_path)
        return "\n".join(path.read_text(errors="replace") for path in logs if path.exists())

    def stop(self) -> None:
        """SIGQUIT (nginx's graceful stop), then SIGKILL if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(LIVE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(PROCESS_BOUND)
        self.process = None


def global_directives() -> str:
    """What the tests' ``-g`` adds to the conf: in the foreground, and run as root, workers that
    stay root (as nobody they could not enter the private temp folder holding the prefix)."""
    return "daemon off;" + (" user root root;" if os.geteuid() == 0 else "")


async def connect_remote(
    http: aiohttp.ClientSession, url: str, transports: Sequence[str], camera: str | None = None
) -> LiveClient:
    """A :class:`apps.LiveClient` connected to the framehub (or the proxy) at ``url`` with a new
    id from its ``GET /get_session_id`` (as camera ``camera`` when named), over ``transports``."""
    params = {"camera": camera} if camera else {}
    async with http.get(f"{url}/get_session_id", params=params) as resp:
        assert resp.status == 200, await resp.text()
        session_id = (await resp.json())["session_id"]
    client = LiveClient()
    await client.sio.connect(
        url,
        auth={SESSION_ID_NAME: session_id},
        transports=list(transports),
        wait_timeout=LIVE_TIMEOUT,
    )
    return client
