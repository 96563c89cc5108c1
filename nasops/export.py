"""Export a chosen sub-network as a standalone static network.

A directory per network: ``model.ts`` (TorchScript: loads with ``torch.jit.load``, no nasops
needed), ``model.onnx`` (when the ``onnx`` package is installed), ``state_dict.pt`` (for
``nasops.Supernet(...).extract(arch)``-built modules) and ``meta.json``: the architecture, its
FLOPs and params, and what the input must be (channels, resolution, the per-channel mean and std
to normalise [0, 1] pixels with, class names).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import warnings

import torch

from .nn import Supernet


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


def export_subnet(net: Supernet, arch, out_dir: str, meta: dict | None = None,
                  onnx: bool | None = None) -> dict:
    """Writes the sub-network `arch` of `net`, with its current BN statistics (calibrate them
    first), to `out_dir`. Returns the paths written, by kind."""
    static = net.extract(arch).eval()
    a = net.active_arch
    os.makedirs(out_dir, exist_ok=True)
    paths = {"state_dict": os.path.join(out_dir, "state_dict.pt"),
             "torchscript": os.path.join(out_dir, "model.ts"),
             "meta": os.path.join(out_dir, "meta.json")}
    torch.save(static.state_dict(), paths["state_dict"])
    torch.jit.save(torch.jit.script(static), paths["torchscript"])
    x = torch.zeros(2, net.space.in_channels, a.resolution, a.resolution)  # (batch 1 would be
    # specialised to a constant by the exporter)
    if onnx is None:
        onnx = importlib.util.find_spec("onnx") is not None
    if onnx:
        paths["onnx"] = os.path.join(out_dir, "model.onnx")
        with _quiet_onnx_exporter():
            torch.onnx.export(static, (x,), paths["onnx"], input_names=["x"],
                              output_names=["logits"], external_data=False,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    info = {"arch": a.to_dict(), "mflops": net.space.flops(a), "mparams": net.space.params(a),
            "input": {"channels": net.space.in_channels, "resolution": a.resolution},
            "num_classes": net.space.num_classes, **(meta or {})}
    with open(paths["meta"], "w") as f:
        json.dump(info, f, indent=2)
    return paths
