"""The demo data loader: users, tracks with real audio, idempotence, and what the triggers made of it."""

from __future__ import annotations

import io
import wave

import pytest

from app.dev.demo import synthesize_wav


def test_synthesize_wav_has_the_asked_length_and_no_clipping() -> None:
    data = synthesize_wav(1.5, [440.0, 0.0, 523.25], sample_rate=8000)
    with wave.open(io.BytesIO(data), "rb") as audio:
        assert audio.getnframes() == 12000
        samples = memoryview(audio.readframes(12000)).cast("h")
    assert 1000 < max(samples) < 32767
    assert min(samples) > -32768
    assert samples[0] == 0
    with pytest.raises(ValueError):
        synthesize_wav(1.0, [])
