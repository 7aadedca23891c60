"""`rlhf-dist monitor` without a head: finding the session, installing the dashboard where Ray's
provisioning points, and the commands it prints. The real head, Prometheus and browser are in
tests/e2e/test_monitoring.py."""

import json

import pytest

from launch.cli.main import main
from launch.dashboards import Session, install_dashboard, prometheus_command, session_dir
from rlhf_dist.errors import UserError
from rlhf_dist.metrics import grafana


def ray_session(root, name="session_2026-12-02_10-00-00_000000_1"):
    """The files Ray 2.60's dashboard writes under a session's metrics/ directory."""
    session = root / name
    grafana_dir = session / "metrics" / "grafana"
    (grafana_dir / "provisioning" / "dashboards").mkdir(parents=True)
    (grafana_dir / "dashboards").mkdir()
    (grafana_dir / "dashboards" / "default_grafana_dashboard.json").write_text("{}")
    (grafana_dir / "grafana.ini").write_text("[security]\nallow_embedding = true\n")
    (grafana_dir / "provisioning" / "dashboards" / "default.yml").write_text(
        f"apiVersion: 1\nproviders:\n  - name: Ray\n    folder: Ray\n    type: file\n"
        f"    options:\n      path: {grafana_dir / 'dashboards'}\n")
    (session / "metrics" / "prometheus").mkdir()
    (session / "metrics" / "prometheus" / "prometheus.yml").write_text("global: {}\n")
    (session / "logs").mkdir()
    (root / "session_latest").symlink_to(session)
    return session


def test_dashboard_goes_where_rays_provisioning_points(tmp_path):
    session = Session.find(ray_session(tmp_path))
    written = install_dashboard(session)
    assert written == session.dashboards / grafana.FILENAME
    assert json.loads(written.read_text()) == grafana.dashboard()
    assert (session.dashboards / "default_grafana_dashboard.json").read_text() == "{}", "Ray's stay as they were"
    assert install_dashboard(session) == written and len(list(session.dashboards.iterdir())) == 2


def test_the_newest_session_or_a_clear_error(tmp_path):
    session = ray_session(tmp_path)
    assert session_dir(None, str(tmp_path)) == session.resolve()
    with pytest.raises(UserError, match="no Ray session under .*--temp-dir"):
        session_dir(None, str(tmp_path / "elsewhere"))
    (session / "metrics" / "grafana" / "provisioning" / "dashboards" / "default.yml").unlink()
    with pytest.raises(UserError, match="metrics-export-port"):
        Session.find(session)


def test_prometheus_runs_with_rays_scrape_config(tmp_path):
    session = Session.find(ray_session(tmp_path))
    command = prometheus_command(session, "127.0.0.1", 9091)
    assert command[0] == "prometheus" and f"--config.file={session.prometheus_config}" in command
    assert "--web.listen-address=127.0.0.1:9091" in command
    assert any(c.startswith("--storage.tsdb.path=") and str(session.path) in c for c in command)


def test_without_prometheus_it_prints_every_command(tmp_path, capsys, monkeypatch):
    session = ray_session(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no prometheus binary
    assert main(["monitor", "--session-dir", str(session)]) == 0
    out = capsys.readouterr().out
    assert "prometheus: not started, no `prometheus` on the PATH" in out
    assert f"prometheus --config.file={session / 'metrics' / 'prometheus' / 'prometheus.yml'}" in out
    assert f"grafana server --config {session / 'metrics' / 'grafana' / 'grafana.ini'}" in out
    assert "RAY_PROMETHEUS_HOST=http://127.0.0.1:9090" in out and "RAY_GRAFANA_HOST=" in out
    assert (session / "metrics" / "grafana" / "dashboards" / grafana.FILENAME).is_file()


def test_an_unreachable_head_is_a_clear_error(capsys):
    from rlhf_dist.weight_sync.group import free_port

    assert main(["monitor", "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot read the session of the head" in capsys.readouterr().err
