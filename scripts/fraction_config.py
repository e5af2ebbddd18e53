"""Plausibility against training fraction: the evaluation config of every arm's fraction checkpoints.

    python scripts/fraction_config.py EVAL_CONFIG OUT_CONFIG [--fractions 0.10 0.25 0.50] [--num-samples N]

Reads an evaluation config with one checkpoint list per arm (e.g. configs/claim/eval_v2.yaml) and
writes one whose arms are ``<arm>@<fraction>`` (the runs' ``fraction-<f>.ckpt``, written by the LDM
configs' FractionCheckpoint) and ``<arm>@100%`` (``last.ckpt``), all sampled unguided with the same
seeds, without a claim, a baseline or edits: where in training does each arm's plausibility come from
(issue 22, item 5). Run by scripts/claim.sh (claim v2, FRACTIONS=1); report: RUNS/fractions/.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anatldm.atomic import write_text_atomic  # noqa: E402


def fraction_config(config: dict, fractions: list[float], out_dir: str, num_samples: int | None) -> dict:
    args = config["model"]["init_args"]
    generators = {}
    for arm, paths in args["generators"].items():
        paths = [paths] if isinstance(paths, str) else list(paths)
        for fraction in fractions:
            generators[f"{arm}@{fraction:.0%}"] = [re.sub(r"last\.ckpt$", f"fraction-{fraction:.2f}.ckpt", p)
                                                    for p in paths]
        generators[f"{arm}@100%"] = paths
    args.update(generators=generators, early_checkpoints=None, baseline=None, claim=None, guidance=None,
                edits=None, edit_generator=None, edit_samples=None, output_dir=out_dir)
    if num_samples is not None:
        args["num_samples"] = num_samples
    config["trainer"]["default_root_dir"] = out_dir
    return config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_config")
    parser.add_argument("out_config")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.10, 0.25, 0.50])
    parser.add_argument("--num-samples", type=int, default=None, help="samples per model (default: the config's)")
    parser.add_argument("--out-dir", default=None, help="report folder (default: beside OUT_CONFIG's runs: <runs>/fractions)")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.eval_config).read_text())
    out_dir = args.out_dir or str(Path(args.out_config).resolve().parent.parent / "fractions")
    write_text_atomic(args.out_config, yaml.safe_dump(fraction_config(config, args.fractions, out_dir,
                                                                      args.num_samples), sort_keys=False))
    print(f"wrote {args.out_config} (report folder {out_dir})")


if __name__ == "__main__":
    main()
