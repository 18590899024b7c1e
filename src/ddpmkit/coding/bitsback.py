"""Bits-back coding of 8-bit images with a diffusion model (DDPM Algorithms 3 and 4, Bit-Swap order).

The encoder is an ANS stack (``constriction.stream.stack.AnsCoder``).  For one image, with x_0 the
pixels and x_1 .. x_T the latents on a uniform grid of width ``delta = 2**-grid_bits``:

    encoder (stack order)                          decoder (the exact reverse)
    pop  x_1 ~ q(x_1 | x_0)                        pop  x_T with N(0, I)
    push x_0 with p(x_0 | x_1)   (256 bins)        for s = T .. 2:
    for s = 2 .. T:                                    pop  x_{s-1} with p(x_{s-1} | x_s)
        pop  x_s ~ q(x_s | x_{s-1})                    push x_s with q(x_s | x_{s-1})  (bits back)
        push x_{s-1} with p(x_{s-1} | x_s)         pop  x_0 with p(x_0 | x_1)
    push x_T with N(0, I)                          push x_1 with q(x_1 | x_0)      (bits back)

so popping and pushing interleave (Kingma et al. 2019) and the net length is
-log p(x_{0:T}) + log q(x_{1:T} | x_0), whose expectation is the negative ELBO of ``bpd_terms``.  The
same grid serves a latent when it is popped under q and pushed under p, so ``delta`` cancels.

Stage ``s`` of an image evaluates the network once, at the grid value x_s and process index
``s - 1`` (ddpmkit's "index t means diffused t + 1 steps").  Images pass through a deterministic
*schedule* of ticks; a tick evaluates the network once on every image in flight.  The first image
must borrow its first two latents' entropy from a seed ("initial bits", ~2 log2(sigma_1 sqrt(2 pi e)
/ delta) bits per dimension); later images reuse the bits earlier images left on the stack, so with
``ramp > 0`` a new lane opens only after ``ramp`` images have finished and the borrowed bits are those
of about one image, amortised over the batch.  Encoder and decoder run the same ticks on the same
batches, so the network sees identical inputs and returns identical floats on one platform.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..diffusion.losses import discretized_gaussian_log_likelihood
from ..errors import UserError

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
CHUNK = 16384  # x0 symbols per Categorical call (bounds the (n, 256) probability table)


class CodecError(UserError):
    """A file that cannot be decoded exactly (corrupt, truncated, foreign, wrong model or platform)."""


def _constriction():
    try:
        import constriction
    except ImportError:
        raise UserError("the codec needs the entropy coder 'constriction': pip install 'ddpmkit[coding]'") from None
    return constriction


@dataclass(frozen=True)
class CodecSettings:
    """Everything besides the model that encoder and decoder must share (all stored in the header)."""

    resolution: int = 2   # latent x_s lives on the grid k * delta_s, sqrt(beta_s) / delta_s in [2^r, 2^(r+1))
    tail: int = 5         # x_s is popped on a window of at least +-tail sqrt(beta_s) around its mean
    wide: int = 1         # ... and pushed under p on a window 2^wide times as wide
    lanes: int = 128      # at most this many images in flight (network batch)
    ramp: int = 4         # finished images per extra lane; 0 = all lanes from the first tick

    def __post_init__(self):
        for name, lo, hi in (("resolution", 0, 12), ("tail", 3, 16), ("wide", 0, 4), ("lanes", 1, 65535),
                             ("ramp", 0, 255)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise UserError(f"codec {name} must lie in {lo}..{hi}, got {v}")


def schedule(n: int, T: int, lanes: int, ramp: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ticks ``(image ids, stages)``: image i runs stages 1..T on consecutive ticks from its start.

    Images start in order whenever fewer than ``min(lanes, 1 + finished // ramp)`` are in flight
    (``lanes`` at once when ramp is 0).  A pure function of its arguments: the decoder rebuilds it."""
    ticks: list[tuple[np.ndarray, np.ndarray]] = []
    start: dict[int, int] = {}
    finished, nxt, tick = 0, 0, 0
    while finished < n:
        cap = lanes if ramp == 0 else min(lanes, 1 + finished // ramp)
        while nxt < n and len(start) < cap:
            start[nxt] = tick
            nxt += 1
        ids = np.fromiter(start.keys(), dtype=np.int64, count=len(start))
        stages = tick - np.fromiter(start.values(), dtype=np.int64, count=len(start)) + 1
        ticks.append((ids, stages))
        for i in ids[stages == T]:
            del start[int(i)]
            finished += 1
        tick += 1
    return ticks


def seed_words(n: int) -> np.ndarray:
    """``n`` fixed pseudo-random nonzero 32-bit words (sha256 in counter mode; prefix-stable)."""
    blocks = b"".join(hashlib.sha256(b"ddpmkit bits-back seed %d" % i).digest() for i in range((n + 7) // 8))
    return (np.frombuffer(blocks, dtype="<u4")[:n].astype(np.uint32)) | np.uint32(1)


@dataclass
class Encoded:
    """The encoder's stack minus the untouched seed prefix, and what its length is made of."""

    payload: np.ndarray        # uint32 words
    seed_prefix: int           # seed words the decoder prepends
    net_bits: int              # final stack bits - seed bits: the bits-back code length
    initial_bits: int          # seed bits consumed and not given back (the "clean bits" overhead)
    ticks: int
    stats: dict = field(default_factory=dict)


class BitsBackCodec:
    """Encode / decode uint8 images (N, C, H, W) with ``model_fn(x_t, t_network)`` and ``process``.

    ``process`` may be respaced: its betas give q(x_s | x_{s-1}) and ``process.network_t`` the
    network's time index.  Means and variances come from ``process.p_mean_variance`` (fixed or
    learned variance) and are turned into coder parameters in float64.

    Every Gaussian is coded as a residual around its rounded mean, on a window of 2^e grid steps
    (2^e >= tail * std): constriction's quantizer gives every symbol of its range at least the
    smallest representable probability (2^-24), so a window far wider than the distribution would
    let a popped latent land anywhere.  A pushed value outside its window (a poor model) is sent
    as an escape: the window's edge symbol, then the value itself in 32 bits."""

    def __init__(self, model_fn: Callable, process, settings: CodecSettings | None = None):
        c = _constriction()
        settings = settings or CodecSettings()
        self.model_fn, self.process, self.s = model_fn, process, settings
        self._QG = c.stream.model.QuantizedGaussian
        self._families: dict[int, object] = {}
        self.categorical = c.stream.model.Categorical(perfect=False)
        self.uniform16 = c.stream.model.Uniform(1 << 16)
        self.AnsCoder = c.stream.stack.AnsCoder
        self.sqrt_alphas = process.sqrt_alphas.detach().cpu().double().numpy()
        self.sqrt_betas = process.sqrt_betas.detach().cpu().double().numpy()
        _, e = np.frexp(self.sqrt_betas)                       # 2^(e-1) <= sqrt(beta) < 2^e, exactly
        self.deltas = np.ldexp(1.0, e - 1 - settings.resolution)  # grid of x_s is deltas[s - 1]
        # window exponents: x_s popped under q on 2^wq[s-1] steps either side, pushed under p on 2^wp[s-1]
        self.wq = np.frexp(settings.tail * self.sqrt_betas / self.deltas)[1]
        self.wp = self.wq + settings.wide
        self.w_prior = np.frexp(settings.tail / self.deltas)[1]

    # --- windowed Gaussians on the stack ----------------------------------------------------------
    def _family(self, e: int):
        if e not in self._families:
            self._families[e] = self._QG(-(1 << e), 1 << e)
        return self._families[e]

    def _push_gauss(self, coder, sym: np.ndarray, mean: np.ndarray, std: np.ndarray, e: np.ndarray,
                    escape: bool) -> None:
        """Push integer grid symbols under N(mean, std^2) (grid units) on windows of 2^e steps either side."""
        c = np.rint(mean)
        r = sym.astype(np.int64) - c.astype(np.int64)
        W = np.left_shift(1, e).astype(np.int64)
        if escape:
            esc = np.abs(r) >= W
            if esc.any():
                v = sym[esc].astype(np.int64) + (1 << 31)
                if (v < 0).any() or (v >= 1 << 32).any():
                    raise CodecError("a latent left the coder's range (|x| too large for the grid)")
                coder.encode_reverse(np.stack([v >> 16, v & 0xFFFF], 1).reshape(-1).astype(np.int32),
                                     self.uniform16)
                r = np.where(esc, np.sign(r) * W, r)
        for ek in np.unique(e)[::-1]:   # the decoder pops the windows in ascending order
            m = e == ek
            coder.encode_reverse(r[m].astype(np.int32), self._family(int(ek)), (mean - c)[m], std[m])

    def _pop_gauss(self, coder, mean: np.ndarray, std: np.ndarray, e: np.ndarray, escape: bool) -> np.ndarray:
        c = np.rint(mean)
        r = np.empty(mean.shape, dtype=np.int64)
        for ek in np.unique(e):
            m = e == ek
            r[m] = coder.decode(self._family(int(ek)), (mean - c)[m], std[m])
        sym = c.astype(np.int64) + r
        if escape:
            esc = np.abs(r) >= np.left_shift(1, e)
            if esc.any():
                hl = coder.decode(self.uniform16, 2 * int(esc.sum())).astype(np.int64).reshape(-1, 2)
                sym[esc] = ((hl[:, 0] << 16) | hl[:, 1]) - (1 << 31)
        if (np.abs(sym) >= 1 << 30).any():
            raise CodecError("a latent left the coder's range (|x| too large for the grid)")
        return sym

    # --- the pieces every tick uses -----------------------------------------------------------------
    def _grids(self, stages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid widths of x_s and of x_{s-1} (1 where x_{s-1} is x_0: pixels, not a grid) per image."""
        return self.deltas[stages - 1], np.where(stages > 1, self.deltas[np.maximum(stages - 2, 0)], 1.0)

    def _q_params(self, prev: np.ndarray, stages: np.ndarray):
        """Mean, std (units of x_s's grid) and window of q(x_s | x_{s-1}), flattened (prev: (B, d) values)."""
        dcur = self.deltas[stages - 1][:, None]
        mean = self.sqrt_alphas[stages - 1][:, None] * prev / dcur
        std = np.broadcast_to(self.sqrt_betas[stages - 1][:, None] / dcur, prev.shape)
        return mean.reshape(-1), np.ascontiguousarray(std.reshape(-1)), np.repeat(self.wq[stages - 1], prev.shape[1])

    def _p_params(self, mean: np.ndarray, std: np.ndarray, stages: np.ndarray, dprev: np.ndarray):
        """p(x_{s-1} | x_s) in units of x_{s-1}'s grid, flattened, with its window (stages > 1 only)."""
        return ((mean / dprev[:, None]).reshape(-1), (std / dprev[:, None]).reshape(-1),
                np.repeat(self.wp[stages - 2], mean.shape[1]))

    @torch.no_grad()
    def _reverse(self, sym: np.ndarray, stages: np.ndarray, shape: tuple[int, ...]):
        """Network at the grid values x_s: mean and std of p(x_{s-1} | x_s) ((B, d) float64), x0 pred."""
        B = len(stages)
        x = torch.from_numpy(sym * self.deltas[stages - 1][:, None]).reshape(B, *shape)
        t = torch.from_numpy(stages - 1)
        out = self.model_fn(x.to(torch.float32), self.process.network_t(t))
        if not torch.isfinite(out).all():
            raise CodecError("the network returned non-finite values; cannot code with it")
        pred = self.process.p_mean_variance(out.double(), x, t)
        return (pred.mean.reshape(B, -1).numpy(), torch.exp(0.5 * pred.log_var).reshape(B, -1).numpy(),
                x, pred.x0)

    def _x0_probs(self, mean: np.ndarray, std: np.ndarray) -> list[np.ndarray]:
        """Per-pixel probability tables over the 256 levels, exactly the bound's discretized decoder."""
        m = torch.from_numpy(mean).reshape(-1, 1)
        ls = torch.log(torch.from_numpy(std)).reshape(-1, 1)
        tables = []
        for a in range(0, m.shape[0], CHUNK):
            mm = m[a:a + CHUNK].expand(-1, 256)
            logp = discretized_gaussian_log_likelihood(LEVELS.expand_as(mm), mm, ls[a:a + CHUNK].expand_as(mm))
            tables.append(np.ascontiguousarray(torch.exp(logp).numpy()))
        return tables

    def _push_x0(self, coder, pixels: np.ndarray, mean, std) -> None:
        tables = self._x0_probs(mean, std)
        for j in range(len(tables) - 1, -1, -1):  # last chunk first: the same as one encode_reverse call
            coder.encode_reverse(np.ascontiguousarray(pixels[j * CHUNK:(j + 1) * CHUNK]), self.categorical,
                                 tables[j])

    def _pop_x0(self, coder, mean, std) -> np.ndarray:
        return np.concatenate([coder.decode(self.categorical, t) for t in self._x0_probs(mean, std)])

    def _prior(self, n: int, d: int):
        """N(0, 1) in units of x_T's grid for n images, flattened, with its window."""
        T = self.process.num_timesteps
        return np.zeros(n * d), np.full(n * d, 1.0 / self.deltas[T - 1]), np.full(n * d, self.w_prior[T - 1])

    # --- encoder -----------------------------------------------------------------------------------
    def encode(self, pixels: np.ndarray, progress: Callable | None = None) -> Encoded:
        """Encode uint8 images (N, C, H, W) into one stack."""
        pixels = np.ascontiguousarray(pixels)
        N, d = pixels.shape[0], int(np.prod(pixels.shape[1:]))
        lanes0 = min(N, self.s.lanes) if self.s.ramp == 0 else 1
        seed_n = 64 + math.ceil(lanes0 * d * 2 * (self.s.resolution + 5) / 32)
        while True:
            out = self._encode_with_seed(pixels, seed_n, progress)
            if out is not None:
                return out
            seed_n *= 2  # the seed ran dry: start again with a longer one

    def _encode_with_seed(self, pixels: np.ndarray, seed_n: int, progress) -> Encoded | None:
        N, shape = pixels.shape[0], tuple(pixels.shape[1:])
        d = int(np.prod(shape))
        seed = seed_words(seed_n)
        coder = self.AnsCoder(seed.copy())
        x0 = pixels.reshape(N, d).astype(np.float64) / 127.5 - 1.0
        flat_pix = pixels.reshape(N, d).astype(np.int32)
        lat = np.zeros((N, d), dtype=np.int64)   # x_{s-1} of each image in flight (grid symbols)
        T = self.process.num_timesteps
        ticks = schedule(N, T, self.s.lanes, self.s.ramp)
        low = coder.num_words()
        for ids, stages in (progress(ticks) if progress else ticks):
            first, later, last = stages == 1, stages > 1, stages == T
            _, dprev = self._grids(stages)
            prev = lat[ids] * dprev[:, None]
            prev[first] = x0[ids[first]]
            sym = self._pop_gauss(coder, *self._q_params(prev, stages), escape=False).reshape(len(ids), d)
            low = min(low, coder.num_words())
            if low < 4:
                return None
            mean, std, _, _ = self._reverse(sym, stages, shape)
            if later.any():
                self._push_gauss(coder, lat[ids[later]].reshape(-1),
                                 *self._p_params(mean[later], std[later], stages[later], dprev[later]), escape=True)
            if first.any():
                self._push_x0(coder, flat_pix[ids[first]].reshape(-1), mean[first], std[first])
            if last.any():
                self._push_gauss(coder, sym[last].reshape(-1), *self._prior(int(last.sum()), d), escape=True)
            lat[ids] = sym
        final = coder.get_compressed()
        common = min(len(final), seed_n)
        differ = np.flatnonzero(final[:common] != seed[:common])
        prefix = int(differ[0]) if differ.size else common
        return Encoded(payload=final[prefix:].copy(), seed_prefix=prefix,
                       net_bits=int(coder.num_valid_bits()) - int(self.AnsCoder(seed.copy()).num_valid_bits()),
                       initial_bits=32 * (seed_n - prefix), ticks=len(ticks),
                       stats={"seed_words": seed_n, "low_water_words": int(low)})

    # --- decoder -----------------------------------------------------------------------------------
    def decode(self, payload: np.ndarray, seed_prefix: int, n: int, shape: tuple[int, ...],
               progress: Callable | None = None, callback: Callable | None = None) -> np.ndarray:
        """The exact inverse of :meth:`encode`.  ``callback(ids, t, x_t, x0_pred)`` sees each tick:
        t the process index of each image, x_t the grid values the receiver now has, x0_pred the net's x0."""
        try:
            return self._decode(payload, seed_prefix, n, tuple(shape), progress, callback)
        except CodecError:
            raise
        except (KeyError, ValueError, OverflowError, RuntimeError) as e:  # the coder rejects an impossible stream
            raise CodecError(f"the compressed stream is inconsistent ({e}); the file is corrupt or was "
                             "written by another model") from None

    def _decode(self, payload, seed_prefix, n, shape, progress, callback) -> np.ndarray:
        d = int(np.prod(shape))
        coder = self.AnsCoder(np.concatenate([seed_words(seed_prefix), payload]).astype(np.uint32))
        lat = np.zeros((n, d), dtype=np.int64)    # x_s of each image in flight
        pixels = np.zeros((n, d), dtype=np.int64)
        T = self.process.num_timesteps
        ticks = schedule(n, T, self.s.lanes, self.s.ramp)
        for ids, stages in (progress(ticks[::-1]) if progress else ticks[::-1]):
            first, later, last = stages == 1, stages > 1, stages == T
            _, dprev = self._grids(stages)
            if last.any():
                lat[ids[last]] = self._pop_gauss(coder, *self._prior(int(last.sum()), d), escape=True).reshape(-1, d)
            sym = lat[ids]
            mean, std, x_t, x0_pred = self._reverse(sym, stages, shape)
            if callback is not None:
                callback(ids, stages - 1, x_t.float(), x0_pred.float())
            if first.any():
                pixels[ids[first]] = self._pop_x0(coder, mean[first], std[first]).reshape(-1, d)
            prev_sym = np.zeros_like(sym)
            if later.any():
                prev_sym[later] = self._pop_gauss(coder, *self._p_params(mean[later], std[later], stages[later],
                                                                         dprev[later]), escape=True).reshape(-1, d)
            prev = prev_sym * dprev[:, None]
            prev[first] = pixels[ids[first]].astype(np.float64) / 127.5 - 1.0
            self._push_gauss(coder, sym.reshape(-1), *self._q_params(prev, stages), escape=False)
            lat[ids] = prev_sym
        rest = coder.get_compressed()
        if len(rest) < seed_prefix or not np.array_equal(rest, seed_words(len(rest))):
            raise CodecError("the decoded stream did not end at the encoder's seed: the file does not decode "
                             "exactly with this model on this machine")
        return pixels.reshape(n, *shape).astype(np.uint8)
