"""The MLflow UI as a person uses it, in a real headless Chromium: land on the runs, tick two, compare, open a loss
chart, open the Logged Model. Screenshots go to bench/ui/ (or --out); any step that fails exits non-zero.

    python bench/ui_check.py                  # two tiny tracked runs in a temporary folder (a few minutes)
    python bench/ui_check.py --db mlflow.db   # the store the README's main job wrote (two runs or more in it)

Needs Debian's chromium (`apt-get install chromium`) and `pip install playwright` (no browser download: the
system Chromium is launched through executable_path).

What it shows about MLflow 3.17: the page an experiment opens on is not the experiment's to choose. The UI reads
the browser's workflow type (the sidebar's "GenAI | Model training" switch): the URL's ``workflowType`` query
parameter, else the switch's last position kept in the browser's localStorage, else "genai" (the GenAI
overview). The ``mlflow.experimentKind`` tag is not read for it. So the check opens the link that `electra-kit ui`
prints (``#/experiments/<id>?workflowType=machine_learning``) and asserts that it lands on the runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
QUIET = ("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"  # MLflow's chat panel covers a third
         "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")


def tiny_runs(folder: Path) -> Path:
    """Two tiny tracked runs in folder/mlflow.db, as the README's commands make them. They differ in a macro
    (TRAIN_STEPS) and a plain binding (train.lr): the compare view must show both as values."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for name, steps, lr in (("run-a", 10, "5e-4"), ("run-b", 12, "1e-3")):
        cmd = [sys.executable, "-m", "electra_kit", "run", "tiny.gin", "--gin", f"TRAIN_STEPS={steps}", "--gin",
               "train.eval_every=5", "--gin", f"train.lr={lr}", "--gin", "train.progress=False", "--run-dir", name]
        subprocess.run(cmd, cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
    return folder / "mlflow.db"


def start_ui(db: Path, port: int, log: Path) -> subprocess.Popen:
    from electra_kit.tracking import ui_command

    proc = subprocess.Popen(ui_command(f"sqlite:///{db.resolve()}", port), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow ui exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            return proc
        except OSError:
            time.sleep(2)
    raise SystemExit("mlflow ui did not answer within 300 s")


def check(base: str, db: Path, out: Path) -> list[str]:
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    from electra_kit.tracking.runs import runs_url

    client = MlflowClient(f"sqlite:///{db.resolve()}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time DESC"])
    assert len(runs) >= 2, f"{db} holds {len(runs)} run(s); the check compares two"
    experiment_id = runs[0].info.experiment_id
    names = [r.info.run_name for r in runs if r.info.experiment_id == experiment_id][:2]
    models = client.search_logged_models(experiment_ids=[experiment_id])
    assert models, "no Logged Model in the experiment"
    shots = []

    def shot(name: str, page) -> None:
        page.wait_for_timeout(1500)  # charts animate in
        page.screenshot(path=str(out / name))
        shots.append(name)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.context.add_init_script(QUIET)
        page.set_default_timeout(60_000)

        page.goto(runs_url(base, experiment_id))  # the link `electra-kit ui` prints
        for name in names:
            page.get_by_role("link", name=name, exact=True).wait_for()
        assert "/runs" in page.url, f"landed on {page.url}, not the runs"
        shot("1_runs.png", page)

        for _ in range(2):  # tick two runs
            page.get_by_role("checkbox", name="Press Space to toggle row selection (unchecked)").first.check()
        page.get_by_role("button", name="Compare").click()
        page.get_by_text("Parameters", exact=True).first.wait_for()
        diff = page.get_by_text("Show diff only")
        if diff.count():
            diff.first.click()
        page.get_by_text("Parameters", exact=True).first.scroll_into_view_if_needed()
        shot("2_compare_params.png", page)

        # the compare page links each metric to its chart; the list is long, so follow one link's pattern
        href = page.get_by_role("link", name="eval/disc_loss", exact=True).first.get_attribute("href")
        page.goto(f"{base}/{href.replace('eval%2Fdisc_loss', 'train%2Floss')}")
        page.locator(".js-plotly-plot").first.wait_for()
        shot("3_loss_chart.png", page)

        page.goto(f"{base}/#/experiments/{experiment_id}/models/{models[0].model_id}")
        page.get_by_text(models[0].model_id).first.wait_for()
        shot("4_logged_model.png", page)
        browser.close()
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="an MLflow SQLite store with two runs or more (default: make one)")
    parser.add_argument("--out", type=Path, default=HERE / "ui", help="folder for the screenshots")
    parser.add_argument("--port", type=int, default=5077)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or tiny_runs(Path(tmp))
        ui = start_ui(db, args.port, Path(tmp) / "ui.log")
        try:
            shots = check(f"http://127.0.0.1:{args.port}", db, args.out)
        finally:
            os.killpg(ui.pid, 15)
            ui.wait(30)
    print("ui_check: passed;", ", ".join(str(args.out / s) for s in shots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
