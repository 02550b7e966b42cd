"""tools.export (SavedModel encoders) and tools.search (exact TF / faiss / Hamming top-k)."""

import fcntl
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from common import export, io, training
from common.errors import ConfigError, DataError
from tests import launch
from tests.conftest import REPO, noise, user_env
from tools.export import export_run
from tools.search import default_gallery_side, exact_search, faiss_search, write_results


def _brute(q, g, k, hamming=False):
    """Reference ranking: stable sort (ties keep gallery order)."""
    if hamming:
        score = (q.shape[1] - q @ g.T) / 2.0
        order = np.argsort(score, axis=1, kind="stable")
    else:
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        gn = g / np.linalg.norm(g, axis=1, keepdims=True)
        score = qn @ gn.T
        order = np.argsort(-score, axis=1, kind="stable")
    return order[:, :k], np.take_along_axis(score, order[:, :k], 1)


def test_exact_search_matches_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((9, 6)), rng.standard_normal((50, 6))
    ids, scores = exact_search(q, g, k=7, chunk=8)  # 7 gallery chunks, 2 query chunks
    want_ids, want_scores = _brute(q, g, 7)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert exact_search(q, g[:3], k=10)[0].shape == (9, 3)  # k capped at the gallery size
    with pytest.raises(DataError, match="widths differ"):
        exact_search(q, g[:, :5], k=3)


def test_hamming_search_ties_take_the_lower_index():
    rng = np.random.default_rng(1)
    q = np.where(rng.random((6, 8)) < 0.5, -1.0, 1.0)
    g = np.where(rng.random((40, 8)) < 0.5, -1.0, 1.0)
    g[10] = g[3] = q[0]  # exact duplicates: distance 0 at 3 then 10
    ids, dist = exact_search(q, g, k=12, chunk=7, hamming=True)
    want_ids, want_dist = _brute(q, g, 12, hamming=True)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(dist, want_dist)
    assert ids[0, :2].tolist() == [3, 10] and dist[0, 0] == 0


def test_faiss_flat_equals_exact_and_ivf_with_all_lists_too():
    pytest.importorskip("faiss", reason="faiss-cpu is the optional [search] extra")
    rng = np.random.default_rng(2)
    q, g = rng.standard_normal((20, 16)), rng.standard_normal((800, 16))
    ids, scores = exact_search(q, g, k=10)
    f_ids, f_scores = faiss_search(q, g, k=10)
    np.testing.assert_array_equal(f_ids, ids)
    np.testing.assert_allclose(f_scores, scores, atol=1e-5)
    v_ids, _ = faiss_search(q, g, k=10, kind="ivf", nlist=8, nprobe=8)  # every list probed: exact
    np.testing.assert_array_equal(v_ids, ids)


def _train_zscrgan(tmp_path):
    from common.synthetic import make_synthetic
    from zscrgan_tf import data as zdata
    from zscrgan_tf.config import ZSCRGANConfig
    from zscrgan_tf.task import fit

    training.set_seed(0)
    data = zdata.from_dataset(make_synthetic("small", seed=0))
    cfg = ZSCRGANConfig(batch_size=4, gf_dim=16, df_dim=16, embed_dim=8, z_dim=4, e_iters=2, m_iters=2, n_critic=1,
                        eval_mode="mean")
    fit(cfg, data, str(tmp_path / "run"), str(tmp_path / "res"), 2)
    return cfg, data


def test_export_equals_the_trained_model_and_loads_without_the_project(tmp_path):
    from zscrgan_tf.task import ZSCRGANTrainer

    cfg, data = _train_zscrgan(tmp_path)
    meta = export_run(str(tmp_path / "run"), str(tmp_path / "exported"))
    assert meta["method"] == "zscrgan" and meta["signatures"] == ["embed_image", "embed_text"]
    written = json.loads((tmp_path / "exported" / "export.json").read_text())
    assert os.path.isabs(written["checkpoint"]) and os.path.exists(written["checkpoint"] + ".index")
    assert written["run"] is None  # trained in-process: no run.json (an entry point's export names it)
    # the default is the model of the cycle results.json leads with (p50_best's: the first best), kept
    # under checkpoints/selected/ after later cycles; restored the documented way into a fresh trainer
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    best = max(history, key=lambda r: r["test"]["p50"])
    assert written["selected"] == {"epoch": best["epoch"], "name": f"cycle {best['cycle']}", "criterion": "test",
                                   "exported": True}
    assert written["checkpoint"] == str(tmp_path / "run" / "checkpoints" / "selected" / f"ckpt-{best['cycle']}")
    kept = {name.split("__variables")[0] for name, _ in tf.train.list_variables(written["checkpoint"])
            if "__variables" in name}
    assert kept == {"g_net", "CSEM_net"}  # the encoders' networks, not the critic
    trainer = ZSCRGANTrainer(cfg, data)
    assert export.restore_models(str(tmp_path / "run"), g_net=trainer.gen, CSEM_net=trainer.csem) == \
        written["checkpoint"]
    x, t = data.test.gallery[:6], data.test.queries[:5]
    loaded = tf.saved_model.load(str(tmp_path / "exported"))
    np.testing.assert_allclose(loaded.signatures["embed_image"](image=tf.constant(x))["embedding"],
                               trainer.csem(x), atol=1e-6)
    np.testing.assert_allclose(loaded.signatures["embed_text"](text=tf.constant(t))["embedding"],
                               trainer._queries(tf.constant(t)), atol=1e-6)  # eval_mode mean: deterministic
    assert default_gallery_side(loaded, "text") == "image" and default_gallery_side(loaded, "image") == "text"
    # the same two encoders as .keras files (composite text encoder included)
    import keras

    import zscrgan_tf.model  # noqa: F401  (registers the classes)

    for side, x_in in (("image", x), ("text", t)):
        model = keras.models.load_model(str(tmp_path / "exported" / f"{side}_encoder.keras"))
        np.testing.assert_allclose(model(x_in), loaded.signatures[f"embed_{side}"](**{side: tf.constant(x_in)})[
            "embedding"], atol=1e-6)
    # a fresh interpreter that never imports this project's packages
    code = ("import sys, numpy as np, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]); "
            "e = m.signatures['embed_image'](image=tf.zeros((2, %d)))['embedding']; "
            "assert e.shape == (2, %d), e.shape; "
            "own = [k for k in sys.modules if k.split('.')[0] in ('common', 'zscrgan_tf', 'tools', 'jfse_tf')]; "
            "assert not own, own; print('ok')") % (data.image_dim, cfg.embed_dim)
    res = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path / "exported")], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
    # a second export replaces the first only when asked and complete; a run folder without a spec is a
    # clear error; neither the run folder nor a folder of the user's is ever an export target
    with pytest.raises(ConfigError, match="--overwrite"):
        export_run(str(tmp_path / "run"), str(tmp_path / "exported"))
    export_run(str(tmp_path / "run"), str(tmp_path / "exported"), overwrite=True)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".export-")]
    assert oct(os.stat(tmp_path / "exported").st_mode & 0o777) == oct(0o777 & ~io.UMASK)
    run_files = sorted(os.listdir(tmp_path / "run"))
    with pytest.raises(ConfigError, match="is the run folder itself"):
        export_run(str(tmp_path / "run"), str(tmp_path / "run"), overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not a previous export"):
        export_run(str(tmp_path / "run"), str(tmp_path / "mine"), overwrite=True)
    assert sorted(os.listdir(tmp_path / "run")) == run_files
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
    with pytest.raises(DataError, match="encoders.json"):
        export_run(str(tmp_path / "res"), str(tmp_path / "x"))


def test_cmhash_export_hash_signatures_and_search_cli(tmp_path):
    from cmhash_tf.config import CMHashConfig
    from cmhash_tf.task import CMHashTrainer, fit
    from common.dataset import Split
    from common.datasets import load_dataset

    ds = load_dataset("synthetic-hashing")
    sub = lambda s, n: Split(s.image[:n], s.text[:n], s.labels.astype(np.float32)[:n])  # noqa: E731
    train, queries, database = sub(ds.train, 200), sub(ds.test, 30), sub(ds.database, 300)
    cfg = CMHashConfig(bits=16, epochs=2, eval_every=1)
    training.set_seed(0)
    summary = fit(cfg, train, queries, queries, database, str(tmp_path / "bits_16"))
    # the export's default is the model the summary reports (kept under checkpoints/selected/)
    chosen = training.selected_checkpoint(str(tmp_path / "bits_16" / "checkpoints"))
    assert (chosen["epoch"], chosen["criterion"]) == (summary["selected"]["epoch"], "val")
    env = user_env()  # both CLIs run as a user's shell runs them: quiet without the suite's log silencing
    with open(tmp_path / ".lock", "a+") as lock:  # as if the run were still training: the export says so
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        res = subprocess.run([sys.executable, "-m", "tools.export", "--run_dir", str(tmp_path / "bits_16"), "--out",
                              str(tmp_path / "exported")], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert res.returncode == 0 and not noise(res.stderr), res.stderr[-2000:]
    assert f"note: {tmp_path / 'bits_16'} is still training (PID 4242); this export holds its model so far" in res.stdout
    assert f"encoders from {chosen['path']} (the model results.json reports: history.json's epoch " in res.stdout
    other = 2 - chosen["epoch"]  # the checkpoint of the other epoch (ckpt-N: after epoch N - 1)
    picked = launch.run([sys.executable, "-m", "tools.export", "--run_dir", str(tmp_path / "bits_16"), "--out",
                         str(tmp_path / "exported_other"), "--checkpoint", str(other)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
    assert picked.returncode == 0, picked.stderr[-2000:]
    assert (f"note: results.json reports history.json's epoch {chosen['epoch']} (selected on val, exported by "
            f"default); this export holds ckpt-{other} instead") in picked.stdout, picked.stdout
    trainer = CMHashTrainer(cfg, ds.image_dim, ds.text_dim)  # the trained heads, the documented way
    export.restore_models(str(tmp_path / "bits_16"), image_head=trainer.nets.image_head,
                          text_head=trainer.nets.text_head)
    loaded = tf.saved_model.load(str(tmp_path / "exported"))
    want = np.where(trainer.nets.text_head(queries.text).numpy() >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(loaded.signatures["hash_text"](text=tf.constant(queries.text))["codes"], want)
    # search CLI: text queries -> image gallery by Hamming distance, equal to the brute-force ranking
    np.save(tmp_path / "q.npy", queries.text)
    np.save(tmp_path / "g.npy", database.image)
    (tmp_path / "gids.txt").write_text("\n".join(f"img{i}" for i in range(len(database))) + "\n")
    cmd = [sys.executable, "-m", "tools.search", "--model", str(tmp_path / "exported"), "--queries",
           str(tmp_path / "q.npy"), "--gallery", str(tmp_path / "g.npy"), "--top_k", "5", "--hamming",
           "--gallery_ids", str(tmp_path / "gids.txt")]
    res = subprocess.run(cmd + ["--out", str(tmp_path / "hits.json")], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert res.returncode == 0 and not noise(res.stderr), res.stderr[-2000:]
    found = json.loads((tmp_path / "hits.json").read_text())
    hits = found["results"]
    # the file names what produced it: the model, the run it came from, both inputs and the ranking
    assert found["model"]["folder"] == str(tmp_path / "exported") and found["model"]["method"] == "cmhash"
    assert found["model"]["run_dir"] == str(tmp_path / "bits_16")
    assert found["queries"]["file"] == str(tmp_path / "q.npy") and found["queries"]["side"] == "text"
    assert found["gallery"]["rows"] == len(database) and found["gallery"]["ids"] == str(tmp_path / "gids.txt")
    assert found["queries"]["digest"] != found["gallery"]["digest"]
    assert (found["ranking"], found["index"], found["top_k"]) == ("hamming", "exact", 5)
    codes_g = np.where(trainer.nets.image_head(database.image).numpy() >= 0, 1.0, -1.0)
    want_ids, want_dist = _brute(want, codes_g, 5, hamming=True)
    assert [h["id"] for h in hits[3]["hits"]] == [f"img{i}" for i in want_ids[3]]
    assert [h["score"] for h in hits[0]["hits"]] == want_dist[0].tolist()
    assert "note:" not in res.stdout
    # a hashing model is ranked by Hamming distance by default (as it is evaluated); --nohamming asks for cosine
    default = launch.run([a for a in cmd if a != "--hamming"] + ["--out", str(tmp_path / "default.json")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert default.returncode == 0 and "note:" not in default.stdout, default.stderr[-2000:]
    assert json.loads((tmp_path / "default.json").read_text())["results"] == hits
    cosine = launch.run([a if a != "--hamming" else "--nohamming" for a in cmd] + ["--out",
                        str(tmp_path / "cos.json")], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert cosine.returncode == 0 and "note: this search ranks the hashing model's real-valued outputs by cosine" \
        in cosine.stdout
    assert json.loads((tmp_path / "cos.json").read_text())["ranking"] == "cosine"
    # another run's checkpoint (8-bit heads) for these 16-bit encoders: one line, not the arrays TF lists
    fit(CMHashConfig(bits=8, epochs=1, eval_every=1), train, queries, queries, database, str(tmp_path / "bits_8"))
    with pytest.raises(DataError) as e:
        export_run(str(tmp_path / "bits_16"), str(tmp_path / "other"),
                   checkpoint=str(tmp_path / "bits_8" / "checkpoints" / "ckpt-1"))
    assert "does not hold models" in str(e.value) and "\n" not in str(e.value) and "array(" not in str(e.value)
    bad = np.zeros((3, 7), np.float32)
    np.save(tmp_path / "bad.npy", bad)
    res = launch.run(cmd[:6] + [str(tmp_path / "bad.npy")] + cmd[7:] + ["--out", str(tmp_path / "x.json")],
                     env=env, capture_output=True, text=True, timeout=300,
                     cwd=REPO)
    assert res.returncode == 2 and "7-d" in res.stderr and not os.path.exists(tmp_path / "x.json")
    # PR curves of a hashing model rank its codes by Hamming distance, as its mAP does
    from common import metrics
    from tools.report import pr_curves_and_projector

    feats = tmp_path / "feats"
    feats.mkdir()
    for name, split in (("train", train), ("test", queries)):
        for part, arr in (("img", split.image), ("txt", split.text), ("lab", split.labels.astype(np.uint8))):
            np.save(feats / f"{name}_{part}.npy", arr)
    pr_curves_and_projector(str(tmp_path / "exported"), str(feats), str(tmp_path / "plots"), use_matplotlib=False)
    curves = json.loads((tmp_path / "plots" / "pr_curves.json").read_text())
    codes = {side: np.where(getattr(trainer.nets, f"{side}_head")(getattr(queries, side)).numpy() >= 0, 1.0, -1.0)
             for side in ("image", "text")}
    want_curve = metrics.precision_recall_curve(codes["image"], codes["text"], queries.labels, queries.labels,
                                                distance="hamming")
    assert curves["distance"] == "hamming"
    np.testing.assert_allclose(curves["i2t"]["precision"], want_curve["precision"], rtol=1e-6)
    # image features given as text queries: the message names the flag that fixes it
    from tools.search import encode

    assert ds.image_dim != ds.text_dim
    with pytest.raises(DataError, match=r"text features are \d+-d .* image encoder's width: pass --query_side image"):
        encode(loaded, "text", database.image, True, side_flag="query_side")


def test_results_file_formats(tmp_path):
    ids, scores = np.array([[2, 0]]), np.array([[0.9, 0.5]], np.float32)
    write_results(str(tmp_path / "r.csv"), ids, scores, ["q0"], ["a", "b", "c"])
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines == ["query,rank,id,score", "q0,1,c,0.9", "q0,2,a,0.5"]
    write_results(str(tmp_path / "r.json"), ids, scores, ["q0"], ["a", "b", "c"])
    found = json.loads((tmp_path / "r.json").read_text())
    assert found["results"][0]["hits"][0] == {"id": "c", "score": pytest.approx(0.9)}


@pytest.mark.parametrize("use_matplotlib", [False, True])
def test_report_plots_and_projector(tmp_path, use_matplotlib):
    if use_matplotlib:
        pytest.importorskip("matplotlib", reason="PNG curves need the optional [plots] extra")
    from common.synthetic import make_synthetic
    from tools.report import pr_curves_and_projector

    _train_zscrgan(tmp_path)
    export_run(str(tmp_path / "run"), str(tmp_path / "exported"))
    ds = make_synthetic("small", seed=0)
    feats = tmp_path / "feats"
    feats.mkdir()
    for split in ("train", "test"):
        s = getattr(ds, split)
        np.save(feats / f"{split}_img.npy", s.image)
        np.save(feats / f"{split}_txt.npy", s.text)
        np.save(feats / f"{split}_lab.npy", s.labels)
    out = tmp_path / "plots"
    written = pr_curves_and_projector(str(tmp_path / "exported"), str(feats), str(out), use_matplotlib)
    curves = json.loads((out / "pr_curves.json").read_text())
    assert curves["distance"] == "cosine"  # real-valued embeddings
    assert curves["i2t"]["recall"][-1] == pytest.approx(1.0)  # the last cutoff is the whole gallery
    assert len(curves["t2i"]["precision"]) == len(curves["t2i"]["cutoff"])
    if use_matplotlib:
        assert (out / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert "tb" in written and os.listdir(out / "tb")
    meta = (out / "projector" / "metadata.tsv").read_text().splitlines()
    assert meta[0] == "modality\tlabel" and len(meta) == 1 + 2 * len(ds.test)
    assert meta[1].startswith("image\t") and meta[-1].startswith("text\t")
    assert "embedding" in (out / "projector" / "projector_config.pbtxt").read_text()


def test_a_checkpoint_is_found_by_its_path_file_name_or_number(tmp_path):
    from common.errors import DataError
    from common.export import resolve_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for n in (9, 10):
        (ckpts / f"ckpt-{n}.index").write_bytes(b"")
        (ckpts / f"ckpt-{n}.data-00000-of-00001").write_bytes(b"")
    want = str(ckpts / "ckpt-9")
    for given in (want, want + ".index", want + ".data-00000-of-00001", "ckpt-9", "ckpt-9.index", "9"):
        assert resolve_checkpoint(str(ckpts), given) == want, given
    with pytest.raises(DataError, match=r"^--checkpoint ckpt-7: no such checkpoint; the run keeps ckpt-9, ckpt-10 in "):
        resolve_checkpoint(str(ckpts), "ckpt-7")
    with pytest.raises(DataError, match="holds no checkpoint"):
        resolve_checkpoint(str(tmp_path / "none"), "3")
    with pytest.raises(DataError, match=r"^--checkpoint selected: this run keeps no selected model"):
        resolve_checkpoint(str(ckpts), "selected")
    (ckpts / "checkpoint").write_text('model_checkpoint_path: "ckpt-10"\n')
    assert resolve_checkpoint(str(ckpts), "latest") == str(ckpts / "ckpt-10")
