"""Small convolutional networks: LeNet-5, a VGG-style stack, a small ResNet.

Each builder returns a plain ``pe.Sequential`` (nested, with named children
where that makes the state_dict readable), so the models train with any
optimizer, save/load like any module, and the same architecture written with
``torch.nn`` (same child names) loads the same state_dict.
"""

from collections import OrderedDict

from pyengine.containers import Residual
from pyengine.module import Sequential

__all__ = ["lenet5", "vgg_small", "resnet_small"]


def _layers():
    # Imported late: these layers live in other kernel families' modules.
    import pyengine as pe
    return pe


def lenet5(num_classes=10, in_channels=1):
    """LeNet-5 for 28x28 inputs (the DESIGN.md network).

    conv5x5 pad 2 -> 6, ReLU, maxpool 2, conv5x5 -> 16, ReLU, maxpool 2,
    flatten (16 x 5 x 5 = 400), Linear 400-120, ReLU, 120-84, ReLU, 84-num_classes.

    state_dict keys: ``0.weight, 0.bias`` (conv1), ``3.*`` (conv2), ``7.*``,
    ``9.*``, ``11.*`` (the three Linear layers).

    Shape:
        (N, in_channels, 28, 28) -> (N, num_classes) logits.
    """
    pe = _layers()
    return Sequential(
        pe.Conv2d(in_channels, 6, 5, padding=2), pe.ReLU(), pe.MaxPool2d(2),
        pe.Conv2d(6, 16, 5), pe.ReLU(), pe.MaxPool2d(2),
        pe.Flatten(), pe.Linear(400, 120), pe.ReLU(),
        pe.Linear(120, 84), pe.ReLU(), pe.Linear(84, num_classes))


def vgg_small(num_classes=10, in_channels=3, widths=(32, 64, 128), hidden=256):
    """A VGG-style network for 32x32 inputs.

    Three blocks of (conv3x3 pad 1 + ReLU) x 2 then maxpool 2, with
    ``widths`` channels (32 -> 16 -> 8 -> 4 pixels), then flatten and a
    classifier Linear(widths[-1] * 16, hidden), ReLU, Linear(hidden, num_classes).

    state_dict keys (torchvision-like): ``features.{0,2,5,7,10,12}.weight/bias``
    (the six convs; ReLU and pooling layers take the other indices) and
    ``classifier.0.*``, ``classifier.2.*``.

    Shape:
        (N, in_channels, 32, 32) -> (N, num_classes) logits.
    """
    pe = _layers()
    features = []
    c = in_channels
    for w in widths:
        features += [pe.Conv2d(c, w, 3, padding=1), pe.ReLU(),
                     pe.Conv2d(w, w, 3, padding=1), pe.ReLU(), pe.MaxPool2d(2)]
        c = w
    side = 32 // 2 ** len(widths)
    return Sequential(OrderedDict([
        ("features", Sequential(*features)),
        ("flatten", pe.Flatten()),
        ("classifier", Sequential(pe.Linear(c * side * side, hidden), pe.ReLU(),
                                  pe.Linear(hidden, num_classes))),
    ]))


def basic_block(in_channels, out_channels, stride=1):
    """ResNet basic block: ReLU(block(x) + shortcut(x)).

    block = conv3x3(stride) BN ReLU conv3x3 BN (convs without bias); the
    shortcut is the identity, or conv1x1(stride) + BN when the shape changes.

    state_dict keys (prefix ``0.`` for the Residual, the ReLU is ``1``):
    ``0.block.0.weight`` (conv), ``0.block.1.{weight,bias,running_mean,
    running_var,num_batches_tracked}`` (BN), ``0.block.3.weight``,
    ``0.block.4.*``, and with a projection ``0.shortcut.0.weight``,
    ``0.shortcut.1.*``.
    """
    pe = _layers()
    block = Sequential(
        pe.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        pe.BatchNorm2d(out_channels), pe.ReLU(),
        pe.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        pe.BatchNorm2d(out_channels))
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = Sequential(
            pe.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            pe.BatchNorm2d(out_channels))
    return Sequential(Residual(block, shortcut), pe.ReLU())


def resnet_small(num_classes=10, in_channels=3, widths=(16, 32, 64)):
    """A small ResNet for 32x32 inputs (CIFAR-style, one basic block per stage).

    stem conv3x3 -> widths[0] + BN + ReLU; ``layer1`` a basic block at
    stride 1, ``layer2`` and ``layer3`` basic blocks at stride 2 with 1x1
    conv + BN projection shortcuts (32 -> 16 -> 8 pixels); global average
    pool, flatten, Linear(widths[-1], num_classes).

    state_dict keys: ``conv1.weight``, ``bn1.*``,
    ``layer{1,2,3}.0.block.{0,3}.weight`` (convs), ``layer{1,2,3}.0.block.{1,4}.*``
    (BNs), ``layer{2,3}.0.shortcut.0.weight``, ``layer{2,3}.0.shortcut.1.*``,
    ``fc.weight``, ``fc.bias`` (see basic_block). BN entries are weight,
    bias, running_mean, running_var, num_batches_tracked.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes) logits (any H, W >= 4
        thanks to the adaptive pool; designed for 32x32).
    """
    pe = _layers()
    layers = [
        ("conv1", pe.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)),
        ("bn1", pe.BatchNorm2d(widths[0])),
        ("relu", pe.ReLU()),
    ]
    c = widths[0]
    for i, w in enumerate(widths):
        layers.append((f"layer{i + 1}", basic_block(c, w, stride=1 if i == 0 else 2)))
        c = w
    layers += [("avgpool", pe.AdaptiveAvgPool2d(1)), ("flatten", pe.Flatten()),
               ("fc", pe.Linear(c, num_classes))]
    return Sequential(OrderedDict(layers))
