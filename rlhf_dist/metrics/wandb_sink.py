"""Weights & Biases as one more sink of :class:`rlhf_dist.metrics.logger.MetricsLogger` (``logging.wandb``).

Only imported when W&B is on, and ``wandb`` only then: its import and start cost over a second.

Where the files go. ``wandb.init(dir=RUN_DIR)`` writes the run under ``RUN_DIR/wandb/``
(``offline-run-<time>-<id>/`` or ``run-<time>-<id>/``). W&B's cache and data directories, by default
in the home directory, point at ``RUN_DIR/wandb/cache`` and ``RUN_DIR/wandb/data`` while the run is
open, unless the user set ``WANDB_CACHE_DIR`` / ``WANDB_DATA_DIR``. Offline mode opens no connection.

One W&B run per run directory. ``RUN_DIR/wandb-run.json`` keeps its id and the last step sent; a
resumed run (``--resume``) opens the same run with ``resume="allow"``. W&B never overwrites a step:
it ignores, with a warning, a step below its current one. A resumed run re-logs the steps after its
checkpoint, so this sink sends no step below the one W&B resumes at (online) or below the last
step it sent (the file, for offline runs, whose server side is unknown until ``wandb sync``):
W&B keeps the values first logged. An exact resume reproduces them anyway, timings aside; the
re-logged values are in ``metrics.jsonl``, where the later line wins.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_dist.errors import UserError

if TYPE_CHECKING:
    from rlhf_dist.config.schema import WandbConfig

log = logging.getLogger(__name__)

STATE_FILE = "wandb-run.json"  # {"id": "k3x9q0ab", "last_step": 7}
# W&B's own default homes are ~/.cache/wandb and ~/.local/share/wandb: keep runs self-contained.
_DIR_VARIABLES = {"WANDB_CACHE_DIR": "cache", "WANDB_DATA_DIR": "data"}


class WandbSink:
    """One W&B run for ``run_dir``: scalars and tables at the driver's steps, the config at start.

    Args:
        run_dir: the run directory; W&B's files go under ``run_dir/wandb``.
        cfg: the ``logging.wandb`` section (enabled, with mode online or offline).
        config: the run's resolved config as a plain dict, shown as the W&B run's config.
    """

    def __init__(self, run_dir: Path, cfg: WandbConfig, config: dict[str, Any] | None = None) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise UserError(
                f"logging.wandb.enabled=true needs the wandb package ({exc}); pip install 'rlhf-dist[wandb]', "
                "or set logging.wandb.enabled=false"
            ) from None
        self._wandb = wandb
        self.run_dir = Path(run_dir)
        files = self.run_dir / "wandb"
        files.mkdir(parents=True, exist_ok=True)
        self._state_path = self.run_dir / STATE_FILE
        self.run_id, self._last_step = self._read_state()
        self._write_state()
        self._set_env = {var: str(files / sub) for var, sub in _DIR_VARIABLES.items() if var not in os.environ}
        os.environ.update(self._set_env)
        try:
            self._run = wandb.init(
                project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(self.run_dir), id=self.run_id,
                resume="allow", name=self.run_dir.name, config=config, reinit="create_new",
            )
        except wandb.errors.Error as exc:
            self._restore_env()
            login = " (run `wandb login` or set WANDB_API_KEY)" if cfg.mode == "online" else ""
            raise UserError(
                f"W&B could not start run {self.run_id} in mode {cfg.mode}{login}: {exc}. To log without a "
                f"network, set logging.wandb.mode=offline and upload later with `wandb sync {files}/offline-run-*`"
            ) from None
        # Steps below this were sent before a resume: W&B holds them (online) or an earlier offline run
        # directory does. Later steps out of order are W&B's to refuse, with its own warning.
        self._resume_floor = max(self._run.starting_step, self._last_step + 1)
        if self._resume_floor > 0:
            log.info("W&B run %s continues at step %d; re-logged earlier steps keep their first W&B values",
                     self.run_id, self._resume_floor)

    def log(self, step: int, scalars: dict[str, int | float]) -> None:
        """Send ``scalars`` (name -> number) at ``step``; several calls for one step make one row."""
        self._send(step, scalars)

    def log_table(self, name: str, step: int, rows: list[dict[str, Any]]) -> None:
        """Send ``rows`` as one ``wandb.Table`` named ``name`` at ``step``; columns are the rows' keys
        in first-seen order, a key missing from a row is an empty cell."""
        columns = list(dict.fromkeys(key for row in rows for key in row))
        table = self._wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
        self._send(step, {name: table})

    def close(self, exit_code: int = 0) -> None:
        """Finish the W&B run (exit code 1 marks it failed) and restore the environment."""
        self._run.finish(exit_code=exit_code)
        self._restore_env()

    def _send(self, step: int, data: dict[str, Any]) -> None:
        if not data or step < self._resume_floor:
            return  # re-logged after a resume (see the module docstring)
        self._run.log(data, step=step)
        if step > self._last_step:
            self._last_step = step
            self._write_state()

    def _read_state(self) -> tuple[str, int]:
        """The run id and last step sent, from the state file; a new id (and step -1) for a new run."""
        if not self._state_path.exists():
            alphabet = string.ascii_lowercase + string.digits
            return "".join(secrets.choice(alphabet) for _ in range(8)), -1
        try:
            state = json.loads(self._state_path.read_text())
            return str(state["id"]), int(state["last_step"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"{self._state_path} is not a W&B run record ({exc}); delete it to start a new W&B run"
            ) from None

    def _write_state(self) -> None:
        # Written whole and renamed into place: a run killed mid-write leaves the old record.
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"id": self.run_id, "last_step": self._last_step}) + "\n")
        tmp.replace(self._state_path)

    def _restore_env(self) -> None:
        for var, value in self._set_env.items():
            if os.environ.get(var) == value:
                del os.environ[var]
        self._set_env = {}
