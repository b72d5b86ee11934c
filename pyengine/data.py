"""In-memory datasets, a batch iterator and train/validation splits.

    ds = pe.TensorDataset(X, y)
    for xb, yb in pe.DataLoader(ds, batch_size=64, shuffle=True, seed=0):
        ...

Batches are cut from whole arrays by fancy indexing (one NumPy call per
array per batch, no Python loop over samples), so they are contiguous
copies in shuffled order; without shuffling they are slices (views) of the
dataset's arrays.
"""

import numbers

import numpy as np

from pyengine._random import get_rng

__all__ = ["TensorDataset", "Subset", "DataLoader", "random_split", "train_val_split"]


def _check_arrays(arrays, who):
    if not arrays:
        raise ValueError(f"{who} needs at least one array")
    out = []
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        if a.ndim == 0:
            raise ValueError(f"{who}: array {i} is 0-d; each array needs a leading sample axis")
        out.append(a)
    lengths = [len(a) for a in out]
    if len(set(lengths)) > 1:
        raise ValueError(f"{who}: arrays must have the same length (first dimension). "
                         f"Received lengths {lengths}")
    return tuple(out)


def _make_rng(seed):
    """A generator from ``seed``, or one drawn from the engine's seeded RNG."""
    if seed is None:
        return np.random.default_rng(get_rng().integers(0, 2**63))
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


class TensorDataset:
    """Arrays that share their first dimension; ``ds[i]`` is ``(a[i], b[i], ...)``.

    Indexing with an integer array or slice returns a tuple of batches.
    """

    def __init__(self, *arrays):
        self.arrays = _check_arrays(arrays, "TensorDataset")

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)

    def take(self, indices):
        """Batch of the samples at ``indices`` (int array or slice)."""
        return tuple(a[indices] for a in self.arrays)

    def __repr__(self):
        shapes = ", ".join(str(a.shape) for a in self.arrays)
        return f"TensorDataset({shapes})"


class Subset:
    """The samples of ``dataset`` at ``indices`` (what ``random_split`` returns)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.intp)
        n = len(dataset)
        if self.indices.ndim != 1:
            raise ValueError("Subset indices must be 1-d")
        if self.indices.size and (self.indices.min() < -n or self.indices.max() >= n):
            raise IndexError(f"Subset indices out of range for a dataset of {n} samples")

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[index]]

    def take(self, indices):
        return _take(self.dataset, self.indices[indices])

    @property
    def arrays(self):
        """The subset's arrays as contiguous copies (only for array datasets)."""
        return _take(self.dataset, self.indices)


def _take(dataset, indices):
    """Tuple of batch arrays for ``indices`` from any dataset."""
    if hasattr(dataset, "take"):
        return dataset.take(indices)
    # A generic map-style dataset: gather samples one by one and stack fields.
    if isinstance(indices, slice):
        indices = range(*indices.indices(len(dataset)))
    samples = [dataset[int(i)] for i in indices]
    if not samples:
        raise ValueError("empty batch")
    if isinstance(samples[0], tuple):
        return tuple(np.stack(field) for field in zip(*samples))
    return (np.stack(samples),)


def _as_dataset(data, who):
    if isinstance(data, np.ndarray):
        return TensorDataset(data)
    if isinstance(data, (tuple, list)):
        return TensorDataset(*data)
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return data
    raise TypeError(f"{who}: expected a dataset, an array or a tuple of arrays, "
                    f"got {type(data).__name__}")


class DataLoader:
    """Iterate over a dataset in batches.

    Args:
        dataset_or_arrays: a TensorDataset / Subset / any dataset with
            ``__len__`` and ``__getitem__``, one array, or a tuple of arrays.
        batch_size: samples per batch (>= 1).
        shuffle: a new random order every epoch (every ``iter()``).
        drop_last: skip the last batch when it is smaller than batch_size.
        seed: seeds the shuffling generator; None draws a seed from the
            engine's RNG (``pe.manual_seed``) when the loader is created.

    Yields tuples of arrays, one per dataset array, each of
    ``min(batch_size, remaining)`` samples.
    """

    def __init__(self, dataset_or_arrays, batch_size=1, shuffle=False, drop_last=False, seed=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
        self.dataset = _as_dataset(dataset_or_arrays, "DataLoader")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self._rng = _make_rng(seed) if self.shuffle else None

    def __len__(self):
        n = len(self.dataset)
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    @property
    def num_samples(self):
        """Samples yielded per epoch (fewer than len(dataset) with drop_last)."""
        return len(self) * self.batch_size if self.drop_last else len(self.dataset)

    def __iter__(self):
        n, bs = len(self.dataset), self.batch_size
        order = self._rng.permutation(n) if self.shuffle else None
        stop = (n // bs) * bs if self.drop_last else n
        for start in range(0, stop, bs):
            end = min(start + bs, n)
            idx = order[start:end] if order is not None else slice(start, end)
            yield _take(self.dataset, idx)

    def __repr__(self):
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last})")


def _split_lengths(n, lengths):
    lengths = list(lengths)
    if not lengths:
        raise ValueError("random_split: lengths is empty")
    if all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in lengths):
        if any(x < 0 for x in lengths) or sum(lengths) != n:
            raise ValueError(f"random_split: lengths must be non-negative and sum to the dataset "
                             f"length {n}. Received: lengths={lengths}")
        return [int(x) for x in lengths]
    fractions = [float(x) for x in lengths]
    if any(f < 0 or f > 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"random_split: fractions must lie in [0, 1] and sum to 1. "
                         f"Received: lengths={lengths}")
    counts = [int(np.floor(n * f)) for f in fractions]
    for i in range(n - sum(counts)):  # remainder round-robin, like torch
        counts[i % len(counts)] += 1
    return counts


def random_split(dataset, lengths, seed=None):
    """Split a dataset into non-overlapping random Subsets.

    Args:
        dataset: any dataset (or an array / tuple of arrays).
        lengths: sample counts summing to ``len(dataset)``, or fractions
            summing to 1 (the remainder goes round-robin to the first parts).
        seed: seeds the permutation; None draws from the engine's RNG.
    """
    dataset = _as_dataset(dataset, "random_split")
    counts = _split_lengths(len(dataset), lengths)
    perm = _make_rng(seed).permutation(len(dataset))
    bounds = np.cumsum([0] + counts)
    return [Subset(dataset, perm[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _stratified_val_indices(labels, n_val, rng):
    """Validation indices with each class in proportion (largest remainder)."""
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    exact = counts * (n_val / len(labels))
    take = np.floor(exact).astype(np.intp)
    short = n_val - take.sum()
    if short > 0:  # hand the leftover to the classes with the largest remainders
        order = np.argsort(-(exact - take), kind="stable")
        take[order[:short]] += 1
    val = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        val.append(rng.permutation(members)[:take[c]])
    return np.concatenate(val)


def train_val_split(*arrays, val_fraction=0.1, seed=None, stratify=None):
    """Split arrays that share a first dimension into a training and a validation part.

    Args:
        *arrays: e.g. ``X, y``.
        val_fraction: share of the samples for validation, 0 < f < 1
            (rounded to a count; at least one sample on each side).
        seed: seeds the split; None draws from the engine's RNG.
        stratify: optional labels (length n); each class gets the same
            share in both parts.

    Returns:
        ``(train, val)``, each a tuple of arrays in the order given (samples
        keep their original relative order), ready for ``pe.fit(..., train,
        val=val)``.
    """
    arrays = _check_arrays(arrays, "train_val_split")
    n = len(arrays[0])
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) \
            or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a float in (0, 1). Received: val_fraction={val_fraction!r}")
    if n < 2:
        raise ValueError(f"train_val_split needs at least 2 samples, got {n}")
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    rng = _make_rng(seed)
    if stratify is not None:
        labels = np.asarray(stratify)
        if labels.shape[:1] != (n,) or labels.ndim != 1:
            raise ValueError(f"stratify must be a 1-d array of {n} labels, got shape {labels.shape}")
        val_idx = _stratified_val_indices(labels, n_val, rng)
    else:
        val_idx = rng.permutation(n)[:n_val]
    is_val = np.zeros(n, dtype=bool)
    is_val[val_idx] = True
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    return (tuple(a[train_idx] for a in arrays), tuple(a[val_idx] for a in arrays))
