"""The engine every fuzz target runs on: inputs in, findings out, within a time bound.

A target (:class:`Target`) is a ``check(data)`` that feeds one input to the code under test and
raises :class:`Broken` when the answer is wrong, the errors that are the code's intended refusals
(``refusals``, ignored), and ``seeds()``, valid inputs made in code. :class:`Runner` calls
``check`` once per input and turns anything else it raises, or a call slower than
``slow_seconds``, into a finding under ``WORK/findings/`` (the smallest input seen for each kind
of failure, with the traceback), so one run reports every distinct failure instead of stopping
at the first. A :class:`Noted` is kept the same way, as a note rather than a failure.

The inputs come from one of three engines (:func:`run`):

- ``atheris`` (libFuzzer, coverage-guided; the target's modules are instrumented as they are
  imported), the seeds as its starting corpus in ``WORK/corpus``, which grows from run to run;
  libFuzzer's ``-timeout`` ends the run on an input that takes over ``hang_seconds`` and keeps it
  as ``WORK/timeout-*``, a native crash as ``WORK/crash-*``;
- ``hypothesis``, where atheris does not install: random bytes and seeds mutated by
  :func:`mutate`, in batches until the time is up;
- the mutation corpus alone (targets with ``guided=False``, whose code runs in a child process
  where coverage cannot be seen): each seed as it is, then seeds mutated by :func:`mutate` with
  ``random.Random(i)`` for the i-th input.

Outside libFuzzer, a call that takes over ``hang_seconds`` ends the process through
:func:`faulthandler.dump_traceback_later` (the stacks go to the log) and the input is left in
``WORK/current.input``. Every engine writes ``WORK/stats.json`` (executions, seconds, findings)
once a second and at the end, for ``python -m fuzz`` to report.
"""

from __future__ import annotations

import faulthandler
import hashlib
import importlib
import itertools
import json
import math
import random
import site
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENGINES = ("atheris", "hypothesis")
FINDINGS = "findings"
NOTED = "noted"
CORPUS = "corpus"
STATS = "stats.json"
CURRENT_INPUT = "current.input"
# Seconds between two writes of stats.json.
STATS_INTERVAL = 1.0
# Inputs per hypothesis batch; the batches repeat until the time is up.
HYPOTHESIS_BATCH = 200
# Bytes of an input shown in a finding's text (the whole input is in its .input file).
SHOWN_BYTES = 400
# Mutations applied to a seed at most, and how much larger repeats may make it.
MAX_MUTATIONS = 3
MAX_GROWTH = 4


class Broken(AssertionError):
    """The code under test answered, but not as it promises (a 500, a file left behind, ...)."""


class Noted(Exception):
    """The code under test refused as it promises, but on the way something happened worth a
    look (a child process it guards crashed, a limit was reached); a note, not a failure."""


@dataclass(frozen=True, slots=True)
class Target:
    """One thing to fuzz: see the module docstring."""

    check: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    refusals: tuple[type[Exception], ...] = ()
    max_len: int = 4096
    slow_seconds: float = 1.0
    hang_seconds: float = 10.0
    guided: bool = True
    # Tokens libFuzzer splices into inputs (its -dict): syntax the seeds do not show.
    dictionary: tuple[bytes, ...] = ()


def load_atheris() -> Any | None:
    """The atheris module, or None where it is not installed.

    Imported by name: it ships without type hints, and the fallback to hypothesis needs its
    absence to be an ordinary answer.
    """
    try:
        return importlib.import_module("atheris")
    except ImportError:
        return None


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one to three of: bytes flipped, a range cut out, a range repeated, the tail
    cut off; chosen by ``rng``, so the same seed and generator give the same input."""
    out = bytearray(data)
    for _ in range(rng.randint(1, MAX_MUTATIONS)):
        if not out:
            break
        operation = rng.choice(("flip", "cut", "repeat", "truncate"))
        start = rng.randrange(len(out))
        length = rng.randint(1, max(1, len(out) // 8))
        if operation == "flip":
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif operation == "cut":
            del out[start : start + length]
        elif operation == "repeat":
            piece = out[start : start + length]
            copies = rng.randint(1, 4)
            if len(out) + copies * len(piece) <= MAX_GROWTH * max(len(data), 1):
                out[start:start] = piece * copies
        else:
            del out[start:]
    return bytes(out)


def _where(frame: traceback.FrameSummary) -> str:
    """``file:line`` of a frame, the file relative to site-packages, the standard library or the
    repository."""
    name = frame.filename
    for prefix in (*site.getsitepackages(), sysconfig.get_paths()["stdlib"], str(Path.cwd())):
        if name.startswith(prefix + "/"):
            name = name.removeprefix(prefix + "/")
            break
    return f"{name}:{frame.lineno}"


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def exception_signature(exc: BaseException) -> str:
    """What tells one failure from another: the error's type, where it was raised and the last
    line of framehub's code it went through."""
    if isinstance(exc, Broken):
        return f"Broken: {str(exc).splitlines()[0] if str(exc) else ''}"
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return _type_name(exc)
    innermost = frames[-1]
    ours = [f for f in frames if "/server/" in f.filename]
    signature = f"{_type_name(exc)} at {_where(innermost)}"
    if ours and ours[-1] is not innermost:
        signature += f" from {_where(ours[-1])}"
    return signature


class Findings:
    """The distinct failures of a run, each with the smallest input seen, under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._sizes: dict[str, int] = {}
        self.hits: dict[str, int] = {}

    def add(self, kind: str, signature: str, detail: str, data: bytes) -> None:
        """Count a failure; keep its input when it is the first or the smallest of its kind."""
        title = f"{kind}: {signature}"
        self.hits[title] = self.hits.get(title, 0) + 1
        if title in self._sizes and self._sizes[title] <= len(data):
            return
        self._sizes[title] = len(data)
        stem = f"{kind}-{hashlib.sha1(title.encode()).hexdigest()[:12]}"
        (self._folder / f"{stem}.input").write_bytes(data)
        shown = repr(data[:SHOWN_BYTES]) + (" ..." if len(data) > SHOWN_BYTES else "")
        (self._folder / f"{stem}.txt").write_text(
            f"{title}\n\n{detail.rstrip()}\n\ninput, {len(data)} bytes: {shown}\n",
            encoding="utf-8",
        )

    def crash(self, exc: BaseException, data: bytes) -> None:
        """An exception the target does not promise."""
        detail = "".join(traceback.format_exception(exc))
        self.add("crash", exception_signature(exc), detail, data)


class Runner:
    """Feeds inputs to a target's ``check`` and records what goes wrong (the module docstring)."""

    def __init__(self, target: Target, work: Path, engine: str, guard_hangs: bool) -> None:
        self.target = target
        self.work = work
        self.engine = engine
        self.findings = Findings(work / FINDINGS)
        self.executions = 0
        self._guard_hangs = guard_hangs
        self._current = work / CURRENT_INPUT
        self._started = time.monotonic()
        self._next_stats = self._started

    def one_input(self, data: bytes) -> None:
        """Run the target on ``data``."""
        self.executions += 1
        if self._guard_hangs:
            self._current.write_bytes(data)
            faulthandler.dump_traceback_later(self.target.hang_seconds, exit=True)
        started = time.monotonic()
        try:
            self.target.check(data)
        except self.target.refusals:
            pass
        except Noted as note:
            self.findings.add(NOTED, str(note).splitlines()[0], str(note), data)
        except Exception as exc:
            self.findings.crash(exc, data)
        finally:
            if self._guard_hangs:
                faulthandler.cancel_dump_traceback_later()
        elapsed = time.monotonic() - started
        if elapsed > self.target.slow_seconds:
            bound = self.target.slow_seconds
            self.findings.add(
                "slow", f"one input took over {bound:g} s", f"took {elapsed:.2f} s", data
            )
        if started >= self._next_stats:
            self.write_stats()
            self._next_stats = started + STATS_INTERVAL

    def write_stats(self) -> None:
        """Write ``stats.json`` (see the module docstring)."""
        stats = {
            "engine": self.engine,
            "executions": self.executions,
            "seconds": round(time.monotonic() - self._started, 1),
            "findings": self.findings.hits,
        }
        (self.work / STATS).write_text(json.dumps(stats, indent=1), encoding="utf-8")

    def finish(self) -> None:
        """The end of a run that was not ended by a hang: stats written, no input left over."""
        self.write_stats()
        self._current.unlink(missing_ok=True)


def run(make_target: Callable[[Path], Target], work: Path, seconds: float, engine: str) -> None:
    """Fuzz the target ``make_target(work)`` builds for ``seconds`` with ``engine``.

    With atheris this does not return: libFuzzer ends the process.
    """
    work.mkdir(parents=True, exist_ok=True)
    (work / CURRENT_INPUT).unlink(missing_ok=True)
    atheris = load_atheris() if engine == "atheris" else None
    if engine == "atheris" and atheris is None:
        raise SystemExit("atheris is not installed: pip install atheris, or --engine hypothesis")
    if atheris is not None:
        with atheris.instrument_imports():
            target = make_target(work)
    else:
        target = make_target(work)
    if not target.guided:
        _run_corpus(Runner(target, work, "mutation corpus", guard_hangs=True), seconds)
    elif atheris is not None:
        _run_atheris(atheris, Runner(target, work, "atheris", guard_hangs=False), seconds)
    else:
        _run_hypothesis(Runner(target, work, "hypothesis", guard_hangs=True), seconds)


def _run_corpus(runner: Runner, seconds: float) -> None:
    seeds = runner.target.seeds()
    end = time.monotonic() + seconds
    for index in itertools.count():
        if time.monotonic() >= end:
            break
        if index < len(seeds):
            runner.one_input(seeds[index])
        else:
            runner.one_input(mutate(seeds[index % len(seeds)], random.Random(index)))
    runner.finish()


def _run_atheris(atheris: Any, runner: Runner, seconds: float) -> None:
    corpus = runner.work / CORPUS
    corpus.mkdir(exist_ok=True)
    for seed in runner.target.seeds():
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)
    argv = [
        sys.argv[0],
        f"-max_total_time={max(1, round(seconds))}",
        f"-timeout={math.ceil(runner.target.hang_seconds)}",
        f"-max_len={runner.target.max_len}",
        *_dictionary_option(runner),
        f"-artifact_prefix={runner.work}/",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(argv, runner.one_input)
    atheris.Fuzz()


def _dictionary_option(runner: Runner) -> list[str]:
    """libFuzzer's ``-dict`` option for the target's tokens, written to ``WORK/dictionary``."""
    if not runner.target.dictionary:
        return []
    path = runner.work / "dictionary"
    lines = [
        '"' + "".join(_escaped(byte) for byte in token) + '"' for token in runner.target.dictionary
    ]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return [f"-dict={path}"]


def _escaped(byte: int) -> str:
    if byte in b'\\"' or not 0x20 <= byte < 0x7F:
        return f"\\x{byte:02x}"
    return chr(byte)


def _run_hypothesis(runner: Runner, seconds: float) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    seeds = runner.target.seeds()
    inputs = st.one_of(
        st.binary(max_size=runner.target.max_len),
        st.builds(mutate, st.sampled_from(seeds), st.randoms(use_true_random=False)),
    )

    @settings(
        max_examples=HYPOTHESIS_BATCH,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs)
    def batch(data: bytes) -> None:
        runner.one_input(data)

    for seed in seeds:
        runner.one_input(seed)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        batch()
    runner.finish()
