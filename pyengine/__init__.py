"""pyengine: a compiled CPU neural-network engine with a PyTorch-like API.

    import pyengine as pe
    model = pe.Sequential(pe.Linear(784, 256), pe.ReLU(), pe.Linear(256, 10))
"""

from engine._threads import get_num_threads, set_num_threads

from pyengine._random import manual_seed
from pyengine.module import Module, Parameter, Sequential, is_grad_enabled, no_grad

__version__ = "0.1.0"
from pyengine.gradcheck import GradcheckError, gradcheck
from pyengine import init, reference
from pyengine.linear import Identity, Linear
from pyengine.rnn import GRU, LSTM, RNN
from pyengine.embedding import Embedding
