"""The web playground at ``/`` in a real browser: Debian's chromium driven by Playwright, with a
spoken question (espeak-ng) as its fake microphone. A question gets a transcribed, spoken and
timed answer; the TTS panel streams speech. ``VOXLOOP_SCREENSHOTS=1`` also refreshes the
screenshots in docs/ (otherwise they go to the test's temporary folder)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.server import REPO, RunningServer
from tests.speech import espeak_wav
from voxloop.audio.pcm import resample, write_wav

playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (dev extras)")
expect = playwright.expect
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("needs Debian's chromium (scripts/install-system.sh --test)", allow_module_level=True)

RATE = 48000  # the fake capture device's rate; the page streams at its AudioContext's rate


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The question, then silence: chromium loops the file, and the silence lets the answer
    play out before the question comes round again (and would barge in)."""
    speech, rate = espeak_wav("What is the capital of France?")
    audio = np.concatenate([np.zeros(RATE // 2), resample(speech, rate, RATE), np.zeros(8 * RATE)])
    path = tmp_path_factory.mktemp("playground") / "question.wav"
    path.write_bytes(write_wav(audio.astype(np.float32), RATE))
    return path


def launch(p: playwright.Playwright, microphone: Path) -> playwright.Browser:
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--use-fake-ui-for-media-stream",  # grants the microphone without a prompt
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
        ],
    )


@pytest.fixture(scope="module")
def driver() -> Iterator[playwright.Playwright]:
    with playwright.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(driver: playwright.Playwright, question_wav: Path) -> Iterator[playwright.Browser]:
    browser = launch(driver, question_wav)
    yield browser
    browser.close()


def open_page(browser: playwright.Browser, server: RunningServer) -> Iterator[playwright.Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto(f"{server.http}/?api_key={server.api_key}")  # the page itself needs no key
    page.wait_for_function("document.querySelectorAll('#voice option, #tts-voice option').length > 1")
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture
def page(browser: playwright.Browser, server: RunningServer) -> Iterator[playwright.Page]:
    yield from open_page(browser, server)


def screenshot_path(name: str, tmp_path: Path) -> Path:
    return (REPO / "docs" if os.environ.get("VOXLOOP_SCREENSHOTS") == "1" else tmp_path) / name


def test_spoken_question_is_answered_aloud_with_latency(page: playwright.Page, tmp_path: Path) -> None:
    page.click("#start")
    deadline = time.monotonic() + 60  # one budget for the whole turn, however it is spent

    def left_ms() -> float:
        return max(1.0, deadline - time.monotonic()) * 1000

    question = page.locator("#transcript .user").first
    expect(question).to_contain_text("france", ignore_case=True, timeout=left_ms())
    answer = page.locator("#transcript .assistant:not(.streaming)").first
    expect(answer).to_contain_text(re.compile(r"\w"), timeout=left_ms())
    expect(page.locator("#latency")).to_contain_text(re.compile(r"\d+ ms"), timeout=left_ms())
    page.wait_for_function("window.voxloop.audioPlayedSeconds > 0.5", timeout=left_ms())
    page.locator("#conversation").screenshot(path=screenshot_path("playground-conversation.png", tmp_path))
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("idle")


def test_tts_panel_streams_speech(page: playwright.Page, tmp_path: Path) -> None:
    page.fill("#tts-text", "Streaming speech from the playground, one sentence at a time. Here is another.")
    page.select_option("#tts-voice", "F1")
    page.click("#tts-speak")
    expect(page.locator("#tts-ttfb")).to_have_text(re.compile(r"^\d+ ms$"), timeout=30_000)
    expect(page.locator("#tts-total")).to_have_text(re.compile(r"^\d+ ms$"), timeout=30_000)
    page.wait_for_function("window.voxloop.ttsPlayedSeconds > 1", timeout=30_000)
    page.locator("#tts").screenshot(path=screenshot_path("playground-tts.png", tmp_path))


def test_talking_over_the_reply_stops_it(
    driver: playwright.Playwright, server: RunningServer, tmp_path: Path
) -> None:
    """The microphone asks for a long story, waits while it is told, then talks over it.

    The prompt is ``[verbatim]``: with the spoken-style suffix ("one to three short sentences")
    Qwen 0.5B answered "I'm sorry, but I can't assist with that request." or counted only to five,
    and the reply ended before the microphone talked over it."""
    story, rate = espeak_wav("Tell me a long story about a dragon and a knight.")
    stop, _ = espeak_wav("Stop, stop. Tell me about the weather instead.")
    audio = np.concatenate(
        [
            np.zeros(RATE // 2),
            resample(story, rate, RATE),
            np.zeros(7 * RATE),
            resample(stop, rate, RATE),
            np.zeros(30 * RATE),
        ]
    )
    microphone = tmp_path / "barge-in.wav"
    microphone.write_bytes(write_wav(audio.astype(np.float32), RATE))
    browser = launch(driver, microphone)
    try:
        for page in open_page(browser, server):
            page.fill(
                "#prompt",
                "[verbatim] You are a storyteller. Tell long, detailed stories of at least ten sentences.",
            )
            page.click("#start")
            expect(page.locator("#transcript .user").first).to_contain_text(
                re.compile("story|dragon", re.IGNORECASE), timeout=60_000
            )
            interrupted = page.locator("#transcript .assistant.interrupted").first
            expect(interrupted).to_be_visible(timeout=60_000)
            played = page.evaluate("window.voxloop.audioPlayedSeconds")
            assert 1.0 < played < 12.0, played  # some of the story, not all of it
            expect(page.locator("#transcript .user").nth(1)).to_contain_text(
                "weather", ignore_case=True, timeout=60_000
            )
            page.click("#stop")
    finally:
        browser.close()
