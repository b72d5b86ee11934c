"""TensorDataset, DataLoader, random_split, train_val_split."""

import numpy as np
import pytest

import pyengine as pe


def _arrays(n=10):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n, dtype=np.int64)
    return x, y


def test_tensor_dataset_indexing_and_validation():
    x, y = _arrays()
    ds = pe.TensorDataset(x, y)
    assert len(ds) == 10
    xi, yi = ds[3]
    assert np.array_equal(xi, x[3]) and yi == 3
    xb, yb = ds[np.array([4, 1])]
    assert np.array_equal(xb, x[[4, 1]]) and np.array_equal(yb, [4, 1])
    with pytest.raises(ValueError, match=r"same length.*\[10, 9\]"):
        pe.TensorDataset(x, y[:9])
    with pytest.raises(ValueError, match="at least one array"):
        pe.TensorDataset()
    with pytest.raises(ValueError, match="0-d"):
        pe.TensorDataset(np.float32(1.0))


@pytest.mark.parametrize("drop_last,expected", [(False, [4, 4, 2]), (True, [4, 4])])
def test_batches_in_order(drop_last, expected):
    x, y = _arrays()
    loader = pe.DataLoader((x, y), batch_size=4, drop_last=drop_last)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == expected
    assert len(loader) == len(expected)
    assert loader.num_samples == sum(expected)
    ys = np.concatenate([b[1] for b in batches])
    assert np.array_equal(ys, y[:sum(expected)])
    for xb, yb in batches:
        assert np.array_equal(xb, x[yb])
        assert xb.flags.c_contiguous and xb.dtype == np.float32


def test_shuffle_is_a_permutation_new_every_epoch_and_seeded():
    x, y = _arrays(50)
    loader = pe.DataLoader(pe.TensorDataset(x, y), batch_size=8, shuffle=True, seed=3)
    epoch1 = [b for b in loader]
    epoch2 = [b for b in loader]
    order1 = np.concatenate([b[1] for b in epoch1])
    order2 = np.concatenate([b[1] for b in epoch2])
    assert sorted(order1) == list(range(50)) and sorted(order2) == list(range(50))
    assert not np.array_equal(order1, order2)
    for xb, yb in epoch1:  # rows stay paired and batches are contiguous copies
        assert np.array_equal(xb, x[yb]) and xb.flags.c_contiguous
    again = pe.DataLoader((x, y), batch_size=8, shuffle=True, seed=3)
    assert np.array_equal(np.concatenate([b[1] for b in again]), order1)
    other = pe.DataLoader((x, y), batch_size=8, shuffle=True, seed=4)
    assert not np.array_equal(np.concatenate([b[1] for b in other]), order1)


def test_shuffle_seed_none_follows_manual_seed():
    x, y = _arrays(40)

    def order():
        loader = pe.DataLoader((x, y), batch_size=40, shuffle=True)
        return next(iter(loader))[1]

    pe.manual_seed(11)
    a = order()
    pe.manual_seed(11)
    assert np.array_equal(order(), a)


def test_single_array_and_generic_dataset():
    x, _ = _arrays(5)
    (xb,) = next(iter(pe.DataLoader(x, batch_size=2)))
    assert np.array_equal(xb, x[:2])

    class Squares:  # a map-style dataset without take(): stacked per sample
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.array([i, i * i], np.float32), i

    batches = list(pe.DataLoader(Squares(), batch_size=2))
    assert [len(b[0]) for b in batches] == [2, 2, 1]
    assert np.array_equal(batches[1][0], [[2, 4], [3, 9]]) and np.array_equal(batches[1][1], [2, 3])


@pytest.mark.parametrize("bs", [0, -1, 1.5, True, None])
def test_bad_batch_size(bs):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pe.DataLoader(_arrays(), batch_size=bs)


def test_bad_dataset_type():
    with pytest.raises(TypeError, match="expected a dataset"):
        pe.DataLoader(42)


def test_random_split_counts_fractions_and_seed():
    x, y = _arrays(10)
    ds = pe.TensorDataset(x, y)
    a, b = pe.random_split(ds, [7, 3], seed=0)
    assert len(a) == 7 and len(b) == 3
    ids = np.concatenate([a.indices, b.indices])
    assert sorted(ids) == list(range(10))
    xa, ya = a.arrays
    assert np.array_equal(xa, x[a.indices]) and np.array_equal(ya, a.indices)
    assert np.array_equal(a[0][1], a.indices[0])
    # a Subset feeds a DataLoader through fancy indexing
    got = np.concatenate([yb for _, yb in pe.DataLoader(a, batch_size=3)])
    assert np.array_equal(got, a.indices)
    c, d = pe.random_split(ds, [7, 3], seed=0)
    assert np.array_equal(c.indices, a.indices)
    parts = pe.random_split(ds, [0.5, 0.25, 0.25], seed=1)
    assert [len(p) for p in parts] == [6, 2, 2]  # 5, 2, 2 + remainder round-robin
    with pytest.raises(ValueError, match="sum to the dataset length 10"):
        pe.random_split(ds, [5, 4])
    with pytest.raises(ValueError, match="sum to 1"):
        pe.random_split(ds, [0.5, 0.2])


def test_train_val_split_plain_and_stratified():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 2)).astype(np.float32)
    y = np.repeat(np.arange(4), [40, 30, 20, 10])
    (xt, yt), (xv, yv) = pe.train_val_split(x, y, val_fraction=0.2, seed=0)
    assert len(yt) == 80 and len(yv) == 20
    rows = {tuple(r) for r in np.concatenate([xt, xv])}
    assert len(rows) == 100  # disjoint and complete
    (_, yt2), (_, yv2) = pe.train_val_split(x, y, val_fraction=0.2, seed=0)
    assert np.array_equal(yv, yv2)

    (_, yt), (_, yv) = pe.train_val_split(x, y, val_fraction=0.2, seed=1, stratify=y)
    assert np.array_equal(np.bincount(yv), [8, 6, 4, 2])
    assert np.array_equal(np.bincount(yt), [32, 24, 16, 8])

    with pytest.raises(ValueError, match="val_fraction must be a float in"):
        pe.train_val_split(x, y, val_fraction=1.0)
    with pytest.raises(ValueError, match="same length"):
        pe.train_val_split(x, y[:-1])
    with pytest.raises(ValueError, match="stratify must be a 1-d array of 100"):
        pe.train_val_split(x, y, stratify=y[:5])
