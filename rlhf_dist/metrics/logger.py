"""One door for metrics: a JSONL file, TensorBoard, W&B and a progress bar, plus the end-of-run summary.

``run_dir/metrics.jsonl`` holds one JSON object per logged step (``{"step": 3, "reward/mean": 0.2,
...}``); a resumed run appends to it, so a step can appear twice and the later line wins
(:func:`read_metrics`). Non-finite values are written as ``null``: JSON has no NaN.
``run_dir/samples.jsonl`` holds a few completions per logged step, for reading by eye.
With ``logging.wandb`` on, the same scalars at the same steps, the run's config and the sample
tables also go to W&B (:mod:`rlhf_dist.metrics.wandb_sink`, which says how a resumed run continues).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from rlhf_dist.errors import UserError
from rlhf_dist.metrics.wandb_sink import WandbSink

if TYPE_CHECKING:
    from rlhf_dist.config.schema import WandbConfig
    from rlhf_dist.metrics.wandb_sink import WandbSink

log = logging.getLogger(__name__)

# Keys the progress bar shows, and the short names it shows them under.
PROGRESS_KEYS = {"reward/mean": "reward", "reward/gold_mean": "gold", "kl/mean": "kl"}
# Keys of a step line (no bar: --no-progress, or logs that are not a terminal), with their formats.
LINE_KEYS = {
    "reward/mean": ("reward", "{:.3f}"), "reward/gold_mean": ("gold", "{:.3f}"), "kl/mean": ("kl", "{:.3g}"),
    "rollout/logprob_abs_diff": ("mismatch", "{:.0e}"),
}


class MetricsError(UserError):
    """A metrics file cannot be read."""


def _plain(key: str, value: Any) -> int | float | str | bool | None | list | dict:
    """A JSON-safe copy of ``value``: tensors and numpy scalars become numbers, NaN/inf None."""
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_plain(key, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(key, v) for k, v in value.items()}
    raise TypeError(f"metric {key!r} has a value of type {type(value).__name__} ({value!r}); log numbers")


def _open_for_append(path: Path) -> IO[str]:
    """Open a JSONL file for appending, first cutting a partial last line left by a killed run."""
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                log.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run",
                            path, len(data) - keep)
                f.truncate(keep)
    return path.open("a", encoding="utf-8")


class MetricsLogger:
    """Fans each step's metrics out to ``metrics.jsonl``, TensorBoard, W&B and a tqdm bar.

    Args:
        run_dir: the run directory (created if missing).
        tensorboard: write scalars to ``run_dir/tensorboard/``.
        progress: show a progress bar with the latest reward, gold reward and KL; steps count
            from 0 (as the driver's do), so after logging step ``s`` the bar stands at ``s + 1``.
        total_steps: the bar's total, e.g. ``cfg.steps``.
        step_lines: print one compact line per logged step to stdout instead (for logs that are
            not a terminal, e.g. a Ray job's): ``step 4/20  reward 0.412  gold 0.380  kl 0.12
            mismatch 2e-07  2.9s``, counting steps from 1 like the bar.
        wandb: the ``logging.wandb`` section; W&B is used (and ``wandb`` imported) only when it is
            enabled with a mode other than ``disabled``.
        config: the run's resolved config as a plain dict (``cfg.model_dump(mode="json")``), shown
            as the W&B run's config.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool = True,
        progress: bool = True,
        total_steps: int | None = None,
        step_lines: bool = False,
        wandb: WandbConfig | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = _open_for_append(self.run_dir / "metrics.jsonl")
        self._samples: IO[str] | None = None  # opened on the first log_samples
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise UserError(
                    f"TensorBoard logging needs the tensorboard package ({exc}); pip install "
                    "tensorboard, or set logging.tensorboard=false"
                ) from None
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self._wandb: WandbSink | None = None
        if wandb is not None and wandb.enabled and wandb.mode != "disabled":
            self._wandb = WandbSink(self.run_dir, wandb, config)
        self._total, self._step_lines = total_steps, step_lines
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, Any], quiet: bool = False) -> None:
        """Record ``metrics`` (name -> number) for ``step`` everywhere, flushed before returning.

        ``metrics`` may repeat the step under the key ``"step"``, but only with the same value.
        ``quiet``: a row that is not a training step (the final eval) moves no bar, prints no line.
        """
        if "step" in metrics and metrics["step"] != step:
            raise ValueError(f"metrics['step']={metrics['step']!r} disagrees with step={step}")
        record = {"step": int(step)} | {k: _plain(k, v) for k, v in metrics.items() if k != "step"}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, global_step=step)
            self._writer.flush()
        if self._wandb is not None:
            self._wandb.log(step, scalars)
        if quiet:
            return
        if self._bar is not None:
            self._bar.update(max(0, step + 1 - self._bar.n))
            shown = {name: f"{record[key]:.3f}" for key, name in PROGRESS_KEYS.items()
                     if isinstance(record.get(key), float)}
            self._bar.set_postfix(shown, refresh=True)
        if self._step_lines:
            print(step_line(step, record, self._total), flush=True)

    def note(self, text: str) -> None:
        """One line for the user (a checkpoint written, ...), printed without breaking the bar."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Append completions (``{"prompt": ..., "response": ..., "reward": ...}``) for ``step`` to
        ``samples.jsonl``, and send them as the table ``samples``."""
        if self._samples is None:
            self._samples = _open_for_append(self.run_dir / "samples.jsonl")
        for row in rows:
            record = {"step": int(step)} | {str(k): _plain(str(k), v) for k, v in row.items()}
            self._samples.write(json.dumps(record) + "\n")
        self._samples.flush()
        self.log_table("samples", step, rows)

    def log_table(self, name: str, step: int, rows: list[dict[str, Any]]) -> None:
        """Send ``rows`` (column -> value, one dict per row) as the table ``name`` at ``step`` to the
        sinks that show tables (W&B); a no-op without one. Callers keep their own JSONL copy."""
        if self._wandb is not None and rows:
            plain = [{str(k): _plain(str(k), v) for k, v in row.items()} for row in rows]
            self._wandb.log_table(name, int(step), plain)

    def close(self, failed: bool = False) -> None:
        """Flush and close every sink; safe to call twice. ``failed`` marks the W&B run failed."""
        for sink in (self._metrics, self._samples, self._writer, self._bar):
            if sink is not None:
                sink.close()
        if self._wandb is not None:
            self._wandb.close(exit_code=1 if failed else 0)
        self._samples = self._writer = self._bar = self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failed=exc_type is not None)


def step_line(step: int, record: dict[str, Any], total: int | None = None) -> str:
    """``step 4/20  reward 0.412  gold 0.380  kl 0.12  mismatch 2e-07  2.9s`` for driver step 3;
    keys missing from ``record`` (or null) are left out."""
    parts = [f"step {step + 1}" + (f"/{total}" if total else "")]
    for key, (name, fmt) in LINE_KEYS.items():
        if isinstance(record.get(key), (int, float)):
            parts.append(f"{name} {fmt.format(record[key])}")
    if isinstance(record.get("timing/step"), (int, float)):
        parts.append(f"{record['timing/step']:.1f}s")
    return "  ".join(parts)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, one per step, sorted by step.

    When a step appears more than once (a resumed run re-logs it) the later line wins. An
    unreadable final line (a run killed mid-write) is ignored; an unreadable earlier one is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"no metrics file at {path}; point at a run directory's metrics.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    by_step: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if number == len(lines):
                log.warning("%s: ignoring the unreadable last line %d (an interrupted write?)", path, number)
                continue
            raise MetricsError(f"{path} line {number} is not a metrics record ({exc}): {line[:80]!r}") from None
        by_step[step] = record
    return [by_step[step] for step in sorted(by_step)]


def _values(records: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in records if isinstance(r.get(key), (int, float))]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Aligned text rows: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in [header, *rows]
    ]


_NOT_COMPONENTS = {"reward/mean", "reward/std", "reward/gold_mean", "reward/zero_spread_frac"}


def summary_table(records: list[dict[str, Any]], window: int = 5) -> str:
    """A plain-text end-of-run report from :func:`read_metrics` records.

    First vs last ``window`` logged steps of the reward trained on (``reward/mean``) and each of its
    components, of the gold reward (``reward/gold_mean``, only when the run has one) with their
    ratios, and of ``kl/mean`` (on a short run the window shrinks to half
    the steps, at least 1, so the two never overlap); then the maximum
    ``rollout/logprob_abs_diff``, the mean ``throughput/tokens_per_s`` and the mean seconds of
    every ``timing/<phase>``.
    """
    if not records:
        return "no metrics logged"
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    # The final eval is a row of its own (step = steps, only eval/* keys): not a training step.
    records = [r for r in records if any(not k.startswith("eval/") and k != "step" for k in r)] or records
    steps = [r["step"] for r in records]
    window = max(1, min(window, len(records) // 2))
    # The reward trained on and each of its components, always; the gold score only where there is one.
    components = sorted({k for r in records for k in r if k.startswith("reward/")} - _NOT_COMPONENTS)
    rows_of = [("reward", "reward/mean"), *((f"  {k.removeprefix('reward/')}", k) for k in components)]
    rows_of += [("gold reward", "reward/gold_mean"), ("kl", "kl/mean")]
    trend_rows = []
    for label, key in rows_of:
        values = _values(records, key)
        if not values:
            continue
        first, last = _mean(values[:window]), _mean(values[-window:])
        assert first is not None and last is not None
        change = f"{last - first:+.3f}"
        if key in ("reward/mean", "reward/gold_mean") and first > 0:
            change = f"{last / first:.1f}x ({change})"
        trend_rows.append([f"{label} ({key})", _fmt(first), _fmt(last), change])

    overall_rows = []
    mismatch = _values(records, "rollout/logprob_abs_diff")
    if mismatch:
        overall_rows.append(["rollout/logprob_abs_diff max", _fmt(max(mismatch))])
    throughput = _values(records, "throughput/tokens_per_s")
    if throughput:
        overall_rows.append(["throughput/tokens_per_s mean", _fmt(_mean(throughput))])
    phases = sorted({k for r in records for k in r if k.startswith("timing/")})
    # Phases are in seconds; a timing/*_frac key (e.g. the orchestration overhead) is a fraction.
    overall_rows += [
        [f"{key} mean{'' if key.endswith('_frac') else ' s'}", _fmt(_mean(_values(records, key)))] for key in phases
    ]

    windows = f"windows of {window} step{'s' * (window > 1)}"
    lines = [f"{len(records)} steps logged ({min(steps)}-{max(steps)}); {windows}", ""]
    if trend_rows:
        lines += _table(["metric", f"first {window}", f"last {window}", "change"], trend_rows) + [""]
    if overall_rows:
        lines += _table(["over the run", "value"], overall_rows) + [""]
    if evals:
        first, last = evals[0], evals[-1]
        keys = [k for k in first if k.startswith("eval/") and isinstance(last.get(k), (int, float))]
        rows = [[k, _fmt(first[k]), _fmt(last[k]), f"{last[k] - first[k]:+.3f}"] for k in keys]
        lines += _table(["eval", f"step {first['step']}", f"step {last['step']}", "change"], rows)
    return "\n".join(lines).rstrip() + "\n"
