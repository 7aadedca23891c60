"""`rlhf-dist monitor`: on the head node, put our Grafana dashboard beside Ray's and start Prometheus.

Ray writes, into its session directory on the head, a Prometheus config that scrapes every node
(`metrics/prometheus/prometheus.yml`) and a Grafana provisioning tree whose dashboards folder Grafana
loads (`metrics/grafana/`). Our dashboard goes into that folder; Prometheus is started with Ray's
config when a `prometheus` binary is on the PATH (otherwise the command is printed); the Grafana
command and the settings that make the Ray dashboard's Metrics tab live are printed. Ctrl-C stops
what this command started.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from launch.ray_auth import auth_headers
from rlhf_dist.errors import UserError
from rlhf_dist.metrics.grafana import FILENAME, dashboard_json


@dataclass(frozen=True)
class Session:
    """The parts of a Ray head's session directory that monitoring uses."""

    path: Path
    prometheus_config: Path  # Ray's scrape config of every node's metrics agent
    grafana_ini: Path  # Ray's Grafana config (provisioning, anonymous viewer, embedding)
    dashboards: Path  # the folder Ray's Grafana provisioning loads dashboards from

    @classmethod
    def find(cls, path: Path) -> Session:
        metrics = path / "metrics"
        provisioning = metrics / "grafana" / "provisioning" / "dashboards" / "default.yml"
        if not provisioning.is_file():
            raise UserError(
                f"{path} holds no Grafana provisioning of Ray's ({provisioning} is missing); is it the session "
                "directory of a running head? Start the head with a metrics port (`ray start --head "
                "--metrics-export-port=8080`) and run this command on it, or name the session with --session-dir"
            )
        return cls(path, metrics / "prometheus" / "prometheus.yml", metrics / "grafana" / "grafana.ini",
                   _dashboards_folder(provisioning))


def _dashboards_folder(provisioning: Path) -> Path:
    import yaml

    providers = (yaml.safe_load(provisioning.read_text()) or {}).get("providers") or []
    for provider in providers:
        folder = (provider.get("options") or {}).get("path")
        if folder:
            return Path(folder)
    raise UserError(f"{provisioning} names no dashboards folder; is it Ray's provisioning file?")


def session_dir(address: str | None, temp_dir: str | None, token: str | None = None) -> Path:
    """The head's session directory: the one its dashboard names (--address), else the newest one."""
    roots = [Path(temp_dir)] if temp_dir else [Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray", Path("/tmp/ray")]
    roots = list(dict.fromkeys(roots))
    where = " or ".join(map(str, roots))
    if address is None:
        for root in roots:
            if (root / "session_latest").exists():
                return (root / "session_latest").resolve()
        raise UserError(
            f"no Ray session under {where}; run this on the head node "
            "after `ray start --head --metrics-export-port=8080`, or give --temp-dir as passed to `ray start`"
        )
    told = _head_session_dir(address, token)  # the head's own answer holds any --temp-dir it started with
    if told is not None and told.is_dir():
        return told
    name = _session_name(address, token)
    for root in roots:
        if (root / name).is_dir():
            return root / name
    raise UserError(
        f"the head at {address} runs session {name}, which is not under {where} "
        "on this machine: run `rlhf-dist monitor` on the head node (give --temp-dir if `ray start` had one)"
    )


def _head_session_dir(address: str, token: str | None, wait_s: float = 30.0) -> Path | None:
    """The session directory the head node reports of itself (its dashboard's node summary), or None
    when it says nothing usable. A dashboard that answers but lists no head yet (a head that has
    just started) is asked again for up to ``wait_s``."""
    request = urllib.request.Request(f"{address.rstrip('/')}/nodes?view=summary", headers=auth_headers(token) or {})
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                nodes = json.loads(reply.read()).get("data", {}).get("summary", [])
        except (urllib.error.URLError, OSError, ValueError, AttributeError):
            return None
        for node in nodes if isinstance(nodes, list) else []:
            raylet = node.get("raylet", {}) if isinstance(node, dict) else {}
            if raylet.get("isHeadNode") and raylet.get("sessionDir"):
                return Path(raylet["sessionDir"])
        if time.monotonic() > deadline:
            return None
        time.sleep(1.0)


def _session_name(address: str, token: str | None) -> str:
    request = urllib.request.Request(f"{address.rstrip('/')}/api/version", headers=auth_headers(token) or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())["session_name"]
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read the session of the head at {address}: {exc}; is its dashboard there?") from None


def install_dashboard(session: Session) -> Path:
    """Write our dashboard into Ray's provisioned folder (replacing only our own earlier copy)."""
    session.dashboards.mkdir(parents=True, exist_ok=True)
    target = session.dashboards / FILENAME
    partial = target.with_suffix(".partial")
    partial.write_text(dashboard_json())
    partial.replace(target)
    return target


def prometheus_command(session: Session, host: str, port: int) -> list[str]:
    return ["prometheus", f"--config.file={session.prometheus_config}",
            f"--storage.tsdb.path={session.path / 'metrics' / 'prometheus' / 'data'}",
            f"--web.listen-address={host}:{port}"]


def grafana_command(session: Session) -> str:
    return f"grafana server --config {session.grafana_ini} --homepath /usr/share/grafana web"


def start_prometheus(command: list[str], log: Path, url: str, timeout: float = 60) -> subprocess.Popen:
    """Start Prometheus, logging to ``log``; returns once it answers ``/-/ready``."""
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise UserError(f"prometheus exited with status {process.returncode}: {' | '.join(tail)} (log: {log})")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                return process
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    process.terminate()
    raise UserError(f"prometheus did not answer at {url} within {timeout:.0f} s (log: {log})")
