"""ONNX export of feed-forward models (MLPs and Sequential / Residual CNNs).

    pe.export_onnx(model, example_input, "model.onnx")

The exporter walks the module tree (Sequential, Residual, Concat and the
layers below), runs the model once on ``example_input`` in eval mode under
``pe.no_grad()`` to learn every intermediate shape, and writes one ONNX node
(or a few) per layer. The batch axis is symbolic ("N"), so the file runs on
any batch size. Needs the ``onnx`` package (``pip install pyengine[onnx]``),
imported only when this function is called.

Layer -> ONNX operator:
    Linear                      Gemm (2-d input) or MatMul + Add
    Conv2d                      Conv (zero padding, groups, dilation)
    MaxPool2d / AvgPool2d       MaxPool / AveragePool
    AdaptiveAvgPool2d           GlobalAveragePool (output 1), or AveragePool
                                when the input size divides evenly
    ReLU, LeakyReLU, Sigmoid,   Relu, LeakyRelu, Sigmoid, Tanh, Softplus
    Tanh, Softplus(beta=1)
    Softmax / LogSoftmax        Softmax / LogSoftmax (axis = dim)
    BatchNorm1d / 2d            BatchNormalization (eval: running statistics)
    Flatten                     Flatten (start_dim=1, end_dim=-1) or Reshape
    Dropout, Identity           Identity
    Residual, Concat            Add, Concat
Anything else (custom layers, GELU, recurrent layers, ...) raises
NotImplementedError naming every unsupported module.
"""

import numpy as np

from pyengine.module import Module, Sequential, no_grad

__all__ = ["export_onnx"]

DEFAULT_OPSET = 17


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else tuple(int(a) for a in v)


def _converters():
    """type -> converter method name; pool and container types only when present."""
    import pyengine as pe
    names = {
        "Sequential": "_sequential", "Residual": "_residual", "Concat": "_concat",
        "Linear": "_linear", "Conv2d": "_conv2d",
        "MaxPool2d": "_maxpool2d", "AvgPool2d": "_avgpool2d",
        "AdaptiveAvgPool2d": "_adaptive_avgpool2d",
        "ReLU": "_relu", "LeakyReLU": "_leaky_relu", "Sigmoid": "_sigmoid",
        "Tanh": "_tanh", "Softplus": "_softplus", "Softmax": "_softmax",
        "LogSoftmax": "_log_softmax", "BatchNorm1d": "_batchnorm",
        "BatchNorm2d": "_batchnorm", "Flatten": "_flatten", "Dropout": "_identity",
        "Identity": "_identity",
    }
    return {getattr(pe, n): m for n, m in names.items() if hasattr(pe, n)}


class _Graph:
    """Collects nodes and initializers while the model is walked."""

    def __init__(self, onnx, dtype):
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes = []
        self.initializers = []
        self.dtype = dtype
        self._count = 0
        self.converters = _converters()

    def name(self, hint):
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, array, hint):
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def param(self, array, hint):
        return self.const(np.ascontiguousarray(array, dtype=self.dtype), hint)

    def node(self, op, inputs, hint, **attrs):
        out = self.name(hint)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    # -- walking ----------------------------------------------------------
    def emit(self, module, x_name, x, path):
        """Add `module` applied to tensor x_name (value x); return (name, value)."""
        method = self.converters[type(module)]
        return getattr(self, method)(module, x_name, x, path or "model")

    def _run(self, module, x):
        return module(x)

    def _sequential(self, m, name, x, path):
        for child_name, child in m.named_children():
            name, x = self.emit(child, name, x, f"{path}.{child_name}")
        return name, x

    def _residual(self, m, name, x, path):
        b_name, b = self.emit(m.block, name, x, f"{path}.block")
        if m.shortcut is None:
            s_name, s = name, x
        else:
            s_name, s = self.emit(m.shortcut, name, x, f"{path}.shortcut")
        return self.node("Add", [b_name, s_name], "add"), b + s

    def _concat(self, m, name, x, path):
        outs = [self.emit(c, name, x, f"{path}.{n}") for n, c in m.named_children()]
        y = np.concatenate([v for _, v in outs], axis=m.axis)
        return self.node("Concat", [n for n, _ in outs], "concat",
                         axis=m.axis % y.ndim), y

    def _linear(self, m, name, x, path):
        y = self._run(m, x)
        w = m.weight.data
        if x.ndim == 2:
            inputs = [name, self.param(w, "weight")]
            if m.bias is not None:
                inputs.append(self.param(m.bias.data, "bias"))
            return self.node("Gemm", inputs, "gemm", transB=1), y
        out = self.node("MatMul", [name, self.param(w.T, "weight_t")], "matmul")
        if m.bias is not None:
            out = self.node("Add", [out, self.param(m.bias.data, "bias")], "add")
        return out, y

    def _conv2d(self, m, name, x, path):
        y = self._run(m, x)
        top, bottom, left, right = m._pads()
        inputs = [name, self.param(m.weight.data, "weight")]
        if m.bias is not None:
            inputs.append(self.param(m.bias.data, "bias"))
        return self.node("Conv", inputs, "conv", kernel_shape=list(m.kernel_size),
                         strides=list(m.stride), dilations=list(m.dilation),
                         pads=[top, left, bottom, right], group=m.groups), y

    def _maxpool2d(self, m, name, x, path):
        y = self._run(m, x)
        ph, pw = _pair(m.padding)
        return self.node("MaxPool", [name], "maxpool",
                         kernel_shape=list(_pair(m.kernel_size)),
                         strides=list(_pair(m.stride)), pads=[ph, pw, ph, pw],
                         dilations=list(_pair(m.dilation)),
                         ceil_mode=int(bool(m.ceil_mode))), y

    def _avgpool2d(self, m, name, x, path):
        y = self._run(m, x)
        ph, pw = _pair(m.padding)
        return self.node("AveragePool", [name], "avgpool",
                         kernel_shape=list(_pair(m.kernel_size)),
                         strides=list(_pair(m.stride)), pads=[ph, pw, ph, pw],
                         ceil_mode=int(bool(m.ceil_mode)),
                         count_include_pad=int(bool(m.count_include_pad))), y

    def _adaptive_avgpool2d(self, m, name, x, path):
        y = self._run(m, x)
        H, W = x.shape[-2:]
        OH, OW = y.shape[-2:]
        if OH == 1 and OW == 1:
            return self.node("GlobalAveragePool", [name], "gap"), y
        # Equal windows when the size divides evenly: a plain average pool.
        if H % OH or W % OW:
            raise NotImplementedError(
                f"export_onnx: {path} (AdaptiveAvgPool2d) from {H}x{W} to {OH}x{OW} has "
                "unequal windows; only global pooling or evenly dividing sizes export")
        kh, kw = H // OH, W // OW
        return self.node("AveragePool", [name], "avgpool", kernel_shape=[kh, kw],
                         strides=[kh, kw]), y

    def _relu(self, m, name, x, path):
        return self.node("Relu", [name], "relu"), self._run(m, x)

    def _leaky_relu(self, m, name, x, path):
        return self.node("LeakyRelu", [name], "leaky_relu",
                         alpha=float(m.negative_slope)), self._run(m, x)

    def _sigmoid(self, m, name, x, path):
        return self.node("Sigmoid", [name], "sigmoid"), self._run(m, x)

    def _tanh(self, m, name, x, path):
        return self.node("Tanh", [name], "tanh"), self._run(m, x)

    def _softplus(self, m, name, x, path):
        return self.node("Softplus", [name], "softplus"), self._run(m, x)

    def _softmax(self, m, name, x, path, op="Softmax"):
        y = self._run(m, x)
        dim = m.dim
        if dim is None:   # torch's legacy implicit dim, as the module picks it
            dim = 0 if x.ndim in (0, 1, 3) else 1
        return self.node(op, [name], op.lower(), axis=dim % max(x.ndim, 1)), y

    def _log_softmax(self, m, name, x, path):
        return self._softmax(m, name, x, path, op="LogSoftmax")

    def _batchnorm(self, m, name, x, path):
        y = self._run(m, x)
        C = m.num_features
        scale = m.weight.data if m.weight is not None else np.ones(C)
        bias = m.bias.data if m.bias is not None else np.zeros(C)
        inputs = [name, self.param(scale, "bn_scale"), self.param(bias, "bn_bias"),
                  self.param(m.running_mean, "bn_mean"), self.param(m.running_var, "bn_var")]
        out = self.node("BatchNormalization", inputs, "batchnorm", epsilon=float(m.eps))
        return out, y

    def _flatten(self, m, name, x, path):
        y = self._run(m, x)
        nd = max(x.ndim, 1)
        s, e = m.start_dim % nd, m.end_dim % nd
        if s == 1 and e == nd - 1:
            return self.node("Flatten", [name], "flatten", axis=1), y
        # Reshape: 0 copies the (symbolic) batch and the other leading dims.
        shape = [0] * s + [-1] + list(x.shape[e + 1:])
        return self.node("Reshape", [name, self.const(np.array(shape, np.int64), "shape")],
                         "reshape"), y

    def _identity(self, m, name, x, path):
        return self.node("Identity", [name], "identity"), self._run(m, x)


def _unsupported(model, converters):
    """Modules the exporter cannot convert, with the attribute paths."""
    bad = []
    for path, m in model.named_modules():
        if type(m) not in converters:
            bad.append(f"{path or '<model>'} ({type(m).__name__})")
        elif type(m).__name__ == "MaxPool2d" and getattr(m, "return_indices", False):
            bad.append(f"{path} (MaxPool2d with return_indices=True)")
        elif type(m).__name__ == "AvgPool2d" and getattr(m, "divisor_override", None):
            bad.append(f"{path} (AvgPool2d with divisor_override)")
        elif type(m).__name__ == "Softplus" and (m.beta != 1 or m.threshold != 20):
            bad.append(f"{path} (Softplus with beta != 1 or threshold != 20)")
        elif (type(m).__name__.startswith("BatchNorm")
              and not getattr(m, "track_running_stats", True)):
            bad.append(f"{path} (BatchNorm without running statistics)")
        elif type(m).__name__ == "Conv2d" and getattr(m, "padding_mode", "zeros") != "zeros":
            bad.append(f"{path} (Conv2d with padding_mode={m.padding_mode!r})")
    return bad


def export_onnx(model, example_input, path, opset=DEFAULT_OPSET,
                input_name="input", output_name="output", dynamic_batch=True):
    """Write `model` as an ONNX file (inference graph, eval-mode semantics).

    Args:
        model: a ``pe.Module`` built from the supported layers and containers
            (see the module docstring).
        example_input: an input array (N, ...) used to trace shapes; its dtype
            (float32 or float64) is the graph's.
        path: the ``.onnx`` file to write.
        opset: ONNX opset version (default 17).
        input_name, output_name: graph input/output names.
        dynamic_batch: make the first axis symbolic ("N").

    Returns:
        the ``onnx.ModelProto`` written (checked by ``onnx.checker``).

    Raises:
        NotImplementedError: the model holds modules that have no ONNX
            conversion; the message lists each one by its path.
    """
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("export_onnx needs the onnx package: "
                          "pip install onnx (or pyengine[onnx])") from exc
    from onnx import TensorProto, helper

    if not isinstance(model, Module):
        raise TypeError(f"model must be a pe.Module, got {type(model).__name__}")
    converters = _converters()
    bad = _unsupported(model, converters)
    if bad:
        raise NotImplementedError(
            "export_onnx: no ONNX conversion for " + ", ".join(bad) + ". Supported: "
            + ", ".join(sorted({t.__name__ for t in converters})))
    x = np.asarray(example_input)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"example_input must be float32 or float64, got dtype {x.dtype}")
    elem = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE

    graph = _Graph(onnx, x.dtype)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with no_grad():
            out_name, y = graph.emit(model, input_name, x, "")
    finally:
        for m, training in modes:
            m.training = training
    y = np.asarray(y)
    # Rename the last node's output to the graph's output name.
    graph.nodes.append(helper.make_node("Identity", [out_name], [output_name],
                                        name="output_identity"))

    def shape(a):
        dims = list(a.shape)
        if dynamic_batch and dims:
            dims[0] = "N"
        return dims

    onnx_graph = helper.make_graph(
        graph.nodes, type(model).__name__,
        [helper.make_tensor_value_info(input_name, elem, shape(x))],
        [helper.make_tensor_value_info(output_name, elem, shape(y))],
        initializer=graph.initializers)
    proto = helper.make_model(onnx_graph, producer_name="pyengine",
                              opset_imports=[helper.make_opsetid("", int(opset))])
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return proto
