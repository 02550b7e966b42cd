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


def test_end_to_end_step_benchmark_table_and_refusals(tmp_path):
    """tools.bench_e2e (release-sized backbones, timed outside the suite): the table's ratio and
    epoch estimate come from its records; bad flags are refused before TensorFlow loads."""
    from tools.bench_e2e import markdown

    rows = markdown([{"precision": "float32", "seconds_per_step": 8.0, "pairs_per_second": 4.0,
                      "iapr_epoch_minutes": 8.0 * 313 / 60, "first_step_seconds": 20.0, "peak_rss_mib": 4000.0},
                     {"precision": "mixed_bfloat16", "seconds_per_step": 5.0, "pairs_per_second": 6.4,
                      "iapr_epoch_minutes": 5.0 * 313 / 60, "first_step_seconds": 25.0, "peak_rss_mib": 4500.0},
                     {"precision": "mixed_bfloat16", "error": "boom"}]).splitlines()
    assert rows[2] == "| float32 | 8.00 | 4.0 | 41.7 | 20.0 | 4,000 | 1.00x |"
    assert rows[3] == "| mixed_bfloat16 | 5.00 | 6.4 | 26.1 | 25.0 | 4,500 | 0.62x |"
    assert rows[4] == "| mixed_bfloat16 | error: boom |"
    for args, said in ((["--text_len", "200"], "--text_len 200: a run's texts are cut at --max_len"),
                       (["--precisions", "float16"], "--precisions: one or both of float32, mixed_bfloat16"),
                       (["--steps", "0"], "--steps")):
        r = launch.run([sys.executable, "-m", "tools.bench_e2e", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and said in lines[0], r.stderr
