"""Export a chosen sub-network as a standalone static network.

A directory per network: ``model.ts`` (TorchScript: loads with ``torch.jit.load``, no nasops
needed), ``model.onnx`` (when the ``onnx`` and ``onnxscript`` packages are installed: torch's exporter
needs them), ``state_dict.pt`` (for ``nasops.Supernet(...).extract(arch)``-built modules) and
``meta.json``: the architecture, its FLOPs and params, the class names, and what the input must
be (channels, resolution, pixel scale, per-channel normalisation, the resize and its method), so
that a program without nasops can use the network.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import warnings

import torch

from ..data.augment import eval_size
from ..utils.files import atomic_path, write_json
from ..nn import Supernet


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """The exporter narrates its passes on stdout, logs warnings about optional packages
    (torchvision) and raises deprecation warnings of its own internals: none concern the user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _export_onnx(static: torch.nn.Module, channels: int, resolution: int, out_dir: str) -> str:
    """model.onnx with a dynamic batch size; torch's exporter (dynamo) needs onnx and
    onnxscript. Returns its path."""
    path = os.path.join(out_dir, "model.onnx")
    x = torch.zeros(2, channels, resolution, resolution)  # (batch 1 would be specialised)
    with _quiet_onnx_exporter(), atomic_path(path) as tmp:
        torch.onnx.export(static, (x,), tmp, input_names=["x"], output_names=["logits"],
                          dynamo=True, external_data=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    return path


def onnx_unavailable() -> str | None:
    """Why ONNX export cannot run here (torch's exporter needs the onnx and onnxscript
    packages), or None when it can."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        return (f"the {' and '.join(missing)} package{'s are' if len(missing) > 1 else ' is'} not "
                f"installed (pip install onnx onnxscript, or nasops[onnx])")
    return None


def input_spec(channels: int, resolution: int, splits=None) -> dict:
    """meta.json's "input": everything a program without nasops needs to feed the network what
    it was trained and evaluated on (the pipeline of nasops.data and nasops.evaluate)."""
    spec = {"channels": channels, "resolution": resolution, "layout": "NCHW", "dtype": "float32",
            "pixels": "uint8 values divided by 255, so in [0, 1]"}
    if splits is not None:
        spec["mean"], spec["std"] = splits.mean.tolist(), splits.std.tolist()
        spec["normalize"] = "(x - mean[c]) / std[c] per channel c, after dividing by 255"
        if hasattr(splits.train, "images"):  # (in memory: every image stored at one size)
            spec["stored_size"] = list(splits.train.images.shape[-2:])
        else:  # an image folder: nasops.data.augment.center_view of each file, before normalisation
            crop = 1.0 if splits.eval_crop is None else splits.eval_crop
            short = eval_size(resolution, crop)
            spec["resize"] = {"shorter_side": short, "method": "bicubic (Pillow)",
                              "order": "on the decoded RGB image, before normalisation"}
            spec["center_crop"] = {"size": [resolution, resolution],
                                   "offset": "round((side - resolution) / 2) on each axis"}
            return spec
    crop = None if splits is None else splits.eval_crop
    size = eval_size(resolution, crop)
    spec["resize"] = {"size": [size, size], "method": "bicubic",
                      "align_corners": False, "antialias": False, "order": "after normalisation",
                      "torch": f"torch.nn.functional.interpolate(x, size=({size}, "
                               f"{size}), mode='bicubic', align_corners=False)"}
    if crop is not None:
        top = int(round((size - resolution) / 2.0))
        spec["center_crop"] = {"size": [resolution, resolution], "offset": [top, top],
                               "torch": f"x[..., {top}:{top + resolution}, {top}:{top + resolution}]"}
    return spec


def export_subnet(net: Supernet, arch, out_dir: str, splits=None, meta: dict | None = None,
                  onnx: bool | None = None) -> dict:
    """Writes the sub-network `arch` of `net`, with its current BN statistics (calibrate them
    first), to `out_dir`. `splits` (nasops.data.Splits of the training data) puts the
    normalisation, the stored image size and the class names in meta.json; `meta` adds entries.
    `onnx`: None writes model.onnx when the exporter's packages are installed, True requires it,
    False skips it. Returns the paths written by kind, and "onnx_skipped": the reason when
    model.onnx was not written."""
    static = net.extract(arch).eval()
    a = net.active_arch
    space = net.space
    unavailable = onnx_unavailable() if onnx is not False else "not asked for"
    if onnx and unavailable:
        raise RuntimeError(f"ONNX export: {unavailable}")
    os.makedirs(out_dir, exist_ok=True)
    paths = {"state_dict": os.path.join(out_dir, "state_dict.pt"),
             "torchscript": os.path.join(out_dir, "model.ts"),
             "meta": os.path.join(out_dir, "meta.json")}
    with atomic_path(paths["state_dict"]) as tmp:
        torch.save(static.state_dict(), tmp)
    with atomic_path(paths["torchscript"]) as tmp:
        torch.jit.save(torch.jit.script(static), tmp)
    if unavailable:
        paths["onnx_skipped"] = unavailable
    else:
        try:
            paths["onnx"] = _export_onnx(static, space.in_channels, a.resolution, out_dir)
        except Exception as e:  # ONNX is an optional output: say why it is missing instead
            if onnx:
                raise
            first_line = (str(e).strip().splitlines() or [""])[0][:300]
            paths["onnx_skipped"] = (f"torch {torch.__version__}'s ONNX exporter failed: "
                                     f"{type(e).__name__}: {first_line}")
    info = {"format": "nasops-export-1", "arch": a.to_dict(), "mflops": space.flops(a),
            "mparams": space.params(a), "input": input_spec(space.in_channels, a.resolution, splits),
            "output": "logits [N, num_classes]; the predicted class is classes[argmax]",
            "num_classes": space.num_classes}
    if splits is not None:
        info["classes"] = list(splits.train.classes)
    info.update(meta or {})
    write_json(paths["meta"], info)
    return paths
