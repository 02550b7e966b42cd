"""The benchmark harness runs end to end at a tiny size (timings themselves are not tested)."""

import json
import os
import sys

from tests import launch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_benchmark_harness_tiny(tmp_path):
    out = tmp_path / "bench.json"
    r = launch.run([sys.executable, "-m", "tools.benchmark", "--methods", "cmhash", "--sizes", "tiny",
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
    assert "cmhash:tiny (1 of 2) ..." in r.stderr and "gallery:3000 (2 of 2) ..." in r.stderr
    assert "unmeasured" not in res  # only a stopped run's file lists the cases it lacks



def test_merge_keeps_what_is_not_redone_and_orders_the_table():
    from tools.benchmark import kept_records, markdown

    def case(method, size):
        return {"method": method, "size": size, "seconds_per_epoch": {"loop": 1.0}, "pairs_per_second": {"loop": 1.0},
                "loop_over_floor": None, "eval_seconds": 0.1, "peak_rss_mib": 1.0, "measured": "2026-11-22"}

    old = {"cases": [case("cmhash", "wiki"), case("jfse", "xmn"), {"case": "zscrgan:wiki", "error": "boom"},
                     case("acmr_simple", "wiki")],
           "gallery": [{"gallery": 1000, "queries": 2, "seconds": 1.0, "peak_rss_mib": 1.0, "gallery_mib": 1.0}]}
    kept = kept_records(old, ["cmhash:wiki", "zscrgan:wiki", "gallery:1000"])
    assert [c["method"] for c in kept["cases"]] == ["jfse", "acmr_simple"] and kept["gallery"] == []
    table = markdown({"cases": kept["cases"] + [case("cmhash", "wiki")]})
    methods = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert methods == ["acmr_simple", "cmhash", "jfse"]  # wiki before xmn, methods in their fixed order


def test_merge_refuses_another_machines_numbers():
    import pytest

    from common.errors import ConfigError
    from tools.benchmark import require_same_machine

    here = {"cpus": 2, "gpus": 0, "isa": {"avx512_bf16": True}, "tensorflow": "2.21.0", "platform": "Linux-6.18"}
    require_same_machine(dict(here, platform="Linux-6.19", python="3.11.9"), here, "b.json")  # a kernel update: same
    with pytest.raises(ConfigError, match=r"^--merge: b.json was measured on another machine or stack \(cpus 8 -> 2; "
                                          r"gpus 1 -> 0\); write this machine's numbers to another --output$"):
        require_same_machine(dict(here, cpus=8, gpus=1), here, "b.json")
