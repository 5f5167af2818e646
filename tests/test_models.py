"""Model registry: exact sizes, forward shapes, option checks and ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audio_mrkd.errors import InputError
from audio_mrkd.models import available_models, build_model, model_options, register_model
from audio_mrkd.models.dcase_cnn import BandMaxPool
from audio_mrkd.models.resnet import PadShortcut

ALL_MODELS = ["cp_mobile", "dcase_cnn", "resnet18", "resnet20", "resnet32", "resnet56", "wrn16_k", "wrn28_k"]
SMALL = {"wrn16_k": {"widen": 1}, "wrn28_k": {"widen": 1}}  # keep forward passes cheap


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, so eval outputs are not ~0."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)
    return model.eval()


# --- exact sizes --------------------------------------------------------------------------------

def test_cp_mobile_default_matches_dcase24_baseline_complexity():
    torchinfo = pytest.importorskip("torchinfo")
    stats = torchinfo.summary(build_model("cp_mobile", 10), input_size=(1, 1, 256, 65), verbose=0)
    assert stats.total_params == 61_148
    assert stats.total_mult_adds == 29_419_156


def test_cp_mobile_width_depth_and_strides_are_configurable():
    torchinfo = pytest.importorskip("torchinfo")
    base = n_params(build_model("cp_mobile", 10))
    assert n_params(build_model("cp_mobile", 10, base_channels=48)) > base
    assert n_params(build_model("cp_mobile", 10, channels_multiplier=2.3)) > base
    assert n_params(build_model("cp_mobile", 10, expansion_rate=3.0)) > base
    shallow = build_model("cp_mobile", 10, n_blocks=[2, 1])
    assert n_params(shallow) < base and len(shallow.stages) == 2
    # Strides change the compute, never the parameter count.
    no_stride = build_model("cp_mobile", 10, strides={})
    macs = torchinfo.summary(no_stride, input_size=(1, 1, 256, 65), verbose=0).total_mult_adds
    assert n_params(no_stride) == base and macs > 29_419_156


def test_dcase_cnn_parameter_count_is_input_size_independent():
    assert n_params(build_model("dcase_cnn", 10)) == 46_118
    assert n_params(build_model("dcase_cnn", 10, channels=8)) < 46_118
    model = build_model("dcase_cnn", 10).eval()
    for shape in [(2, 1, 256, 65), (2, 1, 40, 500), (2, 1, 32, 32)]:
        assert model(torch.randn(shape)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("resnet18", {}, 11_173_962),
        ("resnet20", {}, 269_722),  # option A (the default): parameter-free shortcuts
        ("resnet20", {"shortcut": "B"}, 272_474),
        ("resnet32", {}, 464_154),
        ("resnet56", {}, 853_018),
        ("wrn16_k", {}, 2_748_890),  # WRN-16-4
        ("wrn28_k", {}, 36_479_194),  # WRN-28-10
    ],
)
def test_resnet_parameter_counts(name, kwargs, expected):
    assert n_params(build_model(name, 10, 3, **kwargs)) == expected


def test_n_classes_and_in_channels_change_the_right_layers():
    base = n_params(build_model("resnet20", 10, 3))
    assert n_params(build_model("resnet20", 100, 3)) - base == 90 * (64 + 1)
    assert base - n_params(build_model("resnet20", 10, 1)) == 2 * 16 * 9


# --- forward shapes -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shapes_for_audio_and_image_inputs(name):
    torch.manual_seed(0)
    audio = build_model(name, 10, 1, **SMALL.get(name, {})).eval()
    image = build_model(name, 100, 3, **SMALL.get(name, {})).eval()
    with torch.no_grad():
        assert audio(torch.randn(2, 1, 64, 21)).shape == (2, 10)
        assert audio(torch.randn(1, 1, 7, 5)).shape == (1, 10)
        logits = image(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 100) and torch.isfinite(logits).all()


def test_models_train_one_step():
    model = build_model("cp_mobile", 4)
    x, y = torch.randn(8, 1, 64, 21), torch.randint(0, 4, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 9, 7)
    out = PadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 5, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


@pytest.mark.parametrize("height", [1, 2, 5, 51, 52])
def test_band_max_pool_equals_adaptive_max_pool(height):
    x = torch.randn(2, 3, height, 6)
    assert torch.equal(BandMaxPool()(x), nn.AdaptiveMaxPool2d((2, 1))(x))


# --- registry -----------------------------------------------------------------------------------

def test_available_models_lists_every_model_sorted():
    names = available_models()
    assert names == sorted(names) and set(ALL_MODELS) <= set(names)
    assert model_options("cp_mobile")["base_channels"] == 32


def test_unknown_model_names_the_known_ones():
    with pytest.raises(InputError, match=r"model\.name: unknown model 'vgg' \(known: cp_mobile, dcase_cnn, "):
        build_model("vgg", 10)


def test_unknown_option_is_named():
    with pytest.raises(InputError, match=r"model\.base_chanels: unknown option for model 'cp_mobile'"):
        build_model("cp_mobile", 10, base_chanels=16)


@pytest.mark.parametrize(
    ("name", "kwargs", "key"),
    [
        ("cp_mobile", {"n_classes": 0}, "model.n_classes"),
        ("cp_mobile", {"n_classes": 10, "in_channels": 1.5}, "model.in_channels"),
        ("cp_mobile", {"n_classes": 10, "base_channels": -8}, "model.base_channels"),
        ("cp_mobile", {"n_classes": 10, "n_blocks": []}, "model.n_blocks"),
        ("cp_mobile", {"n_classes": 10, "n_blocks": [3, 0]}, "model.n_blocks"),
        ("cp_mobile", {"n_classes": 10, "expansion_rate": 0}, "model.expansion_rate"),
        ("cp_mobile", {"n_classes": 10, "strides": {"b9": [1, 2]}}, "model.strides"),
        ("cp_mobile", {"n_classes": 10, "strides": {"b2": [1, 2, 3]}}, "model.strides.b2"),
        ("dcase_cnn", {"n_classes": 10, "dropout": 1.0}, "model.dropout"),
        ("dcase_cnn", {"n_classes": 10, "kernel_size": 4}, "model.kernel_size"),
        ("resnet20", {"n_classes": 10, "shortcut": "C"}, "model.shortcut"),
        ("wrn16_k", {"n_classes": 10, "widen": True}, "model.widen"),
    ],
)
def test_bad_option_values_raise_input_error(name, kwargs, key):
    with pytest.raises(InputError, match=f"^{key}: "):
        build_model(name, **kwargs)


def test_register_model_adds_a_buildable_model(monkeypatch):
    import audio_mrkd.models as registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("tiny_linear")
    def tiny(n_classes, in_channels, *, hidden=4):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(in_channels, hidden),
                             nn.Linear(hidden, n_classes))

    assert "tiny_linear" in available_models()
    model = build_model("tiny_linear", 5, 2, hidden=7)
    assert model(torch.randn(3, 2, 8, 8)).shape == (3, 5) and model[2].out_features == 7
    with pytest.raises(ValueError, match="registered twice"):
        register_model("tiny_linear")(lambda n_classes, in_channels: nn.Identity())


# --- ONNX export --------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside torch.export, not by our code
@pytest.mark.parametrize("name", ["cp_mobile", "dcase_cnn"])
def test_onnx_export_matches_pytorch(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = randomize_batchnorm(build_model(name, 10))
    path = tmp_path / f"{name}.onnx"
    dynamic = {"x": {0: torch.export.Dim("batch", max=1024), 3: torch.export.Dim("frames", min=8, max=4096)}}
    torch.onnx.export(model, (torch.randn(2, 1, 256, 65),), str(path), input_names=["x"],
                      dynamo=True, dynamic_shapes=dynamic, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(3, 1, 256, 65), (1, 1, 256, 40)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        assert got.shape == expected.shape
        assert expected.std() > 1e-2  # the comparison is between non-trivial outputs
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
