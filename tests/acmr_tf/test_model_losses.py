"""ACMR networks and losses: spec acmr.md §10 tests 1-5 and 8 (hand-computed values)."""

import numpy as np
import pytest
import tensorflow as tf

from acmr_tf import losses
from acmr_tf.config import ACMRConfig
from acmr_tf.model import ACMRNetworks
from common.layers import grl_schedule


def count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


@pytest.mark.parametrize("arch,dims,counts", [
    ("wiki", (4096, 5000), (2_153_004, 208_180)),
    ("nuswide", (4096, 1000), (20_918_352, 1_313_340)),
])
def test_shapes_and_parameter_counts(arch, dims, counts):
    n = ACMRNetworks(*dims, num_classes=10, arch=arch)
    assert (count(n.image_projector), count(n.text_projector)) == counts
    assert count(n.label_classifier) == 410 and count(n.modality_classifier) == 1052
    rng = np.random.default_rng(0)
    e_v = n.image_projector(rng.random((3, dims[0])).astype(np.float32) * 10)
    e_t = n.text_projector(rng.random((3, dims[1])).astype(np.float32) * 10)
    assert e_v.shape == e_t.shape == (3, 40) and float(tf.reduce_max(tf.abs(e_v))) < 1
    assert n.label_classifier(e_v).shape == (3, 10) and n.modality_classifier(e_t, tf.constant(0.5)).shape == (3, 2)
    if arch == "wiki":
        k = n.image_projector.dense[0].kernel.numpy()
        assert np.abs(k).max() <= np.sqrt(6 / (4096 + 512)) and np.abs(k).max() > 0.035
        assert n.text_projector.dense[0].kernel.shape == (5000, 40)  # the release's bottleneck
        assert all(not np.any(layer.bias.numpy()) for layer in n.image_projector.dense)


def test_grl_schedule_values():
    for epochs, table in ((200, {1: 0.02499, 20: 0.46212, 50: 0.84828, 100: 0.98661, 199: 0.99990}),
                          (50, {1: 0.09967, 5: 0.46212, 10: 0.76159, 25: 0.98661, 49: 0.99989})):
        for e, value in table.items():
            assert float(grl_schedule(e, epochs)) == pytest.approx(value, abs=2e-5)
    assert float(grl_schedule(0, 200)) == 0.0


E_V = tf.constant([[0.1, 0.2], [0.3, -0.1], [0.0, 0.5]])
E_T = tf.constant([[0.0, 0.2], [0.1, 0.1], [0.2, 0.4]])
LABELS = tf.constant([1, 2, 1])


def test_worked_loss_values():
    assert float(losses.dissimilar_loss(E_V, E_T, LABELS)) == pytest.approx(5 * 0.1 / 9, abs=1e-6)
    assert float(losses.similar_loss(E_V, E_T)) == pytest.approx(0.374166, abs=1e-6)
    neg_t = tf.constant([[0.1, 0.1], [0.0, 0.2], [0.1, 0.1]])
    neg_v = tf.constant([[0.3, -0.1], [0.1, 0.2], [0.3, -0.1]])
    assert float(losses.triplet_loss(E_V, E_T, neg_t, neg_v)) == pytest.approx(0.495, abs=1e-6)
    w = tf.constant([[1.0, 0.0, -1.0], [0.5, -0.5, 0.0]])
    y = tf.one_hot([0, 1, 0], 3)
    assert float(losses.label_loss(E_V @ w, E_T @ w, y)) == pytest.approx(1.916411, abs=1e-6)
    zeros = tf.zeros((3, 2))
    assert float(losses.modality_loss(zeros, zeros)) == pytest.approx(2 * np.log(2), abs=1e-6)


def test_distance_map_g():
    g = [[0.46, 0.47, 0.80], [0.42, 0.38, 0.78], [0.60, 0.65, 0.90]]
    np.testing.assert_allclose(losses.distance_map(E_V, E_T).numpy(), g, atol=1e-6)
    # all labels different: only the three diagonal (same-pair) cells add the constant 0.1
    assert float(losses.dissimilar_loss(E_V, E_T, tf.constant([0, 1, 2]))) == pytest.approx(0.3 / 9, abs=1e-7)


def test_loss_composition_weights():
    simple = ACMRConfig().resolve()
    nus = ACMRConfig(arch="nuswide").resolve()
    trip = ACMRConfig(variant="triplet").resolve()
    assert simple.w_label + simple.w_sim + simple.w_dis == pytest.approx(101.02)
    assert nus.w_label + nus.w_sim + nus.w_dis == pytest.approx(51.2)
    assert trip.w_label + trip.w_sim == pytest.approx(101) and trip.w_dis is None
    assert (simple.epochs, trip.epochs, nus.epochs) == (200, 50, 50)
    with pytest.raises(ValueError, match="no triplet variant for nuswide"):
        ACMRConfig(variant="triplet", arch="nuswide").resolve()


def test_negative_miner_release_and_tie_fix():
    labels = tf.constant([1, 2, 1, 2])
    x_v = tf.constant([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    x_t = tf.constant([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0.5, 0.5]])
    n, m = losses.mine_negatives(x_v, x_t, labels)
    assert n.numpy().tolist() == [1, 0, 3, 2] and m.numpy().tolist() == [0, 0, 3, 2]
    _, m_fixed = losses.mine_negatives(x_v, x_t, labels, tie_fix=True)
    assert m_fixed.numpy()[0] == 1  # first different-class column, not the anchor's own pair
