"""Fetch, synthesise, decode and index the v2 denoiser's training audio (one idempotent command).

Everything comes from Debian ``main`` packages, fetched with ``apt-get download`` at pinned versions
(:data:`PINNED`; a different version offered by apt is used and recorded) and unpacked with
``dpkg-deb -x`` under ``DATA/pkgs`` (nothing is installed on the system). Three kinds of source:

- **real speech**: game dialogue and voice packs, educational software, telephony prompts
  (:func:`select`);
- **synthetic speech** (a minority, capped at :data:`MAX_SYNTH_SHARE` of the speech minutes): espeak-ng
  and festival voices run from the unpacked packages (``DATA/ttsroot``) on sentences drawn from Debian
  text packages (fortunes in 11 languages, game translations, festival's Indic samples);
- **noise**: music, game/household/outdoor effects, engines, keyboard, telephony music on hold.

Then every kept file is decoded (soundfile; ``.g722`` through ffmpeg; members of the zip archive of
``0ad-data`` read in place; ``warzone2100-data`` gives text only: its audio is the peer test set's),
down-mixed, resampled to 16 kHz (soxr VHQ), trimmed of leading/trailing silence and stored as one
float32 array per role and split::

    DATA/audio/{speech,noise}_{train,val}.f32   raw little-endian float32, files back to back
    DATA/audio/index.json                       one record per kept file (package, version, licence,
                                                path, group, kind, language, split, offset, length,
                                                active level in dBFS, synthetic or not, text)
    DATA/audio/inventory.md                     the data card: minutes per package, role and split
    DATA/rirs.npz                               simulated room impulse responses (pyroomacoustics)

Decontamination (never train, tune or validate on evaluation material):

- :data:`DENY`: packages reserved for evaluation, the noise packages of the project's peer test set
  (``bench/testset.py``), and the synthetic voices the evaluation sets speak with; requesting one aborts.
- ``--exclude-meta``: every source file that an evaluation set lists is left out, and so is every
  content-equivalent file: the same file stem in a format variant of the same package family
  (``asterisk-moh-opsound-{wav,gsm,g722}``, ``asterisk-core-sounds-fr{,-wav,-gsm,-g722}``, ...).
  Sentences spoken in the evaluation sets (their ``text`` fields and the peer test set's sentence
  lists) are removed from the TTS text pool.
- The validation split holds out whole groups (a fillets level, a voice pack, a TTS voice, one noise
  file) chosen by a hash of the group name.

Usage (idempotent: downloads, unpacking, synthesis and the RIR bank are reused when present)::

    V=/work/voxd-train/venv/bin/python B=../shared/bench/dev
    nice -n 19 $V train/denoise/prepare_data.py --data /work/voxd-train/data \\
        --exclude-meta $B/mono/meta.jsonl --exclude-meta $B/asr/meta.jsonl \\
        --exclude-meta $B/vad/meta.jsonl --exclude-meta $B/array/meta.jsonl

Needs ``ffmpeg`` on the PATH (G.722 decoding) and ``apt-get``/``dpkg-deb``.
"""

from __future__ import annotations

import argparse
import ast
import gettext
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 16000
VAL_FRACTION = 0.06  # fraction of groups held out for validation
MAX_SYNTH_SHARE = 0.25  # synthetic speech minutes / all speech minutes (train split), at most
REPO = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------------- deny-list
RESERVED_FOR_EVALUATION = frozenset({
    "ambience", "asterisk-core-sounds-en", "asterisk-core-sounds-en-g722", "asterisk-core-sounds-es-g722",
    "asterisk-core-sounds-it-g722", "asterisk-core-sounds-ru-g722", "btanks-data", "etw-data", "festvox-ru",
    "flightgear-data-base", "fretsonfire-songs-muldjord", "gcin-voice", "keebsound", "pocketsphinx-testdata",
    "pyannote.audio", "redeclipse-data", "scratch", "searchandrescue-data", "silero-vad",
})  # fmt: skip
# content-equivalent format variants of the reserved asterisk sound packages
RESERVED_VARIANTS = frozenset({
    "asterisk-core-sounds-en-gsm", "asterisk-core-sounds-en-wav", "asterisk-core-sounds-es",
    "asterisk-core-sounds-es-gsm", "asterisk-core-sounds-es-wav", "asterisk-core-sounds-it",
    "asterisk-core-sounds-it-gsm", "asterisk-core-sounds-it-wav", "asterisk-core-sounds-ru",
    "asterisk-core-sounds-ru-gsm", "asterisk-core-sounds-ru-wav",
})  # fmt: skip
# bench/testset.py (the peer test set): its recorded noises (music, rumble, wind). Its talker noise,
# warzone2100-data's tutorial voice, is held out in select() (the package's translations serve as text)
PEER_TESTSET_NOISES = frozenset({"extremetuxracer-data", "lugaru-data"})
# the synthetic voices the evaluation sets speak with (dev/asr targets, the peer set's targets and
# babble): flite's voices are all used (kal is the 8 kHz build of kal16) and the festival voices
# kal/ked (both sample rates) and slt-hts
EVAL_VOICES = frozenset({
    "flite", "libflite1", "festvox-us-slt-hts", "festvox-kallpc16k", "festvox-kallpc8k",
    "festvox-kdlpc16k", "festvox-kdlpc8k",
})  # fmt: skip
DENY = RESERVED_FOR_EVALUATION | RESERVED_VARIANTS | PEER_TESTSET_NOISES | EVAL_VOICES

# ----------------------------------------------------------------------------------- packages
# package -> version this recipe was made with (Debian bookworm snapshot 2025-05-20)
PINNED: dict[str, str] = {
    # real speech
    "fillets-ng-data-cs": "1.0.1-1.1",
    "fillets-ng-data-nl": "1.0.1-1.1",
    "tuxpaint-stamps-default": "2022.06.04-1",
    "klettres-data": "4:22.12.3-1",
    "ktuberling-data": "4:22.12.3-1",
    "qabcs-data": "1.0.2-6",
    "codec2-examples": "1.0.5-1",
    "asterisk-core-sounds-fr-g722": "1.6.1-1",
    "asterisk-prompt-it-menardi-wav": "1:1.4.22+mm20110907-3.1",
    "hedgewars-data": "1.0.2-6",
    "warzone2100-data": "4.3.3-3",
    "0ad-data": "0.0.26-1",
    # noise
    "wesnoth-1.16-music": "1:1.16.9-1",
    "wesnoth-1.16-data": "1:1.16.9-1",
    "megaglest-data": "3.13.0-3",
    "lincity-ng-data": "2.9~git20150314-5",
    "sonic-pi-samples": "3.2.2~repack-8",
    "bucklespring-data": "1.4.0-2",
    "scorched3d-data": "44+dfsg-8",
    "asterisk-moh-opsound-wav": "2.03-1.1",
    "torcs-data": "1.3.7+dfsg-5",
    "widelands-data": "2:1.1-3",
    "minetest-data": "5.6.1+dfsg+~1.9.0mt8+dfsg-2",
    "supertuxkart-data": "1.4+dfsg-2",
    "colobot-common-sounds": "0.2.0-2",
    "freedroidrpg-data": "1.0-1",
    # TTS engines and voices (run from the unpacked packages) and their text
    "festival": "1:2.5.0-9",
    "libestools2.5": "1:2.5.0-13",
    "festlex-cmu": "2.4-2",
    "festlex-poslex": "2.4-1",
    "festlex-ifd": "2.0+debian0-6",
    "festvox-italp16k": "2.0+debian0-6",
    "festvox-itapc16k": "2.0+debian0-6",
    "festival-czech": "0.3-6",
    "festvox-czech-dita": "1.0.0-5",
    "festvox-czech-krb": "1.0.0-5",
    "festvox-czech-machac": "1.0.0-5",
    "festvox-czech-ph": "0.1-6",
    "festvox-suopuhe-common": "1.0g-20051204-5",
    "festvox-suopuhe-lj": "1.0g-20051204-5",
    "festvox-suopuhe-mv": "20041119-3",
    "festival-ca": "3.0.6-2",
    "festvox-ca-ona-hts": "1.3-3",
    "festival-hi": "0.1-11",
    "festival-mr": "0.1-11",
    "festival-te": "0.3.3-6",
    "festvox-hi-nsk": "0.1-11",
    "festvox-mr-nsk": "0.1-11",
    "festvox-te-nsk": "0.3.3-6",
    "espeak-ng": "1.51+dfsg-10+deb12u2",
    "libespeak-ng1": "1.51+dfsg-10+deb12u2",
    "espeak-ng-data": "1.51+dfsg-10+deb12u2",
    "libpcaudio0": "1.2-2",
    "libsonic0": "0.2.0-12",
    "fortunes": "1:1.99.1-7.3",
    "fortunes-de": "0.35-1",
    "fortunes-es": "1.36",
    "fortunes-it": "1.99-4.1",
    "fortunes-cs": "2.0.9-1.1",
    "fortunes-pl": "0.0.20130525-3",
    "fortunes-ru": "1.52-3.1",
    "fortunes-br": "20220821",
    "fortunes-eo": "20020729b-1.1",
    "fortunes-bg": "1.4",
    "fortunes-ga": "0.10+nmu1",
}
TTS_PACKAGES = [p for p in PINNED if p.startswith(("fest", "libest", "espeak", "libespeak", "libpcaudio",
                                                     "libsonic"))]  # fmt: skip
TEXT_PACKAGES = [p for p in PINNED if p.startswith("fortunes")]
AUDIO_PACKAGES = [p for p in PINNED if p not in TTS_PACKAGES and p not in TEXT_PACKAGES]
ARCHIVES = {  # packages whose audio sits in zip archives: package -> archive path inside the package
    "0ad-data": "usr/share/games/0ad/mods/public/public.zip",
}
AUDIO_EXT = r"\.(ogg|wav|opus|flac|raw|g722)$"
CODEC2_SPEECH = {
    "big_dog.wav", "cross.wav", "f2400.wav", "forig.wav", "hts1a.wav", "hts2a.wav", "m2400.wav",
    "morig.wav", "wia_16kHz.wav", "speech_orig_16k.wav",
}  # fmt: skip
MEGAGLEST_VOICE = re.compile(r"_(ack|select|attack|die|hit|summon|heal|prod)\d*\.|good_morning|attention")
HEDGEWARS_LANG = {"Default_es": "es", "Default_pl": "pl", "Default_ru": "ru", "Russian": "ru",
                  "Russian_pl": "pl", "Default_uk": "uk"}  # fmt: skip


@dataclass
class Item:
    """One source file to decode (``path``: inside the package; ``archive!member`` inside a zip)."""

    package: str
    version: str
    path: str
    role: str  # speech | noise
    group: str  # unit of the train/val split
    kind: str  # speech: "real" | "synthetic"; noise: music, sfx, ambient, household, traffic, keyboard
    lang: str  # speech language (ISO 639), "" for noise
    text: str = ""  # synthetic speech: the sentence


def select(package: str, rel: str) -> tuple[str, str, str, str] | None:
    """(role, group, kind, language) of ``rel`` (a path inside ``package``), or None to skip it."""
    name = rel.rsplit("/", 1)[-1]
    if not re.search(AUDIO_EXT, rel, re.I):
        return None
    sp = "speech"
    if package.startswith("fillets-ng-data-"):
        m = re.match(r"usr/share/games/fillets-ng/sound/([^/]+)/(cs|nl)/[^/]+\.ogg$", rel)
        return (sp, f"{package}:{m.group(1)}", "real", m.group(2)) if m else None
    if package == "tuxpaint-stamps-default":
        m = re.search(r"_desc(?:_([a-zA-Z@]+))?\.ogg$", rel)
        lang = (m.group(1) or "en") if m else ""
        return (sp, f"{package}:{lang}", "real", lang.split("_")[0].split("@")[0]) if m else None
    if package == "klettres-data":
        m = re.match(r"usr/share/klettres/([^/]+)/(alpha|syllab)/[^/]+\.ogg$", rel)
        return (sp, f"{package}:{m.group(1)}", "real", m.group(1).split(".")[0]) if m else None
    if package == "ktuberling-data":
        m = re.match(r"usr/share/ktuberling/sounds/([^/]+)/[^/]+\.(ogg|wav|opus)$", rel)
        return (sp, f"{package}:{m.group(1)}", "real", m.group(1)) if m else None
    if package == "qabcs-data":
        m = re.match(r"usr/share/qabcs/abcs/([^/]+)/sounds/", rel)
        return (sp, f"{package}:{m.group(1)}", "real", m.group(1)) if m else None
    if package == "codec2-examples":
        return (sp, f"{package}:{name.split('.')[0]}", "real", "en") if name in CODEC2_SPEECH else None
    if package == "asterisk-core-sounds-fr-g722":
        m = re.match(r"usr/share/asterisk/sounds/fr_CA_f_June/(?:([^/]+)/)?([^/]+)\.g722$", rel)
        if not m or m.group(1) == "silence":
            return None
        return sp, f"{package}:{m.group(1) or m.group(2)[0]}", "real", "fr"
    if package == "asterisk-prompt-it-menardi-wav":
        m = re.match(r"usr/share/asterisk/sounds/it_IT_f_Menardi/(?:([^/]+)/)?(?:[^/]+/)?([^/]+)\.wav$", rel)
        if not m or m.group(1) == "silence":
            return None
        return sp, f"{package}:{m.group(1) or m.group(2)[0]}", "real", "it"
    if package == "hedgewars-data":
        m = re.match(r"usr/share/games/hedgewars/Data/Sounds/voices/([^/]+)/[^/]+\.ogg$", rel)
        return (sp, f"{package}:{m.group(1)}", "real", HEDGEWARS_LANG.get(m.group(1), "en")) if m else None
    if package == "warzone2100-data":
        # Its audio (the tutorial voice) is the peer test set's "talker" noise (bench/testset.py): held
        # out. Only its translation catalogs are used, as text for the synthetic voices (text_pool).
        return None
    if package == "0ad-data":
        member = rel.split("!", 1)[-1]
        m = re.match(r"audio/voice/(greek|latin|napatan|persian)/civ/[^/]+\.ogg$", member)
        if m:
            lang = {"greek": "grc", "latin": "la", "napatan": "mer", "persian": "peo"}[m.group(1)]
            return sp, f"{package}:voice-{m.group(1)}", "real", lang
        m = re.match(r"audio/(ambient|music|resource)/(?:([^/]+)/)?[^/]+\.ogg$", member)
        if not m:
            return None
        kind = {"ambient": "ambient", "music": "music", "resource": "household"}[m.group(1)]
        group = f"{package}:{name}" if kind == "music" else f"{package}:{m.group(1)}/{m.group(2)}"
        return "noise", group, kind, ""
    return _select_noise(package, rel, name)


def _select_noise(package: str, rel: str, name: str) -> tuple[str, str, str, str] | None:
    """Noise files: (role, group, kind, "") or None."""
    group = f"{package}:{name}"
    if package == "wesnoth-1.16-music":
        return "noise", group, "music", ""
    if package == "wesnoth-1.16-data":
        if "/sounds/" not in rel:
            return None
        return "noise", group, "ambient" if "/ambient/" in rel else "sfx", ""
    if package == "megaglest-data":
        if MEGAGLEST_VOICE.search(name):
            return None
        return "noise", group, "music" if "/music/" in rel else "sfx", ""
    if package == "lincity-ng-data":
        return "noise", group, "sfx", ""
    if package == "sonic-pi-samples":
        return "noise", group, "music", ""
    if package == "bucklespring-data":
        return "noise", group, "keyboard", ""
    if package == "scorched3d-data":
        return "noise", group, "sfx", ""
    if package == "asterisk-moh-opsound-wav":
        return "noise", group, "music", ""
    if package == "torcs-data":
        return "noise", group, "music" if "/music/" in rel else "traffic", ""
    if package == "widelands-data":
        if "/data/music/" in rel:
            return "noise", group, "music", ""
        m = re.search(r"/data/sound/(?:([^/]+)/)?", rel)
        return ("noise", f"{package}:{m.group(1) or name}", "household", "") if m else None
    if package == "minetest-data":
        return ("noise", group, "household", "") if "/sounds/" in rel and "devtest" not in rel else None
    if package == "supertuxkart-data":
        if "/data/music/" in rel:
            return "noise", group, "music", ""
        return ("noise", group, "sfx", "") if "/data/sfx/" in rel else None
    if package == "colobot-common-sounds":
        return "noise", group, "music" if "/music/" in rel else "sfx", ""
    if package == "freedroidrpg-data":
        return ("noise", group, "music", "") if "/sound/music/" in rel else None
    return None


# ----------------------------------------------------------------------------------- fetching
def check_deny(packages: list[str]) -> None:
    """Abort when any requested package is reserved for evaluation (see :data:`DENY`)."""
    bad = sorted(set(packages) & DENY)
    if bad:
        raise SystemExit(f"prepare_data: refusing evaluation-reserved package(s): {', '.join(bad)}")


def fetch(data: Path, packages: list[str]) -> dict[str, str]:
    """``apt-get download`` (pinned version when apt has it) + ``dpkg-deb -x`` each package under
    ``data/pkgs/<package>``; return {package: version actually used}."""
    check_deny(packages)
    debs, pkgs = data / "debs", data / "pkgs"
    debs.mkdir(parents=True, exist_ok=True)
    for p in packages:
        if list(debs.glob(f"{p}_*.deb")):
            continue
        want = PINNED.get(p)
        r = subprocess.run(["apt-get", "download", f"{p}={want}"] if want else ["apt-get", "download", p],
                           cwd=debs, capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:  # the pinned version is gone: take apt's candidate and record it
            print(f"prepare_data: {p}={want} not available ({r.stderr.strip()[:120]}); using apt's version")
            subprocess.run(["apt-get", "download", p], cwd=debs, check=True)
    versions = {}
    for p in packages:
        debs_p = sorted(debs.glob(f"{p}_*.deb"))
        if len(debs_p) != 1:
            raise SystemExit(f"prepare_data: expected one {p}_*.deb in {debs}, found {len(debs_p)}")
        deb = debs_p[0]
        out = pkgs / p
        if not out.exists():
            tmp = pkgs / f".{p}.tmp"
            subprocess.run(["rm", "-rf", str(tmp)], check=True)
            tmp.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
            tmp.rename(out)
        versions[p] = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True,
                                     text=True, check=True).stdout.strip()  # fmt: skip
        if PINNED.get(p) and versions[p] != PINNED[p]:
            print(f"prepare_data: {p} is {versions[p]}, recipe pinned {PINNED[p]} (recorded)")
    return versions


def licence_of(data: Path, package: str) -> str:
    """Short licence names from the package's ``copyright`` file (DEP-5 ``License:`` fields)."""
    f = data / "pkgs" / package / "usr/share/doc" / package / "copyright"
    if not f.exists():
        cands = list((data / "pkgs" / package / "usr/share/doc").glob("*/copyright"))
        if not cands:
            return "see package"
        f = cands[0]
    text = f.read_text(errors="replace")
    names = []
    for m in re.finditer(r"^License:\s*(\S[^\n]*)", text, re.M):
        n = m.group(1).strip()
        if len(n) <= 40 and "copyright" not in n.lower() and n not in names:  # a short licence name
            names.append(n)
    if names:
        return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    low = text.lower()
    found = [name for key, name in (("lesser general public", "LGPL"), ("gnu general public", "GPL"),
                                    ("creative commons", "CC"), ("public domain", "public domain"),
                                    ("bsd", "BSD"), ("mit license", "MIT")) if key in low]  # fmt: skip
    if found:
        return ", ".join(found) + " (free-form copyright file)"
    return "see copyright file"


# ----------------------------------------------------------------------------------- decontamination
def variant_family(package: str) -> str:
    """The package family of format variants: ``asterisk-moh-opsound-wav`` -> ``asterisk-moh-opsound``."""
    return re.sub(r"-(wav|gsm|g722|g729|ulaw|alaw|sln16|siren7|siren14)$", "", package)


def stem(path: str) -> str:
    """File stem of a package path (no directory, no extension)."""
    return path.rsplit("/", 1)[-1].rsplit("!", 1)[-1].split(".")[0]


def load_exclusions(metas: list[Path]) -> tuple[set[tuple[str, str]], set[str]]:
    """From evaluation-set ``meta.jsonl`` files: the excluded (package family, file stem) pairs and the
    normalised sentences they speak. The peer test set's sentence lists are added to the sentences."""
    files: set[tuple[str, str]] = set()
    texts: set[str] = set()
    for meta in metas:
        for line in meta.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            for s in rec.get("sources", []):
                pkg, f = s.get("package", ""), s.get("file", "")
                if pkg and f:
                    files.add((variant_family(pkg), stem(f)))
                if s.get("text"):
                    texts.add(norm_text(s["text"]))
            if rec.get("text"):
                texts.add(norm_text(str(rec["text"])))
    testset = REPO / "bench" / "testset.py"
    if testset.exists():  # COMMANDS, LONGER, BABBLE: tuples of sentences
        tree = ast.parse(testset.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in {"COMMANDS", "LONGER", "BABBLE"} for t in node.targets
            ):
                for s in ast.literal_eval(node.value):
                    texts.add(norm_text(s))
    return files, texts


def norm_text(s: str) -> str:
    """Lower-case letters and digits only (for sentence matching)."""
    return re.sub(r"[^\w]+", " ", s.lower()).strip()


# ----------------------------------------------------------------------------------- text + TTS
@dataclass(frozen=True)
class Voice:
    """A TTS voice: ``engine`` festival|espeak-ng, its name (espeak: ``lang+variant``), package,
    language of its text, text encoding (festival voices read bytes)."""

    engine: str
    name: str
    package: str
    lang: str
    encoding: str = "utf-8"

    @property
    def id(self) -> str:
        return f"{self.engine}/{self.name}"


FESTIVAL_VOICES = [
    Voice("festival", "czech_dita", "festvox-czech-dita", "cs", "iso-8859-2"),
    Voice("festival", "czech_krb", "festvox-czech-krb", "cs", "iso-8859-2"),
    Voice("festival", "czech_machac", "festvox-czech-machac", "cs", "iso-8859-2"),
    Voice("festival", "czech_ph", "festvox-czech-ph", "cs", "iso-8859-2"),
    Voice("festival", "suo_fi_lj_diphone", "festvox-suopuhe-lj", "fi", "latin-1"),
    Voice("festival", "hy_fi_mv_diphone", "festvox-suopuhe-mv", "fi", "latin-1"),
    Voice("festival", "lp_diphone", "festvox-italp16k", "it", "latin-1"),
    Voice("festival", "pc_diphone", "festvox-itapc16k", "it", "latin-1"),
    Voice("festival", "upc_ca_ona_hts", "festvox-ca-ona-hts", "ca", "latin-1"),
    Voice("festival", "hindi_NSK_diphone", "festvox-hi-nsk", "hi"),
    Voice("festival", "marathi_NSK_diphone", "festvox-mr-nsk", "mr"),
    Voice("festival", "telugu_NSK_diphone", "festvox-te-nsk", "te"),
]
# espeak-ng: language -> variants (formant synthesis; 3 variants per language, fixed)
ESPEAK_LANGS = {
    "en-us": "m1 f2 klatt", "en-gb-x-rp": "m3 f4 klatt3", "en-gb-scotland": "m2 f1", "de": "m4 f3 klatt2",
    "es": "m5 f1 klatt4", "it": "m6 f5", "cs": "m2 f3", "pl": "m3 f2", "ru": "m1 f4", "pt-br": "m7 f1",
    "eo": "m4 f5", "bg": "m5 f2", "ga": "m6 f3", "fi": "m7 f4", "ca": "m1 f5", "fr": "m3 f1 klatt",
    "nl": "m2 f2", "sv": "m4 f4", "hu": "m5 f5", "tr": "m6 f1", "hi": "m3 f2",
}  # fmt: skip
ESPEAK_TEXT_LANG = {"en-us": "en", "en-gb-x-rp": "en", "en-gb-scotland": "en", "pt-br": "pt"}
FORTUNE_DIRS = {  # language -> fortune files (relative to usr/share/games/fortunes)
    "en": ["fortunes", "wisdom", "people", "education", "food", "science", "work", "literature",
           "miscellaneous", "platitudes", "pets", "humorists", "politics", "love", "kids", "medicine",
           "songs-poems"],
    "de": ["de/*"], "es": ["es/*"], "it": ["it/*", "italia", "definizioni", "leggi"], "cs": ["cs/*"],
    "pl": ["pl/*"], "ru": ["ru/*"], "pt": ["brasil"], "eo": ["eo/*"], "bg": ["bg/*"], "ga": ["ga/*"],
}  # fmt: skip
MO_LANGS = {"fi": "fi", "ca": "ca_ES", "fr": "fr", "nl": "nl", "sv": "sv", "hu": "hu", "tr": "tr"}


def _sentences(text: str) -> Iterator[str]:
    """Plausible spoken sentences of ``text``: 4..28 words, mostly letters, no URLs/code."""
    text = re.sub(r"\s+", " ", text)
    for s in re.split(r"(?<=[.!?;:])\s+", text):
        s = s.strip(" -\"'«»“”()[]")
        if not 4 <= len(s.split()) <= 28 or len(s) > 220:
            continue
        if re.search(r"https?:|www\.|@|[<>{}\\|#=_~^*]|\d{3,}|%[sd]", s):
            continue
        letters = sum(ch.isalpha() for ch in s)
        if letters < 0.7 * len(s.replace(" ", "")):
            continue
        yield s


def text_pool(data: Path, exclude: set[str]) -> dict[str, list[str]]:
    """Sentences per language from fortunes, warzone2100's translations and festival's Indic samples,
    minus any sentence spoken in an evaluation set; sorted and de-duplicated (deterministic)."""
    pool: dict[str, set[str]] = defaultdict(set)
    for lang, pats in FORTUNE_DIRS.items():
        for pkg in TEXT_PACKAGES:
            base = data / "pkgs" / pkg / "usr/share/games/fortunes"
            for pat in pats:
                for f in sorted(base.glob(pat)):
                    if f.is_file() and f.suffix not in (".dat", ".u8") and not f.is_symlink():
                        raw = f.read_bytes().decode("utf-8", errors="replace")
                        for cookie in raw.split("\n%\n"):
                            cookie = re.sub(r"\n\s*(--|—).*$", "", cookie, flags=re.S)  # attribution
                            pool[lang].update(_sentences(cookie))
    wz = data / "pkgs" / "warzone2100-data" / "usr/share/locale"
    for lang, loc in MO_LANGS.items():
        mo = wz / loc / "LC_MESSAGES" / "warzone2100.mo"
        if mo.exists():
            with open(mo, "rb") as fh:
                cat = gettext.GNUTranslations(fh)._catalog  # type: ignore[attr-defined]
            for v in cat.values():
                if isinstance(v, str):
                    pool[lang].update(_sentences(v))
    for lang, pkg in (("hi", "festival-hi"), ("mr", "festival-mr"), ("te", "festival-te")):
        f = data / "pkgs" / pkg / "usr/share/doc" / pkg / "examples/sample.txt"
        if f.exists():
            for s in re.split(r"(?<=[।.!?])\s+|\n", f.read_text(errors="replace")):
                s = s.strip()
                if 2 <= len(s.split()) <= 28:
                    pool[lang].add(s)
    out = {}
    for lang, ss in pool.items():
        keep = [s for s in ss if norm_text(s) not in exclude and s.isprintable()]
        out[lang] = sorted(keep)
    return out


def ttsroot(data: Path) -> Path:
    """Unpack the TTS packages into one private root (``DATA/ttsroot``): festival's and the voices'
    hard-coded ``/usr/share/festival`` paths are rewritten to point inside it."""
    root = data / "ttsroot"
    if (root / ".done").exists():
        return root
    subprocess.run(["rm", "-rf", str(root)], check=True)
    root.mkdir(parents=True)
    for p in TTS_PACKAGES:
        (deb,) = (data / "debs").glob(f"{p}_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    fest = root / "usr/share/festival"
    for f in fest.rglob("*.scm"):
        b = f.read_bytes()
        if b"/usr/share/festival" in b:
            f.write_bytes(re.sub(rb"(?<![\w/])/usr/share/festival", str(fest).encode(), b))
    (root / ".done").write_text("ok\n")
    return root


def _scheme_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def synth_voice(root: Path, voice: Voice, texts: list[str], outdir: Path, seed: int) -> list[Path]:
    """Synthesise ``texts`` with ``voice`` into ``outdir/<i>.wav`` (skips existing files); return paths.

    espeak-ng: rate 140..190 words/min and pitch 35..65 drawn per sentence from ``seed``."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [outdir / f"{i:04d}.wav" for i in range(len(texts))]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    if not todo:
        return paths
    env = dict(os.environ, LD_LIBRARY_PATH=str(root / "usr/lib/x86_64-linux-gnu"))
    if voice.engine == "espeak-ng":
        rng = np.random.default_rng([seed, int(hashlib.sha1(voice.id.encode()).hexdigest()[:8], 16)])
        params = [(int(rng.integers(140, 191)), int(rng.integers(35, 66))) for _ in texts]
        for i in todo:
            tmp = paths[i].with_suffix(".tmp.wav")
            subprocess.run([str(root / "usr/bin/espeak-ng"), f"--path={root / 'usr/lib/x86_64-linux-gnu'}",
                            "-v", voice.name, "-s", str(params[i][0]), "-p", str(params[i][1]),
                            "-w", str(tmp), texts[i]], env=env, check=True, capture_output=True)  # fmt: skip
            tmp.rename(paths[i])
        return paths
    fest = root / "usr/share/festival"
    lines = [
        f'(set! datadir "{fest}/")',
        f'(set! lexdir "{fest}/dicts/")',
        f'(set! load-path (append (list "{fest}/" "{fest}/upc_catalan/" "{fest}/dicts/upc/") load-path))',
        f'(set! voice-path (list "{fest}/voices/"))',
        "(set! voice-locations nil)",
        "(search-for-voices)",
        f"(voice.select '{voice.name})",
    ]
    for i in todo:
        tmp = paths[i].with_suffix(".tmp.wav")
        lines.append(f"(set! u (SynthText {_scheme_str(texts[i])}))")
        lines.append(f"(utt.save.wave u \"{tmp}\" 'riff)")
    script = outdir / "synth.scm"
    script.write_bytes(("\n".join(lines) + "\n").encode(voice.encoding, errors="replace"))
    subprocess.run([str(root / "usr/bin/festival"), "--libdir", str(fest), "-b", str(script)], env=env,
                   check=False, capture_output=True)  # fmt: skip
    for i in todo:
        tmp = paths[i].with_suffix(".tmp.wav")
        if tmp.exists():
            tmp.rename(paths[i])
    return [p for p in paths if p.exists()]


def make_tts(data: Path, texts: dict[str, list[str]], per_voice: dict[str, int], seed: int,
             versions: dict[str, str]) -> list[Item]:  # fmt: skip
    """Synthesise the TTS share: ``per_voice[engine]`` sentences per voice, drawn from the voice's
    language pool with a seeded generator (deterministic); return the items to decode."""
    root = ttsroot(data)
    voices = list(FESTIVAL_VOICES)
    for lang, variants in ESPEAK_LANGS.items():
        for v in variants.split():
            voices.append(Voice("espeak-ng", f"{lang}+{v}", "espeak-ng", ESPEAK_TEXT_LANG.get(lang, lang)))
    items = []
    for voice in voices:
        pool = texts.get(voice.lang, [])
        if not pool:
            print(f"prepare_data: no text for {voice.id} ({voice.lang}); skipped")
            continue
        rng = np.random.default_rng([seed, int(hashlib.sha1(voice.id.encode()).hexdigest()[:8], 16)])
        n = min(per_voice[voice.engine], len(pool))
        chosen = [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=False)]
        outdir = data / "tts" / voice.engine / voice.name.replace("+", "_")
        paths = synth_voice(root, voice, chosen, outdir, seed)
        done = {p.name: p for p in paths}
        for i, t in enumerate(chosen):
            p = outdir / f"{i:04d}.wav"
            if p.name in done:
                group = f"{voice.package}:{voice.name.split('+')[0]}" if voice.engine == "espeak-ng" else \
                    f"{voice.package}:{voice.name}"  # fmt: skip
                rel = str(p.relative_to(data))
                items.append(Item(voice.package, versions.get(voice.package, ""), rel, "speech", group,
                                  "synthetic", voice.lang, t))  # fmt: skip
        print(f"  {voice.id}: {len(done)} / {len(chosen)} sentences", flush=True)
    return items


# ----------------------------------------------------------------------------------- decoding
def decode_bytes(raw: bytes, name: str) -> np.ndarray:
    """Decode one file's bytes to float32 mono 16 kHz, shape (n,)."""
    if name.endswith(".g722"):
        r = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "g722", "-i", "pipe:0",
                            "-f", "f32le", "-ac", "1", "-ar", str(RATE), "pipe:1"], input=raw,
                           capture_output=True, check=True)  # fmt: skip
        return np.frombuffer(r.stdout, "<f4").astype(np.float32)
    if name.endswith(".raw"):
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
        sr = 16000 if "16k" in name else 8000
    else:
        x, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
        x = x.mean(axis=1)
    if sr != RATE:
        x = soxr.resample(x, sr, RATE, quality="VHQ").astype(np.float32)
    return np.ascontiguousarray(x, np.float32)


_ZIPS: dict[Path, zipfile.ZipFile] = {}  # open archives of this process (0ad's has ~40 k members)


def read_bytes(data: Path, item: Item) -> bytes:
    """The file's bytes: from the unpacked package, a zip member, or the TTS output."""
    if item.kind == "synthetic":
        return (data / item.path).read_bytes()
    base = data / "pkgs" / item.package
    if "!" in item.path:
        arch, member = item.path.split("!", 1)
        if base / arch not in _ZIPS:
            _ZIPS[base / arch] = zipfile.ZipFile(base / arch)
        return _ZIPS[base / arch].read(member)
    return (base / item.path).read_bytes()


def frame_db(x: np.ndarray, n: int = 320) -> np.ndarray:
    """RMS level in dBFS of consecutive ``n``-sample frames of ``x`` (n,) -> (len // n,)."""
    m = x.size // n
    if m == 0:
        return np.full(1, -120.0)
    e = np.mean(x[: m * n].reshape(m, n).astype(np.float64) ** 2, axis=1)
    return 10.0 * np.log10(e + 1e-12)


def trim(x: np.ndarray, role: str) -> tuple[np.ndarray, dict[str, float]] | None:
    """Trim leading/trailing silence; None when ``x`` is silence only or too short (speech < 0.25 s,
    noise < 0.1 s). Silence: 20 ms frames more than 45 dB (speech; noise 60 dB) below the loudest one or
    below -70 dBFS; 60 ms margins kept. Also returns the active level (dBFS) and the floor (dBFS)."""
    if not np.isfinite(x).all():
        return None
    db = frame_db(x)
    peak = float(db.max())
    if peak < -60.0:
        return None
    thr = max(peak - (45.0 if role == "speech" else 60.0), -70.0)
    on = np.flatnonzero(db > thr)
    a = max(0, (on[0] - 3) * 320)
    b = min(x.size, (on[-1] + 4) * 320)
    y = x[a:b]
    act = db[on[0] : on[-1] + 1]
    act = act[act > thr]
    if y.size < (RATE // 4 if role == "speech" else RATE // 10):
        return None
    level = float(10 * np.log10(np.mean(10 ** (act / 10))))
    floor = float(np.percentile(db[on[0] : on[-1] + 1], 10))
    return y, {"level_db": level, "floor_db": floor, "peak_frame_db": peak}


def _work(args: tuple[Path, Item]) -> tuple[Item, np.ndarray | None, dict[str, float], str]:
    data, item = args
    try:
        x = decode_bytes(read_bytes(data, item), item.path.lower())
    except Exception as e:  # an unreadable asset is recorded and skipped
        return item, None, {}, f"decode: {type(e).__name__}"
    r = trim(x, item.role)
    if r is None:
        return item, None, {}, "silent or too short"
    return item, r[0], r[1], ""


# ----------------------------------------------------------------------------------- RIRs
def make_rirs(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` shoebox room impulse responses at 16 kHz, (n, 8000) float32, with the direct-path index.

    Rooms 2.5x2.5x2.3 .. 10x8x4 m, RT60 0.1 .. 1.0 s (pyroomacoustics ``inverse_sabine``; image-source
    order capped at 20), source and mic at least 0.4 m from the walls, 0.3 .. 5 m apart. Each RIR starts
    40 samples before its direct path and is normalised to a unit direct path (the peak).
    """
    import pyroomacoustics as pra

    rng = np.random.default_rng(seed)
    out = np.zeros((n, RATE // 2), np.float32)
    direct = np.zeros(n, np.int32)
    rt = np.zeros(n, np.float32)
    for i in range(n):
        while True:
            dims = rng.uniform([2.5, 2.5, 2.3], [10, 8, 4])
            t60 = rng.uniform(0.1, 1.0)
            try:
                absorb, order = pra.inverse_sabine(t60, dims)
            except ValueError:
                continue
            room = pra.ShoeBox(dims, fs=RATE, materials=pra.Material(absorb), max_order=min(order, 20))
            src = rng.uniform([0.4, 0.4, 0.8], dims - [0.4, 0.4, 0.6])
            mic = rng.uniform([0.4, 0.4, 0.6], dims - [0.4, 0.4, 0.6])
            d = float(np.linalg.norm(src - mic))
            if 0.3 <= d <= 5.0:
                break
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        h = np.asarray(room.rir[0][0], np.float64)
        k = int(np.argmax(np.abs(h)))
        h = h[max(0, k - 40) :][: out.shape[1]]
        out[i, : h.size] = h / np.abs(h).max()
        direct[i] = min(k, 40)
        rt[i] = t60
        if (i + 1) % 500 == 0:
            print(f"  {i + 1} RIRs", flush=True)
    return {"rir": out, "direct": direct, "rt60": rt}


# ----------------------------------------------------------------------------------- main
def list_items(data: Path, versions: dict[str, str],
               excluded: set[tuple[str, str]]) -> tuple[list[Item], int]:  # fmt: skip
    """Every selected file of the audio packages minus the evaluation sources; also the excluded count."""
    items: list[Item] = []
    n_excl = 0
    for p in AUDIO_PACKAGES:
        root = data / "pkgs" / p
        fam = variant_family(p)
        rels: list[str] = []
        if p in ARCHIVES:
            with zipfile.ZipFile(root / ARCHIVES[p]) as z:
                rels = [f"{ARCHIVES[p]}!{n}" for n in sorted(z.namelist()) if not n.endswith("/")]
        else:
            rels = [f.relative_to(root).as_posix() for f in sorted(root.rglob("*")) if f.is_file()]
        for rel in rels:
            sel = select(p, rel)
            if sel is None:
                continue
            if (fam, stem(rel)) in excluded:
                n_excl += 1
                continue
            items.append(Item(p, versions[p], rel, sel[0], sel[1], sel[2], sel[3]))
    return items, n_excl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/voxd-train/data"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rirs", type=int, default=4000, help="number of simulated RIRs")
    ap.add_argument("--seed", type=int, default=20250520)
    ap.add_argument("--festival-per-voice", type=int, default=70, help="sentences per festival voice")
    ap.add_argument("--espeak-per-voice", type=int, default=24, help="sentences per espeak-ng voice")
    ap.add_argument("--exclude-meta", type=Path, action="append", default=[],
                    help="JSONL of an evaluation set; its source files are left out of training")  # fmt: skip
    args = ap.parse_args()
    data: Path = args.data
    if not args.exclude_meta:
        print("prepare_data: warning: no --exclude-meta given; evaluation sources are not excluded")
    check_deny(list(PINNED))
    versions = fetch(data, list(PINNED))
    excluded, eval_texts = load_exclusions(args.exclude_meta)

    items, n_excl = list_items(data, versions, excluded)
    print(f"{len(items)} audio files selected ({n_excl} excluded as evaluation sources or their variants)")
    texts = text_pool(data, eval_texts)
    print("TTS text pool: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(texts.items())), flush=True)
    items += make_tts(data, texts, {"festival": args.festival_per_voice, "espeak-ng": args.espeak_per_voice},
                      args.seed, versions)  # fmt: skip

    # byte-identical assets are kept once (tilesets and voice packs ship duplicates)
    seen: set[str] = set()
    uniq: list[Item] = []
    n_dup = 0
    for it in items:
        h = hashlib.sha1(read_bytes(data, it)).hexdigest()
        if h in seen:
            n_dup += 1
            continue
        seen.add(h)
        uniq.append(it)
    items = uniq
    print(f"{len(items)} files to decode ({n_dup} duplicates dropped)", flush=True)

    def split_of(group: str) -> str:
        u = int(hashlib.sha1(group.encode()).hexdigest()[:8], 16) / 2**32
        return "val" if u < VAL_FRACTION else "train"

    audio = data / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    decoded: list[tuple[Item, np.ndarray, dict[str, float]]] = []
    skipped: dict[str, int] = defaultdict(int)
    for z in _ZIPS.values():  # forked workers must not share the parent's file offsets
        z.close()
    _ZIPS.clear()
    with mp.Pool(args.jobs) as pool:
        for k, (item, y, stats, why) in enumerate(
            pool.imap(_work, [(data, it) for it in items], chunksize=16)
        ):
            if y is None:
                skipped[f"{item.package}: {why}"] += 1
            else:
                decoded.append((item, y, stats))
            if (k + 1) % 2000 == 0:
                print(f"  decoded {k + 1} / {len(items)}", flush=True)

    # cap the synthetic share of the training speech (drop the last synthetic items, deterministic)
    def minutes(pred: object) -> float:
        return sum(y.size for it, y, _ in decoded if pred(it)) / RATE / 60  # type: ignore[operator]

    real = minutes(lambda it: it.role == "speech" and it.kind == "real" and split_of(it.group) == "train")
    synth_idx = [i for i, (it, _, _) in enumerate(decoded)
                 if it.kind == "synthetic" and split_of(it.group) == "train"]  # fmt: skip
    cap = MAX_SYNTH_SHARE / (1 - MAX_SYNTH_SHARE) * real * RATE * 60
    total, drop = 0.0, set()
    for i in synth_idx:
        total += decoded[i][1].size
        if total > cap:
            drop.add(i)
    decoded = [d for i, d in enumerate(decoded) if i not in drop]
    if drop:
        print(f"{len(drop)} synthetic items dropped to keep the synthetic share <= {MAX_SYNTH_SHARE:.0%}")

    offsets: dict[tuple[str, str], int] = defaultdict(int)
    index: list[dict[str, object]] = []
    keys = [(r, s) for r in ("speech", "noise") for s in ("train", "val")]
    with ExitStack() as stack:
        outs = {k: stack.enter_context(open(audio / f"{k[0]}_{k[1]}.f32.tmp", "wb")) for k in keys}
        for item, y, stats in decoded:
            split = split_of(item.group)
            key = (item.role, split)
            outs[key].write(y.astype("<f4").tobytes())
            rec = {**asdict(item), "split": split, "offset": offsets[key], "length": int(y.size)}
            index.append({**rec, **{k: round(v, 2) for k, v in stats.items()}})
            offsets[key] += int(y.size)
    for r, s in keys:
        os.replace(audio / f"{r}_{s}.f32.tmp", audio / f"{r}_{s}.f32")

    used = sorted({str(rec["package"]) for rec in index})
    licences = {p: licence_of(data, p) for p in used}
    card = data_card(index, versions, licences, skipped, n_excl)
    (audio / "inventory.md").write_text(card)
    manifest = {"rate": RATE, "versions": versions, "licences": licences, "excluded_eval_sources": n_excl,
                "args": {k: str(v) for k, v in vars(args).items()}, "files": index}  # fmt: skip
    tmp = audio / "index.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=0))
    os.replace(tmp, audio / "index.json")
    print(card)

    rir_path = data / "rirs.npz"
    if not rir_path.exists():
        bank = make_rirs(args.rirs, args.seed)
        np.savez(data / "rirs.tmp.npz", **bank)
        os.replace(data / "rirs.tmp.npz", rir_path)
        print(f"{args.rirs} RIRs -> {rir_path}")


def data_card(index: list[dict[str, object]], versions: dict[str, str], licences: dict[str, str],
              skipped: dict[str, int], n_excl: int) -> str:  # fmt: skip
    """Markdown table: package, version, licence, files, minutes train/val, languages, role."""
    agg: dict[tuple[str, str, str], dict[str, object]] = {}
    for rec in index:
        role = str(rec["role"]) if rec["role"] == "noise" else f"speech ({rec['kind']})"
        k = (role, str(rec["package"]), str(rec["kind"]) if rec["role"] == "noise" else "")
        a = agg.setdefault(k, {"files": 0, "train": 0.0, "val": 0.0, "langs": set(), "kinds": set()})
        a["files"] = int(a["files"]) + 1  # type: ignore[call-overload]
        a[str(rec["split"])] = float(a[str(rec["split"])]) + int(rec["length"]) / RATE / 60  # type: ignore[arg-type]
        if rec["lang"]:
            a["langs"].add(str(rec["lang"]))  # type: ignore[union-attr]
    lines = ["| role | package | version | licence | files | train min | val min | languages / kind |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for (role, pkg, kind), a in sorted(agg.items(), key=lambda kv: (kv[0][0], -float(kv[1]["train"]))):  # type: ignore[arg-type]
        langs = " ".join(sorted(a["langs"])) if a["langs"] else kind  # type: ignore[arg-type, call-overload]
        lic = licences.get(pkg, "").replace("|", "/")
        lines.append(f"| {role} | {pkg} | {versions.get(pkg, '')} | {lic} | {a['files']} | "
                     f"{float(a['train']):.1f} | {float(a['val']):.1f} | {langs} |")  # type: ignore[arg-type]  # fmt: skip
        totals[role][0] += float(a["train"])  # type: ignore[arg-type]
        totals[role][1] += float(a["val"])  # type: ignore[arg-type]
    lines.append("")
    for role, (tr, va) in sorted(totals.items()):
        lines.append(f"- **{role}**: {tr:.1f} min train, {va:.1f} min val")
    sp_r, sp_s = totals.get("speech (real)", [0, 0])[0], totals.get("speech (synthetic)", [0, 0])[0]
    if sp_r + sp_s:
        lines.append(f"- synthetic share of training speech: {100 * sp_s / (sp_r + sp_s):.1f} %")
    lines.append(f"- evaluation source files (and their format variants) excluded: {n_excl}")
    lines.append("- skipped: " + (", ".join(f"{k} x{v}" for k, v in sorted(skipped.items())) or "none"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
