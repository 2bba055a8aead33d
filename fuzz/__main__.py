"""``python -m fuzz [TARGET ...] [--seconds S]``: fuzz framehub's input checks for a bounded time.

Each target (all of :data:`TARGETS` by default) runs for ``--seconds`` in a child process of its
own, ``python -m fuzz --child TARGET``: libFuzzer ends the process it runs in, and a hang or a
native crash must not end the other targets' runs. A child's output goes to
``WORK/TARGET/log.txt``; its findings and corpus stay under ``WORK/TARGET`` (the corpus grows
from run to run, the findings are those of the last run). The table printed at the end gives per
target the engine, the seconds run, the inputs tried and every finding with the file that holds
its input and traceback, then the notes (refusals worth a look, such as a probe child that
crashed); the exit status is 1 when anything but notes was found.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fuzz.engine import (
    CURRENT_INPUT,
    ENGINES,
    FINDINGS,
    NOTED,
    STATS,
    Target,
    load_atheris,
    run,
)

TARGETS = ("frames", "archives", "settings", "cookies", "multipart", "probe")
DEFAULT_SECONDS = 60.0
DEFAULT_WORK = Path("state/fuzz")
# Time a child may take on top of --seconds: making its seeds, starting an app, one last input.
CHILD_GRACE = 120.0
# What libFuzzer leaves beside the corpus for an input that crashed, hung or ran out of memory.
ARTIFACTS = ("crash-*", "timeout-*", "oom-*", "leak-*", "slow-unit-*")
_LIBFUZZER_DONE = re.compile(r"^Done (\d+) runs in (\d+) second", re.MULTILINE)


@dataclass(slots=True)
class Outcome:
    """What one target's run gave."""

    name: str
    engine: str = "?"
    seconds: float = 0.0
    executions: int = 0
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    """Run the targets asked for; 1 when anything but notes was found."""
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="per target")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="corpus and findings")
    parser.add_argument("--engine", choices=("auto", *ENGINES), default="auto")
    parser.add_argument("--child", metavar="TARGET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if load_atheris() is not None else "hypothesis"
    if args.child:
        run(functools.partial(_target, args.child), args.work, args.seconds, engine)
        return 0
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target {unknown[0]}; targets are {', '.join(TARGETS)}")
    if args.engine == "auto" and engine == "hypothesis":
        print("atheris is not installed: fuzzing with hypothesis", file=sys.stderr)
    outcomes = [
        _run_child(name, args.work.absolute() / name, args.seconds, engine)
        for name in args.targets or TARGETS
    ]
    _print_table(outcomes)
    return 1 if any(outcome.findings for outcome in outcomes) else 0


def _target(name: str, work: Path) -> Target:
    """The target that ``fuzz/NAME.py`` builds with its ``target(work)``."""
    target = importlib.import_module(f"fuzz.{name}").target(work)
    if not isinstance(target, Target):
        raise TypeError(f"fuzz.{name}.target() must return a Target")
    return target


def _run_child(name: str, work: Path, seconds: float, engine: str) -> Outcome:
    """Fuzz ``name`` in a child process and collect what it found."""
    shutil.rmtree(work / FINDINGS, ignore_errors=True)
    for pattern in ARTIFACTS:
        for old in work.glob(pattern):
            old.unlink()
    work.mkdir(parents=True, exist_ok=True)
    (work / STATS).unlink(missing_ok=True)
    log = work / "log.txt"
    print(f"fuzzing {name} for {seconds:g} s (log: {log})", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "fuzz", "--child", name, "--work", str(work)]
    command += ["--seconds", repr(seconds), "--engine", engine]
    with log.open("wb") as out:
        try:
            returncode = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=seconds + CHILD_GRACE,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            returncode = None
    outcome = _read_outcome(name, work)
    outcome.findings += [str(path) for pattern in ARTIFACTS for path in sorted(work.glob(pattern))]
    current = work / CURRENT_INPUT
    if returncode != 0 and current.exists():
        # The child died or hung on this input before it could say so itself.
        kept = work / FINDINGS / "process-ended.input"
        kept.parent.mkdir(exist_ok=True)
        current.replace(kept)
        outcome.findings.append(f"the child ended (status {returncode}) on {kept}; see {log}")
    elif returncode not in (0, None) and not outcome.findings:
        outcome.findings.append(f"the child ended with status {returncode}; see {log}")
    elif returncode is None:
        outcome.findings.append(f"the child was still running after {seconds + CHILD_GRACE:g} s")
    return outcome


def _read_outcome(name: str, work: Path) -> Outcome:
    """The stats a child left, with libFuzzer's own count of runs where it printed one."""
    outcome = Outcome(name)
    try:
        stats = json.loads((work / STATS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return outcome
    outcome.engine = stats["engine"]
    outcome.seconds = stats["seconds"]
    outcome.executions = stats["executions"]
    done = _LIBFUZZER_DONE.search((work / "log.txt").read_text(errors="replace"))
    if done is not None:
        outcome.executions, outcome.seconds = int(done[1]), float(done[2])
    for path in sorted((work / FINDINGS).glob("*.txt")):
        title = path.read_text(encoding="utf-8").splitlines()[0]
        hits = stats["findings"].get(title, 1)
        kept = outcome.notes if title.startswith(f"{NOTED}:") else outcome.findings
        kept.append(f"{title} ({hits} inputs): {path}")
    return outcome


def _print_table(outcomes: list[Outcome]) -> None:
    print(
        f"{'target':<10} {'engine':<16} {'seconds':>8} {'inputs':>10} {'per s':>8}  findings  notes"
    )
    for o in outcomes:
        rate = o.executions / o.seconds if o.seconds else 0.0
        print(
            f"{o.name:<10} {o.engine:<16} {o.seconds:>8.0f} {o.executions:>10,} {rate:>8,.1f}"
            f"  {len(o.findings):>8}  {len(o.notes):>5}"
        )
    for o in outcomes:
        for finding in o.findings:
            print(f"{o.name}: {finding}")
    for o in outcomes:
        for note in o.notes:
            print(f"{o.name}: {note}")


if __name__ == "__main__":
    raise SystemExit(main())
