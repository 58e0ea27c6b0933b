"""``python -m attnbench.harness.studies.lowrank [key=value ...] [--out DIR]``: the low-rank study from the \
command line.

Reads ``conf/experiment/lowrank_smollm2.yaml`` (the same settings a Hydra run with
``experiment=lowrank_smollm2`` uses), applies ``key=value`` overrides to its ``lowrank:`` block
(``d_c=[64,128] methods=[svd,whitened]``), runs ``study.main`` and prints the summary table.

Every setting and the output folder are checked before the model is loaded: a bad one is one line
``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from attnbench.harness.errors import ArgumentParser, UserError, guarded
from attnbench.harness.results.paths import check_out_dir
from attnbench.harness.studies.lowrank.settings import StudySettings, check_model
from attnbench.variants.presets import conf_root, preset_names


def settings_of(overrides: list[str]) -> tuple[str, dict]:
    """The model preset and the ``lowrank`` block after ``key=value`` overrides, checked."""
    experiment = yaml.safe_load((conf_root() / "experiment" / "lowrank_smollm2.yaml").read_text())
    model = next(value for entry in experiment["defaults"] for key, value in entry.items() if key.endswith("/model"))
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"setting {item!r} is not key=value (e.g. d_c=[64,128] methods=[svd])")
    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=True)
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        raise UserError(f"settings {' '.join(overrides)!r} do not parse: {str(error).splitlines()[0]}") from None
    model = given.pop("model", model)  # model=<preset> picks another preset with real weights
    block = {**experiment["lowrank"], **given}
    if model not in preset_names():
        raise UserError(f"model={model!r} is not one of: {', '.join(preset_names())}")
    settings = StudySettings.from_mapping({**block, "model": model})  # every check, before any weights are read
    check_model(settings.model, settings.layers)
    return model, block


@guarded("lowrank")
def cli(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="attnbench lowrank", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="key=value settings of the lowrank block")
    parser.add_argument("--out", default="results/lowrank/smollm2_135m")
    args = parser.parse_args(argv)
    model, block = settings_of(args.overrides)  # a bad one: one line from the boundary (harness.errors)
    if not args.out.strip():
        raise UserError(f"--out {args.out!r} is empty; give a folder to write to")
    out = check_out_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)  # before the weights load: a folder it can't make (/proc/x) is one line
    from attnbench.harness.studies.lowrank.study import main  # deferred: torch models only when the settings are sound
    from attnbench.harness.studies.lowrank.summary import summary_table

    df = main({"model": model, "lowrank": block}, out)
    print(summary_table(df).to_string())
    print(f"rows: {out}/lowrank-*.parquet; figures: {out}/figures/")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
