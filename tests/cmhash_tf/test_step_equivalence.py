"""One cmhash step against an independent NumPy computation (issue 19; spec cmhash.md §3, §4).

The release's pivot mining is rebuilt here with its own loops (every (a, p, n) with a < p in P_r
and n in N_r, for every pivot r, duplicates kept), the four triplet terms on squared distances of
tanh-relaxed codes, and PyTorch's Adam (epsilon on the bias-corrected sqrt(v)) with its coupled weight decay (wd * theta
added to the gradient). Losses and weights after two compiled steps equal float64 NumPy to float32 precision;
a batch without any triplet leaves every weight and the optimiser's step count alone.
"""

import numpy as np
import pytest

from cmhash_tf.config import CMHashConfig
from cmhash_tf.task import CMHashTrainer
from common import training
from tests.common import npgrad as ng

B, D_IMG, D_TXT, BITS = 6, 5, 4, 8


def batch():
    rng = np.random.default_rng(4)
    labels = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]],
                      np.float32)
    return rng.normal(size=(B, D_IMG)).astype(np.float32), rng.normal(size=(B, D_TXT)).astype(np.float32), labels


def release_triplets(labels):
    """W[a, p, n]: how many times the release's loops emit (a, p, n)."""
    s = (labels @ labels.T) > 0
    w = np.zeros((B, B, B))
    for r in range(B):
        pos, neg = np.flatnonzero(s[r]), np.flatnonzero(~s[r])
        for i, a in enumerate(pos):
            for p in pos[i + 1:]:
                for n in neg:
                    w[a, p, n] += 1
    return w


def sq_dist(a, b):
    return (ng.total(ng.square(a), axis=1, keepdims=True) + ng.total(ng.square(b), axis=1).reshape(1, B)
            - 2.0 * (a @ b.T))


def reference_loss(p, x_v, x_t, w, margin):
    u = ng.tanh(ng.dense(ng.V(x_v), p["image/kernel"], p["image/bias"]))
    v = ng.tanh(ng.dense(ng.V(x_t), p["text/kernel"], p["text/bias"]))

    def term(anchor, other):
        d = sq_dist(anchor, other)
        return ng.total(ng.V(w) * ng.relu(margin + d.reshape(B, B, 1) - d.reshape(B, 1, B))) / w.sum()

    terms = {"loss_ii": term(u, u), "loss_tt": term(v, v), "loss_it": term(u, v), "loss_ti": term(v, u)}
    terms["loss"] = terms["loss_ii"] + terms["loss_tt"] + terms["loss_it"] + terms["loss_ti"]
    return terms


def snapshot(t):
    n = t.nets
    return {f"{m}/{k}": getattr(getattr(n, f"{m}_head").out, k).numpy().astype(np.float64)
            for m in ("image", "text") for k in ("kernel", "bias")}


@pytest.mark.parametrize("weight_decay", [5e-4, 0.5])  # 0.5: large enough to steer Adam's direction
def test_two_steps_equal_numpy(weight_decay):
    training.set_seed(1)
    cfg = CMHashConfig(bits=BITS, weight_decay=weight_decay)
    t = CMHashTrainer(cfg, D_IMG, D_TXT)
    x_v, x_t, labels = batch()
    w = release_triplets(labels)
    assert w.sum() > 0
    params = snapshot(t)
    adam = ng.Adam(cfg.lr, 0.9, 0.999, 1e-8, torch_eps=True)  # the release's PyTorch Adam
    for step in range(2):
        p = {k: ng.V(v) for k, v in params.items()}
        terms = reference_loss(p, x_v, x_t, w, cfg.margin_value)
        out = t.train_step(x_v, x_t, labels)
        assert float(out["triplets"]) == w.sum() and bool(out["applied"])
        for k, v in terms.items():
            assert float(out[k]) == pytest.approx(float(v.value), rel=2e-5, abs=1e-5), (step, k)
        keys = list(params)
        grads = ng.grad(terms["loss"], [p[k] for k in keys])
        adam.step(params, {k: g + cfg.weight_decay * params[k] for k, g in zip(keys, grads)})
        after = snapshot(t)
        for k in keys:
            np.testing.assert_allclose(after[k], params[k], rtol=0, atol=0.02 * cfg.lr, err_msg=f"step {step}: {k}")


def test_batch_without_triplets_is_skipped():
    training.set_seed(1)
    t = CMHashTrainer(CMHashConfig(bits=BITS), D_IMG, D_TXT)
    x_v, x_t, _ = batch()
    before = snapshot(t)
    out = t.train_step(x_v, x_t, np.tile([[1, 0, 0, 0]], (B, 1)).astype(np.float32))  # one shared label
    assert float(out["triplets"]) == 0 and not bool(out["applied"]) and float(out["loss"]) == 0
    assert all(np.array_equal(before[k], v) for k, v in snapshot(t).items())
    assert int(t.optimizers["joint"].iterations) == 0


def test_torch_adam_differs_from_keras_where_the_release_said():
    """Issue 19, item 6: from equal weights, PyTorch's and Keras' epsilon placements part once v is
    small; the port follows PyTorch (`--adam torch`, default), `--adam keras` keeps Keras'."""
    x_v, x_t, labels = batch()
    after = {}
    for adam in ("torch", "keras"):
        training.set_seed(1)
        t = CMHashTrainer(CMHashConfig(bits=BITS, adam=adam, lr=1e-3), D_IMG, D_TXT)
        for _ in range(20):
            t.train_step(x_v * 1e-4, x_t * 1e-4, labels)  # tiny inputs: tiny gradients, epsilon matters
        after[adam] = snapshot(t)
    assert any(np.abs(after["torch"][k] - after["keras"][k]).max() > 1e-6 for k in after["torch"])


def test_hash_layers_start_as_pytorch_linear_layers():
    """Issue 19, item 3: the release's heads were nn.Linear: kernel and bias ~ U(+-1/sqrt(fan_in));
    `--head_init glorot` keeps Keras' Glorot kernels and zero biases."""
    from cmhash_tf.model import HashHead

    training.set_seed(0)
    torch_head = HashHead(32, input_dim=512)
    bound = 1 / np.sqrt(512)
    kernel, bias = torch_head.out.kernel.numpy(), torch_head.out.bias.numpy()
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    assert np.abs(bias).max() <= bound and np.abs(bias).min() > 0
    glorot = HashHead(32, input_dim=512, init="glorot")
    assert np.abs(glorot.out.kernel.numpy()).max() > 1.5 * bound and not glorot.out.bias.numpy().any()
