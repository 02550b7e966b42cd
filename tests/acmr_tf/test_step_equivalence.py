"""One ACMR step against an independent NumPy computation (issue 19; spec acmr.md §3, §4).

Fixed initial weights (the port's own initialisation, copied out), one fixed batch: the losses,
the gradients of the objectives each optimiser minimises, and the weights after two compiled
steps equal float64 NumPy (tests/common/npgrad.py) to float32 precision. A refactor of the step,
the losses or the optimiser wiring that changes any number fails here.
"""

import numpy as np
import pytest
import tensorflow as tf

from acmr_tf.config import ACMRConfig
from acmr_tf.task import ACMRTrainer
from common import training
from tests.common import npgrad as ng

B, D_IMG, D_TXT, EMB, C = 8, 6, 5, 4, 3


def batch():
    rng = np.random.default_rng(7)
    x_v = rng.random((B, D_IMG)).astype(np.float32)
    x_t = rng.normal(size=(B, D_TXT)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int64)
    return x_v, x_t, labels


def layers(t):
    """Every Dense layer of the four networks, keyed the way the reference reads them."""
    n = t.nets
    out = {f"image/{i}": d for i, d in enumerate(n.image_projector.dense)}
    out.update({f"text/{i}": d for i, d in enumerate(n.text_projector.dense)})
    out["label"] = n.label_classifier
    out.update({f"modality/{i}": d for i, d in enumerate(n.modality_classifier.layers_)})
    return out


def snapshot(t):
    return {f"{k}/{w}": getattr(d, w).numpy().astype(np.float64) for k, d in layers(t).items()
            for w in ("kernel", "bias")}


def grl(x, scale):
    return ng.V(x.value, ((x, lambda g: -scale * g),))


def reference_losses(p, x_v, x_t, labels, cfg, scale):
    """Spec §3 in float64: every logged term, as V's of the parameters in `p`."""
    def mlp(prefix, x, n, act=ng.tanh):
        h = ng.V(x)
        for i in range(n):
            h = ng.dense(h, p[f"{prefix}/{i}/kernel"], p[f"{prefix}/{i}/bias"])
            h = act(h) if act else h
        return h

    e_v, e_t = mlp("image", x_v, 3), mlp("text", x_t, 3)
    y = np.eye(C)[labels]

    def ce(logits, target):
        return -ng.total(ng.log_softmax(logits) * target, axis=1)

    lc = lambda e: ng.dense(e, p["label/kernel"], p["label/bias"])  # noqa: E731
    out = {"label_loss": ng.mean(ce(lc(e_v), y) + ce(lc(e_t), y))}
    if cfg.variant == "simple":
        out["similar_loss"] = ng.sqrt(ng.total(ng.square(e_v - e_t)))
        g = ng.total(e_v, axis=1, keepdims=True) + ng.total(e_t.T, axis=0, keepdims=True) - e_v @ e_t.T
        mask = (labels[:, None] != labels[None, :]).astype(np.float64)
        out["dissimilar_loss"] = ng.mean(ng.relu(0.1 - g * mask))
        out["emb_loss"] = (cfg.w_label * out["label_loss"] + cfg.w_sim * out["similar_loss"]
                           + cfg.w_dis * out["dissimilar_loss"])
    else:
        neg_txt, neg_img = mine(x_v, x_t, labels)
        half = lambda a, b: 0.5 * ng.total(ng.square(a - b))  # noqa: E731
        pos = half(e_v, e_t)
        out["triplet_loss"] = (ng.relu(cfg.margin + cfg.alpha * pos - half(e_v, e_t[neg_txt]))
                               + ng.relu(cfg.margin + cfg.alpha * pos - half(e_t, e_v[neg_img])))
        out["emb_loss"] = cfg.w_label * out["label_loss"] + cfg.w_sim * out["triplet_loss"]
    mc = lambda e: _chain(p, grl(e, scale))  # noqa: E731
    image_class, text_class = np.tile([0.0, 1.0], (B, 1)), np.tile([1.0, 0.0], (B, 1))
    out["domain_loss"] = ng.mean(ce(mc(e_v), image_class) + ce(mc(e_t), text_class))
    return out


def _chain(p, h):
    for i in range(3):  # emb -> emb/2 -> emb/4 -> 2, no activation
        h = ng.dense(h, p[f"modality/{i}/kernel"], p[f"modality/{i}/bias"])
    return h


def mine(x_v, x_t, labels):
    """§4 in NumPy: hardest different-class negative by raw cosine, first index on ties."""
    diff = labels[:, None] != labels[None, :]
    out = []
    for x in (x_v.astype(np.float64), x_t.astype(np.float64)):
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.append(np.argmax(np.where(diff, u @ u.T, 0.0), axis=1))
    return out


GROUPS = {"projectors": ("image/", "text/"), "label_classifier": ("label",), "modality_classifier": ("modality/",)}


def reference_step(params, opts, x_v, x_t, labels, cfg, scale):
    """The release or paper update (§4): gradients from pre-update weights, then each Adam."""
    p = {k: ng.V(v) for k, v in params.items()}
    terms = reference_losses(p, x_v, x_t, labels, cfg, scale)
    if cfg.adv_to_projectors:
        groups = {"total": ("projectors", "modality_classifier", "label_classifier")}
        objectives = {"total": terms["emb_loss"] + terms["domain_loss"]}
    else:
        groups = {"emb": ("projectors",), "domain": ("modality_classifier",)}
        objectives = {"emb": terms["emb_loss"], "domain": terms["domain_loss"]}
    grads = {}
    for name, gs in groups.items():
        keys = [k for k in params if any(k.startswith(pre) for g in gs for pre in GROUPS[g])]
        grads[name] = dict(zip(keys, ng.grad(objectives[name], [p[k] for k in keys])))
    for name, g in grads.items():
        opts[name].step(params, g)
    return grads


@pytest.mark.parametrize("variant,preset", [("simple", "release"), ("triplet", "paper")])
def test_two_steps_equal_numpy(variant, preset):
    training.set_seed(3)
    cfg = ACMRConfig(variant=variant, preset=preset, emb_dim=EMB).resolve()
    t = ACMRTrainer(cfg, D_IMG, D_TXT, C)
    scale = 0.46212
    t.grl_scale.assign(scale)
    x_v, x_t, labels = batch()
    params = snapshot(t)
    opts = {name: ng.Adam(cfg.lr, cfg.beta1, cfg.beta2, cfg.epsilon) for name in t.optimizers}

    # the port's losses and objective gradients at the initial weights
    port_terms = {k: float(v) for k, v in t.losses(x_v, x_t, labels).items()}
    ref_terms = reference_losses({k: ng.V(v) for k, v in params.items()}, x_v, x_t, labels, cfg, scale)
    for k, v in ref_terms.items():
        assert port_terms[k] == pytest.approx(float(v.value), rel=2e-5, abs=1e-6), k
    by_name = {f"{k}/{w}": getattr(d, w) for k, d in layers(t).items() for w in ("kernel", "bias")}
    sharp = {k: np.ones(v.shape, bool) for k, v in params.items()}
    for step in range(2):
        ref_grads = reference_step(params, opts, x_v, x_t, labels, cfg, scale)
        for grads in ref_grads.values():
            for k, g in grads.items():
                sharp[k] &= np.abs(g) > 100 * cfg.epsilon
        if step == 0:
            for name, grads in ref_grads.items():
                keys = list(grads)
                with tf.GradientTape() as tape:
                    terms = t.losses(x_v, x_t, labels)
                    loss = terms["emb_loss"] + terms["domain_loss"] if name == "total" else terms[f"{name}_loss"]
                port = tape.gradient(loss, [by_name[k] for k in keys])
                for k, g in zip(keys, port):
                    scale_g = np.abs(grads[k]).max() + 1e-12
                    np.testing.assert_allclose(g.numpy(), grads[k], rtol=1e-4, atol=1e-5 * scale_g, err_msg=k)
        logged = t.train_step(x_v, x_t, labels)
        after = snapshot(t)
        for k in params:
            # Adam moves each weight by about lr per step: compare to a small fraction of it, except
            # where a gradient is within 100 epsilon of zero, where float32 rounding of the gradient
            # legitimately moves lr * g / (|g| + epsilon)
            np.testing.assert_allclose(after[k][sharp[k]], params[k][sharp[k]], rtol=0, atol=0.02 * cfg.lr,
                                       err_msg=f"step {step}: {k}")
            np.testing.assert_allclose(after[k], params[k], rtol=0, atol=(step + 1) * cfg.lr, err_msg=k)
        assert sum(m.sum() for m in sharp.values()) > 0.9 * sum(m.size for m in sharp.values())
        post = reference_losses({k: ng.V(v) for k, v in params.items()}, x_v, x_t, labels, cfg, scale)
        for k, v in post.items():  # the release logs post-update values
            assert float(logged[k]) == pytest.approx(float(v.value), rel=2e-5, abs=1e-6), (step, k)
    # what did not move must not have moved
    frozen = "label_classifier" if preset == "release" else None
    if frozen:
        for k in params:
            if k.startswith("label"):
                np.testing.assert_array_equal(after[k], snapshot(t)[k])


def test_npgrad_matches_finite_differences():
    """The reference's own autodiff, checked once against central differences."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3))
    x = rng.normal(size=(5, 4))

    def f(leaf):
        h = ng.tanh(ng.V(x) @ leaf)
        return (ng.mean(ng.log_softmax(h) * 2.0) + ng.sqrt(ng.total(ng.square(ng.l2_normalize(h))))
                + ng.mean(ng.leaky_relu(h, 0.2) * ng.softplus(h)) + ng.mean(ng.absolute(h[[0, 0, 2]])))

    leaf = ng.V(w)
    analytic = ng.grad(f(leaf), [leaf])[0]
    eps = 1e-6
    numeric = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        d = np.zeros_like(w)
        d[idx] = eps
        numeric[idx] = (f(ng.V(w + d)).value - f(ng.V(w - d)).value) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
