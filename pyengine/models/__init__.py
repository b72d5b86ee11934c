"""Ready-made model builders (each returns a pe.Sequential)."""

from pyengine.models.cnn import lenet5, resnet_small, vgg_small
from pyengine.models.char_lm import CharLM, char_lm
