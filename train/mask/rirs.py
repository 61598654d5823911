#!/usr/bin/env python3
"""A bank of simulated multichannel room impulse responses for the array mask model's mixtures.

    .venv/bin/python train/mask/rirs.py --out /work/voxd-train/mask-rirs --rooms 1500 [--val-rooms 60] \
        [--seed 0] [--shard 25]

Per room (:func:`draw_room`, :func:`simulate_room`), at 16 kHz:

- **array**: a ``voxd.geometry`` preset, cycled over :data:`GEOMETRIES` by room index (room ``i``:
  ``GEOMETRIES[i % 3]``; channel ``j`` = mic ``j`` of the preset), horizontal, at a random yaw, placed
  on a **table** (p 0.45: 0.7 .. 1.0 m high, >= 0.5 m from the walls), a **shelf** (p 0.3: 1.0 .. 1.8 m,
  0.1 .. 0.4 m from a wall) or **wall-mounted** (p 0.25: 1.2 .. 2.0 m, its centre 0.07 .. 0.12 m from a
  wall).
- **room**: pyroomacoustics ``ShoeBox``, image sources only (no ray tracing, no air absorption, no
  randomised ISM), 3 .. 9 x 3 .. 7 m, 2.4 .. 3.3 m high. Design RT60 uniform 0.1 .. 0.9 s; absorption
  and ISM order from ``pra.inverse_sabine`` (as ``bench/arrayset.py``; a room whose Sabine absorption
  would exceed 0.8 is redrawn), spread over the six surfaces by random weights 0.6 .. 1.3 (area-weighted
  mean kept), then calibrated on the target -> mic-0 RIR (at most :data:`CAL_ITERS` single-pair
  simulations, Eyring-style updates, :func:`calibrate`) until its Schroeder T30 is within 5 % of the
  design (else the closest tried); ``rt60`` is the T30 measured on the final target -> mic-0 RIR.
- **sources** (9 per room, in this order; all >= 0.3 m from the walls unless said otherwise):
  ``0`` the **target**, 0.5 .. 4 m from the array centre, mouth at a seated (1.1 .. 1.3 m, p 0.6) or
  standing (1.5 .. 1.8 m) height, >= 0.3 m from the array horizontally; ``1, 2`` two **interferers**,
  anywhere else (>= 20 deg of azimuth from the target seen from the array, >= 0.5 m from the target and
  from the array): p 0.4 near a wall (0.1 .. 0.4 m from it) at TV height 0.6 .. 1.3 m (``near_wall``),
  else anywhere at 0.2 .. 2.0 m; ``3 .. 8`` six **diffuse** positions, spread over the room (farthest-point
  choice among 256 random points >= 0.2 m from the walls and >= 1 m from the array where the room allows).
- **RIRs**: every source to every mic, pyroomacoustics' ShoeBox image-source model and its RIR builder,
  restricted to the images that arrive within :data:`T_CAP_S` (they would be cut anyway). The images are
  enumerated here in closed form (:func:`image_sources`: pyroomacoustics generates every image of the
  order's "diamond", up to 3 s long for a large reverberant room, which cost 10 .. 50 s a room) and
  built by ``libroom.rir_builder`` with pyroomacoustics' amplitudes, 81-tap fractional delays (centre
  at ``d / c * fs + 40``) and its 10 Hz high-pass (:func:`build_rir`); the images arriving later than
  0.2 s after the first get a 21-tap fractional delay instead (the bulk of the cost; band energies
  within 0.01 dB). ``--check`` compares with ``pra.ShoeBox.compute_rir`` itself (same rooms, order
  capped at 20): with 81 taps throughout, equal to 5e-5 of the peak (float32 sums). Each (room,
  source) block ``(M, L)`` is cut at the first sample where the energy decay curve of every mic has
  fallen by 60 dB (:data:`DECAY_DB`) or at 1.0 s, whichever comes first, and stored as float16
  (pyroomacoustics' amplitude: ``1/d`` for the direct path at ``d`` m).

Output: ``OUT/train/rooms-AAAAA-BBBBB.npz`` (rooms ``A .. B-1`` of the training stream, ``--shard`` rooms
per file) and ``OUT/val/...`` for the validation stream. A room is a pure function of ``(seed, stream,
index)`` (``numpy.random.default_rng([seed, 0 | 1, index])``, 0 = train, 1 = val): a rerun skips the
shards already written (each is written to a temporary name and renamed), and a run with another
``--rooms`` writes differently named shards (the loader keeps one copy of each room index). Keys of a
shard (``R`` rooms, ``S = 9`` sources, ``6`` = the largest mic count; unused mic slots are -1 / NaN):

==================  ================  ======================================================================
key                 shape, dtype      meaning
==================  ================  ======================================================================
``rir``             (T,) float16      all RIR blocks, flat: block (r, s) is ``rir[offset : offset + M * L]``
                                      reshaped ``(M, L)`` (row j = mic j)
``offset``          (R, S) int64      start of block (r, s) in ``rir``
``length``          (R, S) int32      ``L`` of block (r, s), samples
``direct``          (R, S, 6) int32   direct-path sample index per mic: ``round(d / c * 16000) + 40``
                                      (pyroomacoustics' fractional-delay centre), as ``bench/arrayset.py``
``n_mics``          (R,) int32        ``M``
``geometry``        (R,) str          preset name
``room_index``      (R,) int64        index in its stream
``mic_local``       (R, 6, 3) f32     mic positions in the array frame (m), as ``voxd.geometry`` gives them
``mic_room``        (R, 6, 3) f32     mic positions in the room (m)
``array_center``    (R, 3) f32        array centre in the room (m)
``yaw_deg``         (R,) f32          array rotation about z (deg)
``placement``       (R,) str          table | shelf | wall
``dims``            (R, 3) f32        room size (m)
``rt60_design``     (R,) f32          drawn RT60 (s)
``rt60``            (R,) f32          T30 of the final target -> mic-0 RIR (s)
``absorption``      (R,) f32          mean energy absorption after calibration
``wall_weights``    (R, 6) f32        per-surface absorption weights (x=0, x=Lx, y=0, y=Ly, floor, ceiling)
``ism_order``       (R,) int32        image-source order
``src_pos``         (R, S, 3) f32     source positions in the room (m)
``azimuth_deg``     (R, S) f32        source azimuth in the array frame, deg ccw from the array's +x
``elevation_deg``   (R, S) f32        source elevation seen from the array centre (deg)
``distance_m``      (R, S) f32        source distance from the array centre (m)
``near_wall``       (R, S) bool       source placed near a wall (interferers only)
``cpu_s``           (R,) f32          CPU seconds spent on the room
``meta``            () str            JSON: generator, pyroomacoustics version, seed, stream, constants
==================  ================  ======================================================================
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyroomacoustics as pra
from pyroomacoustics import libroom
from pyroomacoustics.utilities import design_highpass_filter_sos
from scipy.signal import sosfiltfilt

from voxd.geometry import preset_positions

FS = 16000
GENERATOR = "mask-rirs/1.0"
GEOMETRIES = ("respeaker-4mic-hat", "respeaker-usb-4mic", "respeaker-6mic")
MAX_MICS = 6
N_INTERFERERS = 2
N_DIFFUSE = 6
N_SOURCES = 1 + N_INTERFERERS + N_DIFFUSE
ROLES = ("target", "interferer", "interferer", *["diffuse"] * N_DIFFUSE)
RT60_RANGE = (0.1, 0.9)  # design RT60 (s)
ROOM_MIN = (3.0, 3.0, 2.4)  # m
ROOM_MAX = (9.0, 7.0, 3.3)  # m
MAX_ABSORPTION = 0.8  # rooms needing more (Sabine) are redrawn
T_CAP_S = 1.0  # RIRs are cut at 1.0 s at most
DECAY_DB = 60.0  # ... or where the energy decay curve has fallen by 60 dB
EXACT_S = 0.2  # images arriving within 0.2 s of the first get pyroomacoustics' 81-tap fractional delay
FDL_LATE = 21  # ... later ones a 21-tap one
CAL_ITERS = 4  # at most this many single-pair calibration simulations
CAL_TOL = 0.05  # calibrated when the measured T30 is within 5 % of the design
PRA_OFFSET = pra.constants.get("frac_delay_length") // 2  # 40
C = float(pra.constants.get("c"))  # 343 m/s, as voxd.geometry.SPEED_OF_SOUND
WALLS = ("west", "east", "south", "north", "floor", "ceiling")  # pyroomacoustics' order: x=0, x=Lx, ...
STREAMS = {"train": 0, "val": 1}


@dataclass
class RoomPlan:
    """Everything drawn for one room before simulation (room coordinates in m)."""

    index: int
    geometry: str
    dims: np.ndarray  # (3,)
    rt60_design: float  # s
    weights: np.ndarray  # (6,) per-surface absorption weights
    placement: str
    centre: np.ndarray  # (3,)
    yaw_deg: float
    mic_local: np.ndarray  # (M, 3) array frame
    mics: np.ndarray  # (M, 3) room
    sources: np.ndarray  # (S, 3)
    near_wall: np.ndarray  # (S,) bool


# ------------------------------------------------------------------------------------------------ geometry
def rotate_z(p: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Rows of ``p`` ``(M, 3)`` rotated by ``yaw_deg`` (deg) about z."""
    a = math.radians(yaw_deg)
    r = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    out: np.ndarray = np.asarray(p, np.float64) @ r.T
    return out


def array_frame(centre: np.ndarray, yaw_deg: float, pos: np.ndarray) -> tuple[float, float, float]:
    """(azimuth deg in [0, 360) ccw from the array's +x, elevation deg, distance m) of room point ``pos``
    seen from an array at ``centre`` rotated by ``yaw_deg`` about z (as ``bench/arrayset.py``)."""
    v = np.asarray(pos, np.float64) - np.asarray(centre, np.float64)
    az = (math.degrees(math.atan2(v[1], v[0])) - yaw_deg) % 360.0
    el = math.degrees(math.atan2(v[2], math.hypot(v[0], v[1])))
    return az, el, float(np.linalg.norm(v))


def _azimuth_gap(centre: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Horizontal angle (deg, 0 .. 180) between points ``a`` and ``b`` seen from ``centre``."""
    pa = math.atan2(a[1] - centre[1], a[0] - centre[0])
    pb = math.atan2(b[1] - centre[1], b[0] - centre[0])
    return abs((math.degrees(pa - pb) + 180.0) % 360.0 - 180.0)


def _near_wall_point(rng: np.random.Generator, dims: np.ndarray, z: float,
                     gap: tuple[float, float] = (0.1, 0.4)) -> np.ndarray:
    """A point ``gap`` m (uniform in the range) from one of the four walls (drawn), >= 0.3 m from the
    other walls, at height ``z`` (m). Returns (3,)."""
    wall = int(rng.integers(4))
    p = np.array([rng.uniform(0.3, dims[0] - 0.3), rng.uniform(0.3, dims[1] - 0.3), z])
    axis, far = wall // 2, wall % 2
    g = rng.uniform(*gap)
    p[axis] = dims[axis] - g if far else g
    return p


def draw_room(rng: np.random.Generator, index: int) -> RoomPlan:
    """Room ``index`` of a stream: see the module docstring. Raises RuntimeError if 200 rooms in a row
    cannot hold the placements (does not happen with these ranges)."""
    geometry = GEOMETRIES[index % len(GEOMETRIES)]
    local = preset_positions(geometry)
    rt60 = float(rng.uniform(*RT60_RANGE))
    weights = rng.uniform(0.6, 1.3, 6)
    yaw = float(rng.uniform(0.0, 360.0))
    mic_rel = rotate_z(local, yaw)
    lo, hi = np.array(ROOM_MIN), np.array(ROOM_MAX)
    for _ in range(200):
        for _ in range(20000):  # a dead room must be small: at RT60 0.1 s, 0.2 % of the draws fit
            dims = np.round(rng.uniform(lo, hi), 3)
            try:
                if pra.inverse_sabine(rt60, list(dims))[0] <= MAX_ABSORPTION:
                    break
            except ValueError:  # pyroomacoustics: absorption > 1 needed
                pass
        else:
            raise RuntimeError(f"room {index}: no room size for RT60 {rt60:.3f} s")
        u = rng.uniform()
        if u < 0.45:
            placement = "table"
            centre = np.array([rng.uniform(0.5, dims[0] - 0.5), rng.uniform(0.5, dims[1] - 0.5),
                               rng.uniform(0.7, 1.0)])  # fmt: skip
        else:
            placement = "shelf" if u < 0.75 else "wall"
            z = rng.uniform(1.0, 1.8) if placement == "shelf" else rng.uniform(1.2, 2.0)
            centre = _near_wall_point(rng, dims, z, (0.1, 0.4) if placement == "shelf" else (0.07, 0.12))
        centre = np.round(centre, 3)
        mics = centre + mic_rel
        if np.any(mics < 0.02) or np.any(mics > dims - 0.02):
            continue
        # target
        target = None
        for _ in range(300):
            dist = rng.uniform(0.5, 4.0)
            z = rng.uniform(1.1, 1.3) if rng.uniform() < 0.6 else rng.uniform(1.5, 1.8)
            dz = z - centre[2]
            if dist**2 - dz**2 < 0.3**2:
                continue
            phi = rng.uniform(0.0, 2 * math.pi)
            r = math.sqrt(dist**2 - dz**2)
            p = np.round(centre + np.array([r * math.cos(phi), r * math.sin(phi), dz]), 3)
            if np.all(p >= 0.3) and np.all(p <= dims - 0.3):
                target = p
                break
        if target is None:
            continue
        # interferers
        inter: list[np.ndarray] = []
        near: list[bool] = []
        for _ in range(600):
            wall_side = rng.uniform() < 0.4
            if wall_side:
                p = _near_wall_point(rng, dims, rng.uniform(0.6, 1.3))
            else:
                p = np.array([rng.uniform(0.3, dims[0] - 0.3), rng.uniform(0.3, dims[1] - 0.3),
                              rng.uniform(0.2, 2.0)])  # fmt: skip
            p = np.round(p, 3)
            if (_azimuth_gap(centre, p, target) >= 20.0 and np.linalg.norm(p - target) >= 0.5
                    and np.linalg.norm(p - centre) >= 0.5):  # fmt: skip
                inter.append(p)
                near.append(bool(wall_side))
                if len(inter) == N_INTERFERERS:
                    break
        if len(inter) < N_INTERFERERS:
            continue
        # diffuse: farthest-point choice among random points
        cand = rng.uniform([0.2, 0.2, 0.2], dims - 0.2, size=(256, 3))
        dc = np.linalg.norm(cand - centre, axis=1)
        far = cand[dc >= min(1.0, float(np.quantile(dc, 0.5)))]
        chosen = [int(rng.integers(len(far)))]
        dmin = np.linalg.norm(far - far[chosen[0]], axis=1)
        for _ in range(N_DIFFUSE - 1):
            j = int(np.argmax(dmin))
            chosen.append(j)
            dmin = np.minimum(dmin, np.linalg.norm(far - far[j], axis=1))
        diffuse = np.round(far[chosen], 3)
        sources = np.vstack([target[None], np.array(inter), diffuse])
        near_wall = np.array([False, *near, *([False] * N_DIFFUSE)])
        return RoomPlan(index, geometry, dims, rt60, weights, placement, centre, yaw, local, mics,
                        sources, near_wall)  # fmt: skip
    raise RuntimeError(f"room {index}: could not place the array and the sources")


# ---------------------------------------------------------------------------------------------- simulation
def wall_materials(dims: np.ndarray, e: float, weights: np.ndarray) -> dict[str, pra.Material]:
    """Per-surface energy absorption ``e * w_i`` (area-weighted mean ``e``), capped at 0.99."""
    lx, ly, lz = dims
    area = np.array([ly * lz, ly * lz, lx * lz, lx * lz, lx * ly, lx * ly])
    w = weights * area.sum() / float(np.sum(weights * area))
    return {name: pra.Material(float(min(0.99, e * wi))) for name, wi in zip(WALLS, w, strict=True)}


def reflection_coeffs(dims: np.ndarray, e: float, weights: np.ndarray) -> np.ndarray:
    """Pressure reflection coefficients ``sqrt(1 - a_i)`` of the six surfaces (x=0, x=Lx, y=0, y=Ly,
    floor, ceiling), ``a_i`` as :func:`wall_materials` gives them. Returns (6,)."""
    mats = wall_materials(dims, e, weights)
    return np.array([math.sqrt(1.0 - float(mats[w].energy_absorption["coeffs"][0])) for w in WALLS])


def image_sources(src: np.ndarray, dims: np.ndarray, beta: np.ndarray, order: int,
                  centre: np.ndarray, r_max: float) -> tuple[np.ndarray, np.ndarray]:
    """The shoebox image sources of ``src`` (m) up to reflection order ``order`` (pyroomacoustics'
    ``max_order``: ``|nx| + |ny| + |nz| <= order``) and within ``r_max`` m of ``centre``.

    Image ``n`` of axis ``a`` (room length ``L``, source coordinate ``s``) is at ``n L + s`` (n even) or
    ``n L + L - s`` (n odd), after ``ceil(|n| / 2)`` reflections on the far wall (n > 0) or the near one
    (n < 0) and ``floor(|n| / 2)`` on the other; its amplitude factor is the product of the walls'
    reflection coefficients ``beta`` (6,). Returns positions (K, 3) and amplitude factors (K,)."""
    axes_pos, axes_logb, axes_n = [], [], []
    for a in range(3):
        n_lim = min(order, math.ceil((r_max + abs(src[a] - centre[a])) / dims[a]) + 1)
        n = np.arange(-n_lim, n_lim + 1)
        pos = n * dims[a] + np.where(n % 2 == 0, src[a], dims[a] - src[a])
        big, small = (np.abs(n) + 1) // 2, np.abs(n) // 2
        near = np.where(n < 0, big, small)  # reflections on the wall at 0
        far = np.where(n < 0, small, big)  # ... and on the wall at L
        logb = near * math.log(beta[2 * a]) + far * math.log(beta[2 * a + 1])
        axes_pos.append(pos - centre[a])
        axes_logb.append(logb)
        axes_n.append(np.abs(n))
    px, py, pz = axes_pos
    d2 = px[:, None, None] ** 2 + py[None, :, None] ** 2 + pz[None, None, :] ** 2
    nsum = axes_n[0][:, None, None] + axes_n[1][None, :, None] + axes_n[2][None, None, :]
    ix, iy, iz = np.nonzero((d2 <= r_max**2) & (nsum <= order))
    images = np.empty((ix.size, 3))
    images[:, 0], images[:, 1], images[:, 2] = px[ix] + centre[0], py[iy] + centre[1], pz[iz] + centre[2]
    damp = np.exp(axes_logb[0][ix] + axes_logb[1][iy] + axes_logb[2][iz])
    return images, damp


def build_rir(images: np.ndarray, damp: np.ndarray, mic: np.ndarray, t_cap: float = T_CAP_S,
              exact_s: float = EXACT_S, fdl_late: int = FDL_LATE) -> np.ndarray:
    """One RIR (float64 (L,)) at ``mic`` (m) from image sources ``images`` (K, 3) with amplitude factors
    ``damp`` (K,), as pyroomacoustics builds it (``libroom.rir_builder``: amplitude ``damp / d``, a
    Hann-windowed sinc fractional delay centred at ``d / c * fs + 40``; then its 10 Hz high-pass, zero
    phase). Images arriving more than ``exact_s`` after the first one use a ``fdl_late``-tap sinc instead
    of pyroomacoustics' 81 taps (same centre); images arriving after ``t_cap`` s are left out."""
    fdl = int(pra.constants.get("frac_delay_length"))
    lut = int(pra.constants.get("sinc_lut_granularity"))
    dx, dy, dz = (images[:, a] - mic[a] for a in range(3))
    d = np.sqrt(dx * dx + dy * dy + dz * dz)
    t = d / C
    keep = t <= t_cap
    t, amp = t[keep], damp[keep] / d[keep]
    t_off = t + PRA_OFFSET / FS
    n = math.ceil(t_off.max() * FS + PRA_OFFSET + 1) + 1
    rir = np.zeros(n, np.float32)
    early = t <= t.min() + exact_s
    for sel, taps in ((early, fdl), (~early, fdl_late)):
        if np.any(sel):
            part = np.zeros(n, np.float32)
            libroom.rir_builder(part, t_off[sel].astype(np.float32), amp[sel].astype(np.float32), FS, taps,
                                lut, 1)
            rir += part
    if pra.constants.get("rir_hpf_enable"):
        sos = design_highpass_filter_sos(FS, pra.constants.get("rir_hpf_fc"),
                                         **pra.constants.get("rir_hpf_kwargs"))  # fmt: skip
        return np.asarray(sosfiltfilt(sos, rir.astype(np.float64)))
    return rir.astype(np.float64)


def simulate(dims: np.ndarray, e: float, weights: np.ndarray, order: int, sources: np.ndarray,
             mics: np.ndarray, t_cap: float = T_CAP_S, fdl_late: int = FDL_LATE) -> list[np.ndarray]:
    """RIRs, one ``(M, L)`` float64 array per source: pyroomacoustics' ShoeBox image-source model
    (no air absorption, no randomisation) with its RIR builder, restricted to the images that arrive
    within ``t_cap`` s (:func:`image_sources`, :func:`build_rir`)."""
    beta = reflection_coeffs(dims, e, weights)
    centre = mics.mean(axis=0)
    r_max = C * t_cap + float(np.max(np.linalg.norm(mics - centre, axis=1))) + 0.01
    out = []
    for s in sources:
        images, damp = image_sources(np.asarray(s, np.float64), dims, beta, order, centre, r_max)
        hs = [build_rir(images, damp, m, t_cap, fdl_late=fdl_late) for m in mics]
        h = np.zeros((len(hs), max(x.size for x in hs)))
        for j, x in enumerate(hs):
            h[j, : x.size] = x
        out.append(h)
    return out


def simulate_pra(dims: np.ndarray, e: float, weights: np.ndarray, order: int, sources: np.ndarray,
                 mics: np.ndarray) -> list[np.ndarray]:
    """The same RIRs computed by ``pra.ShoeBox.compute_rir`` itself (all images, 81 taps): the
    reference :func:`simulate` is checked against (``--check``)."""
    room = pra.ShoeBox(list(dims), fs=FS, materials=wall_materials(dims, e, weights), max_order=order,
                       air_absorption=False, ray_tracing=False, use_rand_ism=False)  # fmt: skip
    for s in sources:
        room.add_source(list(s))
    room.add_microphone_array(np.asarray(mics, np.float64).T.copy())
    room.compute_rir()
    out = []
    for j in range(len(sources)):
        length = max(len(room.rir[m][j]) for m in range(mics.shape[0]))
        h = np.zeros((mics.shape[0], length))
        for m in range(mics.shape[0]):
            h[m, : len(room.rir[m][j])] = room.rir[m][j]
        out.append(h)
    return out


def measure_rt60(h: np.ndarray) -> float:
    """RT60 (s) of an RIR ``(L,)``: Schroeder T30 extrapolated to 60 dB (pyroomacoustics)."""
    return float(pra.experimental.measure_rt60(h, fs=FS, decay_db=30))


def calibrate(p: RoomPlan) -> tuple[float, int]:
    """Mean absorption whose target -> mic-0 T30 is within :data:`CAL_TOL` of the design RT60, and the
    ISM order. Sabine's absorption first, then at most :data:`CAL_ITERS` - 1 updates on
    ``x = ln(-ln(1 - e))`` (Eyring: ``ln T`` falls with slope -1 in ``x``; a secant slope once two points
    are known); the T30 of an ISM room is not smooth in ``e`` (flutter in narrow dead rooms), so the best
    of the tried absorptions is kept. Returns (absorption, order)."""
    e, order = pra.inverse_sabine(p.rt60_design, list(p.dims))
    tried: list[tuple[float, float, float]] = []  # (x, ln(measured / design), e)
    for _ in range(CAL_ITERS):
        h = simulate(p.dims, e, p.weights, order, p.sources[:1], p.mics[:1])[0][0]
        y = math.log(measure_rt60(h) / p.rt60_design)
        x = math.log(-math.log(1 - e))
        tried.append((x, y, e))
        if abs(y) <= math.log(1 + CAL_TOL):
            break
        slope = -1.0
        if len(tried) >= 2:
            (x0, y0, _), (x1, y1, _) = tried[-2], tried[-1]
            if x1 != x0 and -3.0 <= (y1 - y0) / (x1 - x0) <= -0.3:
                slope = (y1 - y0) / (x1 - x0)
        e = float(np.clip(1 - math.exp(-math.exp(x - y / slope)), 0.02, 0.95))
    best = min(tried, key=lambda t: abs(t[1]))
    return float(best[2]), int(order)


def decay_length(h: np.ndarray, decay_db: float = DECAY_DB, cap: int = round(T_CAP_S * FS)) -> int:
    """Samples to keep of ``h`` ``(M, L)``: the first index where every row's energy decay curve (the
    energy after that index over the row's total) is ``decay_db`` below its start, at most ``cap``."""
    e = h.astype(np.float64) ** 2
    tail = np.cumsum(e[:, ::-1], axis=1)[:, ::-1]  # energy from index t to the end
    below = tail <= tail[:, :1] * 10 ** (-decay_db / 10)
    first = np.where(below.any(axis=1), below.argmax(axis=1), h.shape[1])
    return int(min(cap, int(first.max()), h.shape[1]))


@dataclass
class RoomResult:
    """A simulated room: its plan, the truncated RIR blocks and the measured values."""

    plan: RoomPlan
    rirs: list[np.ndarray]  # per source (M, L) float16
    direct: np.ndarray  # (S, M) int
    absorption: float
    order: int
    rt60: float  # s
    cpu_s: float


def simulate_room(seed: int, stream: int, index: int) -> RoomResult:
    """Room ``index`` of stream ``stream`` (0 train, 1 val): draw, calibrate, simulate, truncate."""
    t0 = time.process_time()
    rng = np.random.default_rng([seed, stream, index])
    p = draw_room(rng, index)
    e, order = calibrate(p)
    hs = simulate(p.dims, e, p.weights, order, p.sources, p.mics)
    rt60 = measure_rt60(hs[0][0])
    rirs = [h[:, : decay_length(h)].astype(np.float16) for h in hs]
    d = np.linalg.norm(p.sources[:, None, :] - p.mics[None, :, :], axis=-1)  # (S, M)
    direct = np.round(d / C * FS).astype(np.int64) + PRA_OFFSET
    return RoomResult(p, rirs, direct, e, order, rt60, time.process_time() - t0)


# ---------------------------------------------------------------------------------------------- shards
def shard_arrays(results: list[RoomResult], meta: dict[str, object]) -> dict[str, np.ndarray]:
    """The npz arrays of one shard (see the module docstring)."""
    r_n = len(results)
    offset = np.zeros((r_n, N_SOURCES), np.int64)
    length = np.zeros((r_n, N_SOURCES), np.int32)
    direct = -np.ones((r_n, N_SOURCES, MAX_MICS), np.int32)
    mic_local = np.full((r_n, MAX_MICS, 3), np.nan, np.float32)
    mic_room = np.full((r_n, MAX_MICS, 3), np.nan, np.float32)
    az = np.zeros((r_n, N_SOURCES), np.float32)
    el = np.zeros((r_n, N_SOURCES), np.float32)
    dist = np.zeros((r_n, N_SOURCES), np.float32)
    blocks: list[np.ndarray] = []
    pos = 0
    for i, r in enumerate(results):
        p = r.plan
        m = p.mics.shape[0]
        mic_local[i, :m] = p.mic_local
        mic_room[i, :m] = p.mics
        direct[i, :, :m] = r.direct
        for s, h in enumerate(r.rirs):
            offset[i, s], length[i, s] = pos, h.shape[1]
            blocks.append(h.reshape(-1))
            pos += h.size
            az[i, s], el[i, s], dist[i, s] = array_frame(p.centre, p.yaw_deg, p.sources[s])
    return {
        "rir": np.concatenate(blocks).astype(np.float16), "offset": offset, "length": length,
        "direct": direct, "n_mics": np.array([r.plan.mics.shape[0] for r in results], np.int32),
        "geometry": np.array([r.plan.geometry for r in results]),
        "room_index": np.array([r.plan.index for r in results], np.int64),
        "mic_local": mic_local, "mic_room": mic_room,
        "array_center": np.array([r.plan.centre for r in results], np.float32),
        "yaw_deg": np.array([r.plan.yaw_deg for r in results], np.float32),
        "placement": np.array([r.plan.placement for r in results]),
        "dims": np.array([r.plan.dims for r in results], np.float32),
        "rt60_design": np.array([r.plan.rt60_design for r in results], np.float32),
        "rt60": np.array([r.rt60 for r in results], np.float32),
        "absorption": np.array([r.absorption for r in results], np.float32),
        "wall_weights": np.array([r.plan.weights for r in results], np.float32),
        "ism_order": np.array([r.order for r in results], np.int32),
        "src_pos": np.array([r.plan.sources for r in results], np.float32),
        "azimuth_deg": az, "elevation_deg": el, "distance_m": dist,
        "near_wall": np.array([r.plan.near_wall for r in results]),
        "cpu_s": np.array([r.cpu_s for r in results], np.float32),
        "meta": np.array(json.dumps(meta)),
    }  # fmt: skip


def build_stream(out: Path, split: str, rooms: int, seed: int, shard: int) -> None:
    """Write the shards of one stream under ``out / split``, skipping those already there."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"generator": GENERATOR, "pyroomacoustics": pra.__version__, "seed": seed, "stream": split,
            "fs": FS, "c": C, "t_cap_s": T_CAP_S, "decay_db": DECAY_DB, "roles": list(ROLES),
            "rt60_range": list(RT60_RANGE), "room_min": list(ROOM_MIN), "room_max": list(ROOM_MAX)}
    for a in range(0, rooms, shard):
        b = min(rooms, a + shard)
        path = folder / f"rooms-{a:05d}-{b:05d}.npz"
        if path.exists():
            print(f"{path} exists: skipped", flush=True)
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        results = []
        for i in range(a, b):
            r = simulate_room(seed, STREAMS[split], i)
            results.append(r)
            p = r.plan
            print(f"{split} room {i:5d} {p.geometry:18s} {p.placement:5s} dims {p.dims.tolist()} rt60 "
                  f"{p.rt60_design:.3f} -> {r.rt60:.3f} order {r.order:3d} len "
                  f"{max(h.shape[1] for h in r.rirs):5d} cpu {r.cpu_s:.1f} s", flush=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **shard_arrays(results, meta))  # type: ignore[arg-type]
        tmp.replace(path)
        print(f"{path}: {b - a} rooms, {path.stat().st_size / 1e6:.1f} MB, "
              f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU", flush=True)


def check(rooms: int = 3, max_order: int = 20) -> int:
    """Compares :func:`simulate` with ``pra.ShoeBox.compute_rir`` on the first ``rooms`` training rooms
    (the target and an interferer, every mic; ISM order capped at ``max_order`` so that pyroomacoustics
    stays quick): with 81-tap late images the RIRs must agree to 1e-3 of their peak; with the 21-tap late
    images used in the bank, energies per band (0-4, 4-7, 7-8 kHz) to 0.05 dB. Returns the failures."""
    fails = 0
    for i in range(rooms):
        p = draw_room(np.random.default_rng([0, 0, i]), i)
        e, order = pra.inverse_sabine(p.rt60_design, list(p.dims))
        order = min(order, max_order)
        ref = simulate_pra(p.dims, e, p.weights, order, p.sources[:2], p.mics)
        for fdl_late, what in ((81, "81-tap"), (FDL_LATE, f"{FDL_LATE}-tap late")):
            got = simulate(p.dims, e, p.weights, order, p.sources[:2], p.mics, t_cap=10.0, fdl_late=fdl_late)
            for a, b in zip(ref, got, strict=True):
                n = min(a.shape[1], b.shape[1])
                err = float(np.max(np.abs(a[:, :n] - b[:, :n])) / np.max(np.abs(a)))
                fa, fb = np.abs(np.fft.rfft(a, 1 << 15)) ** 2, np.abs(np.fft.rfft(b, 1 << 15)) ** 2
                f = np.fft.rfftfreq(1 << 15, 1 / FS)
                sel = [(f >= lo) & (f < hi) for lo, hi in ((0, 4000), (4000, 7000), (7000, 8000))]
                bands = [float(10 * np.log10(fb[:, m].sum() / fa[:, m].sum())) for m in sel]
                ok = err < 1e-3 if fdl_late == 81 else max(abs(x) for x in bands) < 0.05
                fails += not ok
                print(f"room {i} order {order} {what}: max error {err:.1e} of the peak, band energies "
                      f"{', '.join(f'{x:+.3f}' for x in bands)} dB: {'ok' if ok else 'FAIL'}", flush=True)
    return fails


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=None, help="output folder (train/ and val/ under it)")
    ap.add_argument("--rooms", type=int, default=1500, help="training rooms")
    ap.add_argument("--val-rooms", type=int, default=60, help="validation rooms (their own seed stream)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard", type=int, default=25, help="rooms per npz file")
    ap.add_argument("--check", action="store_true", help="only compare with pyroomacoustics' own RIRs")
    args = ap.parse_args(argv)
    pra.constants.set("num_threads", 1)
    if args.check:
        return 1 if check() else 0
    if args.out is None:
        ap.error("--out is required")
    t0 = time.perf_counter()
    build_stream(args.out, "val", args.val_rooms, args.seed, args.shard)
    build_stream(args.out, "train", args.rooms, args.seed, args.shard)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
