"""pyengine: a compiled CPU neural-network engine with a PyTorch-like API.

    import pyengine as pe
    model = pe.Sequential(pe.Linear(784, 256), pe.ReLU(), pe.Linear(256, 10))
"""

__version__ = "0.1.0"

from engine._threads import get_num_threads, set_num_threads

from pyengine._random import manual_seed
from pyengine.module import Module, Parameter, Sequential, is_grad_enabled, no_grad
from pyengine.gradcheck import GradcheckError, gradcheck
from pyengine import init, optim, reference
# Layers
from pyengine.linear import Identity, Linear
from pyengine.activation import (GELU, Flatten, LeakyReLU, LogSoftmax, ReLU, Sigmoid,
                                 Softmax, Softplus, Tanh)
from pyengine.conv import Conv2d
from pyengine.pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from pyengine.norm import BatchNorm1d, BatchNorm2d
from pyengine.dropout import Dropout
from pyengine.rnn import GRU, LSTM, RNN
from pyengine.embedding import Embedding
from pyengine.containers import Concat, Residual
# Losses, optimisation, training, I/O
from pyengine.loss import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss, NLLLoss
from pyengine.optim import clip_grad_norm_, clip_grad_value_
from pyengine.data import DataLoader, Subset, TensorDataset, random_split, train_val_split
from pyengine.training import Checkpoint, EarlyStopping, History, evaluate, fit, predict
from pyengine.io import load, save
# Debugging
from pyengine.anomaly import AnomalyError, detect_anomaly, is_anomaly_enabled
# Interop: PyTorch weights, ONNX export (torch / onnx imported lazily)
from pyengine.interop import from_torch, to_torch_state_dict
from pyengine.onnx_export import export_onnx
from pyengine import distributed  # data parallelism over MPI; mpi4py is imported lazily
