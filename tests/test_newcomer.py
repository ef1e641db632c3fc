"""What a newcomer reads: help texts, citations and tables without raw library warnings."""

from __future__ import annotations

import warnings

import numpy as np

from analysis import stats


def test_every_run_option_says_what_it_does():
    from experiments.cli_args import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    run = sub.choices["run"]
    silent = [a.option_strings[0] for a in run._actions
              if a.option_strings and a.dest != "help" and not (a.help or "").strip()]
    assert silent == []


def test_info_cites_identity_mappings_for_its_units_only():
    from convnets.__main__ import info

    assert "Identity Mappings" in info("resnet20", {"unit": "full_preact"}).splitlines()[1]
    assert "Identity Mappings" not in info("resnet20", {}).splitlines()[1]
    assert "Identity Mappings" not in info("resnet20", {"unit": "original"}).splitlines()[1]


def test_identical_seeds_give_no_library_warning_and_no_test():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = stats.welch([81.25, 81.25], [81.25, 81.25])
    assert np.isnan(out["p"]) and out["diff"] == 0.0


def _readme_commands(prog: str) -> list[list[str]]:
    """Each ``python -m <prog> ...`` command line of the README's code blocks, as words
    (continued lines joined, comments and shell operators cut)."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    inline = re.findall(r"`(python -m [^`]+)`", text)
    lines = [ln for b in blocks for ln in b.replace("\\\n", " ").splitlines()] + inline
    out = []
    for line in lines:
        m = re.search(rf"python -m {re.escape(prog)}(\s.*)?$", line.split("#")[0].strip())
        if not m:
            continue
        words = shlex.split((m.group(1) or "").split("&&")[0].split("|")[0])
        out.append(words[:-1] if words[-1:] == ["&"] else words)  # run in the background
    return out


def test_every_readme_command_names_a_subcommand_and_options_the_cli_has():
    """A newcomer copies the README's commands: each subcommand and flag must exist."""
    import argparse

    from analysis.__main__ import _parser as analysis_parser
    from convnets.__main__ import build_parser as convnets_parser
    from experiments.cli_args import build_parser

    def subparsers(parser: argparse.ArgumentParser) -> dict:
        return next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)).choices

    checked = 0
    for prog, parser in (("experiments", build_parser()), ("analysis", analysis_parser()),
                         ("convnets", convnets_parser())):
        subs = subparsers(parser)
        for words in _readme_commands(prog):
            if not words or words[0] == "...":
                continue
            assert words[0] in subs or "|" in words[0], (prog, words)
            if words[0] not in subs:
                continue
            if (prog, words[0]) == ("convnets", "info"):  # --OPTION VALUE: the model's own
                checked += 1
                continue
            flags = {o for a in subs[words[0]]._actions for o in a.option_strings}
            unknown = [w for w in words[1:] if w.startswith("--") and w.split("=")[0]
                       not in flags and w != "..."]
            assert not unknown, (prog, words, unknown)
            checked += 1
    assert checked >= 20  # the README's commands were found


def test_one_command_fetches_and_checks_a_data_set(tmp_path, capsys):
    """Issue 45 item 2: `python -m convnets data NAME` loads (downloading where missing) and
    prints the content checksum every run records; offline with nothing there, one line naming
    the ways out."""
    from convnets.__main__ import main
    from convnets.data import load_dataset
    from tests.data_formats import write_cifar10

    write_cifar10(tmp_path / "here")
    assert main(["data", "cifar10", "--data-dir", str(tmp_path / "here")]) == 0
    out = capsys.readouterr().out.strip()
    checksum = load_dataset("cifar10", tmp_path / "here").checksum
    assert out.startswith("cifar10: 50 train / 10 test images, 10 classes, 3x32x32, ")
    assert f"checksum {checksum} (CIFAR-10; in {tmp_path / 'here'})" in out
    (tmp_path / "blocker").write_text("")  # a folder that cannot be made: no download tried
    assert main(["data", "cifar10", "--data-dir", str(tmp_path / "blocker" / "data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cifar10: ") and "Ways out" in err[0]


def test_the_readmes_run_status_list_and_validate_commands_work_as_written(tmp_path, monkeypatch,
                                                                          capsys):
    """Issue 45: every command of the README runs as written. Training is aside (hours), so
    each `run` command is planned, not trained (`--dry-run`: the spec, profile, variants,
    options and models are all checked); `status`, `list` and `validate` run whole, against a
    fresh store of their own."""
    import os

    from experiments.__main__ import main
    from tests.data_formats import write_imagefolder

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("CONVNETS_TUNED_DIR", str(tmp_path / "tuned"))
    # what the README's lr-search (training, aside) leaves for its `run --lr tuned`
    from experiments.spec import expand, load_spec
    from experiments.tuned import dataset_id, record_best

    rows = {f"{j.group}/{j.variant}": dict(
        variant=f"{j.group}/{j.variant}", best_lr=0.1, best_val_error=10.0, trials=1,
        study="readme", dataset=dataset_id(j.config), dataset_checksum="-")
        for j in expand(load_spec("degradation"), "quick")}
    record_best("degradation", list(rows.values()), profile="quick", budget_epochs=1,
                storage="sqlite:///optuna.db")
    folder = tmp_path / "c10"  # data aside: every image folder the README names is this one
    write_imagefolder(folder)
    ran = []
    for words in _readme_commands("experiments"):
        if not words or words[0] not in ("run", "status", "list", "validate") or "..." in words:
            continue  # an inline sketch ("run ... --deadline 8m") is no command to run
        words = [f"imagefolder:{folder}" if w.startswith("imagefolder:") else w for w in words]
        words = [os.path.expandvars(w) for w in words]
        extra = ["--dry-run"] if words[0] == "run" else []
        code = main(words + extra)
        out = capsys.readouterr()
        assert code == 0, (words, out.err[-2000:])
        ran.append(words[0])
    assert ran.count("run") >= 8 and {"status", "list", "validate"} <= set(ran), ran
