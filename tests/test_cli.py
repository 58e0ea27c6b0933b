"""The ``attnbench`` command: Hydra's typed schema refuses wrong types and choices in one line, a sweep
is checked job by job before any starts, Hydra's own flags work, local presets and entry-point
implementations are selectable, and the subcommands dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from enum import Enum
from pathlib import Path

import pytest

from attnbench.harness import results
from attnbench.harness.app.main import main
from attnbench.harness.sweep.schema import MeasureConfig, RunConfig
from attnbench.variants.registry import VARIANTS

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = ["model=tiny", "device=cpu", "measure=quick", "seq=64", "phase=decode"]


def _typed_keys() -> list[tuple[str, str, str]]:
    """(key, a wrong value, what the one line must list as allowed) for every typed key of the schema."""
    wrong = {int: ("abc", "an integer"), float: ("abc", "a number"), bool: ("maybe", "one of: true, false")}
    cases = []
    for node, prefix in ((RunConfig, ""), (MeasureConfig, "measure.")):
        for name, hint in typing.get_type_hints(node).items():
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if args else hint
            if isinstance(base, type) and issubclass(base, Enum):
                cases.append((prefix + name, "nope", "one of: " + ", ".join(base.__members__)))
            elif base in wrong:
                value, allowed = wrong[base]
                cases.append((prefix + name, value, allowed))
    return cases


TYPED = _typed_keys()


def test_the_schema_types_the_keys_users_mistype():
    keys = {key for key, _, _ in TYPED}
    assert {"task", "dtype", "compile", "phase", "attention", "seed", "resume", "threads", "batch", "heads",
            "measure.check_numerics", "measure.memory_headroom", "measure.min_reps"} <= keys


@pytest.mark.parametrize(("key", "value", "allowed"), TYPED, ids=[k for k, _, _ in TYPED])
def test_a_wrong_type_or_choice_is_one_line_and_exit_2(key, value, allowed, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([f"{key}={value}", f"hydra.run.dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {key}='{value}' is not {allowed}"), err
    assert not list(tmp_path.iterdir()), "nothing ran"


@pytest.mark.parametrize(("args", "line"), [
    (["colour=red"], "error: unknown key 'colour'; valid keys: attention, batch,"),
    (["measure.colour=1"], "error: unknown key 'measure.colour'; valid keys: measure.budget_s,"),
    # Every registered variant is offered: a new family's folder adds its name here without a test edit.
    (["variant=mxa"], "error: variant='mxa' is not one of: " + ", ".join(sorted(["all", *VARIANTS.names()]))),
    (["measure=slow"], "error: measure='slow' is not one of: default, quick"),
])
def test_unknown_keys_and_group_options_are_one_line(args, line, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith(line), err


def _run(args: list[str], *, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_a_sweep_with_one_bad_combination_is_refused_before_any_job(tmp_path):
    out = tmp_path / "sweep"
    proc = _run(["-m", *TINY_RUN, "variant=gqa", "impl=eager", "heads=4,7,8", "kv_heads=2",
                 f"hydra.sweep.dir={out}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: kv_heads=2 does not divide heads=7"), proc.stderr
    assert "(sweep job 1 of 3: heads=7;" in proc.stderr, "names the combination"
    assert not (out.exists() and results.row_files([out])), "no job ran"


def test_shell_completion_prints_hydras_script():
    proc = _run(["--shell-completion", "install=bash"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hydra_bash_completion" in proc.stdout and "complete -o nospace" in proc.stdout


def test_a_preset_in_a_config_dir_is_usable(tmp_path):
    conf = tmp_path / "my_conf"
    (conf / "model").mkdir(parents=True)
    tiny = (ROOT / "conf" / "model" / "tiny.yaml").read_text()
    (conf / "model" / "mine.yaml").write_text(tiny.replace("name: tiny", "name: mine").replace("heads: 4", "heads: 8"))
    out = tmp_path / "run"
    proc = _run(["--config-dir", str(conf), *TINY_RUN, "model=mine", "variant=mha", "impl=eager",
                 f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = results.load(out).iloc[0]
    assert (row.model, row.heads, row.status) == ("mine", 8, "ok")


def test_hydra_searchpath_adds_presets_too(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text((ROOT / "conf" / "model" / "tiny.yaml").read_text())
    assert main(["--cfg", "job", "model=mine", f"hydra.searchpath=[file://{tmp_path}]"]) == 0
    assert "name: tiny" in capsys.readouterr().out


PLUGIN = '''
from attnbench.variants.implementation import KernelImplementation
from attnbench.variants.kernels.eager import EagerKernel

IMPLEMENTATION = KernelImplementation(name="plug_eager", path="standard", kernel=EagerKernel(),
                                      description="a test plugin: eager attention under another name")
'''


def test_an_entry_point_implementation_is_selectable(tmp_path):
    site = tmp_path / "site"
    info = site / "attnbench_testplug-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "attnbench_testplug.py").write_text(PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: attnbench-testplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[attnbench.implementations]\n"
                                           "plug_eager = attnbench_testplug:IMPLEMENTATION\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "run"
    proc = _run(["impl=plug_eager", "variant=mha", *TINY_RUN, f"hydra.run.dir={out}"], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = results.load(out).iloc[0]
    assert (row.impl, row.status) == ("plug_eager", "ok")


def test_cfg_job_and_help(capsys):
    assert main(["--cfg", "job", "variant=mla", "phase=both"]) == 0
    out = capsys.readouterr().out
    assert "variant:\n  name: mla" in out and "phase: both" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "attnbench report | merge | status | nightly | lowrank" in capsys.readouterr().out


def test_subcommands_dispatch_to_each_commands_main(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == f"error: no sweep or run at {tmp_path / 'nothing'}\n"
    for name in ("report", "merge", "nightly", "lowrank", "status", "export", "import-trace"):
        prog = f"usage: attnbench {name}"
        with pytest.raises(SystemExit) as exit_info:  # argparse's --help exits 0
            main([name, "--help"])
        assert exit_info.value.code == 0 and prog in capsys.readouterr().out, name


@pytest.mark.parametrize("name", ["../x", "", "a/b", "-x", ".hidden"])
def test_a_run_name_that_is_not_a_folder_name_is_refused_before_hydra_makes_it(name):
    from attnbench.harness.errors import UserError
    from attnbench.harness.sweep.overrides import check_overrides

    with pytest.raises(UserError, match=r"^name="):
        check_overrides(["model=tiny", "device=cpu", f"name={name}"])
