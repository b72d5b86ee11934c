"""Optimizers with PyTorch's update math on fused in-place engine kernels,
learning-rate schedulers, and gradient clipping."""

from pyengine.optim.optimizer import Optimizer
from pyengine.optim.sgd import SGD
from pyengine.optim.rmsprop import RMSprop
from pyengine.optim.adam import Adam, AdamW
from pyengine.optim.lr_scheduler import (CosineAnnealingLR, ExponentialLR, LRScheduler,
                                         MultiStepLR, ReduceLROnPlateau, StepLR)
from pyengine.optim.clip import clip_grad_norm_, clip_grad_value_
from pyengine.optim import lr_scheduler
