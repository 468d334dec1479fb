"""Piper's VITS graph cut in three, once, into the model cache: text -> prior frames (text encoder,
duration predictor, sampling), prior -> latent frames (the flow), latent frames -> audio (HiFi-GAN).

The flow and the decoder are most of Piper's time and grow with the audio's length; both are
convolutional, so as models of their own they can run on the first few frames first (with some
context), and a sentence's first audio does not wait for the whole sentence. The cut is made with
the ``onnx`` package from the model the PyPI package installed (nothing is downloaded), on first
use only; later starts load the three cached files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Tensor names in Piper's export (piper_train.export_onnx, opset 15): the sampled prior z_p feeds
# the flow (with the frame mask y_mask), z * y_mask the decoder; the rounded-up phoneme durations
# (frames per phoneme id) give where each word lies.
PRIOR, MASK = "/Add_output_0", "/Cast_2_output_0"
LATENTS = "/Mul_7_output_0"
DURATIONS = "/Ceil_output_0"
TEXT_INPUTS = ["input", "input_lengths", "scales"]
AUDIO = "output"


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
    target = cache_dir / f"{model.stem}-split"
    split = SplitPiper(target / "text.onnx", target / "flow.onnx", target / "decoder.onnx")
    stamp = target / "source"
    cached = all(path.exists() for path in (split.text, split.flow, split.decoder))
    if cached and stamp.exists() and stamp.read_text() == stamp_text:
        return split
    from onnx.utils import extract_model  # only here: a warm cache never imports onnx

    target.mkdir(parents=True, exist_ok=True)
    for path, inputs, outputs in (
        (split.text, TEXT_INPUTS, [PRIOR, DURATIONS]),
        (split.flow, [PRIOR, MASK], [LATENTS]),
        (split.decoder, [LATENTS], [AUDIO]),
    ):
        partial = path.with_suffix(f".{os.getpid()}.partial")
        extract_model(model, partial, inputs, outputs)
        partial.replace(path)
    stamp.write_text(stamp_text)
    return split
