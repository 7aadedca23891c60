"""`rlhf-dist monitor`: on the head, our Grafana dashboard beside Ray's, and Prometheus."""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

from launch.dashboards import (
    Session,
    grafana_command,
    install_dashboard,
    prometheus_command,
    session_dir,
    start_prometheus,
)
from rlhf_dist.errors import UserError

MONITOR_EXAMPLES = """examples:
  ray start --head --metrics-export-port=8080 --dashboard-host=0.0.0.0
  rlhf-dist monitor                                    # the newest session under /tmp/ray
  rlhf-dist monitor --address http://127.0.0.1:8265    # the session of the head serving that dashboard
"""


def add_monitor_parser(commands: argparse._SubParsersAction) -> None:
    monitor = commands.add_parser(
        "monitor", help="on the head: install our Grafana dashboard beside Ray's and start Prometheus",
        description="Run on the head node. Installs the rlhf-dist Grafana dashboard into the head's session "
        "(beside Ray's dashboards), starts Prometheus with Ray's scrape config if `prometheus` is on the PATH "
        "(otherwise prints the command), and prints the Grafana command and the settings that make the Ray "
        "dashboard's Metrics tab live. Ctrl-C stops the Prometheus it started.",
        epilog=MONITOR_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    monitor.add_argument("--address", default=None,
                         help="the head's dashboard URL; its session is the one monitored (default: the newest session)")
    monitor.add_argument("--token", default=None, help="Ray auth token (default: $RAY_AUTH_TOKEN)")
    monitor.add_argument("--temp-dir", default=None, help="Ray's temp dir, as given to `ray start --temp-dir` (default: /tmp/ray)")
    monitor.add_argument("--session-dir", default=None, help="the session directory itself (overrides --address and --temp-dir)")
    monitor.add_argument("--prometheus-host", default="127.0.0.1",
                         help="address Prometheus listens on (default: 127.0.0.1; 0.0.0.0 to reach it from elsewhere)")
    monitor.add_argument("--prometheus-port", type=int, default=9090, help="Prometheus port (default: 9090)")
    monitor.add_argument("--no-prometheus", action="store_true", help="only install the dashboard and print the commands")
    monitor.set_defaults(handler=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    path = Path(args.session_dir) if args.session_dir else session_dir(args.address, args.temp_dir, args.token)
    session = Session.find(path)
    dashboard = install_dashboard(session)
    print(f"session: {session.path}")
    print(f"dashboard: {dashboard} (served by Grafana beside Ray's, folder 'Ray', title 'rlhf-dist')")
    prometheus_url = f"http://{args.prometheus_host}:{args.prometheus_port}"
    command = prometheus_command(session, args.prometheus_host, args.prometheus_port)
    process = None
    if args.no_prometheus or shutil.which("prometheus") is None:
        reason = "as asked" if args.no_prometheus else "no `prometheus` on the PATH (Debian: apt-get install prometheus)"
        print(f"prometheus: not started, {reason}; start it with:\n  {shlex.join(command)}")
    else:
        process = start_prometheus(command, session.path / "logs" / "rlhf-dist-prometheus.log", prometheus_url)
        print(f"prometheus: {prometheus_url} (pid {process.pid}), scraping every node with {session.prometheus_config}")
    print(f"grafana: start it on this node with\n  {grafana_command(session)}")
    print("ray dashboard: for its Metrics tab, start the head with these set (they are read at `ray start`):\n"
          f"  RAY_PROMETHEUS_HOST={prometheus_url} RAY_GRAFANA_HOST=http://127.0.0.1:3000 "
          "(and RAY_GRAFANA_IFRAME_HOST=http://HEAD:3000 if the browser is on another machine)")
    print("our panels: http://127.0.0.1:3000/d/rlhf-dist/rlhf-dist (pick the run at the top)")
    if process is None:
        return 0
    print("Ctrl-C stops prometheus", flush=True)
    try:
        process.wait()
        raise UserError(f"prometheus exited with status {process.returncode} (log: {session.path / 'logs'})")
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how this command is meant to end
        return 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            print("prometheus stopped")
