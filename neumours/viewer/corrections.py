"""The viewer's editing state: pending corrections per case and the history of applied refinements.

The model (docs/viewer.md "Editing model"):

- **Pending corrections** of a case (:class:`Corrections`): slice paint (an
  (X, Y, Z) uint8 volume, 0 unpainted, 1..3 NCR/ED/ET,
  :data:`~neumours.viewer.protocol.PAINT_BACKGROUND` background) and at most one
  3-D mask (one camera's tumour / not-tumour / don't-care image). Each case keeps
  its own; a case switch keeps them.
- **Refine consumes them**: the refinement's :class:`Refinement` record takes the
  corrections it used and the case's pending corrections become empty, so a later
  Refine never applies them again.
- **Undo refine** pops the last record: the weights before it come back bit for
  bit and its corrections become pending again (merged under any painted since).
- **One history for all cases** (the weights are shared by every case): undoing a
  refinement made on another case restores the weights and returns the
  corrections to that case's pending set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from neumours.refine.masks import DONT_CARE, NOT_TUMOUR, TUMOUR
from neumours.viewer.protocol import PAINT_BACKGROUND, PAINT_NONE, View

#: Undo depth: the weights of at most this many refinements are kept (each a copy of the flat weights,
#: ~1 MB for the paper's network); the log of applied refinements is never cut.
MAX_UNDO = 32
_PEN_NAMES = {1: "NCR", 2: "ED", 3: "ET", PAINT_BACKGROUND: "background"}


@dataclass
class Corrections:
    """Pending corrections of one case.

    Attributes:
        paint: (X, Y, Z) uint8 slice paint of the case.
        mask: (view, (H, W) uint8 mask) of the 3-D strokes, or None.
    """

    paint: np.ndarray
    mask: tuple[View, np.ndarray] | None = None

    @classmethod
    def empty(cls, shape) -> "Corrections":
        return cls(np.zeros(tuple(shape), np.uint8))

    def is_empty(self) -> bool:
        return self.mask is None and not (self.paint != PAINT_NONE).any()

    def painted(self) -> np.ndarray:
        """(X, Y, Z) bool: the painted voxels."""
        return self.paint != PAINT_NONE

    def summary(self) -> dict:
        """What the page lists: painted voxels per pen, masked pixels of the 3-D strokes."""
        counts = np.bincount(self.paint.reshape(-1), minlength=PAINT_BACKGROUND + 1)
        out = {"painted": int(counts[1:].sum()),
               "by_pen": {_PEN_NAMES[p]: int(counts[p]) for p in _PEN_NAMES if counts[p]},
               "mask_tumour": 0, "mask_not_tumour": 0}
        if self.mask is not None:
            values = self.mask[1]
            out["mask_tumour"], out["mask_not_tumour"] = int((values == TUMOUR).sum()), int((values == NOT_TUMOUR).sum())
        return out

    def take(self) -> "Corrections":
        """Move the corrections out: a copy is returned and this set becomes empty (Refine consumes them)."""
        taken = Corrections(self.paint.copy(), self.mask)
        self.clear()
        return taken

    def clear(self) -> None:
        self.paint[:] = PAINT_NONE
        self.mask = None

    def crops(self) -> tuple[tuple | None, tuple | None]:
        """The corrections as the page redraws them.

        Returns:
            ((origin, paint crop) or None, (view, (x0, y0), mask crop) or None).
        """
        painted = self.paint != PAINT_NONE
        paint = None
        if painted.any():
            lo = [int(np.flatnonzero(painted.any(axis=tuple(a for a in range(3) if a != ax)))[0]) for ax in range(3)]
            hi = [int(np.flatnonzero(painted.any(axis=tuple(a for a in range(3) if a != ax)))[-1]) + 1 for ax in range(3)]
            paint = (tuple(lo), np.ascontiguousarray(self.paint[tuple(slice(a, b) for a, b in zip(lo, hi))]))
        mask = None
        if self.mask is not None:
            view, image = self.mask
            rows, cols = np.nonzero(image != DONT_CARE)
            if len(rows):
                r0, c0 = int(rows.min()), int(cols.min())
                mask = (view, (c0, r0), np.ascontiguousarray(image[r0:rows.max() + 1, c0:cols.max() + 1]))
        return paint, mask

    def restore(self, earlier: "Corrections") -> None:
        """Put ``earlier`` corrections back (Undo refine): its paint under this set's, its mask if there is none."""
        keep = self.paint != PAINT_NONE
        self.paint[~keep] = earlier.paint[~keep]
        if self.mask is None:
            self.mask = earlier.mask


def mask_image(view: View, origin: tuple[int, int], values: np.ndarray) -> np.ndarray:
    """The (height, width) mask of a crop at (x0, y0) = ``origin``, don't care elsewhere."""
    mask = np.full((view.height, view.width), DONT_CARE, np.uint8)
    x0, y0 = origin
    h, w = values.shape
    mask[y0:y0 + h, x0:x0 + w] = values
    return mask


@dataclass
class Refinement:
    """One applied refinement: the weights before it (None beyond :data:`MAX_UNDO`), its case and corrections."""

    case: str
    weights: object
    corrections: Corrections
    settings: dict = field(default_factory=dict)

    def record(self) -> dict:
        """A JSON-able line of the checkpoint's log: case, settings and what was corrected."""
        return {"case": self.case, **self.settings, **self.corrections.summary()}


class History:
    """The applied refinements, newest last, across every case (:meth:`push` and :meth:`pop`)."""

    def __init__(self, depth: int = MAX_UNDO):
        self.depth = depth
        self.entries: list[Refinement] = []

    def __len__(self) -> int:
        return len(self.entries)

    def undoable(self) -> int:
        """How many refinements Undo can still take back (those whose weights are kept)."""
        return sum(e.weights is not None for e in self.entries)

    def push(self, entry: Refinement) -> None:
        self.entries.append(entry)
        kept = [e for e in self.entries if e.weights is not None]
        for old in kept[:-self.depth]:
            old.weights = None  # the record stays in the log; its weights go

    def pop(self) -> Refinement:
        """The newest refinement, removed; raises IndexError when none can be undone."""
        if not self.entries or self.entries[-1].weights is None:
            raise IndexError("nothing to undo")
        return self.entries.pop()

    def records(self) -> list[dict]:
        return [e.record() for e in self.entries]
