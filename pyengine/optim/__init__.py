"""Optimizers with PyTorch's update math on fused in-place engine kernels."""

from pyengine.optim.optimizer import Optimizer
from pyengine.optim.sgd import SGD
