"""Fault injection for tests/test_faults.py, loaded by a server process whose PYTHONPATH starts with
this folder: with VOXLOOP_TEST_BROKEN_VOICE=piper-joe-3 (voice M3), synthesis in that voice raises
(a broken TTS model) while every other voice works. Nothing else changes."""

import os

BROKEN = os.environ.get("VOXLOOP_TEST_BROKEN_VOICE")

if BROKEN:
    from voxloop.backends.tts import voices

    synthesize = voices.Speaker.synthesize

    def broken(self, text, voice, language, speed=1.0):
        if voice.id == BROKEN:
            raise RuntimeError(f"TTS model for {voice.id} is corrupt")
        return synthesize(self, text, voice, language, speed)

    voices.Speaker.synthesize = broken
