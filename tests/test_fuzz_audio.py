"""Fuzzing the audio readers (issue 16, class 5): random and damaged headers and bodies.

A sound file is read by ``file_info`` (``voxd check``), :class:`~voxd.sources.FileSource` (``voxd run``)
and :func:`~voxd.runtime.process_file` (``voxd process``). Whatever the bytes, each either delivers
audio of the shape it announced or raises :class:`~voxd.errors.InputError` (exit 65, one line naming
the file) — never libsndfile's own exceptions, never a ZeroDivisionError from a header's zero rate.
Files are made by libsndfile itself (WAV in several subtypes, FLAC), then truncated, overwritten in
their header or body, or replaced by random bytes.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from voxd.config import load_config_text
from voxd.errors import EX_DATAERR, InputError
from voxd.runtime import process_file
from voxd.sources.file import FileSource, file_info
from voxd.wavout import WavOut

FORMATS = [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("WAV", "PCM_24"), ("FLAC", "PCM_16"), ("WAV", "ULAW")]


@st.composite
def damaged_files(draw: st.DrawFn) -> bytes:
    """A real WAV/FLAC (1-3 channels, 0-3000 frames), then damaged one way or another."""
    container, subtype = draw(st.sampled_from(FORMATS))
    channels = draw(st.integers(1, 3))
    frames = draw(st.sampled_from([0, 1, 160, 3000]))
    rate = draw(st.sampled_from([8000, 16000, 44100]))
    x = np.random.default_rng(frames).uniform(-1, 1, (frames, channels))
    buf = io.BytesIO()
    sf.write(buf, x, rate, subtype=subtype, format=container)
    data = bytearray(buf.getvalue())
    how = draw(st.sampled_from(["truncate", "header", "body", "fmt", "random", "intact"]))
    if how == "truncate" and data:
        del data[draw(st.integers(0, len(data) - 1)):]
    elif how == "header" and data:  # overwrite bytes among the first 64 (RIFF/fmt chunk, FLAC STREAMINFO)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, min(63, len(data) - 1)))] = draw(st.integers(0, 255))
    elif how == "body" and len(data) > 64:
        start = draw(st.integers(64, len(data) - 1))
        data[start:start + 64] = draw(st.binary(min_size=1, max_size=64))
    elif how == "fmt" and container == "WAV" and len(data) >= 36:  # the WAV format fields themselves
        field = draw(st.sampled_from([(22, "<H"), (24, "<I"), (28, "<I"), (32, "<H"), (34, "<H")]))
        value = draw(st.sampled_from([0, 1, 3, 65535, 2**31, 2**32 - 1]))
        if value < 2 ** (8 * struct.calcsize(field[1])):
            data[field[0]:field[0] + struct.calcsize(field[1])] = struct.pack(field[1], value)
    elif how == "random":
        data = bytearray(draw(st.binary(max_size=200)))
    return bytes(data)


CFG = load_config_text("capture: {type: file, path: x.wav}\nchain: [{stage: mix}]\n", "fuzz.yaml")


@given(damaged_files())
@settings(max_examples=120)
def test_readers_deliver_audio_or_one_input_error(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("f") / "in.wav"
    path.write_bytes(data)
    name = str(path)
    try:
        rate, channels = file_info(name)
        assert 1000 <= rate <= 768_000 and 1 <= channels <= 1024
    except InputError as e:
        assert e.exit_status == EX_DATAERR and str(e).startswith(f"{name}: ") and "\n" not in str(e)
        return
    src = FileSource(name, realtime=False)
    try:
        src.open()
        while (block := src.read(0.0)) is not None:
            assert block.samples.dtype == np.float32 and block.samples.shape[0] == channels
    except InputError as e:
        assert e.exit_status == EX_DATAERR and str(e).startswith(f"{name}: ") and "\n" not in str(e)
    finally:
        src.close()
    out = WavOut(str(Path(name).with_suffix(".out.wav")))
    try:
        result = process_file(CFG, name, out=out)
    except InputError as e:
        out.discard()
        assert e.exit_status == EX_DATAERR and str(e).startswith(f"{name}: ")
        return
    out.close()
    assert result.rate == 16000 and result.samples >= 0
