"""Optimizers with PyTorch's update math on fused in-place engine kernels,
learning-rate schedulers, and gradient clipping."""

from pyengine.optim.optimizer import Optimizer
from pyengine.optim.sgd import SGD
from pyengine.optim.rmsprop import RMSprop
from pyengine.optim.adam import Adam, AdamW
