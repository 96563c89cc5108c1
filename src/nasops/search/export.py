"""Export a chosen sub-network as a standalone static network.

A directory per network, each file usable without nasops:

- ``model.pt2``: a ``torch.export`` program with a dynamic batch dimension
  (``torch.export.load(path).module()``), the current format;
- ``model.ts``: TorchScript (``torch.jit.load``), deprecated upstream but still widely deployed;
- ``model.onnx`` when the ``onnx`` and ``onnxscript`` packages are installed (torch's exporter
  needs them), checked against onnxruntime when that is installed;
- ``state_dict.pt``, for ``nasops.Supernet(...).extract(arch)``-built modules;
- ``meta.json``: the architecture, its FLOPs and params, the class names, what the input must be
  (channels, resolution, pixel scale, per-channel normalisation, the resize and its method), and
  how far each program's outputs are from the PyTorch module's on a random batch.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import warnings

import numpy as np
import torch

from ..data.augment import eval_size
from ..utils.files import serialised, write_files
from ..nn import Supernet

# A program whose outputs differ from the module's by more than this is not written: float32
# reorderings stay far below it, a wrong program far above.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@contextlib.contextmanager
def _quiet_exporter():
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


def _batch_dim() -> dict:
    return {"x": {0: torch.export.Dim("batch", min=1)}}


def _example(channels: int, resolution: int, batch: int = 3) -> torch.Tensor:
    """A fixed random batch: the exporters trace with it and the checks compare on it (batch
    2 or more: batch 1 would be specialised)."""
    return torch.randn(batch, channels, resolution, resolution,
                       generator=torch.Generator().manual_seed(0))


class CheckFailed(ValueError):
    """An exported program computes other outputs than the module it was made from."""


def _difference(got, expected: torch.Tensor, name: str) -> float:
    """Max |got - expected|; CheckFailed naming the program `name` when it exceeds TOLERANCE."""
    got = torch.as_tensor(np.asarray(got)) if not isinstance(got, torch.Tensor) else got.detach()
    expected = expected.detach()
    if got.shape != expected.shape or not torch.allclose(got, expected, **TOLERANCE):
        diff = (got - expected).abs().max().item() if got.shape == expected.shape else "-"
        raise CheckFailed(f"{name}'s outputs differ from the PyTorch module's (max |difference| {diff}, "
                         f"shape {tuple(got.shape)} vs {tuple(expected.shape)})")
    return float((got - expected).abs().max())


def export_program(static: torch.nn.Module, x: torch.Tensor) -> torch.export.ExportedProgram:
    """`static` as a torch.export program with a dynamic batch dimension, traced on batch x."""
    with _quiet_exporter():
        return torch.export.export(static, (x,), dynamic_shapes=_batch_dim())


def _checked_program(static: torch.nn.Module, x: torch.Tensor):
    """(the torch.export program of `static`, its max |difference| from `static` on x)."""
    program = export_program(static, x)
    with torch.no_grad():
        return program, _difference(program.module()(x), static(x), "the torch.export program")


def _onnx_bytes(static: torch.nn.Module, x: torch.Tensor) -> tuple[bytes, dict]:
    """model.onnx's bytes, with a dynamic batch dimension; torch's exporter (dynamo) needs onnx
    and onnxscript. With onnxruntime installed, the model is run on x and returned only if its
    outputs match `static`'s. Returns (the bytes, what was checked)."""
    buffer = io.BytesIO()
    with _quiet_exporter():
        torch.onnx.export(static, (x,), buffer, input_names=["x"], output_names=["logits"],
                          dynamo=True, external_data=False, dynamic_shapes=_batch_dim())
    model = buffer.getvalue()
    if importlib.util.find_spec("onnxruntime") is None:
        return model, {"onnxruntime": "not installed: not run"}
    import onnxruntime
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        diff = _difference(got, static(x), "onnxruntime")
    return model, {"onnxruntime": onnxruntime.__version__, "max_abs_difference": diff}


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
    first), to `out_dir`: :func:`export_static` of ``net.extract(arch)`` with the architecture,
    its MFLOPs and params in meta.json."""
    static = net.extract(arch).eval()
    info = describe(net.space, net.active_arch)
    info.update(meta or {})
    return export_static(static, info, out_dir, splits, onnx)


def describe(space, arch) -> dict:
    """meta.json's description of sub-network `arch` (an Arch) of `space`."""
    return {"arch": arch.to_dict(), "resolution": arch.resolution, "channels": space.in_channels,
            "mflops": space.flops(arch), "mparams": space.params(arch),
            "num_classes": space.num_classes}


# the files of an export by kind (the keys of export_static's result)
KINDS = {"state_dict": "state_dict.pt", "program": "model.pt2", "torchscript": "model.ts",
         "onnx": "model.onnx", "meta": "meta.json"}


def _add_onnx(contents: dict, checks: dict, static, x, required: bool) -> str | None:
    """Adds model.onnx's bytes to `contents` and its check to `checks`; returns why it could not
    (ONNX is an optional output unless `required`), or None."""
    try:
        contents["model.onnx"], checks["model.onnx"] = _onnx_bytes(static, x)
        return None
    except Exception as e:
        if required:
            raise
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        return (f"model.onnx not written: {first_line}" if isinstance(e, CheckFailed) else
                f"torch {torch.__version__}'s ONNX exporter failed: {type(e).__name__}: {first_line}")


def export_static(static: torch.nn.Module, meta: dict, out_dir: str, splits=None,
                  onnx: bool | None = None) -> dict:
    """Writes the static network `static` to `out_dir` (see the module's docstring). `meta`
    (:func:`describe`, and any other entries) goes into meta.json; `splits`
    (nasops.data.Splits of the training data) adds the normalisation, the stored image size and
    the class names. `onnx`: None writes model.onnx when the exporter's packages are installed,
    True requires it, False skips it. Returns the paths written by kind, and "onnx_skipped": the
    reason when model.onnx was not written."""
    static = static.eval()
    channels, resolution = meta["channels"], meta["resolution"]
    unavailable = onnx_unavailable() if onnx is not False else "not asked for"
    if onnx and unavailable:
        raise RuntimeError(f"ONNX export: {unavailable}")
    os.makedirs(out_dir, exist_ok=True)
    x = _example(channels, resolution)
    # every file is made and checked in memory first: a program that computes something else
    # stops the export before any file is written, and a full disk leaves the earlier export
    program, difference = _checked_program(static, x)
    contents = {"state_dict.pt": serialised(torch.save, static.state_dict()),
                "model.pt2": serialised(torch.export.save, program),
                "model.ts": serialised(torch.jit.save, torch.jit.script(static))}
    checks = {"model.pt2": {"max_abs_difference": difference}}
    skipped = unavailable or _add_onnx(contents, checks, static, x, required=bool(onnx))
    info = {"format": "nasops-export-1", **meta,
            "input": input_spec(channels, resolution, splits),
            "output": "logits [N, num_classes]; the predicted class is classes[argmax]",
            "checks": {"input": f"a random batch of {len(x)}", "tolerance": TOLERANCE, **checks}}
    if splits is not None:
        info["classes"] = list(splits.train.classes)
    contents["meta.json"] = json.dumps(info, indent=2)
    write_files({os.path.join(out_dir, name): data for name, data in contents.items()})
    # no file of an earlier export beside the new ones (export_int8 comes after)
    for stale in ["model_int8.pt2"] + (["model.onnx"] if skipped else []):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, stale))
    paths = {kind: os.path.join(out_dir, name) for kind, name in KINDS.items() if name in contents}
    if skipped:
        paths["onnx_skipped"] = skipped
    return paths
