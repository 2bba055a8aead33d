"""``python -m bench [--quick] [NAME ...]``: run benchmark modules and print one table of results.

Every module ``bench/<NAME>.py`` (except ``common``) is a benchmark with a synchronous
``run(ctx) -> list[Row]``. Each gets its own temp folder, removed afterwards. The exit status is 1
when a row misses its target or a benchmark could not run, 2 for an unknown benchmark name.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import bench
from bench.common import PROJECT_ROOT, BenchContext, BenchError, Row, format_table

_NOT_BENCHMARKS = {"common", "__main__", "__init__"}
# A 1-minute load average above this, before we start, means other work competes for the CPUs.
BUSY_LOAD = 0.5

Benchmark = Callable[[BenchContext], list[Row]]


def discover() -> list[str]:
    """The names of the benchmark modules, sorted."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(bench.__path__)
        if info.name not in _NOT_BENCHMARKS and not info.name.startswith("_")
    )


def load_benchmark(name: str) -> Benchmark:
    """The ``run`` function of ``bench.<name>``."""
    module = importlib.import_module(f"bench.{name}")
    run: Benchmark | None = getattr(module, "run", None)
    if run is None:
        raise BenchError(f"bench/{name}.py has no run(ctx) function")
    return run


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks (all by default) and print the table; non-zero on any failure."""
    available = discover()
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run benchmark modules and print one table of results."
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of {', '.join(available)}")
    parser.add_argument("--quick", action="store_true", help="short runs, to check the harness")
    parser.add_argument(
        "--server-root",
        type=Path,
        default=PROJECT_ROOT,
        metavar="DIR",
        help="run framehub's main.py from this checkout (e.g. a git worktree) instead of this one",
    )
    parser.add_argument(
        "--server-python",
        type=Path,
        default=Path(sys.executable),
        metavar="PYTHON",
        help="run framehub and the reference servers on this interpreter (make bench: a venv with "
        "the runtime dependencies only) instead of this one",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in available]
    if unknown:
        print(f"bench: no benchmark {unknown[0]!r}; known: {', '.join(available)}", file=sys.stderr)
        return 2
    busy = os.getloadavg()[0]
    if busy > BUSY_LOAD:
        print(
            f"bench: load average {busy:.1f} on {os.cpu_count()} CPUs before starting: other work "
            "on this machine lowers and scatters the figures",
            file=sys.stderr,
        )
    rows: list[Row] = []
    broken: list[str] = []
    with tempfile.TemporaryDirectory(prefix="framehub-bench-") as tmp:
        for name in args.names or available:
            print(f"bench: running {name}", file=sys.stderr, flush=True)
            ctx = BenchContext(
                tmp=Path(tmp) / name,
                quick=args.quick,
                python=args.server_python.absolute(),  # not resolved: a venv's python is a link
                root=args.server_root.resolve(),
            )
            ctx.tmp.mkdir()
            try:
                rows += load_benchmark(name)(ctx)
            except BenchError as exc:
                broken.append(f"{name}: {exc}")
            except Exception:
                broken.append(f"{name}: crashed\n{traceback.format_exc()}")
    print(format_table(rows))
    for message in broken:
        print(f"\nbench: {message}", file=sys.stderr)
    failed = [row for row in rows if row.passed is False]
    return 1 if failed or broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
