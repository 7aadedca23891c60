"""What a run pays before and after its steps: the fixed cost of every `rlhf-dist train`.

    python bench/startup.py [--runs N] [key=value ...]

Two measurements, each on the embedded default (the key=value overrides go to both):

1. ``--runs`` fresh one-step runs of the CLI (default 3), each in its own run dir and its own local
   Ray, as a user starts them: the median seconds of each start-up phase line (the tiny model and
   the prompts, Ray, each role ready), of the one step, of what follows the step (final save, plot,
   shutdown) and of the whole command.
2. One start of every role on a local Ray (`launch.roles.build_roles`, as `train` does), then the
   CPU seconds each actor's process spent getting ready (imports, engines, model loads): on 2 cores
   the actors start side by side, so their CPU, not their count, sets the wait.

Compare figures only on a quiet machine (nothing else running); docs/benchmarks.md keeps them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

PHASE = re.compile(r"^(?P<name>.+?) \((?P<seconds>[\d.]+) s\)$")
STEP = re.compile(r"^step 1/1 .* (?P<seconds>[\d.]+)s$")


def one_cli_run(overrides: list[str]) -> dict[str, float]:
    """Seconds per phase of one `rlhf-dist train steps=1` (phase lines as the console prints them)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "launch", "train", "steps=1", *overrides, "--run-dir", f"{tmp}/run", "--no-progress"]
        started = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        total = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"the run failed:\n{out.stderr[-3000:]}")
    figures: dict[str, float] = {}
    for line in out.stdout.splitlines():
        if m := PHASE.match(line.strip()):
            name = re.sub(r"/tmp/\S+", "RUN_DIR", m["name"]).split(":")[0]
            figures[name] = float(m["seconds"])
        elif m := STEP.match(line.strip()):
            figures["step 1"] = float(m["seconds"])
    figures["whole command"] = total
    return figures


def actor_cpu(overrides: list[str]) -> dict[str, float]:
    """CPU seconds of each actor's process once every role is ready."""
    import psutil
    import ray

    from launch.roles import build_roles, start_ray, stop_roles
    from rlhf_dist.config import load_config
    from rlhf_dist.models.tiny import make_tiny

    cfg = load_config(None, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        policy = str(make_tiny(Path(tmp) / "tiny", cfg.model.tiny, seed=cfg.seed).policy)
        started_ray = start_ray(cfg)
        roles, _ = build_roles(cfg, policy)
        try:
            named = [(f"{role}-{i}", a) for role, actors in
                     (("rollout", roles.rollout), ("reward", roles.reward), ("reference", roles.reference),
                      ("learner", roles.learners)) for i, a in enumerate(actors)]
            pids = ray.get([a.pid.remote() for _, a in named])
            cpu = {}
            for (name, _), pid in zip(named, pids):
                times = psutil.Process(pid).cpu_times()
                cpu[name] = times.user + times.system
        finally:
            stop_roles(roles, shutdown=started_ray)
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    runs = [one_cli_run(args.overrides) for _ in range(args.runs)]
    print(f"one-step runs of the embedded default ({args.runs}, median seconds)")
    for name in runs[0]:
        values = [r[name] for r in runs if name in r]
        print(f"  {name:<58} {median(values):6.1f}   ({', '.join(f'{v:.1f}' for v in values)})")
    cpu = actor_cpu(args.overrides)
    print("CPU seconds each actor spent getting ready")
    for name, seconds in cpu.items():
        print(f"  {name:<12} {seconds:5.1f}")
    print(f"  {'all actors':<12} {sum(cpu.values()):5.1f}")


if __name__ == "__main__":
    main()
