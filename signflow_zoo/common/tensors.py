"""The model's input contract, checked without PyTorch: backends validate batches with it before running."""

from __future__ import annotations

from signflow_zoo.common.errors import InputError

# Features per frame the model reads (the enriched layout of signflow_zoo.data.features, which re-exports it):
# defined here, the lowest layer, so that the input check and everything above share one number.
FEATURE_DIM = 469


def check_input(features, mask=None, input_dim: int = FEATURE_DIM) -> None:
    """Raise :class:`InputError` naming what was expected when a batch has the wrong shape or values."""
    shape = tuple(getattr(features, "shape", ()))
    if len(shape) != 3 or shape[2] != input_dim:
        raise InputError(f"features must have shape [batch, frames, {input_dim}], got {list(shape)}")
    if shape[0] < 1 or shape[1] < 1:
        raise InputError(f"features must have at least one sequence and one frame, got {list(shape)}")
    dtype = str(getattr(features, "dtype", ""))
    if "float32" not in dtype:
        raise InputError(f"features must be float32, got {dtype or type(features).__name__}")
    if mask is not None:
        mshape = tuple(getattr(mask, "shape", ()))
        if mshape != shape[:2]:
            raise InputError(f"mask must have shape [batch, frames] = {list(shape[:2])}, got {list(mshape)}")
        if "bool" not in str(getattr(mask, "dtype", "")):
            raise InputError(f"mask must be bool (True = valid frame), got {getattr(mask, 'dtype', None)}")
