"""scripts/profile_update.py: times both weight gradients and names where the time goes."""
from __future__ import annotations

import json

import pytest

from scripts import profile_update


def test_profile_writes_both_gradients_with_named_ops(tmp_path):
    record = profile_update.main(["--preset", "demo", "--seeds", "1", "2", "--calls", "3",
                                  "--repeats", "1", "--top", "4", "--set", "mem_priority=none",
                                  "--output-dir", str(tmp_path)])
    rows = {(r["seeds"], r["gradient"]): r for r in record["rows"]}
    assert set(rows) == {(s, g) for s in (1, 2) for g in ("kernel", "autodiff")}
    for row in rows.values():
        assert row["ms_per_update"]["median"] > 0 and len(row["top_ops"]) == 4
        # every listed op is an XLA instruction of the compiled update
        assert all(op["shape"] and op["ms_per_update"] >= 0 for op in row["top_ops"])
    # and ops are named by their layer (which 4 ops lead a tiny update's profile varies from
    # run to run, and some, e.g. a bare dot, carry no name: so over all rows)
    assert any(op["source"] for row in rows.values() for op in row["top_ops"])
    assert set(record["speedups"]) == {"1 seed(s): autodiff / kernel",
                                       "2 seed(s): autodiff / kernel"}
    # the stages are timed once per seed count (our gradient, package options); each one
    # contains the one before it, so XLA's FLOP count grows down the list
    for (seeds, gradient), row in rows.items():
        stages = row["stages"]
        if gradient == "autodiff":
            assert stages == []
            continue
        assert [st["stage"] for st in stages] == list(profile_update.STAGES)
        assert all(st["ms"]["median"] > 0 for st in stages)
        flops = [st["gflop"] for st in stages[1:]]
        assert flops == sorted(flops) and flops[0] < flops[-1]
    saved = json.loads((tmp_path / "profile-demo.json").read_text())
    assert saved["overrides"] == {"mem_priority": "none"}
    table = (tmp_path / "profile-demo.md").read_text()
    assert "autodiff / kernel" in table and "Command: `python -m scripts.profile_update" in table
    assert "each stage timed on its own" in table and "| gradient |" in table


def test_profile_times_the_package_options_against_xla_defaults(tmp_path):
    record = profile_update.main(["--preset", "demo", "--seeds", "1", "--calls", "3",
                                  "--repeats", "1", "--top", "3", "--gradient", "kernel",
                                  "--xla", "package", "defaults", "--set", "mem_priority=none",
                                  "--output-dir", str(tmp_path)])
    assert [row["xla"] for row in record["rows"]] == ["package", "defaults"]
    assert set(record["speedups"]) == {"1 seed(s): XLA defaults / package"}
    table = (tmp_path / "profile-demo.md").read_text()
    assert "| 1 | kernel | defaults |" in table and "XLA defaults / package" in table


def test_op_sources_follow_a_fusion_into_its_computation():
    hlo = ('%fused_computation.3 (param_0.3: f32[8,32,128], param_1.3: f32[8,128,1024]) '
           '-> f32[8,32,1024] {\n  ROOT %dot.70 = f32[8,32,1024]{2,1,0} dot(%param_0.3, '
           '%param_1.3)\n}\n\n%fused_computation.4 (param_0.4: f32[4]) -> f32[4] {\n'
           '  ROOT %add.1 = f32[4]{0} add(%param_0.4, %param_0.4), '
           'metadata={op_name="jit(update)/jvp(QNetwork)/heads/Dense_0/add"}\n}\n\n'
           'ENTRY %main {\n  %ynn_fusion.3 = f32[8,32,1024]{2,1,0} fusion(%a, %b), '
           'kind=kCustom, calls=%fused_computation.3\n'
           '  %loop_fusion = f32[4]{0} fusion(%c), kind=kLoop, calls=%fused_computation.4\n}\n')
    sources = profile_update.op_sources(hlo)
    assert sources["ynn_fusion.3"] == "dot(f32[8,32,128], f32[8,128,1024])"
    assert sources["loop_fusion"] == "heads/Dense_0/add"
    assert profile_update.op_shapes(hlo)["ynn_fusion.3"] == "f32[8,32,1024]"


def test_a_bad_preset_option_is_refused_in_one_line():
    with pytest.raises(SystemExit, match="^error: unknown option --warp"):
        profile_update.main(["--set", "warp=1", "--no-write"])
