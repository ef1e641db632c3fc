"""Look at the MLflow UI as a reader would: a throwaway store, a server, headless Chromium.

``python -m experiments.ui_check --out DIR`` fills a temporary store with a smoke run of a claim
(two variants, one seed, seconds on a CPU), starts ``mlflow server`` on a free localhost port
(one worker, no job consumers), writes screenshots of the runs table and of one run's charts
into DIR, and stops the server. Open the PNGs and look at them. ``--store URI`` screenshots an
existing store instead (read only; nothing is run). The REST test in ``tests/test_ui.py`` uses
``serve`` from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from experiments.spec import load_spec

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--run-all-compositor-stages-before-draw"]  # else charts stay spinners


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_bin() -> str:
    here = Path(sys.executable).with_name("mlflow")
    return str(here) if here.exists() else (shutil.which("mlflow") or "mlflow")


def get_json(base: str, path: str, params: dict | None = None, timeout: float = 10) -> dict:
    """GET ``path`` with query ``params`` from the REST API."""
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params, doseq=True)}" if params else "")
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def post_json(base: str, path: str, body: dict, timeout: float = 10) -> dict:
    """POST ``body`` as JSON to ``path`` (e.g. ``/api/2.0/mlflow/runs/search``)."""
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def serve(store_uri: str, artifacts_uri: str, timeout: float = 120.0):
    """Yield the base URL of an ``mlflow server`` over ``store_uri``; stop it afterwards."""
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               MLFLOW_DISABLE_TELEMETRY="true", GIT_PYTHON_REFRESH="quiet")
    cmd = [mlflow_bin(), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", store_uri, "--default-artifact-root", artifacts_uri]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"mlflow server did not answer on {base} "
                                   f"(exit {proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser",
                                                       "google-chrome")) if p), None)


def screenshot(url: str, out: Path, size: str = "1600,1000", wait_ms: int = 20000) -> Path:
    """A headless Chromium screenshot of ``url`` after ``wait_ms`` of page time."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("no chromium on PATH (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--window-size={size}", f"--virtual-time-budget={wait_ms}",
               f"--screenshot={out}", url]
        subprocess.run(cmd, check=True, capture_output=True, timeout=180)
    return out


def smoke_store(root: Path, spec: str, variants: list[str]) -> tuple[str, str]:
    """Run ``spec``'s smoke profile (one seed, the given variants) into a store under root."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
               CONVNETS_ARTIFACTS=(root / "artifacts").as_uri(),
               CONVNETS_CHECKPOINTS=str(root / "checkpoints"))
    cmd = [sys.executable, "-m", "experiments", "run", spec, "--profile", "smoke",
           "--seeds", "1", *[a for v in variants for a in ("--variant", v)]]
    subprocess.run(cmd, env=env, check=True, cwd=Path(__file__).resolve().parents[1])
    return env["MLFLOW_TRACKING_URI"], env["CONVNETS_ARTIFACTS"]


def take_screenshots(base: str, out: Path, experiment: str) -> list[Path]:
    """The experiments list, the claim's runs table and one run's overview and charts."""
    exp = get_json(base, "/api/2.0/mlflow/experiments/get-by-name",
                   {"experiment_name": experiment})["experiment"]
    eid = exp["experiment_id"]
    runs = post_json(base, "/api/2.0/mlflow/runs/search",
                     {"experiment_ids": [eid], "max_results": 1})["runs"]
    rid = runs[0]["info"]["run_id"]
    out.mkdir(parents=True, exist_ok=True)
    group = runs[0]["data"]["tags"]
    group = next(t["value"] for t in group if t["key"] == "group")
    compare = urllib.parse.urlencode({"searchFilter": f"tags.group = '{group}'",
                                      "orderByKey": "metrics.`final_test_error`",
                                      "orderByAsc": "true"}, quote_via=urllib.parse.quote)
    pages = {"experiments": "#/experiments",
             "runs_table": f"#/experiments/{eid}/runs",
             "runs_compared": f"#/experiments/{eid}/runs?{compare}",
             "run_overview": f"#/experiments/{eid}/runs/{rid}",
             "run_charts": f"#/experiments/{eid}/runs/{rid}/model-metrics"}
    return [screenshot(f"{base}/{frag}", out / f"{name}.png",
                       wait_ms=45000 if "metrics" in frag else 20000)
            for name, frag in pages.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.ui_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="ui-screenshots", help="folder for the PNGs")
    ap.add_argument("--spec", default="resnetv2-shortcuts")
    ap.add_argument("--variant", action="append", default=None,
                    help="variants to run (default: the spec's first two)")
    ap.add_argument("--store", default=None, help="screenshot this store instead (no run)")
    ap.add_argument("--artifacts", default=None, help="with --store: its artifact root URI")
    args = ap.parse_args(argv)
    if chromium() is None:
        print("error: no chromium on PATH (apt-get install -y chromium)", file=sys.stderr)
        return 2
    spec = load_spec(args.spec)
    variants = args.variant or list(spec["groups"][0]["variants"])[:2]
    with tempfile.TemporaryDirectory(prefix="ui-check-") as tmp:
        if args.store:
            store, arts = args.store, args.artifacts or (Path(tmp) / "artifacts").as_uri()
        else:
            store, arts = smoke_store(Path(tmp), args.spec, variants)
        with serve(store, arts) as base:
            paths = take_screenshots(base, Path(args.out), spec["name"])
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
