"""Metrics: the JSONL file and its resume rules, TensorBoard output, samples, the summary table."""

import json
import math

import pytest
import torch

from rlhf_dist.metrics.logger import MetricsError, MetricsLogger, read_metrics, summary_table


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_writes_one_flushed_json_line_per_call(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False, progress=False)
    logger.log(1, {"reward/mean": torch.tensor(0.25), "kl/mean": float("nan"), "count": 3})
    # flushed before close: a reader (or a crash) sees the line at once
    assert lines(tmp_path / "metrics.jsonl") == [{"step": 1, "reward/mean": 0.25, "kl/mean": None, "count": 3}]
    logger.log(2, {"reward/mean": 0.5})
    logger.close()
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == [1, 2]
    with MetricsLogger(tmp_path, tensorboard=False, progress=False) as logger:
        logger.log(3, {"step": 3, "x": 1.0})  # a record that repeats its own step is fine
        with pytest.raises(ValueError, match="disagrees"):
            logger.log(4, {"step": 1})
    assert lines(tmp_path / "metrics.jsonl")[-1] == {"step": 3, "x": 1.0}


def test_resumed_run_appends_and_the_later_line_wins(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False, progress=False) as logger:
        for step in (1, 2, 3):
            logger.log(step, {"reward/mean": step / 10})
    with MetricsLogger(tmp_path, tensorboard=False, progress=False) as logger:  # resumed from step 2
        logger.log(3, {"reward/mean": 0.9})
        logger.log(4, {"reward/mean": 1.0})
    assert len(lines(tmp_path / "metrics.jsonl")) == 5
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["reward/mean"]) for r in records] == [(1, 0.1), (2, 0.2), (3, 0.9), (4, 1.0)]


def test_records_are_sorted_by_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "x": 2}\n{"step": 1, "x": 1}\n')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_truncated_last_line_is_ignored_and_cut_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n{"step": 3, "x"')  # killed mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    with MetricsLogger(tmp_path, tensorboard=False, progress=False) as logger:
        logger.log(3, {"x": 3})
    assert path.read_text().splitlines() == ['{"step": 1, "x": 1}', '{"step": 2, "x": 2}', '{"step": 3, "x": 3}']


def test_corrupt_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(MetricsError, match="line 2"):
        read_metrics(path)
    with pytest.raises(MetricsError, match="no metrics file"):
        read_metrics(tmp_path / "missing.jsonl")


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=True, progress=False) as logger:
        for step in (1, 2):
            logger.log(step, {"reward/mean": 0.1 * step, "note": "text is not a scalar"})
    events = [p for p in (tmp_path / "tensorboard").rglob("events.out.tfevents.*") if p.stat().st_size > 0]
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "tensorboard"))
    accumulator.Reload()
    scalars = accumulator.Scalars("reward/mean")
    assert [(s.step, round(s.value, 6)) for s in scalars] == [(1, 0.1), (2, 0.2)]
    assert accumulator.Tags()["scalars"] == ["reward/mean"]


def test_progress_bar_shows_reward_gold_and_kl(tmp_path, capsys):
    with MetricsLogger(tmp_path, tensorboard=False, progress=True, total_steps=4) as logger:
        logger.log(0, {"reward/mean": 0.125, "reward/gold_mean": 0.5, "kl/mean": 0.01})
        logger.log(2, {"reward/mean": 0.25})
        assert logger._bar.n == 3  # steps count from 0: step 2 is the third
    err = capsys.readouterr().err
    assert "reward=0.125" in err and "gold=0.500" in err and "kl=0.010" in err and "3/4" in err


def test_step_lines_when_there_is_no_bar(tmp_path, capsys):
    """Without a bar (--no-progress, a Ray job's log) each step prints one compact line to stdout."""
    with MetricsLogger(tmp_path, tensorboard=False, progress=False, total_steps=20, step_lines=True) as logger:
        logger.log(3, {"reward/mean": 0.4123, "reward/gold_mean": 0.38, "kl/mean": 0.1234,
                       "rollout/logprob_abs_diff": 2.1e-7, "timing/step": 2.94})
        logger.log(4, {"reward/mean": 0.5, "kl/mean": math.nan})  # missing and null values are left out
    out = capsys.readouterr().out.splitlines()
    assert out == ["step 4/20  reward 0.412  gold 0.380  kl 0.123  mismatch 2e-07  2.9s", "step 5/20  reward 0.500"]
    with MetricsLogger(tmp_path / "quiet", tensorboard=False, progress=False) as logger:
        logger.log(0, {"reward/mean": 0.5})
    assert capsys.readouterr().out == ""


def test_log_samples_appends_rows_with_the_step(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False, progress=False) as logger:
        logger.log_samples(5, [{"prompt": "p", "response": "aa", "reward": torch.tensor(1.0)}])
        logger.log_samples(10, [{"prompt": "q", "response": "b", "reward": math.inf}])
    assert lines(tmp_path / "samples.jsonl") == [
        {"step": 5, "prompt": "p", "response": "aa", "reward": 1.0},
        {"step": 10, "prompt": "q", "response": "b", "reward": None},
    ]


def make_records(gold: bool = True):
    records = []
    for step in range(1, 21):
        reward = 0.1 if step <= 5 else 0.4 if step > 15 else 0.25
        record = {"step": step, "reward/mean": reward * 2, "kl/mean": 0.001 * step,
                  "rollout/logprob_abs_diff": 1e-5 * step, "throughput/tokens_per_s": 1000.0 + step,
                  "timing/generate": 0.5, "timing/train": 1.0 + (step % 2), "timing/overhead_frac": 0.25}
        if gold:
            record["reward/gold_mean"] = reward
        records.append(record)
    return records


def row(table, label):
    return next(line.split() for line in table.splitlines() if line.startswith(label))


def test_summary_table_numbers():
    table = summary_table(make_records())
    assert row(table, "gold reward") == ["gold", "reward", "(reward/gold_mean)", "0.100", "0.400", "4.0x", "(+0.300)"]
    assert row(table, "kl (kl/mean)")[2:] == ["0.003", "0.018", "+0.015"]  # mean of 1..5 and 16..20 x 1e-3
    assert row(table, "rollout/logprob_abs_diff max")[-1] == "2.00e-04"
    assert row(table, "throughput/tokens_per_s mean")[-1] == "1010.5"
    assert row(table, "timing/generate mean s")[-1] == "0.500"
    assert row(table, "timing/train mean s")[-1] == "1.500"
    assert row(table, "timing/overhead_frac mean")[-1] == "0.250" and "overhead_frac mean s" not in table
    assert table.splitlines()[0].startswith("20 steps logged (1-20)")
    # aligned: every row of the first table ends at the same column
    first_table = table.split("\n\n")[1].splitlines()
    assert len({len(line) for line in first_table}) == 1


def test_summary_table_shows_the_first_and_last_eval_and_skips_the_eval_only_row():
    records = make_records()
    records[0]["eval/pass@1"], records[9]["eval/pass@1"] = 0.25, 0.30
    records.append({"step": 21, "eval/pass@1": 0.45})  # the final eval: a row of its own
    table = summary_table(records)
    assert row(table, "eval/pass@1") == ["eval/pass@1", "0.250", "0.450", "+0.200"]
    assert "step 1" in table and "step 21" in table
    assert table.splitlines()[0].startswith("20 steps logged (1-20)")


def test_summary_table_falls_back_to_reward_without_gold():
    table = summary_table(make_records(gold=False), window=5)
    assert row(table, "reward (reward/mean)")[2:5] == ["0.200", "0.800", "4.0x"]
    assert "gold" not in table
    assert summary_table([]) == "no metrics logged"


@pytest.mark.parametrize("steps, window", [(1, 1), (2, 1), (3, 1), (5, 2), (9, 4), (10, 5), (20, 5)])
def test_summary_windows_never_overlap_on_short_runs(steps, window):
    """first N / last N with N = min(5, steps // 2), at least 1: on 3 steps, the first step vs the last."""
    records = [{"step": s, "reward/mean": float(s), "kl/mean": 0.0} for s in range(steps)]
    table = summary_table(records)
    assert f"windows of {window} step{'s' * (window > 1)}" in table.splitlines()[0]
    assert row(table, "metric")[1:5] == ["first", str(window), "last", str(window)]
    first, last = (sum(range(window)) / window, sum(range(steps - window, steps)) / window)
    assert row(table, "reward (reward/mean)")[2:4] == [f"{first:.3f}", f"{last:.3f}"]


def test_ray_metric_names_follow_the_contract():
    from rlhf_dist.metrics.ray_gauges import ray_metric_name

    assert ray_metric_name("reward/mean") == "rlhf_reward_mean"
    assert ray_metric_name("timing/generate") == "rlhf_timing_generate"
    assert ray_metric_name("throughput/tokens_per_s") == "rlhf_throughput_tokens_per_s"
    assert ray_metric_name("reward/gold-mean.x") == "rlhf_reward_gold_mean_x"


def test_note_prints_one_line_without_a_bar(tmp_path, capsys):
    with MetricsLogger(tmp_path, tensorboard=False, progress=False) as logger:
        logger.note("checkpoint written")
    assert capsys.readouterr().out == "checkpoint written\n"
