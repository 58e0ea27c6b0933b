"""``python -m studies.lowrank [key=value ...] [--out DIR]``: the low-rank study from the command line.

Reads ``conf/experiment/lowrank_smollm2.yaml`` (the same settings a Hydra run with
``experiment=lowrank_smollm2`` uses), applies ``key=value`` overrides to its ``lowrank:`` block
(``d_c=[64,128] methods=[svd,whitened]``), runs ``study.main`` and prints the summary table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from studies.lowrank.study import main
from studies.lowrank.summary import summary_table
from variants.presets import conf_root



def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.lowrank", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value settings of the lowrank block")
    parser.add_argument("--out", type=Path, default=Path("results/lowrank/smollm2_135m"))
    args = parser.parse_args(argv)
    experiment = yaml.safe_load((conf_root() / "experiment" / "lowrank_smollm2.yaml").read_text())
    model = next(value for entry in experiment["defaults"] for key, value in entry.items() if key.endswith("/model"))
    overrides = OmegaConf.from_dotlist(args.overrides)
    model = overrides.pop("model", model)  # model=<preset> picks another preset with real weights
    df = main({"model": model, "lowrank": OmegaConf.merge(OmegaConf.create(experiment["lowrank"]), overrides)},
              args.out)
    print(summary_table(df).to_string())
    print(f"rows: {args.out}/lowrank-*.parquet; figures: {args.out}/figures/")


if __name__ == "__main__":
    cli()
