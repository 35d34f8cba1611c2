"""Checkpoints: atomic writes, refusals of bad ones, last/best/step, and exact resume."""
from __future__ import annotations

import gc
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest


from jaxatari import checkpoint as ckpt
from jaxatari.config import ConfigError
from jaxatari.loop import Trainer, train
from jaxatari.loops.checkpoint_items import to_tree
from tests.tiny import tiny


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


# Reading a damaged checkpoint makes orbax abandon tensorstore reads whose callbacks later
# find orbax's event loop closed; Python reports that at a later garbage collection as an
# unraisable exception (in whichever test runs then). It is orbax's and harmless.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")


# ------------------------------------------------------------------ the checkpoint module


def example_items(value: float):
    return {"train": {"w": np.full((3, 2), value, np.float32), "step": np.int32(value)},
            "replay": None}


TEMPLATE = {"train": {"w": jax.ShapeDtypeStruct((3, 2), np.float32),
                      "step": jax.ShapeDtypeStruct((), np.int32)},
            "replay": {"rows": jax.ShapeDtypeStruct((4,), np.uint8)}}


def test_save_load_round_trip_and_optional_items(tmp_path):
    path = ckpt.save(tmp_path / "last", example_items(1.0), {"step": 7})
    items, meta = ckpt.load(path, TEMPLATE)
    assert meta["step"] == 7 and ckpt.is_committed(path)
    np.testing.assert_array_equal(items["train"]["w"], np.ones((3, 2), np.float32))
    assert items["replay"] is None   # not saved: the caller decides what to do
    assert meta["items"]["train"]["bytes"] == 3 * 2 * 4 + 4


def test_a_save_that_dies_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = ckpt.save(tmp_path / "last", example_items(1.0), {"step": 1})

    def crash(tmp, target):
        raise OSError("disk full")
    monkeypatch.setattr(ckpt, "_swap_in", crash)
    with pytest.raises(OSError):
        ckpt.save(path, example_items(2.0), {"step": 2})
    monkeypatch.undo()
    items, meta = ckpt.load(path, TEMPLATE)
    assert meta["step"] == 1 and items["train"]["w"][0, 0] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last"]   # no temporary left behind


def test_uncommitted_and_half_swapped_checkpoints(tmp_path):
    path = ckpt.save(tmp_path / "last", example_items(1.0), {"step": 1})
    # A directory without its commit marker (a save cut short) is never loaded.
    half = tmp_path / "half"
    shutil.copytree(path, half)
    (half / ckpt.COMMIT_FILE).unlink()
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.load(half, TEMPLATE)
    # A temporary directory next to the run's checkpoints is ignored by find().
    shutil.copytree(half, tmp_path / ".last.tmp-1-abc")
    assert ckpt.find(tmp_path, "last") == path
    # A crash between the two renames of a save: only last.old exists; it loads, and the
    # next save puts everything back in order.
    os.rename(path, tmp_path / "last.old")
    assert ckpt.resolve(path) == tmp_path / "last.old"
    assert ckpt.load(path, TEMPLATE)[1]["step"] == 1
    ckpt.save(path, example_items(3.0), {"step": 3})
    assert ckpt.is_committed(path) and not (tmp_path / "last.old").exists()
    assert ckpt.load(path, TEMPLATE)[1]["step"] == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "metadata"])
def test_corrupt_or_truncated_checkpoints_are_refused(tmp_path, damage):
    path = ckpt.save(tmp_path / "last", {"train": {"w": np.arange(4096, dtype=np.float32)}},
                     {"step": 1})
    data = sorted((f for f in (path / ckpt.STATE_DIR).rglob("*")
                   if f.is_file() and f.parent.name == "d"), key=lambda f: -f.stat().st_size)
    if damage == "truncate":
        for f in data:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "flip":
        raw = bytearray(data[0].read_bytes())
        for i in range(len(raw) // 2, len(raw) // 2 + 64):
            raw[i] ^= 0x5A
        data[0].write_bytes(bytes(raw))
    else:
        meta = path / ckpt.METADATA_FILE
        meta.write_text(meta.read_text().replace('"step": 1', '"step": 2'))
    template = {"train": {"w": jax.ShapeDtypeStruct((4096,), np.float32)}}
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.load(path, template)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    gc.collect()   # orbax's leftover callbacks fire here, under this module's filter


def test_the_records_are_stored_under_the_format_s_names():
    """A record's field names and nesting are the checkpoint format (checkpoints written
    before the records must still load): a None field is not stored, a nested record is a
    dict of its fields, and ``from_tree`` gives back what ``to_tree`` took apart."""
    from jaxatari.loops.checkpoint_items import (ActorLearnerItems, ActorNativeEnvs,
                                                 AsyncCounters, QItems, QNativeEnvs, from_tree)
    q = QItems(train=1, actor=2, env=QNativeEnvs(env_state=3, frame=4, is_first=5, score=6),
               heldout={"batch": 7, "valid": 8})
    assert to_tree(q) == {"train": 1, "actor": 2, "heldout": {"batch": 7, "valid": 8},
                          "env": {"env_state": 3, "frame": 4, "is_first": 5, "score": 6}}
    assert to_tree(QItems(train=1, actor=2, replay=9)) == {"train": 1, "actor": 2, "replay": 9}
    native = ActorLearnerItems(train=1, actors=2, env=ActorNativeEnvs(env_state=3, score=4))
    assert to_tree(native) == {"train": 1, "actors": 2, "env": {"env_state": 3, "score": 4}}
    counters = AsyncCounters(steps=1, final_epsilon=2, policy_key=3, received=4, learned=5)
    assert to_tree(ActorLearnerItems(train=0, actors=counters)) == {
        "train": 0, "actors": {"steps": 1, "final_epsilon": 2, "policy_key": 3,
                               "received": 4, "learned": 5}}
    for record in (q, native, ActorLearnerItems(train=0, actors=counters)):
        assert from_tree(record, to_tree(record)) == record
    assert from_tree(q, {"train": 1, "actor": 2}) == QItems(train=1, actor=2)


def test_a_checkpoint_of_another_shape_is_refused(tmp_path):
    path = ckpt.save(tmp_path / "last", example_items(1.0), {"step": 1})
    other = {"train": {"w": jax.ShapeDtypeStruct((3, 5), np.float32),
                       "step": jax.ShapeDtypeStruct((), np.int32)}}
    with pytest.raises(ckpt.CheckpointError, match=r"float32\[3, 2\].*float32\[3, 5\]"):
        ckpt.load(path, other)
    with pytest.raises(ckpt.CheckpointError, match="no run directory or checkpoint"):
        ckpt.find(tmp_path / "missing")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="holds no saved agent"):
        ckpt.find(tmp_path / "empty_run")


# ------------------------------------------------------------------ runs: save and resume


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: 512 steps at once, every evaluation kept. B: 256 steps, then resumed to 512."""
    root = tmp_path_factory.mktemp("runs")
    run_a, summary_a = train(tiny(steps=512), root / "a", quiet=True, checkpoint_every=True)
    run_b, first_b = train(tiny(steps=256), root / "b", quiet=True)
    stopped = {name: ckpt.read_metadata(run_b / "checkpoints" / name) for name in ("last", "best")}
    run_b2, summary_b = train(tiny(steps=512), None, quiet=True, resume_from=run_b)
    assert run_b2 == run_b
    return {"a": run_a, "b": run_b, "summary_a": summary_a, "summary_b": summary_b,
            "first_b": first_b, "stopped": stopped}


def test_resume_gives_the_same_parameters_bit_for_bit(runs):
    trainer = Trainer(tiny(steps=512), runs["a"])
    templates = to_tree(trainer.templates())
    a, meta_a = ckpt.load(runs["a"] / "checkpoints" / "last", templates)
    b, meta_b = ckpt.load(runs["b"] / "checkpoints" / "last", templates)
    assert meta_a["step"] == meta_b["step"] == 512
    for name in ("train", "actor", "env", "replay", "heldout"):
        assert a[name] is not None and leaves_equal(a[name], b[name]), name
    # The native run checkpoints its (small) replay memory; best leaves it out.
    assert meta_b["replay_included"] and meta_b["replay_bytes"] > 0
    assert not ckpt.read_metadata(runs["b"] / "checkpoints" / "best")["replay_included"]


def test_resumed_run_keeps_its_history(runs):
    summary = runs["summary_b"]
    assert summary["eval_steps"] == [128, 256, 384, 512] == runs["summary_a"]["eval_steps"]
    assert summary["resumed_from_step"] == 256
    assert summary["final_scores"] == runs["summary_a"]["final_scores"]
    rows = (runs["b"] / "eval.csv").read_text().splitlines()
    assert rows[0] == "step,seed,score,episodes,normalised_score,v,td_error"
    assert [int(r.split(",")[0]) for r in rows[1:]] == [128, 128, 256, 256, 384, 384, 512, 512]
    progress = [int(r.split(",")[0]) for r in (runs["b"] / "progress.csv").read_text().splitlines()[1:]]
    assert progress == sorted(progress) and progress[-1] == 512
    record = json.loads((runs["b"] / "config.json").read_text())
    assert record["resumed_from"]["step"] == 256
    assert "steps 256 -> 512" in record["resumed_from"]["changed_options"]
    assert (runs["b"] / "config-before-step-256.json").is_file()
    # V and TD error are computed on held-out transitions once learning started.
    v = [float(r.split(",")[5]) for r in rows[1:]]
    assert all(np.isfinite(v))


def test_last_best_and_every_checkpoint(runs):
    directory = runs["a"] / "checkpoints"
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["best", "last", "step_000000128", "step_000000256", "step_000000384",
                     "step_000000512"]
    best = ckpt.read_metadata(directory / "best")
    last = ckpt.read_metadata(directory / "last")
    scores = [np.mean(e["scores"]) for e in last["evaluations"]]
    # best: the first evaluation with the highest mean score over seeds (strictly better).
    assert best["step"] == last["evaluations"][int(np.argmax(scores))]["step"]
    assert last["best_score"] == pytest.approx(max(scores))
    assert last["agent"]["hidden_size"] == 16 and last["config"]["steps"] == 512
    assert best["env_spec"]["protocol"]["env"] == "catch"


def test_resume_refuses_another_network_and_changes_nothing(runs, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(runs["b"], run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    with pytest.raises(ckpt.CheckpointError, match="hidden_size 16 there, 32 here"):
        train(tiny(steps=768, hidden_size=32), None, quiet=True, resume_from=run_dir)
    with pytest.raises(ckpt.CheckpointError, match="env 'catch'"):
        train(tiny(steps=768, env="gridworld", model_body="mlp", hist_len=2), None,
              quiet=True, resume_from=run_dir)
    with pytest.raises(ConfigError, match="nothing left to train"):
        train(tiny(steps=512), None, quiet=True, resume_from=run_dir)
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    assert before == after


def test_host_env_run_resumes_without_its_replay_memory(tmp_path):
    """A gymnasium env cannot be restored: the resumed run starts new episodes and, its
    memory not saved (host default), waits --learn-start steps before learning again."""
    options = {"env": "tests.test_loop_host:CountdownEnv", "model_body": "mlp", "hist_len": 1,
               "seeds": 2, "envs": 2, "learn_start": 40, "mem_size": 200, "val_freq": 60,
               "val_steps": 20, "val_envs": 2, "chunk_steps": 20}
    run_dir, _ = train(tiny(**options, steps=120), tmp_path / "host", quiet=True)
    meta = ckpt.read_metadata(run_dir / "checkpoints" / "last")
    assert meta["path_kind"] == "host" and not meta["replay_included"]
    assert meta["replay_bytes"] > 0
    _, summary = train(tiny(**options, steps=240), None, quiet=True, resume_from=run_dir)
    assert summary["final_scores"] == [5.0, 5.0] and summary["resumed_from_step"] == 120
    progress = [row.split(",") for row in (run_dir / "progress.csv").read_text().splitlines()[1:]]
    after = [row for row in progress if int(row[0]) > 120]
    # Chunks of 20 steps: the 40 steps after the resume refill the memory (no loss).
    assert [row[4] for row in after if int(row[0]) <= 160] == ["nan"] * 4
    assert all(row[4] != "nan" for row in after if int(row[0]) > 160)


def test_a_relative_run_dir_saves_and_resumes(tmp_path, monkeypatch):
    """orbax takes absolute paths only; a user's --run-dir and --resume may be relative."""
    monkeypatch.chdir(tmp_path)
    run_dir, _ = train(tiny(steps=256), Path("runs/relative"), quiet=True)
    assert ckpt.read_metadata(Path("runs/relative/checkpoints/last"))["step"] == 256
    _, summary = train(tiny(steps=512), None, quiet=True, resume_from=Path("runs/relative"))
    assert summary["resumed_from_step"] == 256
