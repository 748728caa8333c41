"""1-D signals as pictures: read a `.wav` (or a 1-D `.npy`), compute a log-mel spectrogram; an input
kind of the registry in data/kinds.py.

The spectrogram is a 1-channel image [1, n_mels, frames] (low frequencies at the top row); an image
backbone then reads it through the grayscale channel adaptation (models/channels.py). Its parameters
are a `SpectrogramSpec`, written to the run as one string (`spectrogram: sr=16000,n_fft=512,...` in
config.yaml) so evaluate and predict compute exactly the same picture.

Short-time Fourier transform with a Hann window (`torch.stft`, centred frames), power spectrum,
triangular mel filters on the HTK mel scale m(f) = 2595 log10(1 + f / 700) with each filter
normalised to unit area (Slaney's normalisation), then 10 log10(max(power, 1e-10)) in dB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .kind import InputKind
from .splits import DataError

SIGNAL_EXTS = {".wav", ".npy"}  # a .npy of one dimension; any other is an array (data/arrays.py)


@dataclass
class SpectrogramSpec:
    sr: int = 16000          # sample rate the signal is resampled to (Hz)
    n_fft: int = 512         # FFT window length (samples)
    hop: int = 128           # step between frames (samples)
    n_mels: int = 64         # mel bands (the picture's height)
    fmin: float = 0.0        # lowest filter edge (Hz)
    fmax: float = 0.0        # highest filter edge (Hz); 0 = sr / 2

    def to_str(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    @classmethod
    def parse(cls, text: str | None) -> "SpectrogramSpec":
        """`"sr=16000,n_mels=64"`; keys not given keep their defaults."""
        spec = cls()
        names = {f.name: f.type for f in fields(cls)}
        for part in filter(None, (p.strip() for p in (text or "").split(","))):
            key, _, value = part.partition("=")
            key = key.strip()
            if key not in names or not value:
                raise ValueError(f"spectrogram: cannot read '{part}'; give KEY=VALUE pairs with keys "
                                 f"{', '.join(names)} (e.g. 'sr=16000,n_mels=64')")
            try:
                setattr(spec, key, float(value) if key in ("fmin", "fmax") else int(float(value)))
            except ValueError as e:
                raise ValueError(f"spectrogram: '{key}' must be a number, got '{value}'") from e
        if spec.sr <= 0 or spec.n_fft < 8 or spec.hop < 1 or spec.n_mels < 1:
            raise ValueError(f"spectrogram: sr, n_fft, hop, n_mels must be positive ({spec.to_str()})")
        return spec


def read_signal(path: str | Path, sr: int) -> np.ndarray:
    """A mono float32 signal at `sr` Hz. `.wav` (PCM or float, any channel count: channels are
    averaged) is resampled from its own rate; a 1-D `.npy` is taken to be at `sr` already."""
    p = Path(path)
    if p.suffix.lower() == ".npy":
        x = np.load(p, allow_pickle=False)
        if x.ndim != 1:
            raise DataError(f"{p}: a signal .npy must be 1-D, got shape {x.shape}")
        return x.astype(np.float32)
    from scipy.io import wavfile
    try:
        rate, x = wavfile.read(p)
    except (ValueError, OSError) as e:
        raise DataError(f"{p}: unreadable .wav ({e})") from e
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        x = (x.astype(np.float64) - (info.max + 1 + info.min) / 2) / ((info.max - info.min + 1) / 2)
    x = x.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != sr:
        from scipy.signal import resample_poly
        g = math.gcd(int(rate), int(sr))
        x = resample_poly(x, sr // g, int(rate) // g).astype(np.float32)
    return x


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(spec: SpectrogramSpec) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] triangular filters, each of unit area in Hz (Slaney normalisation)."""
    fmax = spec.fmax or spec.sr / 2
    edges = _mel_to_hz(np.linspace(_hz_to_mel(spec.fmin), _hz_to_mel(fmax), spec.n_mels + 2))
    freqs = np.linspace(0.0, spec.sr / 2, spec.n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None, :] - lo) / (mid - lo)
    fall = (hi - freqs[None, :]) / (hi - mid)
    fb = np.maximum(0.0, np.minimum(rise, fall)) * (2.0 / (hi - lo))
    return torch.from_numpy(fb.astype(np.float32))


def log_mel(signal: np.ndarray | torch.Tensor, spec: SpectrogramSpec) -> torch.Tensor:
    """[1, n_mels, frames] log-mel power in dB of a 1-D signal (padded to one window if shorter)."""
    x = torch.as_tensor(signal, dtype=torch.float32).reshape(-1)
    if x.numel() < spec.n_fft:
        x = torch.nn.functional.pad(x, (0, spec.n_fft - x.numel()))
    window = torch.hann_window(spec.n_fft)
    stft = torch.stft(x, spec.n_fft, hop_length=spec.hop, window=window, center=True,
                      return_complex=True)
    power = stft.abs() ** 2
    mel = mel_filterbank(spec) @ power
    return (10.0 * torch.log10(mel.clamp_min(1e-10))).unsqueeze(0)


def _claims(p: Path) -> bool:
    """A .wav, or a .npy of one dimension (any other .npy is an array)."""
    if p.suffix.lower() == ".wav":
        return True
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False).ndim == 1
    except (ValueError, OSError):
        return False  # the array reader reports it as unreadable


def _check(p: Path) -> str | None:
    if p.suffix.lower() == ".wav":
        from scipy.io import wavfile
        wavfile.read(p, mmap=True)
    return None


def _read(path: str, channels: int = 1, layout: str = "auto", spectrogram: str | None = None) -> torch.Tensor:
    spec = SpectrogramSpec.parse(spectrogram)
    return log_mel(read_signal(path, spec.sr), spec)


# a signal run records the full spectrogram string, and no test-time flip: a mirrored spectrogram
# plays time backwards
SIGNAL = InputKind("signal", frozenset(SIGNAL_EXTS), read=_read, claims=_claims, check=_check,
                   data_channels=lambda first, in_chans, layout: 1,
                   words=lambda first: "signals: one log-mel channel",
                   settle=lambda spectrogram: {"spectrogram": SpectrogramSpec.parse(spectrogram).to_str(),
                                               "tta": False},
                   preview=lambda path, pre: _read(path, spectrogram=getattr(pre, "spectrogram", None)
                                                   ).numpy()[:, ::-1],  # mel bin 0 (lowest) at the bottom
                   colormap="magma",
                   feed="the log-mel spectrogram ({spectrogram}) of the signal, in dB")
