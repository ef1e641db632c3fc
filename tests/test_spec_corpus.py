"""Malformed copies of experiments/degradation.yaml: each is refused before any MLflow run is
created or anything trains, with the file and the offending key named in the message."""

from __future__ import annotations

import pytest

import experiments.commands as commands
from experiments.__main__ import main
from experiments.spec import expand, load_spec
from experiments.spec_check import SPEC_DIR

ORIGINAL = (SPEC_DIR / "degradation.yaml").read_text()

RES20 = "      resnet20: {model: resnet20, paper: 8.75}\n"
SMOKE_OVR = "    overrides:\n      data: {name: synthetic"

# (case id, text to replace, replacement, what the message must name)
CASES = [
    # the 15 the issue found accepted, crashing, or explained badly
    ("duplicate-variant", RES20, RES20 + "      resnet20: {model: resnet56, paper: 6.97}\n",
     "duplicate key 'resnet20'"),
    ("duplicate-group", "  - name: residual", "  - name: plain", "groups[1].name"),
    ("empty-groups", ORIGINAL[ORIGINAL.index("groups:"):ORIGINAL.index("profiles:")],
     "groups: []\n", "groups"),
    ("seeds-true", "paper: {seeds: 5}", "paper: {seeds: true}", "profiles.paper.seeds"),
    ("batch-true", "batch_size: 128", "batch_size: true", "'batch_size'"),
    ("length-true", "length: 64000", "length: true", "'schedule.length'"),
    ("augment-no-string", "augment: true", "augment: 'no'", "'data.augment'"),
    ("gamma-negative", "warmup_iterations: 0}", "warmup_iterations: 0, gamma: -1}",
     "'schedule.gamma'"),
    ("warmup-past-end", "warmup_iterations: 0}", "warmup_iterations: 70000}",
     "'schedule.warmup_iterations'"),
    ("lr-inf", "lr: 0.1,", "lr: .inf,", "'optim.lr'"),
    ("unknown-dataset", "name: cifar10,", "name: cifar11,", "'data.name'"),
    ("pad-negative", "pad_fill: mean}", "pad_fill: mean, pad: -4}", "'data.pad'"),
    ("variants-list", "      plain20: {model: plain20}\n      plain56:",
     "      - plain20: {model: plain20}\n      - plain56:", "groups[0].variants"),
    ("claim-list", "claim: >-", "claim:\n  - a list\nnotes_: >-", "claim"),
    ("momentum-string", "momentum: 0.9", "momentum: 'high'", "'optim.momentum'"),
    ("drops-scalar", "drops: [0.5, 0.75]", "drops: 0.5", "'schedule.drops'"),
    ("smoke-hides-bad-batch", "batch_size: 128", "batch_size: '128'",
     "as written, before profile overrides"),
    # structure
    ("not-a-mapping", ORIGINAL, "- just\n- a list\n", "expected a mapping"),
    ("bad-yaml", "groups:\n", "groups:\n\t- x\n", "not valid YAML"),
    ("unknown-top-key", "notes: >-", "note: >-", "unknown key 'note'"),
    ("missing-citation", "citation: He,", "citations: He,", "unknown key 'citations'"),
    ("missing-profiles", ORIGINAL[ORIGINAL.index("profiles:"):], "", "'profiles'"),
    ("name-not-stem", "name: degradation", "name: degradations", "file stem"),
    ("citation-number", "citation: He, Zhang", "citation: 2015\nnotes_x: He, Zhang",
     "unknown key 'notes_x'"),
    ("claim-empty", "claim: >-", "claim: ''\nclaim_: >-", "claim"),
    ("recipe-list", ORIGINAL[ORIGINAL.index("recipe:"):ORIGINAL.index("groups:")],
     "recipe: [data, optim]\n", "recipe"),
    ("group-not-mapping", "  - name: plain\n    baseline: plain20\n", "  - plain\n  - name: "
     "plainx\n    baseline: plain20\n", "groups[0]"),
    ("unknown-group-key", "    baseline: plain20", "    baseline: plain20\n    base: x",
     "unknown key 'base'"),
    ("missing-baseline", "    baseline: resnet20\n", "", "missing required key 'baseline'"),
    ("baseline-not-variant", "baseline: resnet20", "baseline: resnet32", "groups[1].baseline"),
    ("variant-unknown-key", "{model: plain20}", "{model: plain20, paperr: 3}",
     "unknown key 'paperr'"),
    ("unknown-model", "{model: plain20}", "{model: plain21}", "groups[0].variants.plain20"),
    ("bad-model-option", "{model: plain20}", "{model: plain20, options: {unit: nope}}",
     "groups[0].variants.plain20"),
    ("paper-string", "paper: 8.75", "paper: '8.75%'", "variants.resnet20.paper"),
    ("paper-bool", "paper: 8.75", "paper: true", "variants.resnet20.paper"),
    ("expect-bad", "expect: higher", "expect: worse", "variants.plain56.expect"),
    ("note-list", 'note: "Fig. 1: higher training and test error"', "note: [a, b]",
     "variants.plain56.note"),
    ("unknown-profile", "  quick:\n", "  quik:\n", "profiles.quik"),
    ("unknown-profile-key", "    seeds: 3\n", "    seeds: 3\n    seed: 1\n", "unknown key 'seed'"),
    ("seeds-zero", "seeds: 3", "seeds: 0", "profiles.quick.seeds"),
    ("seeds-string", "seeds: 2", "seeds: two", "profiles.smoke.seeds"),
    ("profile-variants-unknown", "    seeds: 3\n", "    seeds: 3\n    variants: [resnet99]\n",
     "'resnet99'"),
    ("profile-variants-string", "    seeds: 3\n", "    seeds: 3\n    variants: resnet20\n",
     "profiles.quick.variants"),
    ("replacement-unknown-model", "plain20: {name: cifar_resnet,", "plain20: {name: cifar_net,",
     "profiles.smoke.models.plain20"),
    ("replacement-bad-option", "options: {depth: 8, plain: true}",
     "options: {depth: 8, plain: true, colour: red}", "profiles.smoke.models.plain20"),
    ("replacement-no-name", "plain20: {name: cifar_resnet, options: {depth: 8, plain: true}}",
     "plain20: {options: {depth: 8, plain: true}}", "profiles.smoke.models.plain20.name"),
    ("overrides-list", ORIGINAL[ORIGINAL.index(SMOKE_OVR):ORIGINAL.index("    models:")],
     "    overrides: [batch_size, 64]\n", "profiles.smoke.overrides"),
    # config values
    ("unknown-recipe-key", "optim: {lr: 0.1,", "optim: {lrate: 0.1,", "'optim.lrate'"),
    ("unknown-unit", "unit: iterations", "unit: fortnights", "'schedule.unit'"),
    ("drop-past-end", "drops: [0.5, 0.75]", "drops: [0.5, 1.5]", "'schedule.drops'"),
    ("lr-negative", "lr: 0.1,", "lr: -0.1,", "'optim.lr'"),
    ("lr-string", "lr: 0.1,", "lr: fast,", "'optim.lr'"),
    ("lr-nan", "lr: 0.1,", "lr: .nan,", "'optim.lr'"),
    ("batch-zero", "batch_size: 128", "batch_size: 0", "'batch_size'"),
    ("batch-float", "batch_size: 128", "batch_size: 128.5", "'batch_size'"),
    ("weight-decay-negative", "weight_decay: 1.0e-4", "weight_decay: -1.0e-4",
     "'optim.weight_decay'"),
    ("length-zero", "length: 64000", "length: 0", "'schedule.length'"),
    ("warmup-bool", "warmup_iterations: 0}", "warmup_iterations: true}",
     "'schedule.warmup_iterations'"),
    ("nesterov-string", "momentum: 0.9,", "momentum: 0.9, nesterov: 'yes',", "'optim.nesterov'"),
    ("data-option-unknown", "image_size: 16}", "image_size: 16, colours: 3}", "'data.name'"),
    ("precision-bad", "batch_size: 128", "batch_size: 128\n  runtime: {precision: fp8}",
     "'runtime.precision'"),
    ("val-size-negative", "pad_fill: mean}", "pad_fill: mean, val_size: -5}", "'data.val_size'"),
    ("recipe-section-scalar", "optim: {lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4}",
     "optim: 0.1", "'optim'"),
    ("smoke-override-bad", "      batch_size: 64", "      batch_size: '64'",
     "(profile smoke): 'batch_size'"),
]


def test_corpus_is_at_least_the_46_cases_of_the_issue():
    assert len(CASES) >= 46
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh MLflow store that must stay uncreated, and a runner that must not be called."""
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("CONVNETS_CHECKPOINTS", str(tmp_path / "ckpt"))
    trained = []
    monkeypatch.setattr(commands, "run_jobs", lambda jobs, **kw: trained.append(jobs) or [])
    return db, trained


@pytest.mark.parametrize("old, new, key", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_spec_is_refused_before_anything_runs(tmp_path, store, capsys, old, new, key):
    db, trained = store
    assert old in ORIGINAL, "the case no longer applies to degradation.yaml"
    folder = tmp_path / "specs"
    folder.mkdir()
    path = folder / "degradation.yaml"
    path.write_text(ORIGINAL.replace(old, new, 1))
    for profile in ("paper", "smoke"):
        assert main(["run", str(path), "--profile", profile]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and key in err, err
    assert main(["validate", str(path)]) == 2
    assert key in capsys.readouterr().err
    assert trained == [] and not db.exists()
    assert not (tmp_path / "ckpt").exists()


def test_the_unmodified_spec_still_validates():
    spec = load_spec("degradation")
    assert [len(expand(spec, p)) for p in ("paper", "quick", "smoke")] == [20, 12, 8]


@pytest.mark.parametrize("text, value", [("1.0e6", 1.0e6), ("5e-4", 5e-4), ("1E+3", 1000.0),
                                         (".5", 0.5), ("2.", 2.0)])
def test_yaml_11_float_spellings_load_as_numbers(tmp_path, text, value):
    path = tmp_path / "degradation.yaml"
    path.write_text(ORIGINAL.replace("weight_decay: 1.0e-4", f"weight_decay: {text}"))
    job = expand(load_spec(str(path)), "paper")[0]
    assert job.config["optim"]["weight_decay"] == value
    assert isinstance(job.config["optim"]["weight_decay"], float)
    assert isinstance(job.config["schedule"]["length"], int)  # ints stay ints
