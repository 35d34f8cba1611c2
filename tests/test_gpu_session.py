"""The prepared GPU session runs end to end on the CPU (--cpu-dry-run), so that it cannot rot
between the rare sessions that have a GPU; collect turns its output into the results table."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_dry_run_writes_every_step_and_collect_makes_the_table(tmp_path):
    pytest.importorskip("gymnax", reason="the session's minatar step needs jaxatari[minatar]")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts/gpu/session.sh"), "--cpu-dry-run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    session = json.loads((out / "session.json").read_text())
    assert session["dry_run"]
    for step in ("device", "tests", "learner", "atari", "minatar", "scaling"):
        saved = json.loads((out / f"{step}.json").read_text())
        assert saved["status"] == "ok", (step, saved.get("traceback"))
    assert session["steps"]["tests"]["result"]["passed"] > 0
    assert session["steps"]["tests"]["result"]["failed"] == 0
    assert [u["batch"] for u in session["steps"]["learner"]["result"]["updates"]] == [32, 128]
    for step in ("atari", "minatar"):
        rows = session["steps"][step]["result"]["configurations"]
        assert rows and all(r["aggregate_steps_per_second"]["median"] > 0 for r in rows)
    assert session["steps"]["scaling"]["result"]["seed_parallel"]["devices_1"]["median"] > 0

    results = tmp_path / "results"
    subprocess.run([sys.executable, "-m", "scripts.gpu.collect", str(out), "--cpu", str(out),
                    "--output-dir", str(results)], cwd=ROOT, check=True, capture_output=True)
    table = (results / "gpu-cpu.md").read_text()
    assert "| atari | DQN, 4 envpool envs x 2 seeds" in table
    assert "1.0x the CPU's" in table      # the reference is the same run: ratio 1



def test_update_readme_rewrites_the_gpu_block_of_the_performance_doc(tmp_path, monkeypatch):
    from scripts.gpu import collect
    assert collect.TABLE_DOC == ROOT / "docs" / "performance.md"
    text = collect.TABLE_DOC.read_text()
    assert text.count(collect.README_START) == 1 and text.count(collect.README_END) == 1
    doc = tmp_path / "performance.md"
    doc.write_text(f"intro\n{collect.README_START}\nold table\n{collect.README_END}\nend\n")
    monkeypatch.setattr(collect, "TABLE_DOC", doc)
    collect.update_readme(["| new | table |"])
    assert doc.read_text() == (f"intro\n{collect.README_START}\n| new | table |\n"
                               f"{collect.README_END}\nend\n")
