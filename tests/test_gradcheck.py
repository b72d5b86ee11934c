import numpy as np
import pytest

import pyengine as pe


def test_gradcheck_function_passes_and_catches_wrong_gradient(rng):
    x = rng.standard_normal((3, 4))
    fn = lambda a: np.tanh(a) * 2.0  # noqa: E731
    good = lambda w, a: (w * 2.0 * (1 - np.tanh(a) ** 2),)  # noqa: E731
    bad = lambda w, a: (w * 2.0 * (1 - np.tanh(a) ** 2) * 1.01,)  # noqa: E731
    assert pe.gradcheck(fn, x, good) < 1e-6
    with pytest.raises(pe.GradcheckError):
        pe.gradcheck(fn, x, bad)
    assert pe.gradcheck(fn, x, bad, raise_exception=False) > 5e-3
