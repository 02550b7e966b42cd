"""`python -m jfse_tf.demo`: run contract, CFSA preset, resume, clear errors (spec §10 test 17)."""

import json
import os
import sys

import numpy as np

from tests import launch
from tests.common import fixtures
from tests.conftest import REPO

TINY = ["--hidden", "64", "--noise_dim", "8", "--eval_every", "1", "--n_critic", "1"]
NOJIT = ["--nojit_compile"]  # compiling the step with XLA (the default) costs ~10 s a run at this size


def demo(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return launch.run([sys.executable, "-m", "jfse_tf.demo", *args], cwd=REPO, env=env,
                      capture_output=True, text=True, timeout=300)


def lines_after(stdout, header):
    """The rows of the final table: the lines after `header` up to the 'results under' line."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 1
    return [line for line in lines[start:] if not line.startswith("results under")]


def test_all_scenarios_write_contract_results(tmp_path):
    res = demo("--epochs", "2", "--output_dir", str(tmp_path), *TINY, *NOJIT)  # XLA: test_train.py
    assert res.returncode == 0, res.stderr[-2000:]
    std = json.loads((tmp_path / "standard" / "results.json").read_text())
    zs = json.loads((tmp_path / "zs" / "results.json").read_text())
    gzs = json.loads((tmp_path / "gzs" / "results.json").read_text())
    assert {"i2t_map_all", "t2i_map_all", "release_max", "final_epoch", "val_selected"} <= set(std)
    assert {"i2t_map_all", "seen_i2t_map_all", "seen_t2i_map_all"} <= set(zs)
    assert {"gzs_i2t_map_all", "gzs_t2i_map_all"} <= set(gzs)
    assert set(zs["final_epoch"]) == {"raw", "softmax", "minmax", "minmax_softmax"}
    assert "TEST set" in zs["note"] and zs["flags"]["method"] == "jfse"
    assert "zs unseen" in res.stdout and os.listdir(tmp_path / "zs" / "tb")
    # each result sits next to the chance level of the test set it ranks (exact expected random mAP)
    from common.metrics import expected_random_map
    from common.synthetic import make_synthetic

    ds = make_synthetic("small")
    view = ds.zero_shot()
    chance = {name: expected_random_map(s.labels, s.labels)
              for name, s in (("standard", ds.test), ("unseen", view.test_unseen), ("seen", view.test_seen),
                              ("pooled", view.test_all))}
    assert (std["chance_map_all"], zs["chance_map_all"], zs["seen_chance_map_all"], gzs["gzs_chance_map_all"]) == \
        (chance["standard"], chance["unseen"], chance["seen"], chance["pooled"])
    table = {line[:16].strip(): line.split()[-1] for line in lines_after(res.stdout, "scenario ")}  # name, chance
    assert table == {"standard": f"{chance['standard']:.4f}", "zs unseen": f"{chance['unseen']:.4f}",
                     "zs seen": f"{chance['seen']:.4f}", "gzs pooled": f"{chance['pooled']:.4f}"}
    # §10.16: every evaluation prints the four variants, then the running MAX and MAX2 triples
    lines = res.stdout.splitlines()
    maxes = [i for i, line in enumerate(lines) if line.strip().startswith("MAX:")]
    assert maxes and all(lines[i + 1].strip().startswith("MAX2:") for i in maxes)
    assert all(v in res.stdout for v in (" raw ", " softmax ", " minmax ", " minmax_softmax "))
    # tools.export: the regressors of a scenario, equal to the checkpointed ones
    from jfse_tf.model import Regressor
    from tests.common import fixtures

    models = {k: Regressor(32, 64, name=k) for k in ("image_regressor", "text_regressor")}  # synthetic small, --hidden 64
    meta = fixtures.check_export(tmp_path / "zs", tmp_path / "exported", models,
                                 lambda m, x: m["image_regressor"](x), lambda m, t: m["text_regressor"](t), 128, 64)
    assert meta["method"] == "jfse" and "min-max" in meta["notes"]


def test_cfsa_runs_zero_shot_only(tmp_path):
    res = demo("--method", "cfsa", "--epochs", "1", "--output_dir", str(tmp_path), *TINY, *NOJIT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == [".lock", "flags.txt", "run.json", "zs"]
    cfg = json.loads((tmp_path / "zs" / "results.json").read_text())["config"]
    assert cfg["align"] == "cmpm" and not cfg["train_modality_classifier"] and cfg["weights"]["w_adv_real"] == 0


def test_missing_data_and_missing_class_embeddings_are_clear(tmp_path):
    res = demo("--dataset", "xmn", "--data_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o"))
    assert res.returncode == 2 and "error: data folder" in res.stderr.splitlines()[-1]
    fixtures.write_feature_folder(str(tmp_path / "f"))
    res = demo("--dataset", "features", "--data_dir", str(tmp_path / "f"), "--output_dir", str(tmp_path / "o"))
    assert res.returncode == 2 and "needs class embeddings (class_emb.npy" in res.stderr.splitlines()[-1]


def test_feature_folder_with_class_embeddings(tmp_path):
    folder = tmp_path / "f"
    fixtures.write_feature_folder(str(folder), one_based=False)
    np.save(folder / "class_emb.npy", np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32))
    (folder / "unseen_classes.txt").write_text("2\n3\n")
    res = demo("--dataset", "features", "--data_dir", str(folder), "--epochs", "1", "--batch_size", "4", "--scenario", "zs",
               "--output_dir", str(tmp_path / "o"), *TINY, *NOJIT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "o" / "zs" / "results.json").read_text())["dataset"] == "f"


def test_xmn_release_pickles_end_to_end(tmp_path):
    """`--dataset xmn` on the release's layout: seen classes train, the test set is unseen-only."""
    fixtures.write_xmn(str(tmp_path / "xmn"), n_train=16, n_test=6)
    res = demo("--dataset", "xmn", "--data_dir", str(tmp_path / "xmn"), "--scenario", "zs", "--epochs", "1",
               "--batch_size", "8", "--output_dir", str(tmp_path / "o"), *TINY, *NOJIT)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads((tmp_path / "o" / "zs" / "results.json").read_text())
    assert r["dataset"] == "xmn" and 0 < r["i2t_map_all"] <= 1 and 0 < r["t2i_map_all"] <= 1
    assert "16 train / 6 test pairs, dims 4096/300" in res.stdout
    # the release's attribute rows cover seen classes only: synthesising unseen ones needs class_emb.npy
    res = demo("--dataset", "xmn", "--data_dir", str(tmp_path / "xmn"), "--scenario", "zs", "--epochs", "1",
               "--synthesize_unseen", "--output_dir", str(tmp_path / "o2"), *TINY, *NOJIT)
    assert res.returncode == 2 and "class_emb.npy" in res.stderr.splitlines()[-1], res.stderr[-800:]
    assert not (tmp_path / "o2" / "zs" / "results.json").exists()
    res = demo("--dataset", "xmn", "--data_dir", str(tmp_path / "xmn"), "--scenario", "standard",
               "--output_dir", str(tmp_path / "o3"))
    assert res.returncode == 2 and "absent from training" in res.stderr.splitlines()[-1]


# resume (with --synthesize_unseen) is covered by tests/test_kill_resume.py, which kills the process
