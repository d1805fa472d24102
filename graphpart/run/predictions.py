"""Predictions written to a new .npz or .csv file (`graphpart predict --out`), never overwriting."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from graphpart.errors import GraphpartError

OUT_FORMATS = (".npz", ".csv")  # what `save_predictions` writes


def check_out(out: str | os.PathLike, flag: str = "--out") -> Path:
    """`out` as a new .npz or .csv file: an existing file is never overwritten, and its folder
    must exist (one-line GraphpartErrors naming `flag`).

    >>> try:
    ...     check_out("predictions.txt")
    ... except GraphpartError as e:
    ...     print(e)
    --out predictions.txt: unknown format '.txt'; use .npz or .csv
    """
    out = Path(out)
    if out.suffix.lower() not in OUT_FORMATS:
        raise GraphpartError(
            f"{flag} {out}: unknown format {out.suffix.lower()!r}; use .npz or .csv"
        )
    if out.exists() or out.is_symlink():
        raise GraphpartError(
            f"{flag} {out}: the file already exists and is not overwritten; remove it or give "
            "another name"
        )
    if not out.parent.is_dir():
        raise GraphpartError(
            f"{flag} {out}: folder {out.parent} does not exist; create it first or give another "
            "path"
        )
    return out


def save_predictions(
    out: str | os.PathLike, predictions: np.ndarray, logits: np.ndarray | None = None
) -> Path:
    """Write predictions to a new .npz (arrays `predictions`, and `logits` if given) or .csv
    (a header row, then one row per sample); an existing file is never overwritten.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = save_predictions(Path(folder) / "p.csv", np.array([3, 1]))
    >>> print(path.read_text(), end="")
    prediction
    3
    1
    """
    out = check_out(out)
    p = np.asarray(predictions)
    if out.suffix.lower() == ".npz":
        arrays = {"predictions": p} if logits is None else {"predictions": p, "logits": logits}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
    else:
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        rows = p.reshape(len(p), -1)
        w.writerow(
            ["prediction"] if rows.shape[1] == 1 else [f"output_{j}" for j in range(rows.shape[1])]
        )
        w.writerows(r.tolist() for r in rows)
        data = text.getvalue().encode()
    try:
        with open(out, "xb") as f:  # exclusive: a file made meanwhile is not overwritten either
            f.write(data)
    except FileExistsError:
        raise GraphpartError(
            f"--out {out}: the file already exists and is not overwritten"
        ) from None
    except OSError as e:
        raise GraphpartError(f"--out {out}: cannot write ({e.strerror or e})") from None
    return out
