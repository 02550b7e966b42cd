"""Tiny fixtures written in each release's exact file format (protocol-2 pickles like cPickle)."""

import os
import pickle

import numpy as np


def dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_wikipedia(folder, n_train=6, n_test=4, as_lists=True, rng=None):
    rng = rng or np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        img = rng.random((n, 4096)).astype(np.float32)
        txt = rng.integers(0, 3, (n, 5000)).astype(np.float64)
        labels = [int(x) for x in (np.arange(n) % 10) + 1]  # 1-based
        dump(os.path.join(folder, f"{split}_img_feats.pkl"), list(img) if as_lists else img)
        dump(os.path.join(folder, f"{split}_txt_vecs.pkl"), list(txt) if as_lists else txt)
        dump(os.path.join(folder, f"{split}_labels.pkl"), labels)
        dump(os.path.join(folder, f"{split}_img_files.pkl"), [f"img{i}" for i in range(n)])
        dump(os.path.join(folder, f"{split}_txt_files.pkl"), [f"txt{i}" for i in range(n)])
        data[split] = (img, txt, np.asarray(labels) - 1)
    return data


def write_nuswide(folder, n_train=5, n_test=3, base=1):
    rng = np.random.default_rng(1)
    os.makedirs(folder, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        ids = [f"{split}_{i:04d}" for i in range(n)]
        single = (np.arange(n) * 3) % 10
        img = {i: rng.random(4096).astype(np.float32) for i in ids}
        bow = {i: rng.integers(0, 2, 1000).astype(np.float32) for i in ids}
        onehot = {i: np.eye(10)[c] for i, c in zip(ids, single)}
        dump(os.path.join(folder, f"img_{split}_id_feats.pkl"), img)
        dump(os.path.join(folder, f"{split}_id_bow.pkl"), bow)
        dump(os.path.join(folder, f"{split}_id_label_map.pkl"), onehot)
        dump(os.path.join(folder, f"{split}_id_label_single.pkl"),
             {i: int(c) + base for i, c in zip(ids, single)})
        dump(os.path.join(folder, f"{split}_ids.pkl"), ids)
        data[split] = (ids, np.stack([img[i] for i in ids]), single)
    return data


def write_xmn(folder, with_attribute=True, with_class_emb=False, n_train=8, n_test=4, row_noise=0.0):
    """XMediaNet layout: seen classes 1..4 in train, unseen 5..6 in test (1-based). `row_noise` makes
    the train_attribute rows of one class differ (the release regresses each row to its own)."""
    rng = np.random.default_rng(2)
    os.makedirs(folder, exist_ok=True)
    class_emb = rng.random((200, 300)).astype(np.float32)
    tr_lab = [1 + (i % 4) for i in range(n_train)]
    te_lab = [5 + (i % 2) for i in range(n_test)]
    for split, labels in (("train", tr_lab), ("test", te_lab)):
        n = len(labels)
        dump(os.path.join(folder, f"{split}_img_files.pkl"), rng.random((n, 4096)).astype(np.float32))
        dump(os.path.join(folder, f"{split}_txt_files.pkl"), rng.random((n, 300)).astype(np.float32))
        dump(os.path.join(folder, f"{split}_labels.pkl"), labels)
    if with_attribute:
        rows = class_emb[np.asarray(tr_lab) - 1]
        dump(os.path.join(folder, "train_attribute.pkl"),
             (rows + row_noise * rng.normal(size=rows.shape)).astype(np.float32))
    if with_class_emb:
        np.save(os.path.join(folder, "class_emb.npy"), class_emb)
    return class_emb, np.asarray(tr_lab) - 1, np.asarray(te_lab) - 1


def write_zscrgan(folder, t_dim=6, i_dim=5):
    rng = np.random.default_rng(3)
    os.makedirs(folder, exist_ok=True)
    train, test = [4, 0, 2], [1, 3]
    txt = {c: [rng.random(t_dim) for _ in range(1 + c % 2)] for c in train + test}
    img = {c: np.stack([rng.random(i_dim) for _ in range(2 + c % 3)]) for c in train + test}
    dump(os.path.join(folder, "txt_embed_dict.pkl"), txt)
    dump(os.path.join(folder, "image_embed_dict.pkl"), img)
    dump(os.path.join(folder, "trainids.pkl"), train)
    dump(os.path.join(folder, "testids.pkl"), test)
    return txt, img, train, test


def iapr_line(path, bow, labels):
    return " ".join([path] + [str(int(v)) for v in bow] + [str(int(v)) for v in labels])


def write_iapr(folder, sizes=(("iapr_train", 4), ("iapr_test", 2), ("iapr_retrieval", 5)), img_dim=8):
    rng = np.random.default_rng(4)
    os.makedirs(folder, exist_ok=True)
    paths_all, data = [], {}
    for name, n in sizes:
        paths = [f"{i % 40:02d}/{name[5:]}{i}.jpg" for i in range(n)]
        bow = (rng.random((n, 2912)) < 0.01).astype(np.uint8)
        labels = (rng.random((n, 255)) < 0.02).astype(np.uint8)
        labels[:, 0] = 1
        with open(os.path.join(folder, name), "w") as f:
            f.write("\n".join(iapr_line(p, b, l) for p, b, l in zip(paths, bow, labels)) + "\n")
        paths_all += paths
        data[name] = (paths, bow, labels)
    img = rng.random((len(paths_all), img_dim)).astype(np.float32)
    order = rng.permutation(len(paths_all))  # features stored in another order than the lists
    np.savez(os.path.join(folder, "features.npz"), path=np.asarray(paths_all)[order], img=img[order])
    return data, dict(zip(paths_all, img))


def write_feature_folder(folder, fmt="npy", one_based=True, multilabel=False, with_val=False, rng=None):
    rng = rng or np.random.default_rng(5)
    os.makedirs(folder, exist_ok=True)
    data = {}
    for split, n in (("train", 12), ("test", 6)) + ((("val", 4),) if with_val else ()):
        img = rng.random((n, 7)).astype(np.float32)
        txt = rng.random((n, 3)).astype(np.float32)
        if multilabel:
            lab = (rng.random((n, 5)) < 0.4).astype(np.uint8)
        else:
            lab = (np.arange(n) % 4 + (1 if one_based else 0)).reshape(-1, 1)
        for part, arr in (("img", img), ("txt", txt), ("lab", lab)):
            write_array(os.path.join(folder, f"{split}_{part}"), arr, fmt)
        data[split] = (img, txt, lab)
    return data


def write_mirflickr(folder, n=2010, with_images=True):
    """The .mat layout with enough rows for the standard 2000-query draw (a TFDS builder uses it)."""
    import scipy.io

    rng = np.random.default_rng(8)
    os.makedirs(folder, exist_ok=True)
    labels = (rng.random((n, 4)) < 0.4).astype(np.uint8)
    labels[labels.sum(1) == 0, 0] = 1
    scipy.io.savemat(os.path.join(folder, "mirflickr25k-yall.mat"), {"YAll": (rng.random((n, 9)) < 0.3).astype(np.uint8)})
    scipy.io.savemat(os.path.join(folder, "mirflickr25k-lall.mat"), {"LAll": labels})
    if with_images:
        scipy.io.savemat(os.path.join(folder, "mirflickr25k-iall.mat"), {"IAll": rng.random((n, 5)).astype(np.float32)})


def write_array(stem_path, arr, fmt):
    name = os.path.basename(stem_path)
    if fmt == "npy":
        np.save(stem_path + ".npy", arr)
    elif fmt == "mat":
        import scipy.io
        scipy.io.savemat(stem_path + ".mat", {name: arr})
    elif fmt == "h5":
        import h5py
        with h5py.File(stem_path + ".h5", "w") as f:
            f.create_dataset(name, data=arr)


def check_export(run_dir, out_dir, models: dict, image_fn, text_fn, image_dim, text_dim, hash_codes=False):
    """Export `run_dir` with tools.export and compare every signature with the same encoders
    restored independently of encoders.json: `models` {checkpoint key: unbuilt model} are restored
    from the run's latest checkpoint, then `image_fn(models, x)` / `text_fn(models, t)` embed."""
    import tensorflow as tf

    from tools.export import export_run

    meta = export_run(str(run_dir), str(out_dir))
    rng = np.random.default_rng(0)
    x = rng.random((7, image_dim)).astype(np.float32)
    t = rng.random((5, text_dim)).astype(np.float32)
    fresh = np.asarray(image_fn(models, tf.constant(x)))  # builds the variables
    text_fn(models, tf.constant(t))
    from common.training import variable_index

    indexes = {f"{k}__variables": variable_index(m) for k, m in models.items()}
    status = tf.train.Checkpoint(**indexes).restore(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")))
    status.expect_partial().assert_existing_objects_matched()
    want_i, want_t = np.asarray(image_fn(models, tf.constant(x))), np.asarray(text_fn(models, tf.constant(t)))
    loaded = tf.saved_model.load(str(out_dir))
    got_i = loaded.signatures["embed_image"](image=tf.constant(x))["embedding"].numpy()
    got_t = loaded.signatures["embed_text"](text=tf.constant(t))["embedding"].numpy()
    np.testing.assert_allclose(got_i, want_i, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_t, want_t, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fresh, want_i)  # the checkpoint was restored, not the fresh initialisation
    if hash_codes:
        codes = loaded.signatures["hash_image"](image=tf.constant(x))["codes"].numpy()
        np.testing.assert_array_equal(codes, np.where(want_i >= 0, 1.0, -1.0))
    return meta


def snapshot(folder, with_dirs=False):
    """Every file under `folder` with its bytes (and, `with_dirs`, every folder): the byte-identity check."""
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [x for x in dirs if x != "tfds_cache"]  # the test's own TFDS cache
        if with_dirs:
            out.update({os.path.relpath(os.path.join(root, x), folder) + "/": None for x in dirs})
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return out


def _summary_values(logdir):
    """(event, value) of every summary value in the event files under `logdir`, read by TensorFlow's own reader."""
    import glob

    import tensorflow as tf

    for path in sorted(glob.glob(os.path.join(str(logdir), "*tfevents*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                yield event, v


def recorded_hparams(logdir):
    """The hyper-parameters of every HParams session-start summary under `logdir`."""
    from tensorboard.plugins.hparams import metadata

    from common.driver import session_hparams

    return [session_hparams(v)[1] for _, v in _summary_values(logdir) if v.tag == metadata.SESSION_START_INFO_TAG]


def summary_steps(logdir):
    """(tag, step) of every summary value in the event files under `logdir`."""
    return [(v.tag, event.step) for event, v in _summary_values(logdir)]
