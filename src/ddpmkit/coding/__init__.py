"""Lossless compression of 8-bit images with a trained diffusion model (bits-back ANS; DDPM Alg. 3-4)."""

from .bitsback import BitsBackCodec, CodecError, CodecSettings, Encoded, schedule, seed_words

__all__ = ["BitsBackCodec", "CodecError", "CodecSettings", "Encoded", "schedule", "seed_words"]
