"""Ready-made model builders (each returns a pe.Sequential)."""

from pyengine.models.cnn import lenet5, resnet_small, vgg_small
