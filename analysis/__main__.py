"""python -m analysis {collect,export,add-part,parts,tables}"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from convnets.names import PROFILES, REPO_ROOT, RunStatus, tracking_uri

from . import ledger, runs, tables


def _summary(runs) -> str:
    if runs.empty:
        return "no runs"
    counts = (runs.assign(finished=runs["status"] == RunStatus.FINISHED, failed=runs["status"] == RunStatus.FAILED)
              .groupby(["experiment", "profile", "group", "variant"], sort=False)
              [["finished", "failed"]].sum())
    return counts.to_string()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    ap.add_argument("--tracking-uri", default=None,
                    help="default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("collect", help="read the MLflow store and print a summary of the runs")
    ex = sub.add_parser("export", help="write the store's runs as a ledger part (or a snapshot)")
    ex.add_argument("--out", type=Path, default=None,
                    help="a plain snapshot folder (runs.csv, curves.csv, predictions.npz)")
    ex.add_argument("--part", action="store_true",
                    help="write a ledger part <LEDGER>/<part-id>/ with MANIFEST.json")
    ex.add_argument("--ledger", type=Path, default=ledger.LEDGER_DIR,
                    help="where --part writes (default paper_tables/data; a campaign's OUT "
                         "folder on a GPU machine)")
    ex.add_argument("--device", default=None, help="device name for the manifest "
                    "(default: the runs' device tag; 'cpu' becomes this CPU's model)")
    ex.add_argument("--started", default=None, help="campaign start (ISO 8601)")
    ex.add_argument("--ended", default=None, help="campaign end (ISO 8601)")
    ex.add_argument("--device-seconds", type=float, default=None,
                    help="device time the campaign used (default: sum of run wall times)")
    ex.add_argument("--part-id", default=None)
    ex.add_argument("--new", action="store_true",
                    help="only the runs no part of --ledger holds as they are now (a run "
                         "finished or extended to a later horizon since is new): a store "
                         "that outlived its last export gives a part of its new runs only")
    ad = sub.add_parser("add-part", help="validate a part (or a campaign OUT folder holding "
                        "one) and copy it into the ledger")
    ad.add_argument("src", type=Path)
    ad.add_argument("--ledger", type=Path, default=ledger.LEDGER_DIR)
    ls = sub.add_parser("parts", help="list (and validate) the ledger's parts")
    ls.add_argument("--ledger", type=Path, default=ledger.LEDGER_DIR)
    tb = sub.add_parser("tables", help="write per-claim tables, figures and README.md")
    tb.add_argument("--source", choices=["ledger", "snapshot", "mlflow"], default="ledger")
    tb.add_argument("--out", type=Path, default=None,
                    help="default: paper_tables/ for the ledger; live_tables/ (not tracked) "
                         "for --source mlflow or snapshot, which never write over the ledger's")
    tb.add_argument("--ledger", type=Path, default=ledger.LEDGER_DIR)
    tb.add_argument("--snapshot", type=Path, default=None,
                    help="with --source snapshot: one snapshot folder")
    tb.add_argument("--profile", choices=PROFILES, default=None,
                    help="default: the most faithful profile present per claim")
    tb.add_argument("--no-log", action="store_true",
                    help="with --source mlflow, do not log figures/tables to MLflow")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = _parser()
    args = ap.parse_args(argv)
    uri = args.tracking_uri or tracking_uri()
    warnings.simplefilter("always", UserWarning)
    try:
        _run(args, uri)
    except (FileNotFoundError, ledger.PartError) as e:
        ap.exit(1, f"error: {e}\n")


def _run(args, uri: str) -> None:
    if args.cmd == "collect":
        print(f"{uri}\n{_summary(runs.collect(uri))}")
    elif args.cmd == "export":
        keep = (lambda r: ledger.new_to(r, args.ledger)) if args.new else None
        data = runs.load_mlflow(uri, keep=keep)
        if args.new and data.runs.empty:
            raise FileNotFoundError(f"nothing new in {uri}: {args.ledger} holds every ended "
                                    "run of the store as it is; no part written")
        if args.part or args.out is None:
            path = ledger.write_part(data, args.ledger, device=args.device, started=args.started,
                                     ended=args.ended, device_seconds=args.device_seconds,
                                     part_id=args.part_id)
            print(path)
        else:
            for p in runs.export_snapshot(data, args.out):
                print(p)
    elif args.cmd == "add-part":
        print(f"added {ledger.add_part(args.src, args.ledger)}")
    elif args.cmd == "parts":
        for path in ledger.list_parts(args.ledger):
            m = ledger.validate_part(path)
            print(f"{path.name}: {m['n_runs']} runs, {m['device']}, {m['ended'][:10]}, "
                  f"{'smoke' if m['smoke'] else ', '.join(m['profiles'])}, "
                  f"{m['device_seconds']:.0f} device s")
    else:
        mlflow = args.source == "mlflow"
        out = args.out or (REPO_ROOT / ("paper_tables" if args.source == "ledger"
                                        else "live_tables"))
        if args.source != "ledger" and out.resolve() == (REPO_ROOT / "paper_tables").resolve():
            raise FileNotFoundError(
                f"--out {out}: tables from --source {args.source} never go over the ledger's "
                "(paper_tables/ is written from the ledger only); pick another folder")
        if mlflow:
            data = runs.load_mlflow(uri)
        elif args.source == "snapshot":
            data = runs.load_snapshot(args.snapshot or ledger.LEDGER_DIR)
        else:
            data = ledger.load_ledger(args.ledger)
        log_uri = uri if mlflow and not args.no_log else None
        for p in tables.write_all(data, out, args.profile, log_uri):
            print(p)


if __name__ == "__main__":
    main()
