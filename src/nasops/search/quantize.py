"""int8 versions of exported networks: PyTorch 2 export quantization for x86 (static, per-channel
weights, per-tensor activations, ranges calibrated on training images), written as
``model_int8.pt2`` beside the float32 files, with its accuracy and latency against float32 in
meta.json.

The quantizer lives in torchao (``pip install torchao``, or ``nasops[quantize]``); the saved
program needs only torch: ``import torch.ao.quantization.fx._decomposed`` registers its
quantize/dequantize operators before ``torch.export.load``. Run as written it computes in
float32 between quantize/dequantize pairs (the reference semantics); the int8 kernels (oneDNN)
run when it is compiled: ``torch.compile`` with ``torch._inductor.config.freezing = True``. The
latencies here are of both networks compiled that way, batch 1, after warm-up, median.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import statistics
import time
import warnings

import torch

from ..utils.files import read_json, serialised, write_files
from .export import export_program
from .latency import using_threads

LOAD = ("import torch.ao.quantization.fx._decomposed  # registers the quantize/dequantize ops; "
        "then torch.export.load(path).module(), and torch.compile it with "
        "torch._inductor.config.freezing = True for the int8 kernels")


def add_quantize_options(parser, what: str) -> None:
    """--quantize and --max-int8-drop of a command that exports `what`."""
    parser.add_argument("--quantize", choices=["int8"],
                        help=f"also export {what} as an int8 program (model_int8.pt2: PyTorch 2 "
                             f"export quantization for x86, calibrated on training images), with "
                             f"its accuracy and latency against float32 in meta.json; needs torchao")
    parser.add_argument("--max-int8-drop", type=float, default=1.0,
                        help="with --quantize: say so when int8 loses more than this many points "
                             "of held-out or test accuracy (default 1)")


def int8_unavailable() -> str | None:
    """Why int8 quantization cannot run here, or None when it can."""
    if importlib.util.find_spec("torchao") is None:
        return "the torchao package is not installed (pip install torchao, or nasops[quantize])"
    return None


@contextlib.contextmanager
def _quiet():
    """torchao reports on import the CUDA kernels it could not load, and the quantizer warns
    about its internals: none concern a CPU export."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def quantize_int8(static: torch.nn.Module, calibration, example: torch.Tensor) -> torch.nn.Module:
    """`static` (eval mode) quantized to int8 with the x86 quantizer: exported on batch
    `example`, its activation ranges observed on the batches of `calibration`, converted.
    Returns the converted (reference) module."""
    unavailable = int8_unavailable()
    if unavailable:
        raise RuntimeError(f"int8 quantization: {unavailable}")
    with _quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
        quantizer = x86.X86InductorQuantizer().set_global(
            x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(export_program(static.eval(), example).module(), quantizer)
        seen = 0
        with torch.no_grad():
            for x in calibration:
                prepared(x)
                seen += 1
        if seen == 0:
            raise ValueError("int8 quantization got no calibration batches")
        return convert_pt2e(prepared)


@torch.no_grad()
def deployed_latency(module: torch.nn.Module, x: torch.Tensor, threads: int = 1,
                     repeats: int = 200, warmup: int = 20) -> float:
    """Median milliseconds of one call of `module` on x, compiled as deployed (torch.compile,
    inductor, frozen weights), with `threads` threads, after `warmup` calls."""
    # a fresh compile (no cache limit reached, no earlier graph reused); this clears the
    # process's compiled graphs, as torch._dynamo.reset does
    torch._dynamo.reset()
    try:
        with _quiet(), using_threads(threads), torch._inductor.config.patch(freezing=True):
            compiled = torch.compile(module)
            for _ in range(warmup):
                compiled(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                compiled(x)
                times.append(time.perf_counter() - start)
    finally:
        torch._dynamo.reset()
    return 1e3 * statistics.median(times)


def _latencies(static, program, example, one: torch.Tensor, threads: int) -> dict:
    """Both networks' deployed latency on batch `one`; where torch.compile cannot run here (it
    needs a C++ compiler), why not instead."""
    try:
        ms = {"float32": deployed_latency(export_program(static, example).module(), one, threads),
              "int8": deployed_latency(program.module(), one, threads)}
    except Exception as e:  # the latency is a measurement beside the file, not the file itself
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        return {"latency_skipped": f"torch.compile failed: {type(e).__name__}: {first_line}"}
    return {"latency_ms": ms, "latency_protocol": f"batch 1, {threads} thread(s), torch.compile "
                                                  f"(inductor, freezing), 20 warm-up calls, "
                                                  f"median of 200"}


def export_int8(static: torch.nn.Module, out_dir: str, calibration, accuracy=None,
                max_drop: float | None = None, threads: int = 1) -> dict:
    """Writes ``model_int8.pt2`` of the exported network `static` to `out_dir` (which holds its
    meta.json), and adds "int8" to meta.json: the calibration batches, both networks' latency
    (:func:`deployed_latency`) and, with `accuracy` (a function of a module returning
    {split: accuracy}), both networks' accuracies and the drop in points; with `max_drop`
    (points), whether the drop exceeds it. Returns that entry."""
    meta_path = os.path.join(out_dir, "meta.json")
    meta = read_json(meta_path, "export's meta.json")
    channels, resolution = meta["channels"], meta["resolution"]
    calibration = list(calibration)
    example = torch.zeros(2, channels, resolution, resolution)
    quantized = quantize_int8(static, calibration, example)
    path = os.path.join(out_dir, "model_int8.pt2")
    with _quiet():
        program = torch.export.export(quantized, (example,),
                                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    entry = {"file": "model_int8.pt2", "scheme": "x86 static: int8 per-channel weights, "
                                                 "per-tensor activations (PT2E, torchao)",
             "calibration_images": sum(len(x) for x in calibration), "load": LOAD,
             "torch": torch.__version__}
    entry.update(_latencies(static, program, example, calibration[0][:1].contiguous(), threads))
    if accuracy is not None:
        entry["float32_acc"], entry["int8_acc"] = accuracy(static), accuracy(program.module())
        entry["drop_points"] = {split: 100 * (entry["float32_acc"][split] - entry["int8_acc"][split])
                                for split in entry["int8_acc"]}
        if max_drop is not None:
            entry["max_drop_points"] = max_drop
            entry["drop_exceeds_max"] = any(d > max_drop for d in entry["drop_points"].values())
    meta["int8"] = entry
    write_files({path: serialised(torch.export.save, program),
                 meta_path: json.dumps(meta, indent=2)})
    return entry


def export_int8_measured(static: torch.nn.Module, out_dir: str, evaluator, resolution: int,
                         max_drop: float | None = None, threads: int = 1) -> dict:
    """:func:`export_int8` calibrated on `evaluator`'s BN calibration images and measured on its
    held-out and test splits at `resolution` (what nasops-search and nasops-finetune run)."""
    def accuracy(module):
        return {split: evaluator.module_accuracy(module, split, resolution)
                for split in ("holdout", "test")}
    return export_int8(static, out_dir, evaluator.calibration_batches(resolution), accuracy,
                       max_drop, threads)


def int8_summary(q: dict) -> list[str]:
    """The lines the commands print about an export_int8 entry."""
    accuracy = "accuracy not measured"
    if "int8_acc" in q:
        f32, i8 = q["float32_acc"], q["int8_acc"]
        accuracy = (f"held-out {i8['holdout']:.4f} (float32 {f32['holdout']:.4f}), test "
                    f"{i8['test']:.4f} (float32 {f32['test']:.4f})")
    if "latency_ms" in q:
        ms = q["latency_ms"]
        latency = (f"{ms['int8']:.3f} ms vs float32 {ms['float32']:.3f} ms "
                   f"({q['latency_protocol']})")
    else:
        latency = f"latency not measured: {q['latency_skipped']}"
    lines = [f"int8: {accuracy}; {latency}"]
    if q.get("drop_exceeds_max"):
        lines.append(f"warning: int8 loses {max(q['drop_points'].values()):.2f} points, more "
                     f"than --max-int8-drop {q['max_drop_points']:g}")
    return lines
