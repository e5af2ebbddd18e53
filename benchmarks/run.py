"""Run every ``benchmarks/bench_*.py`` and print one table (``make bench``).

Each module defines ``run() -> list[dict]`` with rows ``{"benchmark", "value", "unit",
"note"}``. Ratios are measured inside one module run, never across runs. Benchmarks are not
tests: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent


def machine() -> str:
    cpus = len(__import__("os").sched_getaffinity(0))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {cpus} CPU cores, {gpu}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only these benchmarks (e.g. phantoms)")
    options = parser.parse_args()
    rows = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if options.names and name not in options.names:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        start = time.perf_counter()
        rows.extend(module.run())
        print(f"# {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(f"machine: {machine()}")
    widths = [max(len(str(r[k])) if k != "value" else len(f"{r[k]:.4g}") for r in rows + [
        {"benchmark": "benchmark", "value": 0.0, "unit": "unit", "note": "note"}]) for k in ("benchmark", "value", "unit")]
    print(f"{'benchmark':<{widths[0]}}  {'value':>{max(widths[1], 5)}}  {'unit':<{widths[2]}}  note")
    for row in rows:
        print(f"{row['benchmark']:<{widths[0]}}  {row['value']:>{max(widths[1], 5)}.4g}  {row['unit']:<{widths[2]}}  {row['note']}")


if __name__ == "__main__":
    main()
