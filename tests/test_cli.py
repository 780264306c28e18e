"""Every command's bad arguments: one line `NAME: error: MESSAGE; see --help`, exit status 2, no usage dump."""
import subprocess
import sys

import pytest

from arcdist import grid, plot, report, train, variants
from helpers import ROOT, cli_env

CASES = {
    "train": (train.main, ["--epochs", "ten"], "arcdist: error: argument --epochs: invalid int value: 'ten'"),
    "grid": (grid.main, ["--grid-id", "x", "--jobs", "two"],
             "arcdist.grid: error: argument --jobs: invalid int value: 'two'"),
    "grid without id": (grid.main, [], "arcdist.grid: error: the following arguments are required: --grid-id"),
    "report": (report.main, ["--threshold-acc", "high"],
               "arcdist.report: error: argument --threshold-acc: invalid float value: 'high'"),
    "plot": (plot.main, [], "arcdist.plot: error: the following arguments are required: run_dir"),
    "variants": (variants.main, ["--bogus"], "arcdist.variants: error: unrecognized arguments: --bogus"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_arguments_are_one_line_and_exit_2(case, capsys):
    main, argv, line = CASES[case]
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    assert capsys.readouterr().err == f"{line}; see --help\n"


@pytest.mark.slow
@pytest.mark.parametrize("module", ["grid", "report", "plot", "variants"])
def test_real_commands_answer_help_and_bad_arguments(module):
    run = lambda *args: subprocess.run([sys.executable, "-m", f"arcdist.{module}", *args], cwd=ROOT,  # noqa: E731
                                       env=cli_env(), capture_output=True, text=True, timeout=120)
    helped = run("--help")
    assert helped.returncode == 0 and helped.stdout.startswith(f"usage: arcdist.{module} ")
    bad = run("--no-such-flag")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [bad.stderr.strip()] and bad.stderr.startswith(f"arcdist.{module}: error: ")


def test_the_arcdist_command_lists_its_subcommands_and_runs_them(capsys):
    from arcdist import command

    assert command.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: arcdist {train,grid,report,explore,evaluate,embed,export,plot,variants,config} ...")
    for name in ("train", "grid", "report", "explore", "evaluate", "plot", "variants"):
        assert f"\n  {name:<10} " in out
    assert command.main(["bogus"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "arcdist: error: unknown command 'bogus'; valid commands: train, grid, report, explore, evaluate, "
        "embed, export, plot, variants, config; see arcdist --help"]
    assert command.main(["variants"]) == 0  # the subcommand is the module's own main
    via = capsys.readouterr().out
    assert variants.main([]) == 0 and capsys.readouterr().out == via
    with pytest.raises(SystemExit) as raised:  # its arguments reach it
        command.main(["grid", "--grid-id", "x", "--jobs", "two"])
    assert raised.value.code == 2


def test_python_dash_m_arcdist_is_the_command():
    proc = subprocess.run([sys.executable, "-m", "arcdist", "plot"], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == ("arcdist.plot: error: the following arguments are required: "
                                                    "run_dir; see --help\n")


def test_missing_data_is_the_one_line_before_the_precision_probe(tmp_path):
    from helpers import run_train, tiny_args

    proc = run_train(tiny_args(tmp_path / "nodata", tmp_path / "run", 1, auto=True), check=False)
    assert proc.returncode == 2 and "probe" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "mnist: missing train-images" in proc.stderr
    assert not (tmp_path / "run").exists()
