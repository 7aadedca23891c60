"""Pictures of a run: the series drawn are the metrics.jsonl values, the PNG has its fixed size, runs
overlay with their labels, and `rlhf-dist plot` writes the file or refuses with exit 2."""

import json

import pytest

pytest.importorskip("matplotlib")

from matplotlib.image import imread  # noqa: E402

from launch.cli.main import main  # noqa: E402
from rlhf_dist.metrics.logger import read_metrics  # noqa: E402
from rlhf_dist.metrics.plots import DPI, SIZE_IN, STEP_TIME, curves, draw, write_run_curves  # noqa: E402


def step_record(step, shift=0.0):
    record = {
        "step": step, "reward/mean": 0.1 * step + shift, "reward/gold_mean": 0.05 * step, "kl/mean": 0.5 * step,
        "kl/coef": 0.01, "rollout/logprob_abs_diff": 1e-7 * (step + 1), "timing/generate": 1.0 + step,
        "timing/train": 0.5, "timing/sync": 0.25, "timing/step": 2.0 + step, "timing/overhead_frac": 0.1,
    }
    if step % 2 == 0:  # eval every 2 steps
        record |= {"eval/reward_mean": 0.3 + step, "eval/gold_mean": 0.2 + step}
    return record


def write_run(run_dir, steps=5, shift=0.0):
    run_dir.mkdir(parents=True)
    lines = [step_record(s, shift) for s in range(steps)]
    lines.append({"step": steps, "eval/reward_mean": 9.0})  # the final eval: a row of its own
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run_dir


def test_series_equal_the_file_values(tmp_path):
    records = read_metrics(write_run(tmp_path / "run") / "metrics.jsonl")
    got = curves(records)
    assert got["reward"]["proxy reward"] == ([0, 1, 2, 3, 4], [0.0, 0.1, 0.2, 0.30000000000000004, 0.4])
    assert got["reward"]["gold reward"] == ([0, 1, 2, 3, 4], [0.05 * s for s in range(5)])
    assert got["reward"]["eval reward"] == ([0, 2, 4, 5], [0.3, 2.3, 4.3, 9.0])  # eval steps only, final row too
    assert got["reward"]["eval gold"] == ([0, 2, 4], [0.2, 2.2, 4.2])
    assert got["kl"] == {"KL": ([0, 1, 2, 3, 4], [0.0, 0.5, 1.0, 1.5, 2.0]), "KL coef": ([0, 1, 2, 3, 4], [0.01] * 5)}
    assert got["mismatch"]["|rollout - learner| logprob"][1] == [1e-7 * (s + 1) for s in range(5)]
    # phases in the driver's order; timing/step is the whole step, the overhead fraction no phase
    assert list(got["time"]) == ["generate", "train", "sync", STEP_TIME]
    assert got["time"]["generate"] == ([0, 1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert got["time"][STEP_TIME][1] == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_missing_keys_leave_series_and_panels_out(tmp_path):
    got = curves([{"step": 0, "reward/mean": 1.0, "kl/mean": None}, {"step": 1, "reward/mean": True}])
    assert got["reward"] == {"proxy reward": ([0], [1.0])}  # null and booleans are no numbers
    assert got["kl"] == got["mismatch"] == got["time"] == {}
    fig = draw({"bare": [{"step": 0, "reward/mean": 1.0}]}, tmp_path / "bare.png")
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("kl/mean" in n for n in notes) and any("timing/<phase>" in n for n in notes)


def test_png_has_the_fixed_size_and_plots_the_file_values(tmp_path):
    records = read_metrics(write_run(tmp_path / "run") / "metrics.jsonl")
    out = tmp_path / "curves.png"
    fig = draw({"run": records}, out)
    height, width = imread(out).shape[:2]
    assert (width, height) == (SIZE_IN[0] * DPI, SIZE_IN[1] * DPI) == (1200, 800)
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert list(lines["proxy reward"].get_xdata()) == [0, 1, 2, 3, 4]
    assert list(lines["proxy reward"].get_ydata()) == [r["reward/mean"] for r in records[:5]]
    assert list(lines["eval reward"].get_ydata()) == [0.3, 2.3, 4.3, 9.0]
    assert list(lines[STEP_TIME].get_ydata()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)  # one legend, for the figure
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"proxy reward", "KL", "KL coef", "generate", "train", "sync", STEP_TIME} <= legend
    assert all(ax.get_xlabel() == "step" and ax.get_ylabel() for ax in fig.axes[:4])


def test_overlay_labels_each_run(tmp_path):
    runs = {"on-policy": read_metrics(write_run(tmp_path / "a") / "metrics.jsonl"),
            "async": read_metrics(write_run(tmp_path / "b", shift=1.0) / "metrics.jsonl")}
    fig = draw(runs, tmp_path / "both.png")
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"proxy reward (on-policy)", "proxy reward (async)", f"{STEP_TIME} (async)"} <= legend
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert list(lines["proxy reward (async)"].get_ydata()) == [r["reward/mean"] for r in runs["async"][:5]]


def test_plot_command_writes_the_file_and_refuses_bad_input(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert main(["plot", str(run)]) == 0
    assert imread(run / "curves.png").shape[:2] == (800, 1200)
    assert main(["plot", str(run)]) == 0  # our own PNG may be replaced
    other = write_run(tmp_path / "other", shift=1.0)
    out = tmp_path / "compare.png"
    assert main(["plot", str(run), str(other), "-o", str(out)]) == 0 and out.is_file()

    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "no run directory at" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err
    theirs = tmp_path / "theirs.png"
    theirs.write_bytes(b"\x89PNG\r\n\x1a\n a user's picture")
    assert main(["plot", str(run), "-o", str(theirs)]) == 2
    assert theirs.read_bytes().endswith(b"a user's picture")  # untouched
    assert main(["plot", str(run), "-o", str(tmp_path / "notes.txt")]) == 2


def test_end_of_run_curves_never_fail_the_run(tmp_path, caplog):
    run = write_run(tmp_path / "run")
    assert write_run_curves(run, read_metrics(run / "metrics.jsonl")) == run / "curves.png"
    (run / "curves.png").write_text("a user's file")
    assert write_run_curves(run, []) is None  # a file that is not ours: a warning, no exception
    assert "curves.png not drawn" in caplog.text and (run / "curves.png").read_text() == "a user's file"
