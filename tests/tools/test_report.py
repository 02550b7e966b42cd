"""tools.report: results.json files -> one markdown table with the published numbers and sources."""

import fcntl
import json
import os

from tools.report import report


def _write(folder, **r):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(r))


def test_report_places_published_numbers_next_to_ours(tmp_path):
    _write(tmp_path / "jfse" / "standard", method="jfse", dataset="wikipedia", scenario="standard",
           i2t_map_all=0.51, t2i_map_all=0.47, chance_map_all=0.1012)
    _write(tmp_path / "jfse" / "zs", method="jfse", dataset="wikipedia", scenario="zs", i2t_map_all=0.30,
           t2i_map_all=0.29, seen_i2t_map_all=0.70, seen_t2i_map_all=0.88, chance_map_all=0.3, seen_chance_map_all=0.2)
    _write(tmp_path / "hash", method="cmhash", dataset="iapr", i2t_map={"32": 0.55, "16": 0.5},
           t2i_map={"32": 0.56, "16": 0.52}, per_bits={"32": {"random_codes_map": 0.3101}, "16": {}})
    _write(tmp_path / "syn", method="acmr_simple", dataset="synthetic-small", i2t_map_all=0.2, t2i_map_all=0.3,
           seed=4, provenance={"git_commit": "0123456789abcdef", "git_dirty": True, "ended": "2026-11-30T01:02:03"})
    text = report([str(tmp_path)])
    lines = text.splitlines()
    row = next(line for line in lines if "| jfse | wikipedia | standard |" in line)
    assert "| 0.5100 / 0.4700 | 0.1012 | JFSE 0.527 / 0.484" in row  # ours, the chance level, published
    ref = row.split(" | ")[-2]  # the source's footnote number (the last column is the run)
    assert any(line.startswith(f"{ref} Xu et al.") for line in lines)
    seen = next(line for line in lines if "zs (seen classes)" in line)
    assert "0.7000 / 0.8800 | 0.2000 |" in seen and "0.708 / 0.906" in seen
    unseen = next(line for line in lines if "| jfse | wikipedia | zs |" in line)
    assert "| 0.3000 / 0.2900 | 0.3000 |" in unseen and "0.343 / 0.314" in unseen
    h32 = next(line for line in lines if "| cmhash | iapr | 32 bits |" in line)
    assert "| 0.5500 / 0.5600 | 0.3101 | " in h32  # random codes' mAP
    assert "CMHASH 0.5986 / 0.6035" in h32 and "DCMH 0.4732 / 0.5378" in h32
    h16 = next(line for line in lines if "| cmhash | iapr | 16 bits |" in line)
    assert "| 0.5000 / 0.5200 | — |" in h16  # not recorded: no number, not zero
    assert "CMHASH" not in h16 and "DCMH 0.4526 / 0.5185" in h16  # the release reported 32 bits only
    syn = next(line for line in lines if "synthetic-small" in line)
    assert syn.endswith(f"| — | — | — | {tmp_path / 'syn'}, seed 4, 01234567+, 2026-11-30 01:02 |"), syn


def test_report_labels_every_scenario_and_metric(tmp_path):
    """A zero-shot baseline's rows are zs / seen / pooled (not 'standard'); ZSCRGAN's says which P@50 it is."""
    _write(tmp_path / "cca_zs", method="cca", dataset="uci", flags={"zero_shot": True}, i2t_map_all=0.29,
           t2i_map_all=0.28, seen_i2t_map_all=0.67, seen_t2i_map_all=0.66, gzs_i2t_map_all=0.33, gzs_t2i_map_all=0.34)
    _write(tmp_path / "cca", method="cca", dataset="uci", scenario="standard", i2t_map_all=0.58, t2i_map_all=0.57,
           hash_16_i2t_map=0.31, hash_16_t2i_map=0.32, hash_8_i2t_map=0.25, hash_8_t2i_map=0.26)
    _write(tmp_path / "jfse_gzs", method="jfse", dataset="uci", scenario="gzs", i2t_map_all=0.36, t2i_map_all=0.34,
           gzs_i2t_map_all=0.36, gzs_t2i_map_all=0.34)
    _write(tmp_path / "zs", method="zscrgan", dataset="synthetic-medium", p50_best=0.5682, p50_last=0.5464,
           t2i_map_all=0.6864, p50_chance=0.2, chance_map_all=0.25, cycles=5, cycles_planned=5)
    _write(tmp_path / "zs_running", method="zscrgan", dataset="cub", p50_best=0.3, p50_last=0.3, t2i_map_all=0.4,
           cycles=3, cycles_planned=200)
    rows = [line.split(" | ")[:6] for line in report([str(tmp_path)]).splitlines() if line.startswith("| ")][1:]
    got = {(r[0].strip("| "), r[2], r[4]) for r in rows}
    assert ("cca", "zs", "0.2900 / 0.2800") in got
    assert ("cca", "zs (seen classes)", "0.6700 / 0.6600") in got
    assert ("cca", "gzs (pooled)", "0.3300 / 0.3400") in got
    assert ("cca", "standard", "0.5800 / 0.5700") in got
    cca = [r[2] for r in rows if r[0].strip("| ") == "cca" and "bits" in r[2]]
    assert cca == ["8 bits (sign of CCA)", "16 bits (sign of CCA)"]  # --hash_bits rows, in bit order
    assert ("cca", "16 bits (sign of CCA)", "0.3100 / 0.3200") in got
    assert sum(r[0].strip("| ") == "jfse" for r in rows) == 1  # the gzs run is not listed twice
    zs = next(r for r in rows if r[0].strip("| ") == "zscrgan" and r[1] == "synthetic-medium")
    assert zs[3] == "P@50, best cycle on test (release)" and zs[4].startswith("— / 0.5682 (P@50 last 0.5464")
    assert "after cycle" not in zs[4]  # complete
    running = next(r for r in rows if r[0].strip("| ") == "zscrgan" and r[1] == "cub")
    assert running[4].endswith(", after cycle 3 of 200)"), running  # results.json of a run still going
    assert zs[5] == "0.2000"  # the chance level of the number shown: P@50's, not mAP's


def test_settings_run_with_several_seeds_get_mean_and_spread(tmp_path):
    flags = {"lr": 0.001, "epochs": 5, "output_dir": "x", "histogram_every": 10}
    for seed, (i2t, t2i) in {1: (0.50, 0.40), 2: (0.60, 0.44), 3: (0.70, 0.48)}.items():
        _write(tmp_path / f"s{seed}", method="acmr_simple", dataset="uci", seed=seed, i2t_map_all=i2t,
               t2i_map_all=t2i, chance_map_all=0.1111, flags=dict(flags, seed=seed, output_dir=f"s{seed}",
                                                                  histogram_every=seed))  # logging: same setting
    _write(tmp_path / "other_lr", method="acmr_simple", dataset="uci", seed=4, i2t_map_all=0.9, t2i_map_all=0.9,
           flags=dict(flags, seed=4, lr=0.01))  # another setting: not averaged in
    _write(tmp_path / "again", method="acmr_simple", dataset="uci", seed=1, i2t_map_all=0.1, t2i_map_all=0.1,
           flags=dict(flags, seed=1, output_dir="again"), provenance={"ended": "2026-11-01T10:00:00"})
    results = json.loads((tmp_path / "s1" / "results.json").read_text())
    (tmp_path / "s1" / "results.json").write_text(json.dumps(dict(results, provenance={"ended": "2026-11-30T10:00:00"})))
    # seed 1 twice: its latest run counts, once
    _write(tmp_path / "zs1", method="zscrgan", dataset="cub", seed=1, p50_best=0.3, flags={"seed": 1})
    _write(tmp_path / "zs2", method="zscrgan", dataset="cub", seed=2, p50_best=0.5, flags={"seed": 2})
    text = report([str(tmp_path)])
    rows = [line for line in text.split("Over seeds")[1].splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| method | dataset | setting | metric | runs (seeds) | i2t | t2i | chance |"
    # by hand: mean 0.6, sample sd sqrt((0.01 + 0 + 0.01) / 2) = 0.1; t2i mean 0.44, sd 0.04
    assert "| acmr_simple | uci | standard | mAP@all | 3 (1, 2, 3) | 0.6000 ± 0.1000 | 0.4400 ± 0.0400 | 0.1111 |" in rows
    assert "| zscrgan | cub | zero-shot (unseen) | P@50, best cycle on test (release) | 2 (1, 2) | — | " \
           "0.4000 ± 0.1414 | — |" in rows
    assert len(rows) == 3
    assert "Over seeds" not in report([str(tmp_path / "s1"), str(tmp_path / "other_lr")])  # one seed each: no table
    # the main table says what sets runs of one setting apart: the flags that differ (not the seed, which the
    # run cell names, nor logging flags)
    main = [line.split(" | ")[-1] for line in text.split("Over seeds")[0].splitlines() if "| acmr_simple |" in line]
    assert sum(cell.endswith(", seed 1, 2026-11-01 10:00; lr=0.001 |") for cell in main) == 1, main
    assert sum(cell.endswith("; lr=0.01 |") for cell in main) == 1 and len(main) == 5, main
    zs_cells = [line for line in text.split("Over seeds")[0].splitlines() if "| zscrgan |" in line]
    assert len(zs_cells) == 2 and not any(";" in line.split(" | ")[-1] for line in zs_cells), zs_cells
    # the same rows as CSV, numbers unrounded
    import csv

    from tools.report import write_csv

    assert write_csv(str(tmp_path / "rows.csv"), [str(tmp_path)]) == 7
    with open(tmp_path / "rows.csv", newline="") as f:
        got = list(csv.DictReader(f))
    other = next(r for r in got if r["differs"] == "lr=0.01")
    assert other["method"] == "acmr_simple" and float(other["i2t"]) == 0.9 and other["seed"] == "4"
    assert other["results"].endswith(os.path.join("other_lr", "results.json"))
    assert {r["metric"] for r in got if r["method"] == "zscrgan"} == {"P@50, best cycle on test (release)"}


def test_runs_without_results_yet_are_named_not_dropped(tmp_path):
    import pytest

    from common.errors import DataError

    _write(tmp_path / "done", method="acmr_simple", dataset="uci", i2t_map_all=0.5, t2i_map_all=0.4)
    (tmp_path / "done" / "run.json").write_text("{}")
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "run.json").write_text("{}")
    (tmp_path / "jfse" / "zs").mkdir(parents=True)  # results live in a scenario's folder: reported, not pending
    (tmp_path / "jfse" / "run.json").write_text("{}")
    (tmp_path / "jfse" / "zs" / "results.json").write_text(json.dumps(dict(method="jfse", dataset="uci",
                                                                         scenario="zs", i2t_map_all=0.3, t2i_map_all=0.3)))
    (tmp_path / "jfse" / "zs" / "checkpoints").mkdir()
    (tmp_path / "jfse" / "standard" / "checkpoints").mkdir(parents=True)  # a scenario still training
    (tmp_path / "gzs_only" / "zs" / "checkpoints").mkdir(parents=True)  # --scenario gzs: the zs model, gzs results
    (tmp_path / "gzs_only" / "run.json").write_text("{}")
    _write(tmp_path / "gzs_only" / "gzs", method="jfse", dataset="uci", scenario="gzs", i2t_map_all=0.2,
           t2i_map_all=0.2)
    _write(tmp_path / "cmhash", method="cmhash", dataset="uci", i2t_map={"16": 0.5}, t2i_map={"16": 0.5})
    (tmp_path / "cmhash" / "bits_16" / "checkpoints").mkdir(parents=True)  # cmhash: results at the top
    (tmp_path / "cmhash" / "run.json").write_text("{}")
    text = report([str(tmp_path)])
    assert text.rstrip().endswith("Not listed, no results.json yet (training, or stopped before their first "
                                  f"result): {tmp_path / 'jfse' / 'standard'} (stopped), {tmp_path / 'running'} "
                                  "(stopped)"), text
    # runs being written (the driver's lock is held) say so, with the writer's PID
    locks = []
    for folder in ("running", "cmhash"):
        lock = open(tmp_path / folder / ".lock", "a+")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        locks.append(lock)
    try:
        text = report([str(tmp_path)])
        with pytest.raises(DataError, match=f"these runs have none yet .*: {tmp_path / 'running'} \\(training, "
                                            "PID 4242\\)$"):
            report([str(tmp_path / "running")])
    finally:
        for lock in locks:
            lock.close()
    assert text.rstrip().endswith(f"{tmp_path / 'running'} (training, PID 4242)"), text
    cmhash_row = next(line for line in text.splitlines() if line.startswith("| cmhash "))
    assert "still training (PID 4242)" in cmhash_row
    assert "still training" not in next(line for line in text.splitlines() if line.startswith("| acmr_simple "))


def test_every_data_file_the_packages_read_ships_with_a_pip_install():
    """`pip install .` (not -e) copies only what setup.py declares: a file beside the code that is
    not package data is missing there (the published numbers once lived in docs/ and vanished)."""
    import ast
    import os

    from tests.conftest import REPO

    tree = ast.parse(open(os.path.join(REPO, "setup.py"), encoding="utf-8").read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    declared = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    found = set()
    for package in ("common", "acmr_tf", "jfse_tf", "zscrgan_tf", "cmhash_tf", "tools"):
        for root, dirs, files in os.walk(os.path.join(REPO, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            found.update(os.path.relpath(os.path.join(root, f), REPO) for f in files if not f.endswith(".py"))
    listed = {os.path.join(package, name) for package, names in declared.items() for name in names}
    assert found == listed and "tools/published_results.json" in listed


def test_a_result_its_run_qualified_is_marked_with_its_warnings(tmp_path):
    """A result kept with warnings (e.g. a test split that repeats train pairs) is never a bare number."""
    import csv

    from tools.report import write_csv

    leak = "data: the test split repeats 40% of the train pairs (a copied file?)"
    _write(tmp_path / "leaky", method="acmr_simple", dataset="uci", i2t_map_all=0.9, t2i_map_all=0.9,
           warnings=[leak, "test classes [7] have no train pairs"])
    _write(tmp_path / "clean", method="acmr_simple", dataset="uci", i2t_map_all=0.6, t2i_map_all=0.6, warnings=[])
    lines = report([str(tmp_path)]).splitlines()
    leaky = next(line for line in lines if "0.9000 / 0.9000" in line)
    assert leaky.endswith("(warnings [w1]) |") and "warnings" not in next(line for line in lines if "0.6000" in line)
    assert f"[w1] {tmp_path / 'leaky'}: {leak} / test classes [7] have no train pairs" in lines
    write_csv(str(tmp_path / "rows.csv"), [str(tmp_path)])
    with open(tmp_path / "rows.csv", newline="") as f:
        got = {r["i2t"]: r["warnings"] for r in csv.DictReader(f)}
    assert got == {"0.9": f"{leak} | test classes [7] have no train pairs", "0.6": ""}
