"""scripts/benchmark.py runs end to end in --quick mode and writes its records (no timings checked)."""
from __future__ import annotations

import json

import pytest

from scripts import benchmark


@pytest.mark.slow
def test_quick_harness_writes_json_markdown_and_readme_block(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{benchmark.README_START}\nold table\n{benchmark.README_END}\nend\n")
    monkeypatch.setattr(benchmark, "ROOT_README", readme)
    # The seeds and actor sections start whole training processes and the peers section
    # runs the same host loop as overhead (with learning): too dear for CI; the table's
    # rows for them are checked below from a made-up record.
    record = benchmark.main(["--quick", "--no-peers", "--sections", "learner", "overhead",
                             "--name", "test", "--output-dir", str(tmp_path),
                             "--update-readme"])
    saved = json.loads((tmp_path / "cpu-test.json").read_text())
    assert saved["quick"] and saved["git_commit"] == record["git_commit"]
    results = saved["results"]
    assert set(results) == {"learner", "overhead", "gpu"} and results["gpu"] is None
    for conv in ("xla", "patch"):
        timing = results["learner"][conv]
        assert timing["xla_gflop"] > 0 and timing["ms"]["min"] <= timing["ms"]["median"]
    assert 0 < results["overhead"]["fraction"]
    table = (tmp_path / "cpu-test.md").read_text()
    assert "DQN update B=32 (xla conv)" in table and "envpool alone" in table
    text = readme.read_text()
    assert "old table" not in text and "DQN update B=32" in text and text.endswith("end\n")


def test_markdown_names_every_target_and_the_gpu_state():
    s = {"median": 2.0, "min": 1.0, "max": 3.0}
    record = {"machine": {"cpu": "cpu", "logical_cpus": 2, "load_average_before": [1.0],
                          "load_average_after": [1.0]},
              "git_commit": "abc", "git_dirty": False, "repeats": 3, "command": "cmd",
              "results": {
                  "peers": {"ours": s, "sb3": s, "sbx": {**s, "median": 4.0},
                            "ratio_to_fastest_peer": 0.5, "target_met": False},
                  "learner": {"matmul_gflops": s, "target_met": True,
                              **{c: {"xla_gflop": 2.2, "ms": s, "flop_bound_ms": 1.9,
                                     "ratio_to_bound": 1.05} for c in ("xla", "patch")}},
                  "overhead": {"ours_learning_off": s, "envpool_alone": s, "fraction": 1.0,
                               "target_met": True},
                  "seeds": {"target_met": True, **{name: {"vmapped_1": s, "vmapped_8": s,
                                                           "processes_8": s, "speedup": 3.5}
                                                    for name in ("catch",
                                                                 "SpaceInvaders-MinAtar")}},
                  "sweep": {"preset": "minatar-dqn", "configurations": 8, "seeds": 2,
                            "concurrent_processes": 2, "one_program": s,
                            "separate_processes": {**s, "median": 5.0}, "speedup": 2.5,
                            "target_met": False},
                  "actor": {"sync": s, "async": s},
                  "scaling": {"seeds_per_device": 2, "forced_cpu_devices": 2,
                              "seed_parallel": {"devices_1": {**s, "efficiency": 1.0},
                                                "devices_2": {**s, "median": 3.0,
                                                              "efficiency": 0.75}}},
                  "gpu": None}}
    table = benchmark.markdown(record)
    assert "0.50x | >= 1.2x | no" in table          # the peers' ratio uses the faster peer
    assert "1.05x | <= 1.3x | yes" in table
    assert "100% | >= 85% | yes" in table
    assert "3.50x | >= 3.0x | yes" in table
    assert "GPU section: not run" in table
    # the sweep row: 8 x 2 in one process against its 16 runs, 2 at a time, 5.0 s / 2.0 s
    assert "8 learning rates x 2 seeds in one process vs the 16 runs as processes (2 at a time)" \
        in table and "| 2.50x | >= 3.0x | no |" in table
    # N devices against N times one device: 3.0 env steps/s against 2 x 2.0
    assert "2 device(s) x 2 seeds (2 forced CPU devices sharing the cores)" in table
    assert "| 3 [1-3] | 4 | 0.75x |" in table


def test_update_readme_targets_the_performance_doc_block():
    assert benchmark.ROOT_README == benchmark.ROOT / "docs" / "performance.md"
    text = benchmark.ROOT_README.read_text()
    assert text.count(benchmark.README_START) == 1 and text.count(benchmark.README_END) == 1
