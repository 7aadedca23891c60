"""The shared run-dir check, decided from per-node views that the tests inject (no Ray here)."""

from pathlib import Path

import pytest

import launch.storage as storage
from launch.storage import NodeView, check_shared_run_dir, look_for_probe, shared_dir_problem
from rlhf_dist.errors import UserError

SHARED = Path("/mnt/shared/rlhf-dist/run1")


def test_one_node_needs_nothing_shared():
    assert shared_dir_problem(Path("runs/x"), [NodeView("head", False, "no such file")]) is None
    assert shared_dir_problem(Path("runs/x"), []) is None


def test_every_node_seeing_the_probe_passes():
    assert shared_dir_problem(SHARED, [NodeView("head", True), NodeView("10.0.0.2/ab12cd", True)]) is None


def test_a_relative_dir_on_several_nodes_is_refused_with_the_fix():
    problem = shared_dir_problem(Path("runs/x"), [NodeView("head", True), NodeView("10.0.0.2/ab12cd", True)])
    assert "run dir 'runs/x' is relative, and this Ray cluster has 2 nodes" in problem
    assert "--run-dir /mnt/shared/rlhf-dist/NAME" in problem


def test_nodes_that_do_not_see_the_probe_are_named():
    views = [NodeView("head", True), NodeView("10.0.0.2/ab12cd", False, "no such file"),
             NodeView("10.0.0.3/ef34ab", True), NodeView("10.0.0.4/0099ff", False, "no answer in 120 s")]
    problem = shared_dir_problem(SHARED, views)
    assert f"run dir {SHARED} is not shared by all 4 nodes" in problem
    assert "not seen by 10.0.0.2/ab12cd (no such file), 10.0.0.4/0099ff (no answer in 120 s)" in problem
    assert "10.0.0.3" not in problem and "resume could not find them" in problem


def test_look_for_probe_checks_the_content(tmp_path):
    probe = tmp_path / ".rlhf-dist-probe-1"
    assert look_for_probe(str(probe), "abc") == (False, "no such file")
    assert look_for_probe(str(tmp_path / "gone" / "p"), "abc") == (False, f"no directory {tmp_path / 'gone'}")
    probe.write_text("stale")
    assert look_for_probe(str(probe), "abc") == (False, "another file with that name")
    probe.write_text("abc")
    assert look_for_probe(str(probe), "abc") == (True, "")


@pytest.fixture
def two_nodes(monkeypatch):
    """A two-node cluster whose second node sees the views the test gives (`views`)."""
    seen = {"probes": []}

    def views(nodes, path, content, look):
        seen["probes"].append((path, Path(path).read_text() == content))  # written before anyone looks
        return [NodeView(name, name in seen["sharing"], "" if name in seen["sharing"] else "no such file")
                for _, name in nodes]

    monkeypatch.setattr(storage, "_alive_nodes", lambda: [("id1", "head"), ("id2", "10.0.0.2/ab12cd")])
    monkeypatch.setattr(storage, "_views_from_every_node", views)
    return seen


def test_check_probes_from_the_driver_and_cleans_up(two_nodes, tmp_path):
    two_nodes["sharing"] = {"head", "10.0.0.2/ab12cd"}
    check_shared_run_dir(tmp_path / "new" / "run")
    [(path, written)] = two_nodes["probes"]
    assert written and Path(path).parent == tmp_path / "new" / "run"
    assert list((tmp_path / "new" / "run").iterdir()) == [], "the probe file is removed; the empty dir stays"


def test_check_refuses_an_unshared_dir_and_removes_what_it_made(two_nodes, tmp_path):
    two_nodes["sharing"] = {"head"}
    with pytest.raises(UserError, match=r"not seen by 10.0.0.2/ab12cd \(no such file\)"):
        check_shared_run_dir(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()


def test_check_refuses_a_relative_dir_without_probing(two_nodes):
    with pytest.raises(UserError, match="'runs/x' is relative"):
        check_shared_run_dir(Path("runs/x"))
    assert two_nodes["probes"] == [] and not Path("runs/x").exists()


def test_check_does_nothing_on_one_node(monkeypatch):
    monkeypatch.setattr(storage, "_alive_nodes", lambda: [("id1", "head")])
    monkeypatch.setattr(storage, "_views_from_every_node", lambda *a: pytest.fail("no probe on one node"))
    check_shared_run_dir(Path("runs/relative-is-fine"))
    assert not Path("runs/relative-is-fine").exists()
