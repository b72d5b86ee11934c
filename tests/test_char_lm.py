import numpy as np

import pyengine as pe
from pyengine.datasets import load_text
from pyengine.models import CharLM, char_lm


def test_char_lm_structure_and_state_dict():
    pe.manual_seed(0)
    m = char_lm(20, embed_dim=8, hidden_size=12, num_layers=2)
    assert isinstance(m, CharLM)
    keys = list(m.state_dict())
    assert keys[0] == "embedding.weight" and keys[-2:] == ["head.weight", "head.bias"]
    assert "lstm.weight_hh_l1" in keys
    logits = m(np.array([[1, 2, 3], [4, 5, 6]]))
    assert logits.shape == (2, 3, 20) and logits.dtype == np.float32


def test_char_lm_gradcheck_float64(rng):
    pe.manual_seed(0)
    m = char_lm(7, embed_dim=3, hidden_size=4, dtype=np.float64)
    ids = rng.integers(0, 7, (2, 3))
    w = rng.standard_normal((2, 3, 7))
    m.zero_grad()
    m(ids)
    assert m.backward(w) is None
    for name, p in m.named_parameters():
        analytic = p.grad.copy()
        numeric = np.zeros_like(p.data)
        flat, nflat = p.data.reshape(-1), numeric.reshape(-1)
        for i in range(0, flat.size, max(1, flat.size // 12)):   # a sample of entries
            old = flat[i]
            flat[i] = old + 1e-6
            fp = np.sum(w * m(ids))
            flat[i] = old - 1e-6
            fm = np.sum(w * m(ids))
            flat[i] = old
            nflat[i] = (fp - fm) / 2e-6
            np.testing.assert_allclose(analytic.reshape(-1)[i], nflat[i], rtol=1e-5,
                                       atol=1e-7, err_msg=name)


def test_char_lm_learns_and_samples():
    text = load_text()
    assert len(text) > 100_000 and text.isascii()
    vocab = sorted(set(text[:20000]))
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index[c] for c in text[:20000]])
    pe.manual_seed(0)
    m = char_lm(len(vocab), embed_dim=16, hidden_size=48)
    loss_fn = pe.CrossEntropyLoss()
    opt = pe.optim.Adam(m.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(40):
        starts = rng.integers(0, len(ids) - 33, 16)
        chunk = ids[starts[:, None] + np.arange(33)]
        logits = m(chunk[:, :-1])
        losses.append(loss_fn(logits.reshape(-1, len(vocab)), chunk[:, 1:].reshape(-1)))
        opt.zero_grad()
        m.backward(loss_fn.backward().reshape(logits.shape))
        opt.step()
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.8
    out = m.sample([index["T"]], 20, temperature=0.5, rng=np.random.default_rng(1))
    assert len(out) == 20 and all(0 <= i < len(vocab) for i in out)
