"""Lightning only where it belongs: ``trainers``, ``datamodules``, ``callbacks``, ``cli`` (and the
``anatldm predict`` callback of ``export``); every other package imports without it."""

from __future__ import annotations

import json
import subprocess
import sys

#: packages that must import without Lightning, with every submodule (``pkgutil.walk_packages``)
LIGHTNING_FREE = ["data", "models", "diffusion", "losses", "metrics", "pipelines", "interpret", "evaluation", "export"]
#: the Lightning parts of those packages: ``DatasetWriter`` is an ``anatldm predict`` callback
LIGHTNING_MODULES = ["anatldm.export.callback"]
#: top-level names of the Lightning framework. ``lightning_utilities`` is not among them: it is a
#: small helper package that torchmetrics (the metrics' base) imports, with no trainer in it
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")

_SCRIPT = f"""
import importlib, json, pkgutil, sys
imported = []
for name in {LIGHTNING_FREE!r}:
    package = importlib.import_module('anatldm.' + name)
    imported.append(package.__name__)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):
        if info.name not in {LIGHTNING_MODULES!r}:
            importlib.import_module(info.name)
            imported.append(info.name)
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {LIGHTNING!r}
                or m.startswith(('anatldm.trainers', 'anatldm.datamodules', 'anatldm.callbacks', 'anatldm.cli')))
print(json.dumps({{"imported": imported, "loaded": loaded}}))
"""


def test_library_packages_import_no_lightning() -> None:
    """A fresh interpreter imports every module of the Lightning-free packages: no module of
    Lightning (nor of the trainers, data modules, callbacks or CLI that use it) is loaded."""
    result = subprocess.run([sys.executable, "-c", _SCRIPT], check=True, capture_output=True, text=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"anatldm.data.orientation", "anatldm.export.geometry", "anatldm.data.phantoms.writer"} <= \
        set(report["imported"])  # the walk reached the submodules
    assert report["loaded"] == []


def test_the_guard_sees_lightning() -> None:
    """The same check flags the data modules, which do import Lightning (the guard can fail)."""
    code = ("import sys, anatldm.datamodules; "
            f"assert any(m.split('.')[0] in {LIGHTNING!r} for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
