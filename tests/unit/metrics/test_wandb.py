"""W&B through MetricsLogger, with the real ``wandb`` package in offline mode.

The offline run's records are read back from its ``run-<id>.wandb`` file: W&B's transaction log,
LevelDB's log format (32 KiB blocks of checksummed chunks) after a 7-byte W&B header, each record
a ``wandb_internal.proto`` ``Record``. wandb 0.31 has no Python reader for it, so ``records``
below decodes the chunks and leaves the parsing to wandb's own protobuf classes.
"""

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_dist.config.schema import RunConfig, WandbConfig
from rlhf_dist.errors import UserError
from rlhf_dist.metrics.logger import MetricsLogger, read_metrics

wandb = pytest.importorskip("wandb", reason="the test extra installs wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

OFFLINE = WandbConfig(enabled=True, project="rlhf-dist-tests", mode="offline")
FIRST = {0: {"reward/mean": 0.25, "kl/mean": 0.5, "count": 3},
         1: {"reward/mean": 0.5, "kl/mean": float("nan"), "count": 4},
         2: {"reward/mean": 0.75, "kl/mean": 1.5, "count": 5, "flag": True}}
SAMPLES = [{"prompt": "a b", "response": "b a", "reward": 1.0}, {"prompt": "c", "response": "d", "reward": 0.0}]
# The resumed run redoes step 2 (its checkpoint was at step 1), then goes on.
SECOND = {2: {"reward/mean": 0.8}, 3: {"reward/mean": 0.9}, 4: {"reward/mean": 1.0}}


def records(path: Path):
    """The ``Record`` protos of a W&B transaction log, in order."""
    data = path.read_bytes()
    if len(data) < 7:  # not even the header yet
        return
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if len(chunk) < length:  # still being written
            return
        if kind == 0:  # zero fill at the end of a block being written
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def finished_log(segment: Path, run_id: str, timeout: float = 30.0) -> Path:
    """The transaction log of ``segment`` once it holds the run's exit record. wandb-core writes it
    from its own process and may still be flushing just after ``run.finish()`` returns."""
    path = segment / f"run-{run_id}.wandb"
    deadline = time.monotonic() + timeout
    while not (path.is_file() and any(r.WhichOneof("record_type") == "exit" for r in records(path))):
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.05)
    return path


def history(path: Path) -> dict[int, dict]:
    """step -> {key: value} of the logged keys (W&B's own ``_step``, ``_runtime``... left out)."""
    rows = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows[items["_step"]] = {k: v for k, v in items.items() if not k.startswith("_")}
    return rows


def run_record(path: Path):
    return next(r.run for r in records(path) if r.WhichOneof("record_type") == "run")


def segments(run_dir: Path) -> set[Path]:
    return set((run_dir / "wandb").glob("offline-run-*"))


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One run dir logged by a first logger, then resumed by a second; HOME and cwd are empty dirs
    that must stay empty, and WANDB_MODE=online must not beat logging.wandb.mode=offline."""
    root = tmp_path_factory.mktemp("wandb")
    run_dir, home, cwd = root / "run", root / "home", root / "cwd"
    home.mkdir()
    cwd.mkdir()
    config = RunConfig(steps=5).model_dump(mode="json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("WANDB_MODE", "online")
        for var in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "WANDB_CACHE_DIR", "WANDB_DATA_DIR",
                    "WANDB_DIR", "WANDB_API_KEY"):
            mp.delenv(var, raising=False)
        mp.chdir(cwd)
        with MetricsLogger(run_dir, tensorboard=False, progress=False, wandb=OFFLINE, config=config) as logger:
            for step, metrics in FIRST.items():
                logger.log(step, metrics)
            logger.log_samples(2, SAMPLES)
        first = segments(run_dir)
        state_after_first = json.loads((run_dir / "wandb-run.json").read_text())
        env_after_close = {var: os.environ.get(var) for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR")}
        with MetricsLogger(run_dir, tensorboard=False, progress=False, wandb=OFFLINE, config=config) as logger:
            for step, metrics in SECOND.items():
                logger.log(step, metrics)
        second = segments(run_dir) - first
    assert len(first) == 1 and len(second) == 1, (first, second)
    return {"run_dir": run_dir, "home": home, "cwd": cwd, "config": config, "first": first.pop(),
            "second": second.pop(), "state_after_first": state_after_first, "env_after_close": env_after_close}


def test_offline_run_holds_the_scalars_at_their_steps(logged):
    run_id = logged["state_after_first"]["id"]
    log_file = finished_log(logged["first"], run_id)
    assert log_file.is_file()
    rows = history(log_file)
    assert sorted(rows) == [0, 1, 2]
    # The same scalars as TensorBoard: numbers only, NaN and booleans left out.
    assert {step: {k: v for k, v in row.items() if not k.startswith("samples/")} for step, row in rows.items()} == {
        0: {"reward/mean": 0.25, "kl/mean": 0.5, "count": 3},
        1: {"reward/mean": 0.5, "count": 4},
        2: {"reward/mean": 0.75, "kl/mean": 1.5, "count": 5},
    }


def test_offline_run_holds_the_config_and_the_samples_table(logged):
    run_id = logged["state_after_first"]["id"]
    run = run_record(finished_log(logged["first"], run_id))
    assert run.run_id == run_id and run.project == "rlhf-dist-tests" and run.display_name == "run"
    config = {item.key: json.loads(item.value_json) for item in run.config.update if item.key != "_wandb"}
    assert config == logged["config"]
    table_ref = history(finished_log(logged["first"], run_id))[2]
    assert table_ref["samples/_type"] == "table-file" and table_ref["samples/nrows"] == 2
    table = json.loads((logged["first"] / "files" / table_ref["samples/path"]).read_text())
    assert table["columns"] == ["prompt", "response", "reward"]
    assert table["data"] == [["a b", "b a", 1.0], ["c", "d", 0.0]]


def test_files_stay_in_the_run_dir(logged):
    assert logged["first"].parent == logged["run_dir"] / "wandb"
    assert list(logged["home"].iterdir()) == [], "W&B wrote into the home directory"
    assert list(logged["cwd"].iterdir()) == [], "W&B wrote into the working directory"
    # W&B's cache/data dirs pointed into the run dir only while the run was open.
    assert logged["env_after_close"] == {"WANDB_CACHE_DIR": None, "WANDB_DATA_DIR": None}


def test_resumed_logger_continues_the_same_run_without_relogging(logged):
    run_id = logged["state_after_first"]["id"]
    assert logged["state_after_first"] == {"id": run_id, "last_step": 2}
    log_file = finished_log(logged["second"], run_id)
    assert run_record(log_file).run_id == run_id
    # Step 2 was sent before the resume: W&B keeps its first value; steps 3 and 4 are new.
    assert history(log_file) == {3: {"reward/mean": 0.9}, 4: {"reward/mean": 1.0}}
    assert json.loads((logged["run_dir"] / "wandb-run.json").read_text()) == {"id": run_id, "last_step": 4}
    # metrics.jsonl keeps every line; there the later one wins.
    assert read_metrics(logged["run_dir"] / "metrics.jsonl")[2]["reward/mean"] == 0.8


def test_missing_wandb_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'rlhf-dist\[wandb\]'"):
        MetricsLogger(tmp_path, tensorboard=False, progress=False, wandb=OFFLINE)


def test_online_without_a_login_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, so no API key
    for var in ("WANDB_API_KEY", "XDG_CONFIG_HOME", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    online = WandbConfig(enabled=True, mode="online")
    with pytest.raises(UserError, match=r"wandb login.*logging\.wandb\.mode=offline"):
        MetricsLogger(tmp_path / "run", tensorboard=False, progress=False, wandb=online)
    assert "WANDB_CACHE_DIR" not in os.environ  # put back even though the run never started


def test_disabled_wandb_is_never_imported(tmp_path):
    code = f"""
import sys
from rlhf_dist.config.schema import WandbConfig
from rlhf_dist.metrics.logger import MetricsLogger
for i, cfg in enumerate([None, WandbConfig(), WandbConfig(enabled=True, mode="disabled")]):
    with MetricsLogger({str(tmp_path)!r} + f"/run{{i}}", tensorboard=False, progress=False, wandb=cfg) as m:
        m.log(0, {{"reward/mean": 1.0}})
        m.log_samples(0, [{{"prompt": "p", "response": "r", "reward": 1.0}}])
print(sorted(name for name in sys.modules if name == "wandb" or name.startswith("wandb.")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
    assert not (tmp_path / "run2" / "wandb").exists()
