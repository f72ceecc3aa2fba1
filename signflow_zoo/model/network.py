"""SignTransformer: [batch, frames, 469] features (+ validity mask) -> [batch, classes] logits.

Layer for layer the original SignFlow model (same parameters, same order of operations), with three
deliberate differences that change no parameter count:

* an explicit frame mask instead of the original's "sum of |x| is zero" guess, so padding is exactly
  invisible (masked frames are zeroed before every temporal mixing step);
* a hand-written pre-norm attention block (``nn.TransformerEncoder`` with a float mask bakes the frame
  count into an exported graph);
* positions and distances built from ``torch.arange`` on the input's own length and no Python-side
  shape branching, so both ONNX exporters keep batch and frame axes dynamic (a one-frame input goes
  through the stem and the smoothing, which the original skipped for it).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from signflow_zoo.data.features import FEATURE_DIM
from signflow_zoo.common.tensors import check_input  # noqa: F401 - model users validate batches with it
from signflow_zoo.model.zoo import SIZE_BOUNDS, parameter_count, parameters_problem, size_problem

MAX_REL_DISTANCE = 64
# Bumped whenever a change makes old weights meaningless for this class (new layers, a new order of
# operations). It is part of the checkpoint cache key and of every checkpoint's metadata, so a cached
# checkpoint of an older architecture is never loaded into this one.
# 2: gate Linear(2d,d)-GELU-Linear(d,1), metric projection in the cosine head, conv stem on the raw
#    input, no relative bias for the CLS token, temporal smoothing after the positional encoding.
MODEL_VERSION = 2


class EncoderBlock(nn.Module):
    """Pre-norm transformer layer: LN -> MHA(+ relative bias) -> residual; LN -> GELU FFN -> residual."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float):
        super().__init__()
        self.nhead = nhead
        self.head_dim = d_model // nhead
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, dim_ff)
        self.ff2 = nn.Linear(dim_ff, d_model)
        self.attn_drop = nn.Dropout(dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        qkv = self.qkv(h).reshape(b, t, 3, self.nhead, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim)) + bias
        attn = self.attn_drop(torch.softmax(scores, dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop(self.proj(out))
        x = x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.norm2(x))))))
        return x


class SignTransformer(nn.Module):
    """SignFlow's sign classifier: the original system's components layer for layer (docs/presets.md counts them)."""

    pe_freq: torch.Tensor  # a buffer (register_buffer below)

    def __init__(
        self,
        input_dim: int = FEATURE_DIM,
        num_classes: int = 100,
        d_model: int = 256,
        nhead: int = 8,
        num_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.25,
        feature_dropout: float = 0.15,
        pooling_dropout: float = 0.2,
        token_dropout: float = 0.05,
        max_rel_distance: int = MAX_REL_DISTANCE,
    ):
        super().__init__()
        self.init_kwargs = {
            "input_dim": input_dim, "num_classes": num_classes, "d_model": d_model, "nhead": nhead,
            "num_layers": num_layers, "dim_feedforward": dim_feedforward, "dropout": dropout,
            "feature_dropout": feature_dropout, "pooling_dropout": pooling_dropout,
            "token_dropout": token_dropout, "max_rel_distance": max_rel_distance,
        }
        if d_model % nhead:
            raise ValueError(f"nhead={nhead} must divide d_model={d_model}")
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.d_model = d_model
        self.token_dropout = token_dropout
        self.max_rel_distance = max_rel_distance

        self.input_norm = nn.LayerNorm(input_dim)
        self.embed = nn.Linear(input_dim, d_model)
        self.feature_drop = nn.Dropout(feature_dropout)
        c1 = d_model // 3
        c3 = d_model - 2 * c1
        self.stem = nn.ModuleList(
            [nn.Conv1d(input_dim, c, k, padding=k // 2) for c, k in ((c1, 3), (c1, 5), (c3, 7))]
        )
        self.fuse = nn.Linear(2 * d_model, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        nn.init.normal_(self.cls_token, std=0.02)
        self.rel_bias = nn.Parameter(torch.zeros(2 * max_rel_distance + 1))
        self.layers = nn.ModuleList(
            [EncoderBlock(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)]
        )
        self.out_norm = nn.LayerNorm(d_model)
        # pooling gate: weight of the CLS token against the masked mean (sigmoid applied in forward)
        self.gate = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))
        self.pool_drop = nn.Dropout(pooling_dropout)
        self.classifier = nn.Linear(d_model, num_classes)
        self.metric_proj = nn.Linear(d_model, d_model)  # embedding compared with the class prototypes
        self.prototypes = nn.Parameter(torch.randn(num_classes, d_model) * 0.02)
        self.proto_scale = nn.Parameter(torch.tensor(10.0))
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        self.register_buffer("pe_freq", freq, persistent=False)

    # -- pieces ---------------------------------------------------------------------------------
    def _positional(self, t: int) -> torch.Tensor:
        """Sinusoidal encoding [1, T, d] for positions 0..T-1, built from the runtime length."""
        pos = torch.arange(t, device=self.pe_freq.device, dtype=torch.float32).unsqueeze(1)
        ang = pos * self.pe_freq.unsqueeze(0)
        pe = torch.stack((torch.sin(ang), torch.cos(ang)), dim=-1).flatten(1)
        return pe[:, : self.d_model].unsqueeze(0)

    def _attention_bias(self, n: int, key_valid: torch.Tensor) -> torch.Tensor:
        """[B,1,N,N]: learned relative-distance scalar + a large negative bias on padded keys.

        Token 0 is the CLS token: it has no temporal position, so its row and column get no relative bias.
        """
        idx = torch.arange(n, device=key_valid.device)
        dist = (idx.unsqueeze(0) - idx.unsqueeze(1)).clamp(-self.max_rel_distance, self.max_rel_distance)
        frame = (idx > 0).to(self.rel_bias.dtype)
        rel = self.rel_bias[dist + self.max_rel_distance] * (frame.unsqueeze(0) * frame.unsqueeze(1))  # [N,N]
        pad = (1.0 - key_valid.to(rel.dtype)) * -1e4  # [B,N]
        return rel.unsqueeze(0).unsqueeze(0) + pad.unsqueeze(1).unsqueeze(1)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """features [B,T,F] float; mask [B,T] bool (True = valid frame) or None (all valid)."""
        b, t = features.shape[0], features.shape[1]
        if mask is None:
            valid = torch.ones(features.shape[:2], dtype=features.dtype, device=features.device)
        else:
            valid = mask.to(features.dtype)
        keep = valid.unsqueeze(-1)
        # Masked frames are zeroed before every temporal mixing step (convolutions, smoothing), so they
        # look exactly like the zero padding beyond a sequence's end.
        raw = features * keep
        emb = self.feature_drop(F.gelu(self.embed(self.input_norm(raw))))
        xc = raw.transpose(1, 2)  # the multiscale stem reads the raw features, not the normalized ones
        stem = torch.cat([F.gelu(conv(xc)) for conv in self.stem], dim=1).transpose(1, 2)
        h = self.feature_drop(F.gelu(self.fuse(torch.cat([emb, stem], dim=-1))))
        if self.training and self.token_dropout > 0:
            h = h * (torch.rand(b, t, 1, device=h.device) >= self.token_dropout).to(h.dtype)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), h], dim=1)
        tokens = tokens + self._positional(tokens.shape[1])
        # light temporal smoothing of the frame tokens, after the positional encoding (CLS untouched)
        frames = tokens[:, 1:] * keep
        smooth = F.avg_pool1d(frames.transpose(1, 2), kernel_size=3, stride=1, padding=1).transpose(1, 2)
        tokens = torch.cat([tokens[:, :1], (0.9 * frames + 0.1 * smooth) * keep], dim=1)
        key_valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        bias = self._attention_bias(tokens.shape[1], key_valid)
        for layer in self.layers:
            tokens = layer(tokens, bias)
        tokens = self.out_norm(tokens)
        cls = tokens[:, 0]
        frames = tokens[:, 1:]
        mean = (frames * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True).clamp(min=1.0)
        g = torch.sigmoid(self.gate(torch.cat([cls, mean], dim=-1)))
        z = self.pool_drop(g * cls + (1.0 - g) * mean)
        linear = self.classifier(z)
        cos = F.normalize(self.metric_proj(z), dim=-1) @ F.normalize(self.prototypes, dim=-1).t()
        return 0.65 * linear + 0.35 * self.proto_scale.clamp(1.0, 50.0) * cos


DROPOUT_ARGS = ("dropout", "feature_dropout", "pooling_dropout", "token_dropout")


def model_kwargs_problem(kwargs: Any) -> str | None:
    """What makes ``kwargs`` an impossible SignTransformer (sizes, heads, dropouts, input width), or None."""
    if not isinstance(kwargs, dict):
        return f"model_kwargs must be a JSON object, got {type(kwargs).__name__}"
    unknown = sorted(set(kwargs) - set(inspect.signature(SignTransformer.__init__).parameters) - {"self"})
    if unknown:
        return f"model_kwargs has unknown key {unknown[0]!r}"
    for name in SIZE_BOUNDS:
        if name not in kwargs:
            return f"model_kwargs lacks {name!r}"
        problem = size_problem(name, kwargs[name])
        if problem:
            return f"model_kwargs {name!r} {problem}"
    if kwargs["d_model"] % kwargs["nhead"]:
        return f"model_kwargs nhead={kwargs['nhead']} does not divide d_model={kwargs['d_model']}"
    if kwargs.get("input_dim") != FEATURE_DIM:
        return f"model_kwargs input_dim is {kwargs.get('input_dim')!r}; this version computes {FEATURE_DIM} features"
    too_big = parameters_problem(parameter_count(kwargs["d_model"], kwargs["nhead"], kwargs["num_layers"],
                                                 kwargs["dim_feedforward"], kwargs["num_classes"], FEATURE_DIM,
                                                 kwargs["max_rel_distance"]))
    if too_big:
        return f"model_kwargs describe a model that {too_big}"
    for name in DROPOUT_ARGS:
        v = kwargs.get(name, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            return f"model_kwargs {name!r} must be a number in [0, 1), got {v!r}"
    return None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def estimate_gflops(entry, num_classes: int = 100, frames: int = 64, input_dim: int = FEATURE_DIM) -> float:
    """Multiply-accumulate count x2 of one sequence's forward pass (matmuls and convolutions)."""
    d, ff, L, h = entry.d_model, entry.dim_ff, entry.layers, entry.heads
    n = frames + 1
    macs = frames * input_dim * d  # embedding
    c1 = d // 3
    for c, k in ((c1, 3), (c1, 5), (d - 2 * c1, 7)):
        macs += frames * input_dim * c * k
    macs += frames * 2 * d * d  # fuse
    per_layer = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * ff
    macs += L * per_layer
    macs += 2 * d * d + d  # pooling gate: Linear(2d, d), Linear(d, 1)
    macs += d * d + 2 * d * num_classes  # metric projection; linear and cosine heads
    return 2.0 * macs / 1e9


def build_model(entry, num_classes: int = 100) -> SignTransformer:
    """A freshly initialised :class:`SignTransformer` of zoo entry ``entry`` with ``num_classes`` outputs."""
    return SignTransformer(**entry.to_model_kwargs(num_classes=num_classes))
