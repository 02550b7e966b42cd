"""The CCA baseline: math on a known case, the CLI run contract, and the known UCI reference."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import launch
from tests.conftest import REPO, noise, user_env
from tools.baseline import CCA


def run_cli(*args, cwd=REPO, fresh=False):
    """`fresh`: a new interpreter, so that TensorFlow's import is part of what must stay quiet."""
    res = (subprocess.run if fresh else launch.run)([sys.executable, "-m", "tools.baseline", *args], cwd=cwd,
                                                    env=user_env(), capture_output=True, text=True, timeout=300)
    assert not noise(res.stderr), res.stderr[-2000:]  # quiet by default, also when it refuses
    return res


@pytest.mark.parametrize("rows,reg", [(9, 1e-3), (9, 0.0), (40, 1e-3)])
def test_whitening_with_fewer_rows_than_columns_is_the_inverse_square_root(rows, reg):
    """The thin-SVD whitener (n < d, e.g. 4096-d CNN features) against the eigendecomposition of
    the ridged covariance it replaces, clipped the same way."""
    from tools.baseline import _whitener

    xc = np.random.default_rng(1).normal(size=(rows, 30)) * np.linspace(0.1, 3, 30)
    xc -= xc.mean(0)
    c = xc.T @ xc / (rows - 1)
    c += reg * max(np.trace(c) / 30, 1e-12) * np.eye(30)
    w, v = np.linalg.eigh(c)
    np.testing.assert_allclose(_whitener(xc, reg), (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T,
                               rtol=1e-7, atol=1e-7 * np.sqrt(1e12) if reg == 0 else 1e-9)


def test_cca_recovers_a_shared_signal():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 2))
    x = np.hstack([z, rng.normal(size=(500, 3))]) @ rng.normal(size=(5, 5))
    y = np.hstack([z, rng.normal(size=(500, 4))]) @ rng.normal(size=(6, 6))
    model = CCA(dim=3, reg=0.0, power=0.0).fit(x, y)
    np.testing.assert_allclose(model.correlations[:2], 1.0, atol=1e-6)
    assert model.correlations[2] < 0.3
    a, b = model.transform(x, y)
    np.testing.assert_allclose(np.corrcoef(a[:, 0], b[:, 0])[0, 1], 1.0, atol=1e-6)


def test_cli_synthetic_writes_contract_results(tmp_path):
    out = tmp_path / "run"
    res = run_cli("--dataset", "synthetic", "--output_dir", str(out), fresh=True)
    assert res.returncode == 0, res.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "cca" and results["dataset"] == "synthetic-small" and results["seed"] == 0
    for key in ("i2t_map_all", "t2i_map_all"):
        assert results[key] > results["chance_map_all"] + 0.1
    recorded = json.loads((out / "flags.json").read_text())
    assert recorded["dataset"] == "synthetic" and recorded["cca_reg"] == 1e-3
    assert "hbm_oom_exit" not in recorded  # TensorFlow's own flags are not ours
    assert results["cca_directions"] == 64 and results["warnings"] == []  # min(128, 64) on 128/64-d data


def test_a_cca_dim_beyond_the_data_is_recorded_as_used_and_warned(tmp_path):
    res = run_cli("--dataset", "synthetic", "--cca_dim", "500", "--output_dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["cca_directions"] == 64
    assert results["warnings"] == ["--cca_dim 500: this data gives 64 canonical directions; all of them were used"]
    assert "warning: --cca_dim 500" in res.stdout


def test_cli_zero_shot_reports_seen_unseen_and_pooled(tmp_path):
    res = run_cli("--dataset", "synthetic", "--zero_shot", "--output_dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "results.json").read_text())
    assert {"seen_i2t_map_all", "gzs_t2i_map_all", "i2t_map_all"} <= set(r)
    # CCA learns from pairing alone, so unseen classes transfer too: above chance on them
    assert r["i2t_map_all"] > r["chance_map_all"] + 0.05 and r["t2i_map_all"] > r["chance_map_all"] + 0.05
    from common import metrics
    from common.datasets import load_dataset

    zs = load_dataset("synthetic").zero_shot()  # each number sits next to the chance level of what it ranked
    for prefix, split in (("", zs.test_unseen), ("seen_", zs.test_seen), ("gzs_", zs.test_all)):
        assert r[f"{prefix}chance_map_all"] == metrics.expected_random_map(split.labels, split.labels)
    assert r["gzs_chance_map_all"] < r["chance_map_all"]  # the pooled gallery has twice the classes


def test_zero_shot_on_a_test_split_of_unseen_classes_only_reports_the_unseen_numbers(tmp_path):
    """JFSE's xmn test split holds only unseen classes: no seen or pooled set (a traceback once)."""
    from tests.common import fixtures

    fixtures.write_xmn(tmp_path / "xmn")
    res = run_cli("--dataset", "xmn", "--data_dir", str(tmp_path / "xmn"), "--zero_shot", "--output_dir",
                  str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads((tmp_path / "r" / "results.json").read_text())
    assert {"i2t_map_all", "t2i_map_all", "chance_map_all"} <= set(r)
    assert not [k for k in r if k.startswith(("seen_", "gzs_"))]
    fixtures.write_feature_folder(tmp_path / "one", one_based=False)  # classes 0..3, one of them unseen:
    (tmp_path / "one" / "unseen_classes.txt").write_text("3\n")    # every unseen item relevant to all, refused
    res = run_cli("--dataset", "features", "--data_dir", str(tmp_path / "one"), "--zero_shot", "--output_dir",
                  str(tmp_path / "r1"))
    assert res.returncode == 2 and "the unseen test set holds 1 class" in res.stderr, res.stderr[-2000:]


def test_chance_level_of_a_database_protocol_is_against_the_database(tmp_path):
    from common import metrics
    from common.datasets import load_dataset

    res = run_cli("--dataset", "synthetic-hashing", "--output_dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "results.json").read_text())
    ds = load_dataset("synthetic-hashing")
    assert r["chance_map_all"] == metrics.expected_random_map(ds.test.labels, ds.database.labels)
    assert r["chance_map_all"] != metrics.expected_random_map(ds.test.labels, ds.test.labels)


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    res = run_cli("--dataset", "features", "--data_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path))
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: data folder")
    assert "Traceback" not in res.stderr and not (tmp_path / "results.json").exists()
    res = run_cli("--no_such_flag")
    assert res.returncode != 0 and "no_such_flag" in res.stderr


def test_uci_reference_values(shared_data, tmp_path):
    """Known reference: CCA on (fou76, kar64) of uci_all.mat gives about 0.58 / 0.57 mAP@all."""
    from tools import convert_uci

    folder = tmp_path / "uci"
    convert_uci.write_folder(convert_uci.read_uci(os.path.join(shared_data, "uci_mfeat", "uci_all.mat")), str(folder))
    res = run_cli("--dataset", "features", "--data_dir", str(folder), "--output_dir", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert r["i2t_map_all"] == pytest.approx(0.58, abs=0.01)
    assert r["t2i_map_all"] == pytest.approx(0.57, abs=0.01)


def test_cca_sign_hashing_baseline():
    from common import metrics
    from common.datasets import load_dataset
    from tools.baseline import cca_sign_maps
    from common.errors import ConfigError

    ds = load_dataset("synthetic-hashing")
    out = cca_sign_maps(ds, [8, 16], reg=1e-3)
    rng = np.random.default_rng(0)
    q = np.where(rng.random((len(ds.test), 16)) < 0.5, -1.0, 1.0)
    d = np.where(rng.random((len(ds.database), 16)) < 0.5, -1.0, 1.0)
    chance = metrics.hashing_map(q, d, ds.test.labels, ds.database.labels)[0]
    assert out["hash_16_i2t_map"] > chance + 0.2 and out["hash_16_t2i_map"] > chance + 0.2, (out, chance)
    # the codes are sign(centred CCA projection): recompute 8-bit i2t by hand
    model = CCA(8, 1e-3, 1.0).fit(ds.train.image, ds.train.text)
    qi = np.where(model.transform(x=ds.test.image) >= 0, 1.0, -1.0)
    dt = np.where(model.transform(y=ds.database.text) >= 0, 1.0, -1.0)
    assert out["hash_8_i2t_map"] == metrics.hashing_map(qi, dt, ds.test.labels, ds.database.labels)[0]
    with pytest.raises(ConfigError, match="at most"):
        cca_sign_maps(ds, [500], reg=1e-3)


def test_a_val_split_copied_from_test_is_warned_and_recorded(tmp_path):
    from tests.common import fixtures

    fixtures.write_feature_folder(str(tmp_path / "f"), one_based=False, with_val=True)
    for part in ("img", "txt", "lab"):  # the user's mistake: test files copied in as val
        os.replace(tmp_path / "f" / f"test_{part}.npy", tmp_path / "f" / f"val_{part}.npy")
        np.save(tmp_path / "f" / f"test_{part}.npy", np.load(tmp_path / "f" / f"val_{part}.npy"))
    assert_warned(tmp_path / "f", tmp_path / "run", "6 of 6 test pairs also appear in the val split (identical "
                  "feature rows): what is selected on the validation split is selected on the test split")


def assert_warned(data, out, warning, *args):
    """A run on `data` succeeds, prints `warning` (prefixed by the folder) and keeps it, alone, in results.json."""
    res = run_cli("--dataset", "features", "--data_dir", str(data), "--output_dir", str(out), *args)
    assert res.returncode == 0, res.stderr
    want = [f"{data}: {warning}"] if warning else []
    assert [line.removeprefix("warning: ") for line in res.stdout.splitlines() if line.startswith("warning:")] == want
    assert json.loads((out / "results.json").read_text())["warnings"] == want


def test_test_classes_without_train_pairs_are_warned_for_a_standard_result_only(tmp_path):
    from tests.common import fixtures

    fixtures.write_feature_folder(str(tmp_path / "f"), one_based=False)
    train_lab = np.load(tmp_path / "f" / "train_lab.npy")
    np.save(tmp_path / "f" / "train_lab.npy", train_lab % 2)  # classes 2 and 3: test rows only
    (tmp_path / "f" / "unseen_classes.txt").write_text("2\n3\n")
    assert_warned(tmp_path / "f", tmp_path / "std", "test classes [2, 3] have no train pairs (2 of 6 test items): "
                  "their queries are zero-shot inside a standard result")
    assert_warned(tmp_path / "f", tmp_path / "zs", None, "--zero_shot")
