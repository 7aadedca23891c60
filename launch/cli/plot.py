"""`rlhf-dist plot RUN_DIR [RUN_DIR ...] [-o FILE]`: the curves of one run, or several overlaid."""

from __future__ import annotations

import argparse
from pathlib import Path

from rlhf_dist.errors import UserError

PLOT_EXAMPLES = """examples:
  rlhf-dist plot runs/tiny-20260101-120000                  # writes runs/tiny-.../curves.png
  rlhf-dist plot runs/on-policy runs/async -o compare.png   # overlays two runs
"""


def add_plot_parser(commands: argparse._SubParsersAction) -> None:
    plot = commands.add_parser(
        "plot", help="draw a run's curves (reward, KL, mismatch, time per phase), or overlay several runs",
        description="Draw reward (proxy, gold, eval), KL, the rollout/learner log-prob mismatch and the seconds "
        "per step by phase from each RUN_DIR/metrics.jsonl into one PNG (1200 x 800). Several runs are overlaid, "
        "each labelled by its directory name. `train` draws RUN_DIR/curves.png at the end of every run.",
        epilog=PLOT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories holding metrics.jsonl")
    plot.add_argument(
        "-o", "--output", default=None, metavar="FILE.png",
        help="where to write the PNG (default: RUN_DIR/curves.png for one run, ./curves.png for several); "
        "an existing file is replaced only if rlhf-dist drew it",
    )
    plot.set_defaults(handler=_plot)


def _plot(args: argparse.Namespace) -> int:
    # imported here, not at the top: matplotlib takes a second to load; `--help` must not wait for it
    from rlhf_dist.metrics.logger import read_metrics
    from rlhf_dist.metrics.plots import check_output, draw

    dirs = [Path(d) for d in args.run_dirs]
    runs = {}
    for run_dir in dirs:
        if not run_dir.is_dir():
            raise UserError(f"no run directory at {run_dir}; give the directory a train run wrote (it holds metrics.jsonl)")
        if not (run_dir / "metrics.jsonl").is_file():
            raise UserError(f"{run_dir} has no metrics.jsonl; is it a run directory? (stages and demos keep it in a subdirectory)")
        label = run_dir.resolve().name
        if label in runs:  # two dirs with one name (runs/a/x, runs/b/x): tell them apart by their parent
            label = f"{run_dir.resolve().parent.name}/{label}"
        runs[label] = read_metrics(run_dir / "metrics.jsonl")
    out = Path(args.output) if args.output else (dirs[0] / "curves.png" if len(dirs) == 1 else Path("curves.png"))
    check_output(out)
    draw(runs, out)
    print(f"curves of {len(runs)} run{'s' * (len(runs) > 1)} written to {out}")
    return 0
