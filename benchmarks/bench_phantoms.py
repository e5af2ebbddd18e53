"""Phantom generation speed on one CPU core: 100 subjects of 128x128x48 per family.

Target: under 60 s per 100 subjects (0.6 s a subject) for each family. Each family is timed in
a fresh worker process pinned to one core with every thread pool set to one thread, so the
numbers do not depend on how many cores the machine has or what else this process loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUM_SUBJECTS, SIZE, NUM_SLICES = 100, (128, 128), 48
TARGET_S = 60.0
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def _time_family(family: str) -> float:
    """Seconds to generate the subjects, in this process (the worker's side)."""
    from anatldm.data.phantoms import generate_phantom

    generate_phantom(family, 10_000, SIZE, NUM_SLICES)  # warm-up: imports, caches
    start = time.perf_counter()
    for seed in range(NUM_SUBJECTS):
        generate_phantom(family, seed, SIZE, NUM_SLICES)
    return time.perf_counter() - start


def _worker(family: str) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(json.dumps({"seconds": _time_family(family)}))


def _measure(family: str) -> tuple[float, str]:
    """Run one family in a single-threaded worker; return its seconds and how it was pinned."""
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, "1"), "PYTHONPATH": path}
    result = subprocess.run([sys.executable, __file__, "--worker", family], env=env, check=True,
                            capture_output=True, text=True)
    pinned = "pinned to 1 core" if hasattr(os, "sched_setaffinity") else "1 thread, not pinned"
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"], pinned


def run() -> list[dict]:
    """One row per family: seconds for 100 subjects on one core."""
    from anatldm.data.phantoms import PHANTOM_CLASSES

    rows = []
    for family in PHANTOM_CLASSES:
        seconds, pinned = _measure(family)
        verdict = "meets" if seconds < TARGET_S else "MISSES"
        rows.append({
            "benchmark": f"phantoms/{family}",
            "value": seconds,
            "unit": f"s per {NUM_SUBJECTS} subjects",
            "note": f"{SIZE[0]}x{SIZE[1]}x{NUM_SLICES}, {pinned}; {verdict} the {TARGET_S:.0f} s target "
                    f"({1000 * seconds / NUM_SUBJECTS:.0f} ms a subject)",
        })
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", metavar="FAMILY", help="time one family in this process (what run() starts)")
    options = parser.parse_args()
    if options.worker:
        _worker(options.worker)
    else:
        for row in run():
            print(row)
