"""The benchmark harness runs end to end at a tiny size (timings themselves are not tested)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_benchmark_harness_tiny(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "tools.benchmark", "--methods", "cmhash", "--sizes", "tiny",
                        "--steps", "3", "--repeats", "1", "--variants", "loop,floor,batch_loop,eager",
                        "--gallery_sizes", "3000", "--queries", "20", "--output", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [c["method"] for c in res["cases"]] == ["cmhash"]
    for c in res["cases"]:
        assert "errors" not in c, c
        spe = c["seconds_per_epoch"]
        assert all(spe[k] > 0 for k in ("loop", "floor", "batch_loop", "eager")), spe
        assert "xla" not in spe  # not requested
        assert c["loop_over_floor"] == spe["loop"] / spe["floor"]
        assert c["steps_per_epoch"] == -(-c["train_pairs"] // c["pairs_per_step"])
        assert c["peak_rss_mib"] > 0 and c["eval_seconds"] > 0
    g = res["gallery"][0]
    assert g["gallery"] == 3000 and 0 < g["map"] <= 1
    assert "| cmhash | tiny |" in r.stdout

    # --merge re-measures the named cases and keeps the rest (here the gallery case)
    r = subprocess.run([sys.executable, "-m", "tools.benchmark", "--methods", "cmhash", "--sizes", "tiny",
                        "--steps", "2", "--repeats", "1", "--variants", "loop,floor", "--gallery_sizes", "",
                        "--merge", "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    merged = json.loads(out.read_text())
    assert merged["gallery"] == res["gallery"]
    assert [c["method"] for c in merged["cases"]] == ["cmhash"]
    assert set(merged["cases"][0]["seconds_per_epoch"]) == {"loop", "floor"} and merged["cases"][0]["measured"]
