"""python -m analysis {collect,export,tables}"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import io, tables


def _summary(runs) -> str:
    if runs.empty:
        return "no runs"
    counts = (runs.assign(finished=runs["status"] == "FINISHED", failed=runs["status"] == "FAILED")
              .groupby(["experiment", "profile", "group", "variant"], sort=False)
              [["finished", "failed"]].sum())
    return counts.to_string()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    ap.add_argument("--tracking-uri", default=None,
                    help="default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("collect", help="read the MLflow store and print a summary of the runs")
    ex = sub.add_parser("export", help="write the snapshot (runs.csv, curves.csv, predictions.npz)")
    ex.add_argument("--out", type=Path, default=io.SNAPSHOT_DIR)
    tb = sub.add_parser("tables", help="write per-claim tables, figures and README.md")
    tb.add_argument("--source", choices=["snapshot", "mlflow"], default="snapshot")
    tb.add_argument("--out", type=Path, default=io.REPO_ROOT / "paper_tables")
    tb.add_argument("--snapshot", type=Path, default=io.SNAPSHOT_DIR)
    tb.add_argument("--profile", choices=tables.PROFILES, default=None,
                    help="default: the most faithful profile present per claim")
    tb.add_argument("--no-log", action="store_true",
                    help="with --source mlflow, do not log figures/tables to MLflow")
    args = ap.parse_args(argv)
    uri = args.tracking_uri or io.tracking_uri()
    try:
        _run(args, uri)
    except FileNotFoundError as e:
        ap.exit(1, f"error: {e}\n")


def _run(args, uri: str) -> None:
    if args.cmd == "collect":
        print(f"{uri}\n{_summary(io.collect(uri))}")
    elif args.cmd == "export":
        for p in io.export_snapshot(io.load_mlflow(uri), args.out):
            print(p)
    else:
        mlflow = args.source == "mlflow"
        data = io.load_mlflow(uri) if mlflow else io.load_snapshot(args.snapshot)
        log_uri = uri if mlflow and not args.no_log else None
        for p in tables.write_all(data, args.out, args.profile, log_uri):
            print(p)


if __name__ == "__main__":
    main()
