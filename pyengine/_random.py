"""The engine's global seed (``pe.manual_seed``) and NumPy generators drawn from it."""

import numpy as np

_MASK64 = (1 << 64) - 1

# "key_base" and "counter" feed next_seed(): the keys of the counter-based
# generators in the kernels (dropout masks). Without manual_seed the base is
# drawn from OS entropy.
_state = {"seed": None, "rng": np.random.default_rng(),
          "key_base": int(np.random.SeedSequence().generate_state(1, np.uint64)[0]),
          "counter": 0}


def _splitmix64(z):
    """splitmix64's finaliser: a bijective 64-bit mixer (Steele, Lea, Flood 2014)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def manual_seed(seed):
    """Seed every random choice pyengine makes (initialisation, dropout, shuffling)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed expects an int, got {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"manual_seed expects a non-negative integer. Received: seed={seed}")
    _state["seed"] = seed
    _state["rng"] = np.random.default_rng(seed)
    _state["key_base"] = seed
    _state["counter"] = 0
    return seed


def get_rng():
    """The generator used for parameter initialisation (advances on each use)."""
    return _state["rng"]


def initial_seed():
    return _state["seed"]


def next_seed():
    """A fresh 64-bit key for a counter-based random kernel (e.g. one dropout mask).

    Keys are a hash of (manual_seed, number of keys drawn since): the same
    seed gives the same sequence of keys, each call a different one, and the
    kernels derive every element's random number from (key, element index)
    alone, so masks do not depend on the thread count. Drawing keys does not
    disturb get_rng() (initialisation).
    """
    counter = _state["counter"]
    _state["counter"] = counter + 1
    return _splitmix64(_splitmix64(_state["key_base"] & _MASK64) ^ counter)
