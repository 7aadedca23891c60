"""Pictures of a run: ``RUN_DIR/curves.png`` and ``rlhf-dist plot RUN_DIR [RUN_DIR ...]``.

Two halves: :func:`curves` turns :func:`rlhf_dist.metrics.logger.read_metrics` records into the series of
each panel (plain data, tested without drawing), and :func:`draw` draws them for one run or overlays
several. Panels: reward (proxy, gold, eval), KL (nats per sequence, the controller's coefficient on
a twin axis), the rollout/learner log-prob mismatch, and seconds per step split by phase. A PNG we
write carries ``Software: rlhf-dist`` in its metadata, so a plot may overwrite its own PNGs and
nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rlhf_dist.errors import UserError

log = logging.getLogger(__name__)

Series = tuple[list[int], list[float]]  # (steps, values): the steps at which the key holds a number

# Panel -> series label -> metrics key. The time panel's phases are found in the records instead.
PANEL_KEYS: dict[str, dict[str, str]] = {
    "reward": {"proxy reward": "reward/mean", "gold reward": "reward/gold_mean",
               "eval reward": "eval/reward_mean", "eval gold": "eval/gold_mean"},
    "kl": {"KL": "kl/mean", "KL coef": "kl/coef"},
    "mismatch": {"|rollout - learner| logprob": "rollout/logprob_abs_diff"},
}
# One run: each series keeps one colour across the figure (the time panel's phases use tab20).
SERIES_COLORS = {"proxy reward": "C0", "gold reward": "C1", "eval reward": "C2", "eval gold": "C3", "KL": "C4",
                 "KL coef": "C5", "|rollout - learner| logprob": "C6"}
TITLES = {"reward": "Reward", "kl": "KL to the reference", "mismatch": "Rollout/learner mismatch",
          "time": "Time per step, by phase"}
Y_LABELS = {"reward": "reward (score units)", "kl": "KL (nats per sequence)",
            "mismatch": "mean |Δ log-prob| (nats per token)", "time": "time (s)"}
STEP_TIME = "whole step"  # the time panel's label for timing/step, drawn as a line over the stack
# The order the driver runs phases in; any other timing/<phase> follows, sorted.
PHASE_ORDER = ("rollout_wait", "generate", "score", "reference", "logprobs", "values", "advantages",
               "train", "sync", "eval")
SIZE_IN, DPI = (12.0, 8.0), 100  # 1200 x 800 pixels
SOFTWARE = "rlhf-dist"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _series(records: list[dict[str, Any]], key: str) -> Series:
    rows = [(int(r["step"]), float(r[key])) for r in records if _is_number(r.get(key))]
    return [s for s, _ in rows], [v for _, v in rows]


def phases(records: list[dict[str, Any]]) -> list[str]:
    """The ``timing/<phase>`` names in ``records``, in the driver's order; ``timing/step`` (the
    whole step) and fractions such as ``timing/overhead_frac`` are not phases."""
    found = {k.removeprefix("timing/") for r in records for k in r if k.startswith("timing/")}
    found = {p for p in found if p != "step" and not p.endswith("_frac")}
    return [p for p in PHASE_ORDER if p in found] + sorted(found - set(PHASE_ORDER))


def curves(records: list[dict[str, Any]]) -> dict[str, dict[str, Series]]:
    """Panel -> series label -> (steps, values), straight from ``records`` (no smoothing).

    Series whose key never holds a number are left out (eval keys appear only on eval steps, so
    their series are short); a panel with no series maps to ``{}``. The time panel holds one series
    per phase (seconds) and ``STEP_TIME`` for ``timing/step``.
    """
    out: dict[str, dict[str, Series]] = {}
    for panel, keys in PANEL_KEYS.items():
        out[panel] = {label: s for label, key in keys.items() if (s := _series(records, key))[0]}
    time_keys = {p: f"timing/{p}" for p in phases(records)} | {STEP_TIME: "timing/step"}
    out["time"] = {label: s for label, key in time_keys.items() if (s := _series(records, key))[0]}
    return out


def _missing_note(panel: str) -> str:
    keys = ", ".join(PANEL_KEYS.get(panel, {"": "timing/<phase>"}).values())
    return f"not in metrics.jsonl:\n{keys}"


def _draw_time(ax, runs: dict[str, dict[str, Series]], colors: dict[str, Any]) -> None:
    """One run: its phases stacked (seconds, a missing phase counts 0 at that step) under its whole
    step as a dashed line. Several runs: each run's whole step as a line (stacks would hide each
    other), the sum of its phases where ``timing/step`` is missing."""
    import matplotlib

    if len(runs) == 1:
        (series,) = runs.values()
        names = [n for n in series if n != STEP_TIME]
        steps = sorted({s for n in names for s in series[n][0]})
        stacked = [[dict(zip(*series[n])).get(s, 0.0) for s in steps] for n in names]
        cmap = matplotlib.colormaps["tab20"]
        if names:
            ax.stackplot(steps, stacked, labels=names, colors=[cmap(i % 20) for i in range(len(names))], alpha=0.85)
        if STEP_TIME in series:
            ax.plot(*series[STEP_TIME], color="black", linestyle="--", label=STEP_TIME)
        if "rollout_wait" in names:  # async: generation runs beside training, so phases overlap
            ax.text(0.98, 0.95, "async: phases overlap, the stack can exceed the step", transform=ax.transAxes,
                    ha="right", va="top", fontsize="small", color="gray")
        return
    for run, series in runs.items():
        if STEP_TIME in series:
            steps, values = series[STEP_TIME]
        else:
            by_step: dict[int, float] = {}
            for name, (s, v) in series.items():
                for step, value in zip(s, v):
                    by_step[step] = by_step.get(step, 0.0) + value
            steps, values = sorted(by_step), [by_step[s] for s in sorted(by_step)]
        if steps:
            ax.plot(steps, values, color=colors[run], label=f"{STEP_TIME} ({run})")


def draw(runs: dict[str, list[dict[str, Any]]], out: Path):
    """Draw the panels of every run in ``runs`` (label -> records) into the PNG ``out``, 1200 x 800
    pixels, one legend for the figure. Returns the matplotlib Figure (already saved).

    One run: each series has its own colour. Several: each run has a colour and each series a line
    style, and legend entries read ``series (run)``. Eval series have markers (few points).
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_run = {run: curves(records) for run, records in runs.items()}
    fig = Figure(figsize=SIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)  # Agg, without pyplot: no display, and the caller's backend is left alone
    axes = dict(zip(("reward", "kl", "mismatch", "time"), fig.subplots(2, 2).flat))
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    run_colors = {run: cycle[i % len(cycle)] for i, run in enumerate(runs)}
    styles = ("-", "--", ":", "-.")
    several = len(runs) > 1
    for panel, ax in axes.items():
        ax.set_title(TITLES[panel])
        ax.set_xlabel("step")
        ax.set_ylabel(Y_LABELS[panel])
        ax.grid(True, alpha=0.3)
        if not any(c[panel] for c in by_run.values()):
            ax.text(0.5, 0.5, _missing_note(panel), transform=ax.transAxes, ha="center", va="center", color="gray")
            continue
        if panel == "time":
            _draw_time(ax, {run: c["time"] for run, c in by_run.items()}, run_colors)
            continue
        twin = None
        for run, c in by_run.items():
            for i, label in enumerate(PANEL_KEYS[panel]):
                if label not in c[panel]:
                    continue
                steps, values = c[panel][label]
                target = ax
                if label == "KL coef":  # a different scale: its own axis on the right
                    twin = twin or ax.twinx()
                    twin.set_ylabel("KL coefficient (per nat)")
                    target = twin
                color = run_colors[run] if several else SERIES_COLORS[label]
                style = styles[i % len(styles)] if several or label == "KL coef" else "-"
                target.plot(steps, values, color=color, linestyle=style,
                            marker="o" if label.startswith("eval") else None, markersize=4,
                            label=f"{label} ({run})" if several else label)
        if panel == "mismatch" and all(v > 0 for c in by_run.values() for _, vs in c[panel].values() for v in vs):
            ax.set_yscale("log")  # the mismatch spans orders of magnitude (1e-7 on CPU fp32, 1e-2 in bf16)
    _legend(fig)
    fig.suptitle(", ".join(runs) if several else f"run {next(iter(runs))}")
    fig.subplots_adjust(left=0.085, right=0.92, top=0.92, bottom=0.2, hspace=0.35, wspace=0.32)  # room for log-scale tick labels
    fig.savefig(out, format="png", dpi=DPI, metadata={"Software": SOFTWARE})
    return fig


def _legend(fig) -> None:
    """One legend under the panels, each label once (the twin axis's lines included)."""
    seen: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(6, len(seen)), fontsize="small",
                   frameon=False)


def ours(path: Path) -> bool:
    """Whether ``path`` is a PNG this module wrote (its ``Software`` text chunk says rlhf-dist)."""
    with Path(path).open("rb") as f:
        head = f.read(65536)
    return head.startswith(b"\x89PNG\r\n\x1a\n") and b"Software\x00" + SOFTWARE.encode() in head


def check_output(out: Path) -> None:
    """Refuse an output that is not a ``.png`` or would overwrite a file we did not write."""
    if out.suffix.lower() != ".png":
        raise UserError(f"the plot is a PNG; name the output FILE.png, got {out}")
    if out.is_dir():
        raise UserError(f"{out} is a directory; give a file name, e.g. {out / 'curves.png'}")
    if out.exists() and not ours(out):
        raise UserError(f"{out} exists and was not drawn by rlhf-dist; not overwriting it. Remove it or give -o OTHER.png")


def write_run_curves(run_dir: Path, records: list[dict[str, Any]]) -> Path | None:
    """End of a run: draw ``run_dir/curves.png``. Never fails the run: a problem (matplotlib
    missing, a file that is not ours in the way) is one warning, and the path is None."""
    out = Path(run_dir) / "curves.png"
    try:
        check_output(out)
        draw({Path(run_dir).name: records}, out)
    except Exception as exc:  # a picture is not worth a failed run
        log.warning("curves.png not drawn (%s: %s); `rlhf-dist plot %s` tries again", type(exc).__name__, exc, run_dir)
        return None
    return out
