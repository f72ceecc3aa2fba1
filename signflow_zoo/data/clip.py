"""The one type every reader of sign data produces: :class:`Clip`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Clip:
    """One recorded sign: raw landmarks [F, 225] float32, the class index and who signed it."""

    raw: np.ndarray
    label: int
    signer: str
    name: str = ""
