"""Data-parallel training over MPI (mpi4py), the Horovod pattern.

    # train.py, run with:  mpiexec -n 4 python train.py
    import pyengine as pe
    import pyengine.distributed as dist

    dist.init()                          # threads per rank = cores / local ranks
    model = build_model()
    opt = pe.optim.Adam(model.parameters(), lr=1e-3)
    pe.fit(model, loss_fn, opt, (X, y), epochs=10, batch_size=32,   # per rank
           distributed=True, checkpoint="best.safetensors")

Every rank holds a full replica of the model. ``fit(distributed=True)``
broadcasts rank 0's parameters and buffers, gives each rank its own shard of
every epoch's shuffled samples (:class:`DistributedSampler`), averages the
gradients over the ranks after each backward pass
(:func:`allreduce_gradients`, a few large ``MPI.Allreduce`` calls on
contiguous NumPy buffers, no pickling), so every rank applies the same
update and the replicas stay bitwise identical. ``batch_size`` is per rank:
n ranks x batch b train like one process with batch n*b.

mpi4py is imported lazily (``pip install "pyengine[mpi]"`` or
``pip install mpi4py mpich``); ``import pyengine`` works without it, and
every function here treats a program that never called :func:`init` as a
single process (rank 0 of 1).

BatchNorm: by default each rank normalises with the statistics of its own
batch (like torch's DDP without SyncBatchNorm), so the running statistics
differ between ranks and rank 0's are the ones checkpointed; the learnable
weight and bias are averaged like every parameter.
:meth:`SyncBatchNorm.convert_sync_batchnorm` switches a model to statistics
over the global batch (sums allreduced in forward and backward).
"""

import os
import sys
import threading

import numpy as np

from pyengine.module import is_grad_enabled
from pyengine.norm import _BatchNorm

__all__ = ["init", "is_initialized", "rank", "world_size", "local_rank", "local_size",
           "barrier", "broadcast_parameters", "broadcast_object", "allreduce_gradients",
           "allreduce_array", "GradientAllreducer", "DistributedSampler", "SyncBatchNorm",
           "shard_indices"]

_state = {"comm": None, "local": None}
_lock = threading.Lock()


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("pyengine.distributed needs mpi4py and an MPI library: "
                          "pip install mpi4py mpich  (or pip install 'pyengine[mpi]')") from exc
    return MPI


def _abort_on_exception(hook):
    """An excepthook that prints the traceback, then aborts every rank (no hang)."""
    def excepthook(exc_type, exc, tb):
        hook(exc_type, exc, tb)
        comm = _state["comm"]
        if comm is not None and comm.Get_size() > 1:
            try:
                sys.stdout.flush()
                sys.stderr.write(f"pyengine.distributed: rank {comm.Get_rank()} raised "
                                 f"{exc_type.__name__}; aborting all {comm.Get_size()} ranks\n")
                sys.stderr.flush()
            finally:
                _mpi().COMM_WORLD.Abort(1)
    excepthook._pyengine_abort = True
    return excepthook


def init(num_threads=None, abort_on_exception=True):
    """Start MPI (idempotent) and set this rank's engine threads.

    Args:
        num_threads: OpenMP threads of this rank. Default: the
            ``PYENGINE_NUM_THREADS`` environment variable if set, else the
            cores available divided by the ranks on this machine (counted with
            MPI's shared-memory communicator), at least 1, so ranks do not
            oversubscribe the cores.
        abort_on_exception: install a ``sys.excepthook`` that prints the
            traceback and calls ``MPI.COMM_WORLD.Abort(1)``, so an exception
            on one rank ends the whole job instead of leaving the others
            waiting in a collective forever.

    Returns:
        (rank, world_size).
    """
    with _lock:
        first = _state["comm"] is None
        if first:
            MPI = _mpi()  # mpi4py initialises MPI on import
            comm = MPI.COMM_WORLD
            _state["local"] = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
            _state["comm"] = comm
            if abort_on_exception and not getattr(sys.excepthook, "_pyengine_abort", False):
                sys.excepthook = _abort_on_exception(sys.excepthook)
    from engine._threads import available_cores, set_num_threads

    if num_threads is None and first:  # a later init() keeps the threads chosen before
        if os.environ.get("PYENGINE_NUM_THREADS", "").strip():
            num_threads = int(os.environ["PYENGINE_NUM_THREADS"])
        else:
            num_threads = max(1, available_cores() // local_size())
    if num_threads is not None:
        set_num_threads(int(num_threads))
    return rank(), world_size()


def is_initialized():
    return _state["comm"] is not None


def _comm():
    return _state["comm"]


def rank():
    """This process's rank in COMM_WORLD (0 before :func:`init`)."""
    comm = _state["comm"]
    return 0 if comm is None else comm.Get_rank()


_this_rank = rank  # for code whose argument named `rank` shadows the function


def world_size():
    """Number of ranks (1 before :func:`init`)."""
    comm = _state["comm"]
    return 1 if comm is None else comm.Get_size()


def local_rank():
    """Rank among the processes on this machine."""
    local = _state["local"]
    return 0 if local is None else local.Get_rank()


def local_size():
    """Number of ranks on this machine."""
    local = _state["local"]
    return 1 if local is None else local.Get_size()


def barrier():
    if world_size() > 1:
        _comm().Barrier()


def broadcast_object(obj, root=0):
    """Rank ``root``'s picklable object on every rank (for small metadata only)."""
    if world_size() == 1:
        return obj
    return _comm().bcast(obj, root=root)


def allreduce_array(array, op="sum"):
    """Elementwise sum (or 'max'/'min') of a NumPy array over the ranks, in place.

    Returns the array. Every rank gets the same bits.
    """
    if world_size() == 1:
        return array
    MPI = _mpi()
    if not (isinstance(array, np.ndarray) and array.flags.c_contiguous):
        raise ValueError("allreduce_array needs a C-contiguous ndarray")
    ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
    _comm().Allreduce(MPI.IN_PLACE, array, op=ops[op])
    return array


def broadcast_parameters(model, root=0):
    """Copy rank ``root``'s parameters AND buffers (e.g. BatchNorm running
    statistics, ``num_batches_tracked``) into ``model`` on every rank, in place.

    Arrays are packed by dtype into one contiguous buffer each, so this is a
    few ``MPI.Bcast`` calls whatever the number of layers.
    """
    if world_size() == 1:
        return model
    arrays = [p.data for _, p in model.named_parameters()]
    buffers = []
    for mod in model.modules():
        for name, b in mod._buffers.items():
            if b is not None and not isinstance(b, np.ndarray):  # e.g. a Python int
                b = np.asarray(b)
                mod._buffers[name] = b
                object.__setattr__(mod, name, b)
            if b is not None:
                buffers.append(b)
    packed = {}
    for a in arrays + buffers:
        packed.setdefault(a.dtype.str, []).append(a)
    comm = _comm()
    for dtype in sorted(packed):  # same order on every rank
        group = packed[dtype]
        flat = np.concatenate([a.reshape(-1) for a in group])
        comm.Bcast(flat, root=root)
        offset = 0
        for a in group:  # in place (0-d buffers included)
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size
    return model


# -- gradient averaging ---------------------------------------------------------
class GradientAllreducer:
    """Averages the gradients of ``params`` over the ranks, bucketed.

    The gradients are grouped (by dtype, in parameter order) into contiguous
    buckets of about ``bucket_bytes``; each parameter's ``.grad`` is made a
    view into its bucket, so modules accumulate straight into the buffer MPI
    reduces and no packing copy is needed. A gradient array that was replaced
    since (``p.grad = ...``) is copied into its slot and re-pointed. One
    ``MPI.Allreduce`` (in place, SUM) per bucket, then a multiply by
    1/world_size: the same bits on every rank.
    """

    def __init__(self, params, bucket_bytes=16 << 20):
        self.params = [p for p in params if getattr(p, "requires_grad", True)]
        self.bucket_bytes = int(bucket_bytes)
        self.buckets = []  # (flat buffer, [(param, view)])
        by_dtype = {}
        for p in self.params:
            by_dtype.setdefault(p.data.dtype.str, []).append(p)
        for dtype in sorted(by_dtype):
            current, nbytes = [], 0
            for p in by_dtype[dtype]:
                if current and nbytes + p.data.nbytes > self.bucket_bytes:
                    self._add_bucket(current)
                    current, nbytes = [], 0
                current.append(p)
                nbytes += p.data.nbytes
            if current:
                self._add_bucket(current)

    def _add_bucket(self, params):
        flat = np.zeros(sum(p.data.size for p in params), dtype=params[0].data.dtype)
        slots, offset = [], 0
        for p in params:
            view = flat[offset:offset + p.data.size].reshape(p.data.shape)
            offset += p.data.size
            if p.grad is not None:
                view[...] = p.grad
            p.grad = view
            slots.append((p, view))
        self.buckets.append((flat, slots))

    def __call__(self):
        """Average every gradient over the ranks (in place)."""
        n = world_size()
        if n == 1:
            return
        MPI = _mpi()
        comm = _comm()
        scale = 1.0 / n
        for flat, slots in self.buckets:
            for p, view in slots:
                if p.grad is not view:
                    if p.grad is not None:
                        view[...] = p.grad
                    else:
                        view[...] = 0
                    p.grad = view
            comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            flat *= flat.dtype.type(scale)


def allreduce_gradients(model, bucket_bytes=16 << 20):
    """Average ``model``'s gradients over the ranks (in place, bucketed).

    The bucket layout is built on the first call and cached on the model
    (``model._grad_allreducer``); see :class:`GradientAllreducer`.
    """
    reducer = model.__dict__.get("_grad_allreducer")
    params = model.parameters()
    if reducer is None or [id(p) for p in reducer.params] != \
            [id(p) for p in params if getattr(p, "requires_grad", True)]:
        reducer = GradientAllreducer(params, bucket_bytes)
        object.__setattr__(model, "_grad_allreducer", reducer)
    reducer()


# -- data sharding --------------------------------------------------------------
def shard_indices(n, num_replicas, rank, epoch=0, shuffle=True, seed=0, drop_last=False):
    """The sample indices of one rank for one epoch (see :class:`DistributedSampler`)."""
    if shuffle:
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    else:
        order = np.arange(n)
    return _shard(order, num_replicas, rank, drop_last)


def _shard(order, num_replicas, rank, drop_last=False):
    """Positions rank, rank + R, ... of ``order``, padded or cut to equal shards."""
    n = len(order)
    if drop_last:
        per_rank = n // num_replicas
    else:
        per_rank = -(-n // num_replicas)
    total = per_rank * num_replicas
    if total > n:  # pad by repeating indices from the start, as torch does
        reps = -(-total // n) if n else 0
        order = np.tile(order, reps)[:total]
    else:
        order = order[:total]
    return order[rank:total:num_replicas]


class DistributedSampler:
    """Each rank's share of a dataset, reshuffled every epoch (torch semantics).

    Every rank draws the same permutation of ``range(n)`` from
    ``(seed, epoch)`` and takes every ``num_replicas``-th index starting at
    its rank, so within an epoch the shards are disjoint and together cover
    the data set. Shards have equal sizes (the ranks must run the same number
    of steps): when ``n`` is not a multiple of ``num_replicas``,
    ``drop_last=False`` (default) pads by repeating the first
    ``num_replicas - n % num_replicas`` indices of the permutation (those
    samples are seen twice that epoch), ``drop_last=True`` drops the last
    ``n % num_replicas`` of the permutation (never seen that epoch). With
    ``n`` a multiple of ``num_replicas`` every sample is seen exactly once.

    Args:
        dataset: a dataset (``len()``) or a sample count.
        num_replicas, rank: default :func:`world_size` and :func:`rank`.
        shuffle: a new permutation every epoch (call :meth:`set_epoch`).
        seed: must be the same on every rank.
        drop_last: drop instead of pad (see above).
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0,
                 drop_last=False):
        self.n = int(dataset) if isinstance(dataset, (int, np.integer)) else len(dataset)
        self.num_replicas = world_size() if num_replicas is None else int(num_replicas)
        self.rank = _this_rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        if self.drop_last:
            return self.n // self.num_replicas
        return -(-self.n // self.num_replicas)

    def indices(self):
        return shard_indices(self.n, self.num_replicas, self.rank, self.epoch,
                             self.shuffle, self.seed, self.drop_last)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __repr__(self):
        return (f"DistributedSampler(n={self.n}, num_replicas={self.num_replicas}, "
                f"rank={self.rank}, shuffle={self.shuffle}, seed={self.seed}, "
                f"drop_last={self.drop_last})")


# -- synchronised batch normalisation ---------------------------------------------
class SyncBatchNorm(_BatchNorm):
    """Batch normalisation with statistics over the global batch of all ranks.

    Same arguments, parameters, buffers and ``state_dict`` keys as
    BatchNorm1d/2d (input (N, C, *)), so checkpoints load into either. In
    training mode with more than one rank, the per-channel count, sum and
    sum of squares are allreduced in forward, and the per-channel sums of dy
    and dy*x_hat in backward, so every rank normalises with the mean and
    variance of the concatenated batch (like ``torch.nn.SyncBatchNorm``) and
    the running statistics agree on all ranks. On one rank, or in eval mode,
    it is the plain BatchNorm kernel. The synchronised path is NumPy (no
    fused kernel): slower than BatchNorm2d. Build one with
    :meth:`convert_sync_batchnorm`.
    """

    _ranks = (2, 3, 4, 5)

    @classmethod
    def convert_sync_batchnorm(cls, module):
        """Replace every BatchNorm1d/2d in ``module`` by a SyncBatchNorm sharing
        its Parameter objects and buffers (an optimizer built before still
        holds the right parameters). Returns the module (the new layer if
        ``module`` itself is a BatchNorm)."""
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats)
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                new.register_buffer(name, getattr(module, name))
            new.train(module.training)
            return new
        for name, child in list(module.named_children()):
            converted = cls.convert_sync_batchnorm(child)
            if converted is not child:
                module._modules[name] = converted
                object.__setattr__(module, name, converted)
        return module

    def forward(self, x):
        self._sync_cache = None
        if not (self.training and world_size() > 1):
            return super().forward(x)
        x = self._check_input(x)
        C = x.shape[1]
        axes = (0,) + tuple(range(2, x.ndim))
        stats = np.empty(2 * C + 1, dtype=np.float64)
        stats[0] = x.size // C
        stats[1:1 + C] = x.sum(axis=axes, dtype=np.float64)
        stats[1 + C:] = np.square(x, dtype=np.float64).sum(axis=axes)
        allreduce_array(stats)
        total = stats[0]
        if total <= 1:
            raise ValueError("Expected more than 1 value per channel when training, "
                             f"got {int(total)} over all ranks")
        mean = stats[1:1 + C] / total
        var = np.maximum(stats[1 + C:] / total - mean * mean, 0.0)
        if self.track_running_stats:
            self.num_batches_tracked[...] += 1
            f = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                 else float(self.momentum))
            rm, rv = self.running_mean, self.running_var
            rm[...] = (1 - f) * rm + f * mean
            rv[...] = (1 - f) * rv + f * var * (total / (total - 1))
        shape = (1, C) + (1,) * (x.ndim - 2)
        invstd = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        xhat = (x - mean.astype(x.dtype).reshape(shape)) * invstd.reshape(shape)
        y = xhat
        if self.affine:
            y = xhat * self.weight.data.reshape(shape) + self.bias.data.reshape(shape)
        self._cache = None
        self._sync_cache = (xhat, invstd, total) if is_grad_enabled() else None
        return y

    def backward(self, grad_out, input_grad=True):
        if self.__dict__.get("_sync_cache") is None:
            return super().backward(grad_out, input_grad=input_grad)
        xhat, invstd, total = self._sync_cache
        g = np.asarray(grad_out, dtype=xhat.dtype)
        if g.shape != xhat.shape:
            raise ValueError(f"grad_out must have the output's shape {xhat.shape}, "
                             f"got {g.shape}")
        C = g.shape[1]
        axes = (0,) + tuple(range(2, g.ndim))
        sums = np.empty(2 * C, dtype=np.float64)
        sums[:C] = g.sum(axis=axes, dtype=np.float64)
        sums[C:] = (g * xhat).sum(axis=axes, dtype=np.float64)
        if self.affine:  # this rank's sums: the gradient allreduce averages them
            self.bias.grad += sums[:C].astype(g.dtype)
            self.weight.grad += sums[C:].astype(g.dtype)
        if not input_grad:
            return None
        allreduce_array(sums)
        shape = (1, C) + (1,) * (g.ndim - 2)
        scale = invstd * self.weight.data if self.affine else invstd
        mean_g = (sums[:C] / total).astype(g.dtype).reshape(shape)
        mean_gx = (sums[C:] / total).astype(g.dtype).reshape(shape)
        return (g - mean_g - xhat * mean_gx) * scale.reshape(shape)


# -- pe.fit(distributed=True) ---------------------------------------------------
class _ShardedLoader:
    """This rank's batches of a DataLoader's dataset, one shard per epoch.

    Training: each epoch draws the permutation the DataLoader itself would
    (its generator, copied from rank 0), and the rank takes its
    :func:`_shard` of it (padded like DistributedSampler): batch k of all
    ranks together is batch k of one process with a world_size times larger
    batch and the same seed. ``eval_mode``: no shuffling and no padding
    (shards may differ by one sample; evaluation has no collective per
    batch), so metrics summed over the ranks count every sample once.
    """

    def __init__(self, loader, eval_mode=False):
        self.dataset = loader.dataset
        self.batch_size = loader.batch_size
        self.drop_last = loader.drop_last
        self.shuffle = loader.shuffle and not eval_mode
        self.eval_mode = eval_mode
        self._rng = broadcast_object(loader._rng) if self.shuffle else None
        n, r = len(self.dataset), world_size()
        self.shard_len = len(range(rank(), n, r)) if eval_mode else -(-n // r)

    def __len__(self):
        if self.drop_last:
            return self.shard_len // self.batch_size
        return -(-self.shard_len // self.batch_size)

    @property
    def num_samples(self):
        """Samples of all ranks per epoch."""
        per_rank = len(self) * self.batch_size if self.drop_last else self.shard_len
        return per_rank * world_size()

    def __iter__(self):
        from pyengine.data import _take

        n, bs = len(self.dataset), self.batch_size
        if self.eval_mode:
            idx = np.arange(rank(), n, world_size())
        else:
            order = self._rng.permutation(n) if self.shuffle else np.arange(n)
            idx = _shard(order, world_size(), rank())
        stop = (len(idx) // bs) * bs if self.drop_last else len(idx)
        for start in range(0, stop, bs):
            yield _take(self.dataset, idx[start:start + bs])


class FitHooks:
    """What ``pe.fit(distributed=True)`` adds to the loop (see the module doc)."""

    def __init__(self, model):
        init()
        self.is_main = rank() == 0
        self.world_size = world_size()
        broadcast_parameters(model)

    def train_loader(self, loader):
        return _ShardedLoader(loader)

    def eval_loader(self, loader):
        return _ShardedLoader(loader, eval_mode=True)

    def after_backward(self, model, nonfinite):
        """Average the gradients; True (on every rank) when any rank's loss was non-finite."""
        flag = allreduce_array(np.array([1.0 if nonfinite else 0.0]))
        if flag[0] > 0:
            return True
        allreduce_gradients(model)
        return False

    def reduce_meter(self, meter):
        """Sum an epoch's loss/metric sums and counts over the ranks (exact global means)."""
        names = list(meter.sums)
        packed = np.array([meter.loss_sum, float(meter.n)] +
                          [v for name in names for v in meter.sums[name]], dtype=np.float64)
        allreduce_array(packed)
        meter.loss_sum, meter.n = float(packed[0]), int(packed[1])
        for i, name in enumerate(names):
            meter.sums[name] = [float(packed[2 + 2 * i]), float(packed[3 + 2 * i])]
        return meter

    def finish(self):
        barrier()  # rank 0's checkpoint is on disk before any rank returns
