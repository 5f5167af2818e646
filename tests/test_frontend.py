"""The log-mel front-end against librosa, and the audio loading path (rates, channels, lengths)."""
import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from audio_mrkd.data.frontend import (FrontendConfig, LogMel, Resampler, compute_logmel, load_clip, load_clips,
                                      load_frontend_config)
from audio_mrkd.errors import InputError

#: Stated tolerance: |Δ log-mel| ≤ 1e-3 + 1e-4·|ref| vs librosa (float64) with matched parameters.
LIBROSA_TOLERANCE = 1e-3


def librosa_logmel(x: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=x.astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length,
        hop_length=cfg.hop_length, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, htk=True, norm=None,
        power=cfg.power, center=cfg.center, pad_mode="reflect")
    return np.log(mel + cfg.log_offset)


@pytest.mark.parametrize("kind", ["tone", "noise"])
def test_logmel_matches_librosa(kind):
    cfg = FrontendConfig()
    rng = np.random.default_rng(1)
    t = np.arange(cfg.n_samples) / cfg.sample_rate
    x = 0.3 * np.sin(2 * np.pi * 997 * t) if kind == "tone" else 0.2 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    ours = LogMel(cfg)(torch.from_numpy(x)[None])[0].numpy()
    ref = librosa_logmel(x, cfg)
    assert ours.shape == ref.shape == (256, 65)
    np.testing.assert_allclose(ours, ref, atol=LIBROSA_TOLERANCE, rtol=1e-4)


def test_logmel_matches_librosa_with_other_parameters():
    cfg = FrontendConfig(sample_rate=16000, n_fft=1024, win_length=800, hop_length=320, n_mels=64,
                         f_min=50.0, f_max=7000.0)
    x = np.random.default_rng(2).standard_normal(cfg.n_samples).astype(np.float32) * 0.1
    ours = LogMel(cfg)(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(ours, librosa_logmel(x, cfg), atol=LIBROSA_TOLERANCE, rtol=1e-4)


@pytest.mark.parametrize("seconds", [1.0, 10.0])
def test_fast_cpu_path_equals_the_dense_path(seconds):
    """forward (CPU: a few clips per STFT, banded filterbank) == the export/GPU arithmetic (dense filterbank)."""
    cfg = FrontendConfig(clip_seconds=seconds)
    frontend = LogMel(cfg)
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((6, cfg.n_samples)).astype(np.float32)) * 0.1
    with torch.inference_mode():
        dense = torch.log(frontend.power_spectrum(x) @ frontend.fb + cfg.log_offset).transpose(1, 2)
        assert torch.allclose(frontend(x), dense, atol=1e-5)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000, 96000])
def test_resampler_equals_torchaudio(rate):
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((3, rate + 77)).astype(np.float32))
    ours, ref = Resampler(32000)(x, rate), torchaudio.transforms.Resample(rate, 32000)(x)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.equal(Resampler(32000)(x[1], rate), ours[1])  # 1-D input


def test_load_clips_equals_load_clip_per_file(tmp_path):
    """Batched loading (grouped by rate, zero-padded to a common length) == each file loaded alone."""
    cfg = FrontendConfig()
    rng = np.random.default_rng(6)
    paths = []
    for i, (rate, seconds, channels) in enumerate([(44100, 1.0, 1), (44100, 0.4, 2), (48000, 1.3, 1),
                                                    (22050, 2.0, 1), (32000, 0.7, 1), (44100, 3.0, 1)]):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], 0.1 * rng.standard_normal((int(rate * seconds), channels)), rate)
    batch = load_clips(paths, cfg)
    alone = torch.stack([load_clip(p, cfg) for p in paths])
    assert batch.shape == (len(paths), cfg.n_samples)
    assert torch.allclose(batch, alone, atol=1e-6)
    assert float(batch[1, int(0.4 * 32000) + 100:].abs().max()) == 0.0  # short clip: zero-padded


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_resampling_keeps_tone_frequency(tmp_path, rate):
    """A 1 kHz tone at any rate lands in the same mel band after resampling to 32 kHz."""
    cfg = FrontendConfig()
    t = np.arange(rate) / rate
    sf.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), rate)
    wave = load_clip(tmp_path / "tone.wav", cfg)
    assert wave.shape == (cfg.n_samples,)
    mel = compute_logmel([tmp_path / "tone.wav"], cfg)[0]
    sf.write(tmp_path / "ref.wav", 0.5 * np.sin(2 * np.pi * 1000 * np.arange(32000) / 32000), 32000)
    ref = compute_logmel([tmp_path / "ref.wav"], cfg)[0]
    band = ref[:, 10:-10].mean(axis=1).argmax()
    assert mel[:, 10:-10].mean(axis=1).argmax() == band
    assert np.abs(mel[band, 10:-10] - ref[band, 10:-10]).max() < 0.05  # tone energy kept within 0.2 dB


def test_stereo_is_mixed_to_mono(tmp_path):
    cfg = FrontendConfig()
    x = np.random.default_rng(3).standard_normal(32000) * 0.1
    sf.write(tmp_path / "st.wav", np.stack([x, 0.5 * x], 1), 32000)
    wave = load_clip(tmp_path / "st.wav", cfg).numpy()
    assert np.allclose(wave, 0.75 * x, atol=1e-4)  # 16-bit PCM quantisation


@pytest.mark.parametrize("seconds,clip", [(0.4, 1.0), (10.0, 1.0), (10.0, 10.0), (3.0, 10.0)])
def test_pad_or_crop_to_clip_length(tmp_path, seconds, clip):
    cfg = FrontendConfig(clip_seconds=clip)
    n = int(44100 * seconds)
    sf.write(tmp_path / "x.wav", np.full(n, 0.25), 44100)
    wave = load_clip(tmp_path / "x.wav", cfg)
    assert wave.shape == (cfg.n_samples,)
    kept = int(min(seconds, clip) * cfg.sample_rate)
    assert abs(float(wave[kept // 2]) - 0.25) < 1e-3
    if seconds < clip:
        assert float(wave[kept + 100:].abs().max()) == 0.0
    assert compute_logmel([tmp_path / "x.wav"], cfg).shape == (1, 256, cfg.n_frames)


def test_ten_second_frames():
    assert FrontendConfig(clip_seconds=10.0).shape == (256, 641)
    assert FrontendConfig().shape == (256, 65)


def test_feature_config_file_and_overrides(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("n_mels: 128\nclip_seconds: 10\n")
    cfg = load_frontend_config(path, ["hop_length=320"])
    assert (cfg.n_mels, cfg.clip_seconds, cfg.hop_length) == (128, 10.0, 320)
    with pytest.raises(InputError, match="features.n_melz: unknown config key"):
        load_frontend_config(None, ["n_melz=3"])
    with pytest.raises(InputError, match="features.win_length"):
        load_frontend_config(None, ["win_length=9000"])


def test_shipped_feature_config_is_the_default():
    from pathlib import Path
    shipped = load_frontend_config(Path(__file__).parent.parent / "configs/features/dcase24.yaml")
    assert shipped == FrontendConfig()
