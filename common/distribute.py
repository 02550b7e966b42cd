"""Data-parallel training with `tf.distribute` that keeps each method's whole-batch math.

Every replica receives the whole global batch (features are in memory, so broadcasting index
batches is cheap), runs the per-row networks on its own slice of rows and all-gathers their
outputs; every loss is then computed on the gathered global batch, exactly as on one device.
CMPM, CMMD, CMCA, in-batch triplet mining, the batch-mean CSEM term and per-batch min-max
therefore see the same rows with 1 or R replicas.

Gradients: a gathered tensor's gradient is R times this replica's slice of the (replica-equal)
upstream gradient, and the optimisers sum replica gradients, so each replica applies
`replica_share(dL) = dL / R` and the sum equals the one-device gradient (`gather_rows` says
why no backward collective is used) (tests/common/test_distribute.py checks both, on two
logical CPU devices). Random numbers are drawn for the global batch before `Replicas.run`, so
1 and R replicas see the same noise.

Without a strategy every helper is the identity and the step is the one-device step.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import weakref
from typing import Callable, Optional

import tensorflow as tf

from common.errors import ConfigError

STRATEGIES = ("none", "mirrored", "multiworker")


def make_strategy(name: str, devices: Optional[list] = None):
    """None (one device), MirroredStrategy (all local GPUs, or `devices`), or MultiWorker from TF_CONFIG."""
    if name == "none":
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        from common.run import tf_config

        tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"unknown --distribute {name!r}; choose one of {', '.join(STRATEGIES)}")


class Replicas:
    """The strategy a trainer runs under (or none), and which process writes outputs."""

    def __init__(self, strategy=None):
        self.strategy = strategy

    @property
    def num(self) -> int:
        return 1 if self.strategy is None else self.strategy.num_replicas_in_sync

    def scope(self):
        """Create models and optimisers inside this (mirrored variables under a strategy)."""
        return contextlib.nullcontext() if self.strategy is None else self.strategy.scope()

    def run(self, fn: Callable, *args):
        """`fn(*args)` on every replica (call inside a tf.function); returns the first local
        replica's outputs, which equal every replica's for losses of the gathered batch."""
        if self.strategy is None:
            return fn(*args)

        def traced(*a):  # each trace starts its own gather order and pre-gather lookup
            _STATE.sources, _STATE.last = {}, None
            return fn(*a)

        out = self.strategy.run(traced, args=args)
        return tf.nest.map_structure(lambda v: self.strategy.experimental_local_results(v)[0], out)

    @property
    def multi_worker(self) -> bool:
        """Several processes (MultiWorker): a decision one process takes alone (a checkpoint on a timer
        or on a signal it received) would leave the others waiting in a collective."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        return bool(resolver is not None and resolver.task_type)

    @property
    def is_chief(self) -> bool:
        """Only the chief writes summaries, checkpoints and results (MultiWorker: chief, else worker 0)."""
        if not self.multi_worker:
            return True
        resolver = self.strategy.cluster_resolver
        if resolver.task_type == "chief":
            return True
        has_chief = "chief" in resolver.cluster_spec().as_dict()
        return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief

    def write_dir(self, directory: str) -> str:
        """Where this process writes: `directory` on the chief, a throwaway folder elsewhere
        (MultiWorker saving is collective, so every worker must write somewhere)."""
        if self.is_chief:
            return directory
        return tempfile.mkdtemp(prefix=f"worker{self.strategy.cluster_resolver.task_id}_")


def _context():
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def local_rows(x):
    """This replica's contiguous slice of a global batch: rows [n r / R, n (r + 1) / R).

    For an output of `per_row` this is the replica's own pre-gather tensor (not a slice of the
    gathered one), so gradients of local use never pass through the gather; see `gather_rows`.
    """
    ctx = _context()
    if ctx is None:
        return x
    source = _state().sources.get(x.ref()) if hasattr(x, "ref") else None
    if source is not None:
        return source
    r, n_rep = ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync
    n = tf.shape(x)[0]
    return x[(n * r) // n_rep:(n * (r + 1)) // n_rep]


def gather_rows(x):
    """All replicas' rows in replica order (the global batch); uneven slices are allowed.

    Forward: each gather waits for the previous one of its replica (a control edge), because
    independent collectives may otherwise run in a different order on each device and pair up
    the wrong tensors. Backward: R times this replica's slice of the upstream gradient, with no
    communication. Gathered tensors feed only global-batch computations (per-row reuse goes to
    the pre-gather tensor, `local_rows`), which every replica computes identically, so the
    upstream gradients are equal on all replicas and their sum (what `all_gather`'s own gradient
    all-reduces) is R times this replica's. `all_gather`'s gradient is avoided on purpose: a
    tape builds independent backward branches in a different order on each replica, and its
    collectives then mismatch (seen as aborted collectives in the JFSE critic step).
    """
    ctx = _context()
    if ctx is None:
        return x
    state = _state()
    if state.last is not None and state.last.graph is tf.compat.v1.get_default_graph():
        with tf.control_dependencies([state.last]):
            x_in = tf.identity(x)
    else:
        x_in = x
    out = _gather(x_in)
    state.last = out
    state.sources[out.ref()] = x
    return out


@tf.custom_gradient
def _gather(x):
    ctx = tf.distribute.get_replica_context()
    n_rep, r = ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group
    out = ctx.all_gather(x, axis=0)

    def grad(upstream):
        n = tf.shape(upstream)[0]
        return upstream[(n * r) // n_rep:(n * (r + 1)) // n_rep] * tf.cast(n_rep, upstream.dtype)

    return out, grad


_STATE = threading.local()  # MirroredStrategy builds each replica's graph in its own thread


def _state():
    if not hasattr(_STATE, "sources"):
        _STATE.sources, _STATE.last = {}, None
    return _STATE


_FUSED_UPDATES: list = []  # non-empty: one-device updates run as one XLA computation (`fuse_updates`)
_FUSED_FUNCTIONS = weakref.WeakKeyDictionary()  # optimizer -> {its variables' ids: (variables, update)}


def fuse_updates(on: bool) -> None:
    """Compile each optimizer update (one device) with XLA, for steps that are not compiled whole.

    Keras' optimizers update a variable in about ten elementwise passes over its weights, a slot
    and the gradient; unfused they are memory-bound (JFSE's 64M weights: 0.50 s of a 1.13 s bfloat16
    step, 0.09 s as one XLA computation; docs/benchmarks.md). The bfloat16 step runs without XLA on a
    CPU (`run.jit_compile`), so its update is compiled alone. Not bit-identical to the unfused update
    (a few float32 ulps), so the float32 default paths keep theirs. Set before the step is traced.
    """
    _FUSED_UPDATES.clear()
    if on:
        _FUSED_UPDATES.append(True)


def _fused_update(optimizer, variables: tuple) -> Callable:
    """The compiled update of `variables` by `optimizer` (kept as long as the optimizer lives)."""
    updates = _FUSED_FUNCTIONS.setdefault(optimizer, {})
    key = tuple(id(v) for v in variables)
    if key not in updates:
        owner = weakref.ref(optimizer)  # a strong reference here would keep the optimizer alive

        def update(grads):  # bfloat16 gradients of `cast_once` weights are cast up here, fused
            owner().apply_gradients(zip([tf.cast(g, v.dtype) for g, v in zip(grads, variables)], variables))
        updates[key] = (variables, tf.function(update, jit_compile=True))
    return updates[key][1]


_CAST_ONCE: list = []  # non-empty: `cast_once` blocks share one compute-dtype copy of each weight


def share_weight_casts(on: bool) -> None:
    """Turn `cast_once` on (mixed bfloat16; float32 has nothing to cast). Set before tracing."""
    _CAST_ONCE.clear()
    if on:
        _CAST_ONCE.append(True)


def casts_shared() -> bool:
    return bool(_CAST_ONCE)


@contextlib.contextmanager
def cast_once(*layers):
    """With `share_weight_casts` on (mixed bfloat16): each float32 weight of `layers` is cast to the
    compute dtype once for the block, instead of at every use.

    Keras casts a float32 kernel at each call of its layer and casts each use's gradient back,
    then sums the float32 gradients: passes over weight-sized tensors that cost JFSE's bfloat16
    step about what its matmuls saved (the image critic's 18M-weight kernel is used five times a
    step; docs/benchmarks.md). Here the layers read the one copy (Keras' `StatelessScope`, whose
    mapped values are what a variable reads), and a weight's gradients are summed in bfloat16
    before their one cast back (on one device inside the fused update). Enter it inside the tape;
    the block may not assign variables (an optimizer update inside would be dropped: refused).
    Nested blocks also see the outer copies.
    """
    if not _CAST_ONCE:
        yield
        return
    import keras

    owner = {}  # each weight's innermost layer, whose compute dtype its reads are cast to
    for sub in (s for layer in layers for s in layer._flatten_layers(include_self=True)):
        owner.update({id(v): (v, sub.compute_dtype) for v in sub.weights})
    outer = keras.src.backend.get_stateless_scope() if keras.src.backend.in_stateless_scope() else None
    copies = dict(outer.state_mapping) if outer is not None else {}
    cast = _cast_keeping_gradient if _FUSED_UPDATES and _context() is None else tf.cast
    copies.update({key: cast(v.value, dtype) for key, (v, dtype) in owner.items()
                   if key not in copies and v.dtype == "float32" and dtype != "float32"
                   and getattr(v, "_autocast", True)})
    with keras.StatelessScope(initialize_variables=False) as scope:
        scope.state_mapping.update(copies)  # the constructor's state_mapping would cast them back
        yield
    if scope.state_mapping.keys() != copies.keys() or any(scope.state_mapping[k] is not c for k, c in copies.items()):
        raise RuntimeError("a layer assigned a variable inside cast_once, which would drop the assignment")


def _cast_keeping_gradient(x, dtype):
    """`tf.cast` whose gradient stays in `dtype`: the fused update casts it to float32 inside its
    XLA computation instead of in one more pass over the weights (the same values: exact)."""
    @tf.custom_gradient
    def cast(x):
        return tf.cast(x, dtype), lambda dy: dy
    return cast(x)


def apply_gradients(optimizer, grads_and_vars) -> None:
    """`optimizer.apply_gradients`, sequenced with this replica's other collectives.

    Under a strategy the update all-reduces the gradients; it waits for the previous gather or
    update of its replica and the next one waits for it, because collectives left unordered run
    in different orders on different devices and then pair up the wrong tensors.
    """
    if _context() is None:
        if _FUSED_UPDATES:
            pairs = [(g, v) for g, v in grads_and_vars if g is not None]
            _fused_update(optimizer, tuple(v for _, v in pairs))([g for g, _ in pairs])
        else:
            optimizer.apply_gradients(grads_and_vars)
        return
    state = _state()
    pairs = list(grads_and_vars)
    if state.last is not None and state.last.graph is tf.compat.v1.get_default_graph():
        with tf.control_dependencies([state.last]):
            pairs = [(None if g is None else tf.identity(g), v) for g, v in pairs]
    optimizer.apply_gradients(pairs)
    state.last = tf.identity(tf.convert_to_tensor(optimizer.iterations))


def per_row(fn: Callable, *inputs):
    """`fn` applied to this replica's rows of each input, outputs gathered to the global batch.

    Use for anything computed row by row (networks, per-sample penalties); losses that mix
    rows are then computed on the result. Inputs must be global-batch inputs of the step or
    outputs of `per_row`, not tensors computed from gathered outputs (their gradient would be
    counted once per replica).
    """
    if _context() is None:
        return fn(*inputs)
    out = fn(*[local_rows(x) for x in inputs])
    return tf.nest.map_structure(gather_rows, out)


def replica_share(x):
    """`x / R` in a replica context (each replica's share of a gradient or of a loss); identity
    otherwise. Nested structures, None and IndexedSlices pass through."""
    ctx = _context()
    if ctx is None:
        return x
    r = ctx.num_replicas_in_sync

    def share(g):
        if g is None:
            return None
        if isinstance(g, tf.IndexedSlices):
            return tf.IndexedSlices(g.values / tf.cast(r, g.values.dtype), g.indices, g.dense_shape)
        return g / tf.cast(r, g.dtype)

    return tf.nest.map_structure(share, x)
