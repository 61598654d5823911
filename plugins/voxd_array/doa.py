"""``doa``: direction of arrival (SRP-PHAT) and a check of the capture channel order.

Chain entry (spectral domain, after ``vad``; needs the ``array`` geometry)::

    - {stage: doa}                       # estimate; requires 'speech' from an earlier vad
    - {stage: doa, fixed_deg: 90}        # a fixed direction, no estimation (the channel check still runs)

The spectra pass through unchanged. Side values on every frame: ``doa_deg`` (float, ``0 <= az < 360``,
degrees counter-clockwise from +x in the array's x-y plane; travels in the wire header) and
``doa.confidence`` (float 0..1: the share of the PHAT-weighted cross-power of the recent speech that one
plane wave from that direction explains, after the non-speech part is taken out; 0 before the first
estimate; a clean plane wave at 20 dB SNR gives about 0.7, speech in the benchmark rooms 0.1-0.3).

Estimation
----------
Every hop the PHAT-weighted cross-spectra ``y_i y_j*`` (``y = x / |x|``) of all microphone pairs are
formed over ``fmin_hz..fmax_hz`` (for two mics this is GCC-PHAT). Frames the VAD marks as speech are
averaged with forgetting time ``track_s`` (seconds of speech), the other frames separately (``noise_s``),
and the direction is the maximum of the SRP map of *speech average minus non-speech average*: a source
that sounds outside speech as much as during it (a fan, a TV, music, a second talker who does not stop
when ours does) cancels, while our talker, who sounds only in speech frames, remains. A causal VAD
confirms an onset late (the ``vad`` stage's ``speech`` flag: 0.14 s after the onset, median on the shared
benchmark, quartiles 0.12-0.19 s), so each frame's cross-spectra wait ``vad_lag_s`` in a delay line and
are classified by the decision that much later; otherwise the first syllables of every utterance land in
the non-speech average and cancel the talker. Between speech frames the last value is held. The map is
searched every ``search_every`` speech frames over an azimuth grid (``grid_deg``, refined by a parabola
through the neighbours of the maximum) times a few elevations (``elevations_deg``): a source above a
planar array shortens every delay by cos(elevation). Only the azimuth is reported. A linear array cannot
tell azimuth ``a`` from ``-a`` (its map is mirror-symmetric); one of the two is reported.

The map is evaluated in two steps (:class:`SrpGrid`): the GCC function of every pair on a lag grid of
1/8 sample (one ``(P, 2K) x (2K, L)`` matmul), then for every direction the sum over pairs of that
function at the pair's delay (a linearly interpolated gather). The tables are built at ``open``.

Measured on the shared benchmark ``bench/dev/array`` (16 simulated rooms, RT60 0.17-0.79 s, interferers
noise / music / TV babble / a second talker at SIR -5..10 dB, talkers 1-38 deg above the array), chain
``vad -> doa`` with the defaults (``python bench/doa_bench.py``): median absolute azimuth error over the
items 4.5 deg at the end of the file (11 of 16 items within 10 deg) and 5.6 deg for the median estimate
over the speech frames after the first second of speech. The misses are the items whose interferer is
louder speech or babble (SIR -5 dB) or a second talker who pauses with ours: nothing in the sound says
which talker is ours. The choices, on the same set (end-of-file median error): 300-3500 Hz 16.0 deg
against 4.5 for 300-8000 Hz (the upper band holds the narrow part of a 6-9 cm array's beam); without
the non-speech subtraction 64.7 deg; with it but no VAD lag 40.8 deg (0.1 s: 16.6, 0.3 s: 7.2); a 2, 5
or 10 deg grid within 0.4 deg of each other after refinement; elevations (0, 30, 60) against 0 alone:
11 against 10 items within 10 deg. Cost per 10 ms frame on this x86_64 Xeon, one thread, 2 shared and
busy cores: 4 mics p50 46-58 us, p99 125-140 us; 6 mics p50 75-88 us, p99 190-240 us (every frame
speech, and ``bench/chain_bench.py`` with ``highpass -> vad -> doa`` on a benchmark recording).

Channel-order check (``check_channels``)
----------------------------------------
ReSpeaker boards are known to deliver their channels in a rotated or otherwise wrong order. The stage
keeps a second speech average (``check_window_s``) and every ``check_every_s`` of speech compares how
well the configured order fits the geometry with how well every other order would: the fit of an order
is the maximum over directions of its SRP map divided by ``P * K`` (the share of the cross-power one
plane wave explains). When another order fits more than ``check_margin`` (relative) better, with a best
fit of at least :data:`CHECK_MIN_FIT`, on ``check_persist`` consecutive checks naming the same fix, the
stage emits ONE event ``channel_map_suspect`` (``permutation``: the ``capture.channel_map`` that restores
the configured order, output channel m taking the channel now delivered as ``permutation[m]`` -- compose
it with an existing map as ``new[m] = old[permutation[m]]``; ``score`` and ``score_configured``, the two
fits; ``ties``, how many orders fit as well as the named one, 1 when it is unambiguous; ``stage``) and
logs one warning naming the fix. Not again until ``reset()``. (That warning is the only log line above
DEBUG that ``process`` writes: once per stream at most.) Fits within :data:`TIE` of the best count as
ties, and among tied orders the fix that moves the fewest channels is named (a swapped pair is the
likelier wiring fault). The classes are scored a few per frame (:data:`CHECK_BUDGET`), so a check never
costs one frame much.

What can and cannot be detected: an order that is a *symmetry* of the array -- a relabelling of the
microphones that a rigid rotation or reflection of the array reproduces (all pairwise distances kept) --
fits every recording exactly as well as the true order. Feeding mic ``r(i)`` where mic ``i`` is expected
gives, for a far-field source in direction ``u``, the delays of the true order for a source at
``R^-1 u``: the whole sound field, room reflections included, is just turned or mirrored, and rotations
about the array's axis leave even the floor and ceiling where they were. So orders are scored once per
class of mutually symmetric orders (:func:`order_classes`), exact ties are never suspect, and no cue in a
far-field recording of omnidirectional, matched microphones can reveal a cyclic rotation: it takes an
absolute reference this stage does not have (a source at a known direction such as the device's own
loudspeaker, a known talker position, or a board-specific asymmetry of gains or housing measured per
device). On the three ReSpeaker presets every cyclic rotation of the channel order and every reversal is
such a symmetry (the dihedral group: 8 of the 24 orders of 4 mics, 12 of the 720 of 6, leaving 3 and 60
classes), and so is, on the 4-mic boards, a swap of two *opposite* mics (a mirror through the other
two). Detectable: a swapped pair of neighbours, any order that is not a rotation or reflection, and on
a linear array a rotated order (only the reversal is a symmetry there). A single talker on a mirror line
of the array also ties some non-symmetric orders; more directions separate them. Measured on the 16 dev
recordings (ratio of the best other fit to the configured fit, maximum over all checks): true order
0.68-1.000, rotated by one 0.68-1.000, reversed 0.67-1.000 (1.000: exact ties), never an event;
channels 0 and 1 swapped 1.065-1.78, event on 14 of 16 items after 3.0-3.4 s of speech, every fix
restoring the order up to a symmetry (missed: one item with 1.7 s of speech, one at ratio <= 1.065).
Independent noise on every channel fits 0.001-0.002 with ratios up to 1.7, hence the minimum fit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field, model_validator

from voxd.frame import AudioFormat, Domain, Frame
from voxd.side import DOA_CONFIDENCE as CONFIDENCE
from voxd.side import DOA_DEG as DOA
from voxd.side import SPEECH
from voxd.stage import EventSink, FormatError, Stage, StageContext, StageParams

EVENT = "channel_map_suspect"
SPEED_OF_SOUND = 343.0  # m/s, when the context has none (voxd before array.speed_of_sound)
TINY = 1e-20  # |x| floor: a bin of digital silence gives a zero PHAT term, not a division by zero
LAG_STEP = 0.125  # GCC lag grid (samples): linear interpolation errs < 2 % at 8 kHz, < 0.5 % at 4 kHz
PLANAR_TOL_M = 1e-4  # every |z| below this: a planar array, whose maps above and below the plane mirror
SYMMETRY_TOL_M = 2e-4  # pairwise distances equal within this: a relabelling is a symmetry of the array
MAX_ALL_ORDERS = 6  # up to this many mics the check tries every channel order (720), else a subset
CHECK_BUDGET = 8000  # map values (pairs x directions x orders) one frame may spend on a running check
CHECK_MIN_FIT = 0.05  # below this best fit there is no coherent source to judge the order by
TIE = 0.01  # fits within this fraction of the best are ties: the simplest fix among them is named


class DoaParams(StageParams):
    """Parameters of the ``doa`` stage (angles in degrees; times in seconds of speech unless noted)."""

    fixed_deg: float | None = Field(None, ge=-720, le=720, description="a fixed direction (deg, wrapped to "
                                    "0-360): no estimation, doa_deg is always this value (the channel check "
                                    "still runs)")
    vad: bool = Field(True, description="use an earlier VAD's side value 'speech' (required unless "
                      "fixed_deg): only speech frames locate the talker, the others are subtracted; "
                      "false: every frame is speech")
    fmin_hz: float = Field(300.0, ge=0, le=24000, description="lowest frequency used (Hz)")
    fmax_hz: float = Field(8000.0, gt=0, le=24000,
                           description="highest frequency used (Hz; at most half the rate)")
    # at least 1 deg: the grid's steering tables grow with 360 / grid_deg (a config of 1e-6 deg asked for
    # tens of GiB), and the parabolic refinement already resolves far below the grid step
    grid_deg: float = Field(5.0, ge=1, le=30, description="azimuth grid step (deg, 1-30); the maximum is "
                            "refined between grid points")
    elevations_deg: list[Annotated[float, Field(ge=-90, le=90)]] = Field(
        default_factory=lambda: [0.0, 30.0, 60.0], min_length=1, max_length=10,
        description="elevations searched (deg above the array plane; also below it for a non-planar array)")
    track_s: float = Field(1.0, gt=0, le=60, description="forgetting time constant of the speech average "
                           "(s of speech)")
    noise_s: float = Field(3.0, gt=0, le=600, description="forgetting time constant of the non-speech "
                           "average (s of non-speech)")
    subtract_noise: bool = Field(True, description="search the map of speech minus non-speech frames "
                                 "(false: speech frames alone)")
    vad_lag_s: float = Field(0.2, ge=0, le=2, description="the VAD's decision delay (s of stream): each "
                             "frame is classified by the decision this much later")
    search_every: int = Field(1, ge=1, le=100, description="search the map every n-th speech frame")
    initial_deg: float = Field(0.0, ge=-720, le=720,
                               description="doa_deg before the first estimate (deg, wrapped to 0-360)")
    check_channels: bool = Field(True, description="check the channel order against the geometry and "
                                 "emit channel_map_suspect once if another order fits clearly better")
    check_window_s: float = Field(8.0, gt=0, le=600, description="forgetting time constant of the "
                                  "check's speech average (s of speech)")
    check_every_s: float = Field(1.0, gt=0, le=60, description="interval between checks (s of speech)")
    check_margin: float = Field(0.05, gt=0, le=1, description="another order is suspect when its fit "
                                "exceeds the configured order's by this fraction")
    check_persist: int = Field(3, ge=1, le=100, description="consecutive suspect checks before the event")

    @model_validator(mode="after")
    def _band(self) -> DoaParams:
        if self.fmax_hz <= self.fmin_hz:
            raise ValueError(f"fmax_hz {self.fmax_hz:g} must exceed fmin_hz {self.fmin_hz:g}")
        return self


# ------------------------------------------------------------------------------------------ geometry
def directions(grid_deg: float, elevations_deg: list[float], planar: bool) -> tuple[np.ndarray, np.ndarray]:
    """The search grid: azimuths ``(A,)`` (deg, ``0 <= az < 360``, equally spaced, about ``grid_deg``
    apart) and elevations ``(E,)`` (deg, sorted); a non-planar array is searched below its plane too."""
    n_az = max(8, round(360.0 / grid_deg))
    az = np.arange(n_az) * (360.0 / n_az)
    els = {abs(e) for e in elevations_deg}
    if not planar:
        els |= {-e for e in els}
    return az, np.asarray(sorted(els), dtype=np.float64)


def unit_vectors(az_deg: np.ndarray, el_deg: np.ndarray) -> np.ndarray:
    """Unit vectors towards the source, ``(E, A, 3)``, for azimuths ``(A,)`` and elevations ``(E,)`` (deg)."""
    a, e = np.deg2rad(az_deg)[None, :], np.deg2rad(el_deg)[:, None]
    return np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e) * np.ones_like(a)], axis=-1)


def symmetries(positions: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Which rows of ``orders`` ``(H, M)`` are symmetries of the array ``positions`` ``(M, 3)`` (m): the
    relabelling ``i -> orders[h, i]`` keeps every pairwise distance, so a rigid motion (rotation and/or
    reflection) of the array maps each mic onto its new label. Bool ``(H,)``."""
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    dp = d[orders[:, :, None], orders[:, None, :]]
    return np.all(np.abs(dp - d[None]) < SYMMETRY_TOL_M, axis=(1, 2))


def candidate_orders(m: int) -> np.ndarray:
    """Channel orders the check considers, ``(H, M)``: every permutation of up to :data:`MAX_ALL_ORDERS`
    mics; beyond that the rotations and reversals of the order and every swapped pair."""
    if m <= MAX_ALL_ORDERS:
        return np.asarray(list(itertools.permutations(range(m))), dtype=np.intp)
    base = np.arange(m)
    out = {tuple(int(v) for v in np.roll(o, s)) for o in (base, base[::-1]) for s in range(m)}
    for a, b in itertools.combinations(range(m), 2):
        o = base.copy()
        o[[a, b]] = o[[b, a]]
        out.add(tuple(int(v) for v in o))
    return np.asarray(sorted(out), dtype=np.intp)


@dataclass(frozen=True)
class OrderClasses:
    """Channel-order hypotheses, one per class of orders that the geometry cannot tell apart.

    ``orders`` ``(H, M)``: hypothesis h says chain channel i carries the mic of ``positions[orders[h, i]]``;
    row 0 is the configured order (the identity). ``fixes`` ``(H, M)``: the ``capture.channel_map`` that
    restores the configured order under hypothesis h (output channel m takes channel ``fixes[h, m]``),
    chosen among the class's members to move the fewest channels. ``sizes`` ``(H,)``: orders per class.
    """

    orders: np.ndarray
    fixes: np.ndarray
    sizes: np.ndarray


def order_classes(positions: np.ndarray) -> OrderClasses:
    """Group the candidate orders into classes ``{r o s : r a symmetry of the array}`` (orders a rigid
    motion of the array turns into one another, so that every recording fits them equally well) and keep
    one representative per class."""
    pos = np.asarray(positions, dtype=np.float64)
    m = pos.shape[0]
    cands = candidate_orders(m)
    sym = cands[symmetries(pos, cands)]
    ident = tuple(range(m))
    seen: set[tuple[int, ...]] = set()
    reps: list[np.ndarray] = []
    sizes: list[int] = []
    for order in cands:
        if tuple(order) in seen:
            continue
        members = np.unique(sym[:, order], axis=0)  # r o s: channel i carries mic r(s(i))
        keys = {tuple(int(v) for v in x) for x in members}
        seen |= keys
        if ident in keys:
            best = np.arange(m)
        else:
            fixes = np.argsort(members, axis=1)
            moved = np.sum(fixes != np.arange(m), axis=1)
            best = members[np.lexsort((*fixes.T[::-1], moved))[0]]  # fewest moved, then smallest fix
        reps.append(best)
        sizes.append(len(keys))
    first = next(i for i, o in enumerate(reps) if tuple(o) == ident)
    idx = [first] + [i for i in range(len(reps)) if i != first]
    orders = np.asarray(reps, dtype=np.intp)[idx]
    return OrderClasses(orders, np.argsort(orders, axis=1), np.asarray(sizes)[idx])


class SrpGrid:
    """SRP-PHAT machinery for one geometry, band and direction grid, precomputed.

    The map of averaged PHAT cross-spectra ``C`` ``(P, K)`` (pairs ``i < j``, bins ``k0 <= k < k1``) is
    ``S(d) = sum_p sum_k Re(C[p, k] exp(j w_k (tau_i(d) - tau_j(d))))``, ``tau_i(d) = -(p_i . u(d)) / c``
    the arrival time at mic i relative to the centre (s), ``w_k`` in rad/s. It is evaluated as the GCC
    function of every pair on a lag grid, ``g = Re(C E)`` with ``E[k, l] = exp(j w_k lag_l)``, then
    ``S(d) = sum_p g_p(tau_i(d) - tau_j(d))`` by linear interpolation in ``g``. A channel-order hypothesis
    only changes which lag each pair reads (:meth:`lookup`), so the check reuses ``g``.

    ``az`` ``(A,)`` and ``el`` ``(E,)`` (deg) span the directions, ``D = E * A`` of them, elevation-major;
    ``tau`` ``(D, M)`` (s).
    """

    def __init__(self, positions: np.ndarray, rate: int, n_fft: int, fmin_hz: float, fmax_hz: float,
                 c: float, grid_deg: float, elevations_deg: list[float]) -> None:
        pos = np.asarray(positions, dtype=np.float64)
        self.m = m = pos.shape[0]
        self.k0 = max(1, math.ceil(fmin_hz * n_fft / rate))
        self.k1 = min(n_fft // 2, math.floor(fmax_hz * n_fft / rate)) + 1
        if self.k1 - self.k0 < 2:
            raise ValueError(f"band {fmin_hz:g}-{fmax_hz:g} Hz holds fewer than 2 bins at n_fft {n_fft}")
        omega = 2.0 * np.pi * np.arange(self.k0, self.k1) * rate / n_fft
        pairs = list(itertools.combinations(range(m), 2))
        self.ii = np.asarray([i for i, _ in pairs], dtype=np.intp)
        self.jj = np.asarray([j for _, j in pairs], dtype=np.intp)
        planar = bool(np.all(np.abs(pos[:, 2]) < PLANAR_TOL_M))
        self.az, self.el = directions(grid_deg, elevations_deg, planar)
        u = unit_vectors(self.az, self.el).reshape(-1, 3)
        self.tau = -(u @ pos.T) / c
        span = float(np.max(np.linalg.norm(pos[:, None] - pos[None], axis=-1))) / c  # largest delay (s)
        self.step = LAG_STEP / rate
        half = math.ceil(span / self.step) + 1
        self.lag0, self.n_lags = -half * self.step, 2 * half + 1
        lags = self.lag0 + np.arange(self.n_lags) * self.step
        e = np.exp(1j * omega[:, None] * lags[None, :])  # (K, L)
        # Re(C E) = Re C Re E - Im C Im E; C viewed as float32 is [Re C0, Im C0, Re C1, ...] per pair,
        # so the rows interleave the same way and the complex average needs no copy
        self.emat = np.stack([e.real, -e.imag], axis=1).reshape(2 * self.bins, self.n_lags).astype(np.float32)
        self.lo, self.w0, self.w1 = self.lookup(np.arange(m))

    @property
    def pairs(self) -> int:
        """Number of microphone pairs ``P``."""
        return int(self.ii.size)

    @property
    def bins(self) -> int:
        """Number of bins in the band ``K``."""
        return self.k1 - self.k0

    def lookup(self, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices into ``g.ravel()`` (int32) and interpolation weights (float32), each ``(P, D)``, for the
        hypothesis that chain channel i carries mic ``order[i]``."""
        delta = self.tau[:, order[self.ii]].T - self.tau[:, order[self.jj]].T  # (P, D) s
        f = (delta - self.lag0) / self.step
        lo = np.clip(np.floor(f), 0, self.n_lags - 2)
        frac = (f - lo).astype(np.float32)
        idx = (lo + (np.arange(self.pairs) * self.n_lags)[:, None]).astype(np.int32)
        return idx, 1.0 - frac, frac

    def gcc(self, c: np.ndarray) -> np.ndarray:
        """GCC functions ``(P, L)`` float32 of averaged cross-spectra ``c`` complex64 ``(P, K)``."""
        return np.ascontiguousarray(c, dtype=np.complex64).view(np.float32) @ self.emat

    def srp(self, g: np.ndarray, lo: np.ndarray, w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
        """SRP maps ``(..., D)`` from GCC functions ``g`` ``(P, L)`` and a lookup ``(..., P, D)``: ``lo``
        indexes ``g.ravel()`` at the lag just below each pair's delay, ``w0``/``w1`` weigh it and the next."""
        gf = g.ravel()
        return (gf[lo] * w0 + gf[lo + 1] * w1).sum(axis=-2)

    def peak(self, srp: np.ndarray) -> tuple[float, int]:
        """Azimuth (deg) of the map's maximum, refined by a parabola through its azimuth neighbours, and
        the flat index of the maximum."""
        n_az = self.az.size
        best = int(np.argmax(srp))
        e, a = divmod(best, n_az)
        row = srp[e * n_az : (e + 1) * n_az]
        y0, y1, y2 = float(row[a - 1]), float(row[a]), float(row[(a + 1) % n_az])
        den = y0 - 2.0 * y1 + y2
        off = 0.5 * (y0 - y2) / den if den < 0 else 0.0  # |off| <= 0.5 at a true maximum
        return float((self.az[a] + off * (360.0 / n_az)) % 360.0), best


# ------------------------------------------------------------------------------------------ the stage
class Doa(Stage[DoaParams]):
    """Direction of arrival by SRP-PHAT and a one-shot check of the channel order (module docstring).

    After :meth:`open`: ``grid`` (:class:`SrpGrid`), ``classes`` (:class:`OrderClasses`, None without the
    check or when the geometry leaves nothing to check); ``last_check`` (None or a dict: the configured
    order's fit ``score_configured``; ``score``, ``order``, ``fix`` and ``ties`` of the best other class;
    ``speech_s`` seen): the latest completed check, for diagnostics and benchmarks.
    """

    kind = "doa"
    domain = Domain.SPECTRAL
    provides = (DOA, CONFIDENCE)
    needs_geometry: ClassVar[bool] = True

    @classmethod
    def required_keys(cls, params: DoaParams) -> tuple[str, ...]:
        return (SPEECH,) if params.vad and params.fixed_deg is None else ()

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        if fmt.channels < 2:
            raise FormatError(f"needs at least 2 channels (microphones), got {fmt.channels}")
        if self.params.fmin_hz >= fmt.rate / 2:
            raise FormatError(f"fmin_hz {self.params.fmin_hz:g} is not below half the rate ({fmt.rate} Hz)")
        return fmt

    def open(self, ctx: StageContext) -> None:
        fmt = self.input_format
        p = self.params
        if ctx.positions is None or np.shape(ctx.positions) != (fmt.channels, 3):
            got = "none" if ctx.positions is None else f"{np.shape(ctx.positions)[0]}"
            raise ValueError(f"doa needs one microphone position per channel ({fmt.channels}), got {got}: "
                             "configure the array section")
        positions = np.asarray(ctx.positions, dtype=np.float64)
        c = float(getattr(ctx, "speed_of_sound", SPEED_OF_SOUND))
        self._emit: EventSink = ctx.emit
        self._log = ctx.log
        self._frame_s = fmt.frame_s
        self.grid = g = SrpGrid(positions, fmt.rate, fmt.n_fft, p.fmin_hz, min(p.fmax_hz, fmt.rate / 2), c,
                                p.grid_deg, p.elevations_deg)
        self._a = math.exp(-fmt.frame_s / p.track_s)
        self._a_noise = math.exp(-fmt.frame_s / p.noise_s)
        self._a_long = math.exp(-fmt.frame_s / p.check_window_s)
        self._check_frames = max(1, round(p.check_every_s / fmt.frame_s))
        shape = (g.pairs, g.bins)
        self._zs = np.zeros(shape, np.complex64)  # speech average (track_s)
        self._zn = np.zeros(shape, np.complex64)  # non-speech average (noise_s)
        self._zl = np.zeros(shape, np.complex64)  # speech average for the check (check_window_s)
        self._tmp = np.zeros(shape, np.complex64)
        # Delay line: a frame's cross-spectra are classified by the VAD decision vad_lag_s later.
        self._lag = round(p.vad_lag_s / fmt.frame_s) if p.vad else 0
        self._ring = np.zeros((max(self._lag, 1), *shape), np.complex64)
        self.classes: OrderClasses | None = None
        if p.check_channels:
            classes = order_classes(positions)
            if len(classes.orders) > 1:  # e.g. 2 mics or an equilateral triangle: every order is a symmetry
                self.classes = classes
                looks = [g.lookup(o) for o in classes.orders]
                self._hlo = np.stack([x[0] for x in looks])  # (H, P, D)
                self._hw0 = np.stack([x[1] for x in looks])
                self._hw1 = np.stack([x[2] for x in looks])
                self._chunk = max(1, CHECK_BUDGET // (g.pairs * g.tau.shape[0]))
                self._scores = np.zeros(len(classes.orders))
        self.reset()

    def reset(self) -> None:
        p = self.params
        for z in (self._zs, self._zn, self._zl, self._ring):
            z[:] = 0.0
        self._ws = self._wn = self._wl = 0.0  # total weight of each average (bias correction at start)
        self._pos = 0  # ring slot of the oldest frame
        self._filled = 0  # frames in the ring: classification starts once it holds lag frames
        self._doa = float((p.fixed_deg if p.fixed_deg is not None else p.initial_deg) % 360.0)
        self._conf = 0.0
        self._speech_frames = 0
        self._since_check = 0
        self._pending: np.ndarray | None = None  # GCC functions of a check in progress
        self._next = 0  # next class that check evaluates
        self._streak = 0  # consecutive suspect checks naming the same fix
        self._streak_h = -1  # the class they name
        self._reported = False
        self.last_check: dict[str, object] | None = None

    def process(self, frame: Frame) -> Frame:
        spec = frame.spec
        assert spec is not None
        p = self.params
        estimate = p.fixed_deg is None
        check = self.classes is not None and not self._reported
        if self._pending is not None:
            self._check_step(frame.pts)
        if estimate or check:
            g = self.grid
            x = spec[:, g.k0 : g.k1]
            mag = np.abs(x)
            np.maximum(mag, TINY, out=mag)
            y = x / mag
            yc = y.conj()
            slot = self._ring[self._pos]
            if self._lag == 0:
                np.multiply(y[g.ii], yc[g.jj], out=slot)
            if self._filled >= self._lag:
                speech = bool(frame.side.get(SPEECH, True)) if p.vad else True
                self._classify(slot, speech, estimate, check)
            else:
                self._filled += 1
            if self._lag:
                # this frame's PHAT cross-spectra replace the oldest: classified lag frames from now
                np.multiply(y[g.ii], yc[g.jj], out=slot)
                self._pos = (self._pos + 1) % self._lag
        return frame.with_side(**{DOA: self._doa, CONFIDENCE: self._conf})

    def _classify(self, z: np.ndarray, speech: bool, estimate: bool, check: bool) -> None:
        """Average the cross-spectra ``z`` ``(P, K)`` of one frame as speech or non-speech."""
        if not speech:
            if estimate and self.params.subtract_noise:
                self._wn = _average(self._zn, z, self._a_noise, self._wn, self._tmp)
            return
        self._speech_frames += 1
        if estimate:
            self._ws = _average(self._zs, z, self._a, self._ws, self._tmp)
            if self._speech_frames % self.params.search_every == 0:
                self._search()
        if check:
            self._wl = _average(self._zl, z, self._a_long, self._wl, self._tmp)
            self._since_check += 1
            if self._since_check >= self._check_frames and self._pending is None:
                # snapshot now, score the classes a few per frame: a check never costs one frame much
                self._since_check = 0
                self._pending = self.grid.gcc(self._zl / self._wl)
                self._next = 0

    def _search(self) -> None:
        g = self.grid
        cross = self._tmp
        np.multiply(self._zs, 1.0 / self._ws, out=cross)
        if self._wn > 0:
            cross -= self._zn * np.float32(1.0 / self._wn)
        srp = g.srp(g.gcc(cross), g.lo, g.w0, g.w1)
        self._doa, best = g.peak(srp)
        self._conf = float(min(max(srp[best] / (g.pairs * g.bins), 0.0), 1.0))

    def fit_scores(self) -> np.ndarray:
        """Fit of every class of channel orders on the check's current average, ``(H,)``: the maximum
        over directions of the SRP map divided by ``P * K`` (0..1); row 0 is the configured order.
        Requires the check (``classes`` not None)."""
        assert self.classes is not None
        g = self.grid
        if self._wl <= 0:
            return np.zeros(len(self.classes.orders))
        maps = g.srp(g.gcc(self._zl / self._wl), self._hlo, self._hw0, self._hw1)
        return maps.max(axis=1) / (g.pairs * g.bins)

    def _check_step(self, pts: int) -> None:
        g = self.grid
        assert self._pending is not None
        h0, h1 = self._next, min(self._next + self._chunk, self._scores.size)
        maps = g.srp(self._pending, self._hlo[h0:h1], self._hw0[h0:h1], self._hw1[h0:h1])
        self._scores[h0:h1] = maps.max(axis=1) / (g.pairs * g.bins)
        self._next = h1
        if h1 == self._scores.size:
            self._pending = None
            self._decide(pts)

    def _decide(self, pts: int) -> None:
        """One complete check: count a suspect check, and emit once after ``check_persist`` in a row."""
        assert self.classes is not None
        scores, fixes = self._scores, self.classes.fixes
        conf = float(scores[0])
        best = float(scores[1:].max())
        # among the near-best classes, the fix that moves the fewest channels (then the best fitting)
        near = [h for h in range(1, scores.size) if scores[h] >= best * (1.0 - TIE)]
        h = min(near, key=lambda k: (int(np.sum(fixes[k] != np.arange(fixes.shape[1]))), -scores[k]))
        fix = [int(v) for v in fixes[h]]
        self.last_check = {"score_configured": conf, "score": float(scores[h]), "order":
                           [int(v) for v in self.classes.orders[h]], "fix": fix, "ties": len(near),
                           "speech_s": round(self._speech_frames * self._frame_s, 2)}
        suspect = best >= CHECK_MIN_FIT and best > conf * (1.0 + self.params.check_margin)
        # persistence counts checks naming the same fix: with few source directions several orders can
        # fit nearly alike, and the named fix must have settled
        self._streak = (self._streak + 1 if h == self._streak_h else 1) if suspect else 0
        self._streak_h = h if suspect else -1
        if self._streak >= self.params.check_persist:
            self._reported = True
            self._emit(EVENT, pts=pts, stage=self.name, permutation=fix, score=round(float(scores[h]), 4),
                       score_configured=round(conf, 4), ties=len(near))
            self._log.warning("channels look permuted: try capture.channel_map: %s (the geometry fits "
                              "%.3f with it, %.3f as configured; rotations and mirror images of the "
                              "array cannot be told apart)", fix, scores[h], conf)


def _average(acc: np.ndarray, z: np.ndarray, a: float, w: float, tmp: np.ndarray) -> float:
    """``acc = a acc + (1 - a) z`` in place (``tmp``: scratch of ``z``'s shape); returns the updated total
    weight ``a w + (1 - a)`` (dividing by it removes the start-up bias towards zero)."""
    acc *= a
    np.multiply(z, 1.0 - a, out=tmp)
    acc += tmp
    return a * w + (1.0 - a)
