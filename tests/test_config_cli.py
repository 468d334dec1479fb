"""Settings from the environment and a TOML file, and the `voxloop` command line on real models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.speech import character_error_rate
from voxloop.config import Settings


def test_settings_from_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "voxloop.toml"
    config.write_text('default_voice = "M2"\nllm_backend = "openai"\napi_keys = ["from-file"]\n')
    monkeypatch.setenv("VOXLOOP_CONFIG", str(config))
    monkeypatch.setenv("VOXLOOP_API_KEYS", " one, two ,,")
    settings = Settings()
    assert settings.api_keys == ["one", "two"]  # the environment wins over the file
    assert (settings.default_voice, settings.llm_backend) == ("M2", "openai")
    monkeypatch.setenv("VOXLOOP_LLM_BACKEND", "nonsense")
    with pytest.raises(ValueError):
        Settings()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxloop.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_say_then_transcribe(tmp_path: Path) -> None:
    wav = tmp_path / "hello.wav"
    said = run_cli("say", "The train leaves from platform nine.", "-o", str(wav), "--voice", "M1")
    assert said.returncode == 0, said.stderr
    heard = run_cli("transcribe", str(wav), "--language", "en")
    assert heard.returncode == 0, heard.stderr
    # By characters: Piper samples its noise, so one run in a few reads "platform" as "plaque from"
    # (tiny.en), a third of the words but a sixth of the characters.
    assert character_error_rate("the train leaves from platform nine", heard.stdout) <= 0.2, heard.stdout
    spanish = run_cli("say", "Hola", "-o", str(tmp_path / "es.wav"), "--voice", "espeak-es-f1")
    assert spanish.returncode == 0, spanish.stderr  # a language-specific voice needs no --lang


def test_cli_reports_bad_input() -> None:
    unknown = run_cli("say", "hi", "--voice", "Z9", "-o", "/dev/null")
    assert unknown.returncode == 2 and "voice" in unknown.stderr
