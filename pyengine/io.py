"""Saving and loading models, optimizer state and checkpoints (safetensors).

    pe.save(model, "model.safetensors")                  # the model's state_dict
    model.load_state_dict(pe.load("model.safetensors"))

    pe.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
             "epoch": 7}, "ckpt.safetensors")
    ckpt = pe.load("ckpt.safetensors")                    # same structure back

File layout: a standard safetensors file. Every array is a tensor named by
its dotted path in the saved object (``fc.weight`` for a state_dict,
``model.fc.weight`` / ``optimizer.state.0.exp_avg`` inside a checkpoint), so
other safetensors readers see ordinary named tensors; a state_dict saved
here loads with ``safetensors.torch.load_file`` into the same torch model.
Everything that is not an array (nesting, dict key types, Python ints,
floats, strings, bools, None, tuples) is described by JSON in the header's
metadata under ``pyengine.tree``, which ``pe.load`` uses to rebuild the
object exactly. Files written by other tools (no ``pyengine.tree``) load as
an OrderedDict of their tensors.

Writes are atomic: the bytes go to a temporary file in the target's
directory, are flushed and fsync'ed, and then replace the target with
``os.replace``; a crash or an error mid-save leaves the previous file intact.
"""

import json
import os
import secrets
import struct
from collections import OrderedDict

import numpy as np
import safetensors.numpy as _st

__all__ = ["save", "load"]

_TREE_KEY = "pyengine.tree"
_FORMAT_KEY = "pyengine.format"
_FORMAT_VERSION = "1"
# Python's json writes NaN/Infinity for non-finite floats and reads them back.
_SCALARS = (bool, int, float, str, type(None))


# -- encoding -----------------------------------------------------------------
def _unique_name(name, tensors):
    if name not in tensors:
        return name
    i = 1
    while f"{name}#{i}" in tensors:
        i += 1
    return f"{name}#{i}"


def _encode(obj, path, tensors):
    """Return a JSON-able description of ``obj``; arrays go into ``tensors``."""
    from pyengine.module import Module, Parameter  # local: io is imported by module users

    if isinstance(obj, Module):
        obj = obj.state_dict()
    if isinstance(obj, Parameter):
        obj = obj.data
    if isinstance(obj, np.generic) and not isinstance(obj, (np.str_, np.bytes_)):
        name = _unique_name(path or "scalar", tensors)
        tensors[name] = np.array(obj)  # 0-d (np.ascontiguousarray would make it 1-d)
        return {"__type__": "npscalar", "key": name}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"pe.save: array at '{path}' has dtype {obj.dtype}; "
                            "only bool, integer and float arrays can be saved")
        name = _unique_name(path or "tensor", tensors)
        arr = obj if obj.flags.c_contiguous else obj.copy(order="C")  # keeps 0-d shapes
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        tensors[name] = arr
        return {"__type__": "tensor", "key": name}
    if hasattr(obj, "detach") and hasattr(obj, "cpu") and hasattr(obj, "numpy"):
        return _encode(obj.detach().cpu().numpy(), path, tensors)  # a torch tensor
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if isinstance(k, np.integer):
                k = int(k)
            if not isinstance(k, _SCALARS):
                raise TypeError(f"pe.save: dict key {k!r} at '{path}' must be a str, int, "
                                f"float, bool or None, got {type(k).__name__}")
            items.append([k, _encode(v, f"{path}.{k}" if path else str(k), tensors)])
        kind = "odict" if isinstance(obj, OrderedDict) else "dict"
        return {"__type__": kind, "items": items}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{path}.{i}" if path else str(i), tensors) for i, v in enumerate(obj)]
        return {"__type__": "tuple" if isinstance(obj, tuple) else "list", "items": items}
    raise TypeError(f"pe.save: cannot save object of type {type(obj).__name__} at "
                    f"'{path or '<root>'}' (arrays, dicts, lists, tuples and Python "
                    "scalars only)")


def _decode(node, tensors):
    if not isinstance(node, dict):
        return node
    kind = node.get("__type__")
    if kind == "tensor":
        return tensors[node["key"]]
    if kind == "npscalar":
        return tensors[node["key"]][()]
    if kind in ("dict", "odict"):
        out = OrderedDict() if kind == "odict" else {}
        for k, v in node["items"]:
            out[k] = _decode(v, tensors)
        return out
    if kind == "list":
        return [_decode(v, tensors) for v in node["items"]]
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in node["items"])
    raise ValueError(f"unknown node type {kind!r}")


# -- atomic write ---------------------------------------------------------------
def _write_all(f, data):
    """Write ``data`` to the open file ``f`` (a hook the tests interrupt)."""
    f.write(data)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path, data):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    # Not tempfile.mkstemp: its 0600 mode would end up on the saved file. os.open
    # with 0666 lets the umask decide, as for any newly created file.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}."
                                  f"{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def save(obj, path):
    """Save a model, state_dict, optimizer state or checkpoint dict to ``path``.

    Args:
        obj: a ``Module`` (its ``state_dict()`` is saved), a state_dict, an
            optimizer ``state_dict()``, or any nesting of dicts / lists /
            tuples whose leaves are NumPy arrays (bool, int, float), NumPy
            scalars or Python scalars (int, float, str, bool, None), e.g.
            ``{"model": sd, "optimizer": osd, "epoch": 3}``.
        path: file name (conventionally ``*.safetensors``). Its directory
            must exist. Written atomically (temp file + fsync + rename).
    """
    tensors = {}
    tree = _encode(obj, "", tensors)
    metadata = {_FORMAT_KEY: _FORMAT_VERSION, _TREE_KEY: json.dumps(tree)}
    data = _st.save(tensors, metadata=metadata)
    _atomic_write(path, data)


# -- load -----------------------------------------------------------------------
def _read_header(data, path):
    if len(data) < 8:
        raise ValueError(f"pe.load: '{path}' is not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"pe.load: '{path}' is truncated or corrupt: header says {n} bytes, "
                         f"the file has {len(data) - 8} after the length field")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"pe.load: '{path}' is corrupt: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"pe.load: '{path}' is corrupt: header is not a JSON object")
    return header


def _fix_array(arr, info, path, key):
    shape = tuple(info["shape"]) if isinstance(info, dict) and "shape" in info else arr.shape
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"pe.load: '{path}' is corrupt: tensor '{key}' does not match its shape")
    arr = arr.reshape(shape)
    return arr if arr.flags.writeable else arr.copy()


def load(path, model=None, optimizer=None):
    """Load what ``pe.save`` wrote (or any safetensors file).

    Args:
        path: the file.
        model: optional Module to load the weights into: the file's
            state_dict, or its ``"model"`` entry for a checkpoint dict.
            ``load_state_dict`` checks every name and shape first, so a file
            that does not fit raises (listing the keys) and changes nothing.
        optimizer: optional optimizer to restore from the ``"optimizer"``
            entry of a checkpoint dict.

    Returns:
        The saved object with its structure: state_dicts as OrderedDicts of
        writable ndarrays (0-d int64 buffers stay 0-d int64), Python scalars
        as saved. A file from another tool gives an OrderedDict of tensors.

    Raises:
        ValueError: the file is truncated, corrupt or not safetensors.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    header = _read_header(data, path)
    try:
        tensors = _st.load(data)
    except Exception as exc:  # safetensors' SafetensorError: truncated, bad offsets
        raise ValueError(f"pe.load: '{path}' is truncated or corrupt: {exc}") from None
    # safetensors.numpy gives 0-d tensors back as shape (1,): reshape from the header
    tensors = {k: _fix_array(v, header.get(k), path, k) for k, v in tensors.items()}
    meta = header.get("__metadata__") or {}
    if _TREE_KEY in meta:
        try:
            obj = _decode(json.loads(meta[_TREE_KEY]), tensors)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"pe.load: '{path}' has corrupt pyengine metadata ({exc!r})") from None
    else:  # a plain safetensors file: tensors in file order
        order = sorted((k for k in header if k != "__metadata__"),
                       key=lambda k: header[k]["data_offsets"][0])
        obj = OrderedDict((k, tensors[k]) for k in order)

    if model is not None:
        state = obj.get("model", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"pe.load: '{path}' holds no state_dict to load into the model")
        model.load_state_dict(state)
    if optimizer is not None:
        if not (isinstance(obj, dict) and "optimizer" in obj):
            raise ValueError(f"pe.load: '{path}' has no 'optimizer' entry")
        optimizer.load_state_dict(obj["optimizer"])
    return obj
