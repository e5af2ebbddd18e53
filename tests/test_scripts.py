"""Every script under ``benchmarks/`` and ``scripts/`` answers ``--help`` with its usage, running nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(str(path.relative_to(REPO)) for folder in ("benchmarks", "scripts") for path in (REPO / folder).glob("*.py"))

# One interpreter runs every script as ``python SCRIPT --help`` would (``__main__``, its own
# argv, its folder first on ``sys.path``), so torch and Lightning are imported once, not once per script.
DRIVER = """
import contextlib, io, json, os, runpy, sys
out, path = {}, list(sys.path)
for script in sys.argv[1:]:
    sys.argv, sys.path = [script, "--help"], [os.path.dirname(os.path.abspath(script)), *path]
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    out[script] = {"code": code, "stdout": stdout.getvalue()}
sys.__stdout__.write("\\n" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    result = subprocess.run([sys.executable, "-c", DRIVER, *SCRIPTS], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)  # a script that ran its benchmark would not finish in time
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_benchmark_is_covered() -> None:
    assert {"benchmarks/bench_ldm.py", "benchmarks/run.py", "scripts/ablation_summary.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_usage_and_runs_nothing(helps: dict[str, dict], script: str) -> None:
    result = helps[script]
    assert result["code"] == 0, result
    assert result["stdout"].startswith(f"usage: {Path(script).name}"), result["stdout"][:500]  # nothing ran before it
