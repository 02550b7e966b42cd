"""Every network is a registered, serialisable Keras object (issue 18): saved to `.keras`, reloaded
with `keras.models.load_model` in a fresh process that imports only the network modules (no training
code), it gives identical outputs; networks are built with an unknown batch dimension."""

import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from tests.conftest import REPO


def networks():
    from acmr_tf.model import Projector
    from cmhash_tf.model import HashHead
    from common.layers import ModalityClassifier
    from jfse_tf.model import Critic, Generator, Regressor
    from zscrgan_tf import model as z

    gen = z.GeneratorNet(text_dim=6, image_dim=5, embed_dim=3, z_dim=2, gf_dim=4, name="g_net")
    csem = z.CSEM(image_dim=5, embed_dim=3, name="CSEM_net")
    return {
        "acmr_projector": (Projector([8, 4], input_dim=6, name="image_projector"), (6,)),
        "modality_classifier": (ModalityClassifier((4, 2), input_dim=8, name="modality_classifier"), (8,)),
        "jfse_generator": (Generator(5, 8, emb_dim=3, noise_dim=2, name="image_generator"), (3,), (2,)),
        "jfse_critic": (Critic(8, feature_dim=5, emb_dim=3, name="image_critic"), (5,), (3,)),
        "jfse_regressor": (Regressor(3, 8, input_dim=5, name="image_regressor"), (5,)),
        "zscrgan_generator": (gen, (6,), (3,), (2,)),
        "zscrgan_critic": (z.Critic(image_dim=5, text_dim=6, df_dim=4, name="d_net"), (5,), (6,)),
        "zscrgan_csem": (csem, (5,)),
        "zscrgan_text_encoder": (z.MeanTextEncoder(gen, csem, name="text_encoder"), (6,)),
        "cmhash_head": (HashHead(8, hidden=6, input_dim=5, name="image_head"), (5,)),
    }


LOADER = """
import sys, numpy as np, keras
import acmr_tf.model, cmhash_tf.model, common.layers, jfse_tf.model, zscrgan_tf.model  # registers the classes
folder, names = sys.argv[1], sys.argv[2:]
for name in names:
    m = keras.models.load_model(f"{folder}/{name}.keras")
    data = np.load(f"{folder}/{name}.npz")
    inputs = [data[f"x{i}"] for i in range(len(data.files) - 1)]
    out = m(*inputs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    np.testing.assert_array_equal(np.asarray(out), data["y"]), name
ours = ("acmr_tf", "jfse_tf", "zscrgan_tf", "cmhash_tf", "common")
training = [k for k in sys.modules if k.split(".")[0] in ours and k.split(".")[-1] in ("task", "train", "driver",
                                                                                    "training", "datasets")]
assert not training, training
print("ok", len(names))
"""


def test_every_network_round_trips_through_a_keras_file_in_a_fresh_process(tmp_path):
    rng = np.random.default_rng(0)
    names = []
    for name, (model, *shapes) in networks().items():
        inputs = [rng.random((3, *s)).astype(np.float32) for s in shapes]
        out = model(*inputs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        model.save(tmp_path / f"{name}.keras")
        np.savez(tmp_path / f"{name}.npz", y=np.asarray(out), **{f"x{i}": x for i, x in enumerate(inputs)})
        assert isinstance(model.get_config(), dict)
        names.append(name)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    res = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path), *names], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0 and f"ok {len(names)}" in res.stdout, res.stderr[-2000:]


def test_networks_are_built_with_an_unknown_batch_dimension(capsys):
    for name, (model, *_) in networks().items():
        assert model.built, name
        model.summary()
        text = capsys.readouterr().out
        assert "(None, " in text and "(1, " not in text, (name, text)


def test_checkpoint_names_restore_a_run_model(tmp_path):
    """The supported way to load a run's weights by the names docs/tools.md documents."""
    from acmr_tf.model import Projector
    from common import training
    from common.export import restore_models

    trained = Projector([8, 4], input_dim=6, name="image_projector")
    trained.dense[0].kernel.assign(tf.ones((6, 8)))
    state = training.RunState(str(tmp_path), image_projector=trained)
    state.record({"epoch": 0})
    fresh = Projector([8, 4], input_dim=6, name="image_projector")
    x = np.ones((2, 6), np.float32)
    assert not np.allclose(fresh(x), trained(x))
    restore_models(str(tmp_path), image_projector=fresh)
    np.testing.assert_array_equal(fresh(x), trained(x))
    assert isinstance(fresh, keras.Model)


def test_the_documented_acmr_example_restores_every_network(tmp_path):
    """docs/tools.md: every ACMR network, the bare Dense label classifier included, by its name."""
    from acmr_tf.config import ACMRConfig
    from acmr_tf.model import ACMRNetworks
    from acmr_tf.task import ACMRTask, ACMRTrainer
    from common import training
    from common.export import restore_models
    from common.synthetic import make_synthetic

    ds = make_synthetic("small")
    training.set_seed(0)
    trainer = ACMRTrainer(ACMRConfig(preset="paper", epochs=1), ds.image_dim, ds.text_dim, ds.num_classes)
    task = ACMRTask(trainer, ds.train, ds.test)
    state = training.RunState(str(tmp_path), **task.checkpoint_objects())
    task.train_unit(0)
    state.record({"epoch": 0})
    nets = ACMRNetworks(ds.image_dim, ds.text_dim, ds.num_classes)
    names = ("image_projector", "text_projector", "label_classifier", "modality_classifier")
    restore_models(str(tmp_path), **{n: getattr(nets, n) for n in names})
    for n in names:
        for a, b in zip(getattr(nets, n).weights, getattr(trainer.nets, n).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=n)
