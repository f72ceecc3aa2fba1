import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from signflow_zoo.common.errors import InputError
from signflow_zoo.data.features import FEATURE_DIM
from signflow_zoo.model.network import SignTransformer, build_model, check_input, count_parameters, estimate_gflops
from signflow_zoo.model.zoo import get_model_config, list_model_configs, list_presets

PRESETS = list(list_model_configs())
# The original SignFlow model's parameter counts at 100 classes (0.87M / 2.55M / 5.84M / 12.5M / 28.1M),
# counted on its own layers: LayerNorm, Linear embedding, 3 convolutions, fusion, nn.TransformerEncoder
# (norm_first), output norm, gate Linear(2d,d)-GELU-Linear(d,1), classifier, metric projection, prototypes.
ORIGINAL_PARAMS_100 = {"lightweight": 868_453, "baseline": 2_545_361, "medium": 5_842_235, "large": 12_546_065,
                       "xlarge": 28_080_613}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds_and_runs(preset):
    entry = list_model_configs()[preset]
    model = build_model(entry, num_classes=12).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 16, FEATURE_DIM), torch.ones(2, 16, dtype=torch.bool))
    assert out.shape == (2, 12) and torch.isfinite(out).all()
    # layer count and width really follow the preset
    assert len(model.layers) == entry.layers and model.d_model == entry.d_model
    assert count_parameters(model) > entry.layers * 4 * entry.d_model**2


@pytest.mark.parametrize("preset", PRESETS)
def test_parameter_count_is_the_originals(preset):
    entry = list_model_configs()[preset]
    assert count_parameters(build_model(entry, num_classes=100)) == ORIGINAL_PARAMS_100[preset]


@pytest.mark.parametrize("preset", PRESETS)
def test_gflop_estimate_equals_torchs_flop_count(preset):
    """Every matmul and convolution of the forward pass (gate MLP and metric projection included)."""
    from torch.utils.flop_counter import FlopCounterMode

    entry = list_model_configs()[preset]
    model = build_model(entry, num_classes=100).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 64, FEATURE_DIM))
    assert estimate_gflops(entry, num_classes=100, frames=64) * 1e9 == pytest.approx(counter.get_total_flops())


def _small(num_classes=5, layers=1, seed=0):
    torch.manual_seed(seed)
    return SignTransformer(num_classes=num_classes, d_model=24, nhead=2, num_layers=layers, dim_feedforward=32).eval()


def test_pooling_gate_is_a_two_layer_mlp_of_cls_and_mean():
    m = _small()
    x, y = torch.randn(6, 48), torch.randn(6, 48)
    with torch.no_grad():
        assert m.gate(x).shape == (6, 1)  # [cls, mean] (2d) -> one gate logit
        # a single Linear would be affine: g(x) + g(y) == g(x + y) + g(0); the hidden GELU layer is not
        affine_gap = m.gate(x) + m.gate(y) - m.gate(x + y) - m.gate(torch.zeros(6, 48))
        assert affine_gap.abs().max() > 1e-4
        hidden = m.gate[0](x)
        assert hidden.shape == (6, 24)  # hidden width d


def test_cosine_head_compares_the_projected_embedding():
    m = _small()
    x = torch.randn(2, 12, FEATURE_DIM)
    with torch.no_grad():
        before = m(x)
        m.classifier.weight.zero_()
        m.classifier.bias.zero_()
        only_cos = m(x)
        m.metric_proj.weight.copy_(torch.randn(24, 24))
        moved = m(x)
    assert not torch.allclose(before, only_cos)
    assert not torch.allclose(only_cos, moved, atol=1e-4)  # the projection is on the cosine path
    scale = float(m.proto_scale.detach().clamp(1, 50))
    assert only_cos.abs().max() <= 0.35 * scale + 1e-5  # what is left is a scaled cosine


def test_stem_reads_the_raw_features_not_the_normalized_ones():
    # LayerNorm makes the embedding branch blind to a per-frame scale; the raw-input stem is not.
    m = _small()
    x = torch.randn(2, 12, FEATURE_DIM)
    with torch.no_grad():
        assert not torch.allclose(m(x), m(3.0 * x), atol=1e-3)
        for conv in m.stem:  # silence the stem: what is left only sees normalized features
            conv.weight.zero_()
            conv.bias.zero_()
        assert torch.allclose(m(x), m(3.0 * x), atol=1e-4)


def _encoder_input(model, x, mask=None):
    seen = {}

    def keep(module, args):
        seen["tokens"] = args[0].clone()  # returns None: the input goes on unchanged

    hook = model.layers[0].register_forward_pre_hook(keep)
    with torch.no_grad():
        model(x, mask)
    hook.remove()
    return seen["tokens"]


def test_smoothing_runs_after_the_positional_encoding():
    m = _small()
    with torch.no_grad():  # every frame token is 0 before the positional encoding
        m.fuse.weight.zero_()
        m.fuse.bias.zero_()
    t, d = 10, 24
    tokens = _encoder_input(m, torch.randn(1, t, FEATURE_DIM))
    pos = torch.arange(t + 1, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(t + 1, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    frames = pe[1:]
    smooth = F.avg_pool1d(frames.T[None], 3, 1, 1)[0].T  # zero-padded mean of 3 neighbours
    assert torch.allclose(tokens[0, 1:], 0.9 * frames + 0.1 * smooth, atol=1e-5)
    assert not torch.allclose(tokens[0, 1:], frames, atol=1e-3)  # smoothing before it would leave PE as is
    assert torch.allclose(tokens[0, 0], m.cls_token[0, 0] + pe[0], atol=1e-6)  # CLS is not smoothed


def _layer_output(model, x):
    seen = {}

    def keep(module, args, out):
        seen["out"] = out.clone()

    hook = model.layers[0].register_forward_hook(keep)
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen["out"]


def test_cls_token_gets_no_relative_position_bias():
    m = _small()
    x = torch.randn(2, 9, FEATURE_DIM)
    base = _layer_output(m, x)
    with torch.no_grad():
        m.rel_bias.copy_(torch.randn(129) * 3)
    biased = _layer_output(m, x)
    # row: the CLS query attends exactly as without any bias; the frames' attention did change
    assert torch.allclose(base[:, 0], biased[:, 0], atol=1e-5)
    assert not torch.allclose(base[:, 1:], biased[:, 1:], atol=1e-3)
    # column: one constant bias on every distance would cancel in softmax if it reached the CLS key too
    with torch.no_grad():
        m.rel_bias.fill_(4.0)
    shifted = _layer_output(m, x)
    assert not torch.allclose(base[:, 1:], shifted[:, 1:], atol=1e-3)
    assert torch.allclose(base[:, 0], shifted[:, 0], atol=1e-5)


@pytest.mark.parametrize("frames", [8, 15, 64, 181, 256])
def test_variable_frame_counts(frames):
    torch.manual_seed(0)
    model = SignTransformer(num_classes=5, d_model=48, nhead=4, num_layers=2, dim_feedforward=96).eval()
    with torch.no_grad():
        out = model(torch.randn(3, frames, FEATURE_DIM))
    assert out.shape == (3, 5) and torch.isfinite(out).all()


def test_explicit_mask_makes_padding_invisible():
    torch.manual_seed(0)
    model = SignTransformer(num_classes=5, d_model=48, nhead=4, num_layers=2, dim_feedforward=96).eval()
    x = torch.randn(2, 20, FEATURE_DIM)
    junk = torch.randn(2, 9, FEATURE_DIM) * 50  # whatever sits in padded frames must not matter
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
    x = torch.randn(1, 10, FEATURE_DIM)
    with torch.no_grad():
        m.proto_scale.fill_(50.0)
        a = m(x)
        m.proto_scale.fill_(500.0)
        b = m(x)
    assert torch.allclose(a, b)


def test_training_mode_is_stochastic_eval_is_not():
    torch.manual_seed(0)
    m = SignTransformer(num_classes=4, d_model=24, nhead=2, num_layers=1, dim_feedforward=32)
    x = torch.randn(2, 10, FEATURE_DIM)
    m.train()
    assert not torch.allclose(m(x), m(x))
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


@pytest.mark.parametrize("features,mask,words", [
    (np.zeros((2, 64, 100), np.float32), None, "[batch, frames, 469]"),
    (np.zeros((64, FEATURE_DIM), np.float32), None, "[batch, frames, 469]"),
    (np.zeros((2, 64, FEATURE_DIM), np.float64), None, "float32"),
    (np.zeros((2, 64, FEATURE_DIM), np.float32), np.ones((2, 63), bool), "mask must have shape"),
    (np.zeros((2, 64, FEATURE_DIM), np.float32), np.ones((2, 64), np.float32), "bool"),
])
def test_check_input_names_what_was_expected(features, mask, words):
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_input(features, mask)


@pytest.mark.parametrize("name", list_presets())
def test_closed_form_parameter_count_matches_the_model(name):
    from signflow_zoo.model.zoo import parameter_count

    e = get_model_config(name)
    for classes in (7, 100):
        assert parameter_count(e.d_model, e.heads, e.layers, e.dim_ff, classes) == \
            count_parameters(build_model(e, num_classes=classes))


def test_absurd_sizes_are_refused_before_anything_is_allocated():
    from signflow_zoo.common.errors import ZooError
    from signflow_zoo.model.network import model_kwargs_problem
    from signflow_zoo.model.zoo import parse_zoo

    doc = """[[entry]]
name = "huge"
d_model = 4096
heads = 8
layers = 64
dim_ff = 16384
dropout = 0.1
feature_dropout = 0.1
pooling_dropout = 0.1
use_case = "x"
"""
    with pytest.raises(ZooError, match="B parameters"):
        parse_zoo(doc)
    kwargs = dict(build_model(get_model_config("lightweight"), 5).init_kwargs, d_model=4096, nhead=8, num_layers=64,
                  dim_feedforward=16384)
    assert "B parameters" in model_kwargs_problem(kwargs)
