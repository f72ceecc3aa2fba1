"""Reading clip files safely: paths that stay inside their data folder, CSV tables, ``.npy`` arrays
without pickles, and the reference to one clip on disk that a lazy data set carries instead of frames.

Every failure is a :class:`DataError` naming the file (and the CSV line and entry where one led to it).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np

from signflow_zoo.common.errors import DataError
from signflow_zoo.data.features import NUM_POINTS, RAW_DIM


@dataclass(frozen=True)
class ClipRef:
    """One clip on disk, without its frames: what reads it (``kind``), the files holding it, and what is
    known about it. ``where`` says where the reference came from (a CSV line), for messages."""

    kind: str  # "npy" (SignFlow recording), "lsfb" (left hand, right hand, pose files), "pose" (.pose file)
    files: tuple[Path, ...]
    name: str
    label: str | None
    signer: str
    where: str = ""


@dataclass
class RecordedClip:
    """One clip read from disk: raw landmarks [F, 225] float32 (no NaN: lost points are zeros) and its label
    when the files say it."""

    name: str
    raw: np.ndarray
    label: str | None = None
    signer: str | None = None


# Paths -----------------------------------------------------------------------------------------------
def inside(root: Path, entry: str, where: str) -> Path:
    """``root / entry``, refused unless it stays inside ``root``: no absolute path, no ``..`` leading out,
    no symbolic link (anywhere along the path) pointing outside. ``where`` names the file and line."""
    if PureWindowsPath(entry).is_absolute() or Path(entry).is_absolute() or PureWindowsPath(entry).drive:
        raise DataError(f"{where}: entry {entry!r} is an absolute path; list files relative to the data folder "
                        f"{root}")
    real_root = root.resolve()
    lexical = Path(os.path.normpath(real_root / entry))
    if not lexical.is_relative_to(real_root):
        raise DataError(f"{where}: entry {entry!r} leads outside the data folder {root} ('..'); list files "
                        "inside that folder")
    real = (root / entry).resolve()
    if not real.is_relative_to(real_root):
        raise DataError(f"{where}: entry {entry!r} is a symbolic link to {real}, outside the data folder {root}; "
                        "copy the file into the folder instead")
    return root / entry


def require_dir(root: Path, what: str) -> Path:
    if not root.is_dir():
        raise DataError(f"{root}: {what} directory not found")
    return root


# CSV ---------------------------------------------------------------------------------------------------
def read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header, as (line number, {column: stripped value}); at least one row."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a CSV with columns {', '.join(required)})")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'no header'}"
                )
            rows = [(reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in row.items()
                                       if isinstance(v, str) or v is None}) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV: {exc}") from None
    if not rows:
        raise DataError(f"{path}: has a header but no rows")
    return rows


# Arrays ------------------------------------------------------------------------------------------------
def load_npy(path: Path, referenced_by: str = "") -> np.ndarray:
    """np.load without pickles; every failure becomes a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found" + (f" (listed in {referenced_by})" if referenced_by else ""))
    try:
        with path.open("rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if magic != b"\x93NUMPY":  # otherwise numpy guesses "pickle" and suggests loading it unsafely
        raise DataError(f"{path}: not a valid .npy array file (no NumPy header; is it a .npy file?)")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays (need pickles), malformed header, short data
        raise DataError(f"{path}: not a valid .npy array file ({exc})") from None
    except Exception as exc:  # truncated data, I/O errors: whatever numpy raises, name the file
        raise DataError(f"{path}: unreadable or truncated .npy file ({type(exc).__name__}: {exc})") from None
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: expected numeric landmark values, got dtype {arr.dtype}")
    return arr


def lost_points_to_zero(raw: np.ndarray) -> np.ndarray:
    """[F, 225] float32 where every point with a non-finite coordinate (LSFB and pose files mark an undetected
    hand with NaN) is all zeros: the "missing" the features and their mask understand. Never NaN out."""
    raw = np.asarray(raw, dtype=np.float32)
    pts = raw.reshape(len(raw), NUM_POINTS, 3)
    lost = ~np.isfinite(pts).all(axis=-1)
    if lost.any():
        pts = pts.copy()
        pts[lost] = 0.0
    return np.ascontiguousarray(pts.reshape(len(raw), RAW_DIM))


def read_recording(path: Path, where: str = "") -> np.ndarray:
    """A SignFlow recording: ``.npy`` float [frames, 225] -> raw float32 without NaN."""
    raw = load_npy(path, where)
    if raw.ndim != 2 or raw.shape[1] != RAW_DIM:
        raise DataError(f"{path}: has shape {raw.shape}, expected [frames, {RAW_DIM}] "
                        f"(left hand 63, right hand 63, pose 99 values per frame)")
    if raw.shape[0] == 0:
        raise DataError(f"{path}: has no frames")
    return lost_points_to_zero(raw)
