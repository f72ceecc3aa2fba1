import numpy as np
import pytest
import torch

from signflow_zoo.errors import InputError
from signflow_zoo.model import SignTransformer, build_model, check_input, count_parameters
from signflow_zoo.zoo import list_model_configs

PRESETS = list(list_model_configs())


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds_and_runs(preset):
    entry = list_model_configs()[preset]
    model = build_model(entry, num_classes=12).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 16, 469), torch.ones(2, 16, dtype=torch.bool))
    assert out.shape == (2, 12) and torch.isfinite(out).all()
    # layer count and width really follow the preset
    assert len(model.layers) == entry.layers and model.d_model == entry.d_model
    assert count_parameters(model) > entry.layers * 4 * entry.d_model**2


@pytest.mark.parametrize("frames", [8, 15, 64, 181, 256])
def test_variable_frame_counts(frames):
    torch.manual_seed(0)
    model = SignTransformer(num_classes=5, d_model=48, nhead=4, num_layers=2, dim_feedforward=96).eval()
    with torch.no_grad():
        out = model(torch.randn(3, frames, 469))
    assert out.shape == (3, 5) and torch.isfinite(out).all()


def test_explicit_mask_makes_padding_invisible():
    torch.manual_seed(0)
    model = SignTransformer(num_classes=5, d_model=48, nhead=4, num_layers=2, dim_feedforward=96).eval()
    x = torch.randn(2, 20, 469)
    junk = torch.randn(2, 9, 469) * 50  # whatever sits in padded frames must not matter
    mask = torch.cat([torch.ones(2, 20, dtype=torch.bool), torch.zeros(2, 9, dtype=torch.bool)], 1)
    with torch.no_grad():
        plain = model(x)
        padded = model(torch.cat([x, junk], 1), mask)
        unmasked = model(torch.cat([x, junk], 1))
    assert torch.allclose(plain, padded, atol=1e-5)
    assert not torch.allclose(plain, unmasked, atol=1e-3)  # without the mask the junk is seen


def test_components_exist():
    m = SignTransformer(num_classes=7, d_model=48, nhead=4, num_layers=2, dim_feedforward=96)
    assert [c.kernel_size[0] for c in m.stem] == [3, 5, 7]
    assert sum(c.out_channels for c in m.stem) == 48
    assert m.rel_bias.numel() == 129 and m.cls_token.shape == (1, 1, 48)
    assert m.prototypes.shape == (7, 48) and float(m.proto_scale.detach()) == 10.0


def test_prototype_scale_is_clamped():
    torch.manual_seed(0)
    m = SignTransformer(num_classes=4, d_model=24, nhead=2, num_layers=1, dim_feedforward=32).eval()
    x = torch.randn(1, 10, 469)
    with torch.no_grad():
        m.proto_scale.fill_(50.0)
        a = m(x)
        m.proto_scale.fill_(500.0)
        b = m(x)
    assert torch.allclose(a, b)


def test_training_mode_is_stochastic_eval_is_not():
    torch.manual_seed(0)
    m = SignTransformer(num_classes=4, d_model=24, nhead=2, num_layers=1, dim_feedforward=32)
    x = torch.randn(2, 10, 469)
    m.train()
    assert not torch.allclose(m(x), m(x))
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


@pytest.mark.parametrize("features,mask,words", [
    (np.zeros((2, 64, 100), np.float32), None, "[batch, frames, 469]"),
    (np.zeros((64, 469), np.float32), None, "[batch, frames, 469]"),
    (np.zeros((2, 64, 469), np.float64), None, "float32"),
    (np.zeros((2, 64, 469), np.float32), np.ones((2, 63), bool), "mask must have shape"),
    (np.zeros((2, 64, 469), np.float32), np.ones((2, 64), np.float32), "bool"),
])
def test_check_input_names_what_was_expected(features, mask, words):
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_input(features, mask)
