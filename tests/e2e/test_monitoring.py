"""Monitoring as a user sees it, with the real parts: a Ray head with a metrics port, `rlhf-dist monitor`
starting Debian's Prometheus with Ray's own scrape config, a submitted run, every PromQL query of our
Grafana dashboard evaluated by that Prometheus, and the Ray dashboard opened in headless Chromium.

Prometheus and Chromium come from Debian (`make test` installs them as root); without them the tests
that need them skip, saying so. Screenshots go to $RLHF_TEST_ARTIFACTS/monitoring (default
test-output/monitoring).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from launch.ray_auth import auth_headers
from rlhf_dist.metrics import grafana
from rlhf_dist.metrics.logger import read_metrics
from rlhf_dist.weight_sync.group import free_port
from tests.e2e.conftest import start_head, stop_process_group

BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("RLHF_TEST_ARTIFACTS", PROJECT / "test-output")) / "monitoring"
ROLES = ("rollout-0", "reward-0", "learner-0", "learner-1")  # the default's learner ranks hold the reference
# A run long enough for a few 10 s scrapes, with async rollouts (importance weights, staleness) and eval.
RUN_ARGS = ("steps=12", "rollout.async_steps=1", "eval.every=3", "eval.holdout=16", "eval.max_prompts=16",
            "eval.samples_per_prompt=1", "logging.samples_every=0", "checkpoint.every=0")

# Records of Ray, vLLM, DeepSpeed or transformers: a timestamp or level first, or Ray's actor prefix.
THIRD_PARTY = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d|\[\d{4}-\d\d-\d\d|(INFO|WARNING|ERROR|DEBUG)[ :]|\(\w+ pid=|"
                         r"Running entrypoint for job)")


def cli(*args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, env=env, timeout=timeout)


def prometheus_range(url: str, expr: str, start: float) -> list[dict]:
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": time.time(), "step": 2})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{query}", timeout=10) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("needs Debian's prometheus on the PATH (`make test` installs it as root: apt-get install prometheus)")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    temp = tempfile.mkdtemp(prefix="rm", dir="/tmp")  # short: Ray's socket paths live under it
    prom_port = free_port()
    prom_url = f"http://127.0.0.1:{prom_port}"
    head, address, _ = start_head(dict(env, RAY_PROMETHEUS_HOST=prom_url), f"--temp-dir={temp}")
    monitor = subprocess.Popen(
        # No --temp-dir: the head says where its session is, even under the --temp-dir it started with.
        [sys.executable, "-m", "launch", "monitor", "--address", address, "--prometheus-port", str(prom_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    said = []
    try:
        for line in monitor.stdout:  # until Prometheus answers
            said.append(line)
            if line.startswith("Ctrl-C stops prometheus"):
                break
        assert monitor.poll() is None, "".join(said)
        run_dir = tmp_path_factory.mktemp("monitored") / "run"
        began = time.time()
        out = cli("submit", "train", *RUN_ARGS, "--run-dir", str(run_dir), "--address", address, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        job_id = next(line.split()[-1] for line in out.stdout.splitlines() if line.startswith("submitted job:"))
        deadline, state = time.time() + 600, ""
        while time.time() < deadline and state not in ("SUCCEEDED", "FAILED", "STOPPED"):
            time.sleep(3)
            state = (cli("status", job_id, "--address", address, env=env).stdout.splitlines() or [""])[0]
        logs = cli("logs", job_id, "--address", address, env=env).stdout
        assert state == "SUCCEEDED", logs[-3000:]
        yield {"address": address, "prometheus": prom_url, "monitor": monitor, "said": "".join(said), "temp": temp,
               "job_id": job_id, "run_dir": run_dir, "began": began, "logs": logs, "env": env}
    finally:
        if monitor.poll() is None:
            monitor.kill()
        started = re.search(r"\(pid (\d+)\)", "".join(said))  # Prometheus runs in its own session
        if started:
            try:
                os.kill(int(started.group(1)), signal.SIGTERM)
            except ProcessLookupError:
                pass
        stop_process_group(head)  # this head only: other tests' Ray may run beside it
        shutil.rmtree(temp, ignore_errors=True)


def test_monitor_installs_our_dashboard_beside_rays(monitored_run):
    said = monitored_run["said"]
    session = Path(re.search(r"^session: (.+)$", said, re.MULTILINE).group(1))
    assert session.parent == Path(monitored_run["temp"]), "the session the head reported, under its --temp-dir"
    dashboards = session / "metrics" / "grafana" / "dashboards"
    assert json.loads((dashboards / grafana.FILENAME).read_text()) == grafana.dashboard()
    assert (dashboards / "default_grafana_dashboard.json").is_file(), "Ray's own dashboards stay"
    assert f"prometheus: {monitored_run['prometheus']}" in said
    assert "grafana server --config" in said and "RAY_GRAFANA_HOST=" in said


def test_every_panel_query_returns_the_runs_data(monitored_run):
    """Each PromQL expression of the dashboard, with the run picked, returns samples, and the values are
    the ones the run logged."""
    url, began = monitored_run["prometheus"], monitored_run["began"]
    exprs = [q.replace("$run", "tiny") for q in grafana.queries(multi_turn=False)]  # the run is single-turn
    deadline, empty = time.time() + 90, exprs
    while empty and time.time() < deadline:  # the last scrape may be up to 10 s behind
        empty = [e for e in exprs if not prometheus_range(url, e, began)]
        if empty:
            time.sleep(5)
    assert not empty, f"no data for: {empty}"

    records = read_metrics(monitored_run["run_dir"] / "metrics.jsonl")
    logged = {r["reward/mean"] for r in records if "reward/mean" in r}
    seen = {float(v) for s in prometheus_range(url, grafana.series("reward/mean").replace("$run", "tiny"), began)
            for _, v in s["values"]}
    assert seen and all(any(abs(v - x) < 1e-6 for x in logged) for v in seen), (seen, logged)
    timing = next(e for e in exprs if "timing" in e)
    phases = {s["metric"]["part"] for s in prometheus_range(url, timing, began)}
    assert {"generate", "train", "sync", "eval"} <= phases, phases
    assert not phases & {"step", "overhead_frac"}, "step time and overhead are not phases"


def test_driver_log_is_ours(monitored_run):
    """The job's driver log (what the dashboard's job page shows) is our console, not library records."""
    lines = [l for l in monitored_run["logs"].splitlines() if l.strip()]
    foreign = [l for l in lines if THIRD_PARTY.search(l)]
    assert len(foreign) <= 0.1 * len(lines), foreign
    text = monitored_run["logs"]
    assert "learners ready" in text and "step 12/12" in text and "outputs:" in text


def test_dashboard_in_a_real_browser(monitored_run):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Debian's chromium (`make test` installs it as root: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (the test extra)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    address, job_id = monitored_run["address"], monitored_run["job_id"]
    token = (auth_headers() or {}).get("Authorization", "").removeprefix("Bearer ")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1100})
            if token:  # a head with token auth reads the token from this cookie, as its login page sets it
                context.add_cookies([{"name": "ray-authentication-token", "value": token, "url": address}])
            page = context.new_page()
            page.goto(f"{address}/#/jobs/{job_id}")
            page.get_by_text("step 1/12").first.wait_for(timeout=60_000)
            page.screenshot(path=ARTIFACTS / "job.png", full_page=True)
            body = page.inner_text("body")
            assert "SUCCEEDED" in body and job_id in body
            assert re.search(r"step 1/12\s+reward", body), "our step lines are in the job page's driver log"
            assert "learners ready" in body

            page.goto(f"{address}/#/actors")
            page.get_by_text("learner-1").first.wait_for(timeout=60_000)
            page.screenshot(path=ARTIFACTS / "actors.png", full_page=True)
            body = page.inner_text("body")
            assert all(role in body for role in ROLES), [r for r in ROLES if r not in body]

            # Prometheus's own graph page draws a panel's query for the run (what Grafana's panel shows).
            expr = grafana.series("reward/gold_mean").replace("$run", "tiny")
            graph = urllib.parse.urlencode({"g0.expr": expr, "g0.tab": 0, "g0.range_input": "15m"})
            page.goto(f"{monitored_run['prometheus']}/graph?{graph}")
            page.get_by_text('run="tiny"').first.wait_for(timeout=60_000)  # the legend names the run's series
            page.screenshot(path=ARTIFACTS / "prometheus.png")
        finally:
            browser.close()
    assert all((ARTIFACTS / f"{name}.png").stat().st_size > 10_000 for name in ("job", "actors", "prometheus"))


def test_ctrl_c_stops_the_prometheus_it_started(monitored_run):
    monitor, url = monitored_run["monitor"], monitored_run["prometheus"]
    monitor.send_signal(signal.SIGINT)
    rest = monitor.stdout.read()
    assert monitor.wait(timeout=60) == 0, rest
    assert "prometheus stopped" in rest
    with pytest.raises((urllib.error.URLError, OSError)):
        urllib.request.urlopen(f"{url}/-/ready", timeout=3)
