"""The engine's global seed (``pe.manual_seed``) and NumPy generators drawn from it."""

import numpy as np

_state = {"seed": None, "rng": np.random.default_rng()}


def manual_seed(seed):
    """Seed every random choice pyengine makes (initialisation, dropout, shuffling)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed expects an int, got {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"manual_seed expects a non-negative integer. Received: seed={seed}")
    _state["seed"] = seed
    _state["rng"] = np.random.default_rng(seed)
    return seed


def get_rng():
    """The generator used for parameter initialisation (advances on each use)."""
    return _state["rng"]


def initial_seed():
    return _state["seed"]
