"""Each claim v2 arm's guidance, chosen on the selection seeds, written into the evaluation config.

    python scripts/choose_guidance.py SELECT_CONFIG SELECT_REPORT EVAL_TEMPLATE OUT_CONFIG OUT_CHOICE --seeds 0 1 2

Run by scripts/claim.sh after the selection stage (anatldm.evaluation.selection.choose_guidance):
per arm the highest pooled plausibility rate on the selection seeds wins (ties: the lower weight).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anatldm.atomic import write_text_atomic  # noqa: E402
from anatldm.errors import read_json  # noqa: E402
from anatldm.evaluation.selection import choose_guidance  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("select_config")
    parser.add_argument("select_report")
    parser.add_argument("eval_template")
    parser.add_argument("out_config")
    parser.add_argument("out_choice")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    selection = yaml.safe_load(Path(args.select_config).read_text())["model"]["init_args"]
    config, chosen = choose_guidance(selection, read_json(args.select_report),
                                     yaml.safe_load(Path(args.eval_template).read_text()), args.seeds)
    write_text_atomic(args.out_choice, json.dumps(chosen, indent=1))
    write_text_atomic(args.out_config, yaml.safe_dump(config, sort_keys=False))
    for arm, entry in chosen.items():
        print(f"guidance of {arm}: {entry['choice']} (plausibility {entry['plausibility_rate']:.3f} on the selection seeds)")


if __name__ == "__main__":
    main()
