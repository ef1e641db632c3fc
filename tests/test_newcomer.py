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
        out.append(words)
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
