"""How well the STT hears SelamGPT's languages: voxloop's own voices (eSpeak NG) speak short
sentences in Amharic and Somali, Whisper transcribes them with the language given, and with
detection; character error rate per sentence and overall.

Run: .venv/bin/python bench/bench_languages.py
Settings come from VOXLOOP_* variables as for the server (VOXLOOP_STT_MODEL_MULTILINGUAL for a
larger model). Synthetic formant speech is harder than a person for Whisper in some ways and
easier in others: read the figures as a floor on what the embedded model can do, not a promise.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.speech import character_error_rate
from voxloop.audio.pcm import resample
from voxloop.backends.stt.whisper import WhisperStt
from voxloop.backends.tts.voices import Speaker
from voxloop.config import Settings

SENTENCES = {
    "am": [
        "ሰላም፣ እንዴት ነህ?",
        "የኢትዮጵያ ዋና ከተማ አዲስ አበባ ናት።",
        "ዛሬ የአየሩ ሁኔታ ምን ይመስላል?",
        "ቡና መጠጣት እወዳለሁ።",
        "ስሜ መቅደስ እባላለሁ።",
        "ነገ ወደ ገበያ እሄዳለሁ።",
    ],
    "so": [
        "Magaceygu waa Ubax.",
        "Caasimadda Soomaaliya waa Muqdisho.",
        "Sidee tahay maanta?",
        "Waxaan jeclahay inaan shaah cabbo.",
        "Berri waxaan aadayaa suuqa.",
        "Cimilada maanta waa kulul tahay.",
    ],
}
VOICES = ("F1", "M1")


def main() -> None:
    settings = Settings(warmup=False)
    speaker, stt = Speaker(settings), WhisperStt(settings)
    stt.transcribe(np.zeros(16000, np.float32), "am")  # load the model
    for language, sentences in SENTENCES.items():
        given, detected, languages, latencies = [], [], [], []
        for voice_id in VOICES:
            voice = speaker.resolve(voice_id, language)
            for sentence in sentences:
                chunks = list(speaker.synthesize(sentence, voice, language))
                audio = resample(np.concatenate([c.audio for c in chunks]), chunks[0].sample_rate, 16000)
                started = time.perf_counter()
                heard = stt.transcribe(audio, language)
                latencies.append(time.perf_counter() - started)
                guess = stt.transcribe(audio, None)
                given.append(character_error_rate(sentence, heard.text))
                detected.append(character_error_rate(sentence, guess.text))
                languages.append(guess.language)
                print(f"  {language} {voice_id} CER {given[-1]:5.2f} | {sentence} -> {heard.text}")
        right = sum(code == language for code in languages)
        print(
            f"{language} ({voice.engine} {voice.id.rsplit('-', 1)[0]}): CER median {np.median(given):.2f}, "
            f"mean {np.mean(given):.2f} with the language given; {np.mean(detected):.2f} detected, "
            f"language detected right {right}/{len(languages)}; "
            f"STT median {np.median(latencies) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
