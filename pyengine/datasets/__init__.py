"""Small real datasets bundled with pyengine (no network access needed)."""

import os

import numpy as np

__all__ = ["load_digits", "load_text"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def load_digits():
    """The UCI optical-recognition handwritten digits, 8x8 (1,797 images).

    Returns (images, labels): images uint8 (1797, 8, 8) with values 0..16,
    labels uint8 (1797,) in 0..9. Source and licence: datasets/DIGITS.md.
    """
    with np.load(os.path.join(_HERE, "digits.npz")) as f:
        return f["images"].copy(), f["labels"].copy()


def load_text():
    """About 170 KB of English prose (sections of the Python Language Reference).

    Returns a str of ASCII characters, for character-level language models.
    Source and licence (PSF License): datasets/PYTHON_REFERENCE.md.
    """
    with open(os.path.join(_HERE, "python_reference.txt"), encoding="ascii") as f:
        return f.read()
