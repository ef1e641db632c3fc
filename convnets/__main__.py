"""`python -m convnets info NAME [--option value ...]`: per-stage shapes, parameters and MACs;
`python -m convnets list`: the registered models; `python -m convnets data NAME ...`: fetch and
check a data set once (torchvision downloads it where missing and verifies its MD5s), so later
runs start offline."""

from __future__ import annotations

import argparse
import sys

import torch
import yaml
from tabulate import tabulate

from convnets.complexity import complexity, stage_table
from convnets.models import build_model, get_entry, list_models
from convnets.names import IMAGEFOLDER


def _parse_options(pairs: list[str]) -> dict:
    """``["--unit", "full_preact", "--gate-bias", "-6"]`` -> ``{"unit": "full_preact", "gate_bias": -6}``."""
    options, key = {}, None
    for tok in pairs:
        if tok.startswith("--") and key is None:
            key = tok[2:].replace("-", "_")
            if "=" in key:
                key, value = key.split("=", 1)
                options[key] = yaml.safe_load(value)
                key = None
        elif key is not None:
            options[key] = yaml.safe_load(tok)
            key = None
        else:
            raise SystemExit(f"error: expected --option value, got {tok!r}")
    if key is not None:
        raise SystemExit(f"error: option --{key} has no value")
    return options


def info(name: str, options: dict, num_classes: int | None = None) -> str:
    entry = get_entry(name)
    classes = num_classes or entry.default_classes
    # one model on the CPU: a meta-device pass imports torch._dynamo (its shape checks), which
    # costs more than building and running one example here
    model = build_model(name, num_classes=classes, **options)
    rows = stage_table(model, entry.input_size)
    table = [
        (r.name, "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs / 1e6:,.2f}")
        for r in rows
    ]
    total_params = sum(r.params for r in rows)
    total_macs = sum(r.macs for r in rows)
    table.append(("total", "", f"{total_params:,}", f"{total_macs / 1e6:,.2f}"))
    opts = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "defaults"
    head = (
        f"{name} ({opts}; {classes} classes; input {'x'.join(map(str, entry.input_size))})\n"
        f"follows: {entry.cite(options)}\n"
    )
    return head + tabulate(table, headers=["stage", "output (CxHxW)", "params", "MMACs"],
                           colalign=("left", "right", "right", "right"))


def model_table() -> str:
    """Markdown table of the registry: name, family, input, classes, params, MACs, source."""
    rows = []
    for n in list_models():
        e = get_entry(n)
        with torch.device("meta"):  # every model: shapes only, no weight initialised
            model = build_model(n, num_classes=e.default_classes)
        c = complexity(model, e.input_size)
        rows.append((f"`{n}`", e.family, "x".join(map(str, e.input_size)), e.default_classes,
                     f"{c['params']:,}", f"{c['macs'] / 1e6:,.2f}", e.citation))
    return tabulate(rows, headers=["name", "family", "input", "classes", "params", "MMACs",
                                   "follows"], tablefmt="github")


def fetch(names: list[str], data_dir: str | None) -> int:
    """Load each data set (downloading where missing); one line each, 2 on the first failure."""
    from convnets.data import DatasetError, load_dataset
    from convnets.data.paths import default_data_dir

    where = data_dir or default_data_dir()
    for name in names:
        try:
            ds = load_dataset(name, data_dir)
        except DatasetError as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            return 2
        c, h, w = ds.train.images.shape[1:]
        at = "" if name.strip().lower().startswith(IMAGEFOLDER) else f"; in {where}"
        print(f"{ds.name}: {len(ds.train):,} train / {len(ds.test):,} test images, "
              f"{len(ds.classes)} classes, {c}x{h}x{w}, checksum {ds.checksum} "
              f"({ds.label}{at})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convnets")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_info = sub.add_parser("info", help="per-stage table of a registered model")
    p_info.add_argument("name", help="registered model name (see `python -m convnets list`)")
    p_info.add_argument("--num-classes", type=int, default=None)
    p_list = sub.add_parser("list", help="registered models")
    p_list.add_argument("--markdown", action="store_true",
                        help="a Markdown table with parameters and MACs (for the README)")
    p_data = sub.add_parser(
        "data", help="download (torchvision, MD5-checked) and check data sets, once",
        description="Fetch each data set through torchvision where it is missing (the MD5s "
                    "of the files are verified), decode and check it, and print its size and "
                    "content checksum, the one every run records. Names: cifar10, cifar100, "
                    "mnist, fashion_mnist, or imagefolder:PATH (checked only).")
    p_data.add_argument("names", nargs="+", metavar="NAME")
    p_data.add_argument("--data-dir", default=None,
                        help="where the data live or go (default $CONVNETS_DATA, else "
                             "~/.cache/convnets/data)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "data":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return fetch(args.names, args.data_dir)
    if args.cmd == "list":
        print(model_table() if args.markdown else "\n".join(
            f"{n:24s} {get_entry(n).family:18s} {get_entry(n).citation}" for n in list_models()))
        return 0
    try:
        print(info(args.name, _parse_options(rest), args.num_classes))
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
