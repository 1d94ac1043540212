"""In-process cost of de-identification: ``Ingestor.accept`` over the synthetic dataset with
and without ``deid.enabled``, each into a fresh data folder, in alternating rounds.

    python -m bench.deid_accept [--patients 4] [--size 512] [--rounds 3] [--no-fsync]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from config import DeidSettings, load_settings
from ingest import Outcome, Source
from node.app import build_core
from tests.synthetic import SyntheticSpec, generate

console = Console()


def run(files: list[bytes], root: Path, *, deid: bool, fsync: bool) -> float:
    """Seconds to accept every file into a fresh node folder."""
    settings = load_settings(data_dir=root, fsync=fsync)
    settings = settings.model_copy(update={"deid": DeidSettings(enabled=deid)})
    core = build_core(settings)
    source = Source(door="folder", remote="bench")
    try:
        started = time.perf_counter()
        for raw in files:
            result = core.ingestor.accept(raw, source)
            if result.outcome is not Outcome.STORED:
                raise RuntimeError(f"not stored: {result.outcome.value} {result.reason}")
        return time.perf_counter() - started
    finally:
        core.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.deid_accept", description=__doc__)
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--size", type=int, default=512, help="rows and columns")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-fsync", action="store_true", help="measure without fsync")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
        spec = SyntheticSpec(patients=args.patients, rows=args.size, columns=args.size)
        files = [path.read_bytes() for path in generate(Path(tmp, "in"), spec).files]
        console.print(f"{len(files)} instances of {args.size}x{args.size}, {args.rounds} rounds")
        timings: dict[bool, list[float]] = {True: [], False: []}
        for number in range(args.rounds):
            for deid in (False, True) if number % 2 == 0 else (True, False):
                folder = Path(tmp, f"{number}-{deid}")
                timings[deid].append(run(files, folder, deid=deid, fsync=not args.no_fsync))
    without = statistics.median(timings[False])
    with_deid = statistics.median(timings[True])
    console.print(
        f"Ingestor.accept, median of {args.rounds}: without deid "
        f"{without / len(files) * 1000:.2f} ms/instance, with deid "
        f"{with_deid / len(files) * 1000:.2f} ms/instance: "
        f"{with_deid / without - 1:+.1%} (target at most +20 %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
