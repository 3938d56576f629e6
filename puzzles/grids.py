"""ARC grid helpers: the dihedral group, augmentation names, the token canvas and its crop.

Tokens: PAD 0, EOS 1, colour c -> c + 2. A grid is drawn on a square canvas (side 30 for ARC,
smaller for the laptop-sized ARC set) at an offset (r0, c0), followed by an EOS row under it and an
EOS column right of it; the corner cell stays PAD and a grid touching the canvas border gets no EOS
on that side. The model thus predicts the output's size through where it puts the EOS border.
"""
import functools
import hashlib
import math

import numpy as np

GRID = 30                        # ARC canvas side (seq_len 900)
PAD, EOS = 0, 1                  # colour c -> token c + 2
INVERSE_T = [0, 3, 2, 1, 4, 5, 6, 7]
SWAPS_SHAPE = (1, 3, 6, 7)       # dihedral ids that exchange rows and columns


def dihedral(grid, t):
    """Dihedral transform t in 0..7, numpy semantics (rot90 counter-clockwise): 0 identity, 1-3
    rotations, 4 left-right flip, 5 up-down, 6 transpose, 7 anti-transpose (in[n-1-j, n-1-i])."""
    if t == 0: return grid
    if t == 1: return np.rot90(grid, 1)
    if t == 2: return np.rot90(grid, 2)
    if t == 3: return np.rot90(grid, 3)
    if t == 4: return np.fliplr(grid)
    if t == 5: return np.flipud(grid)
    if t == 6: return grid.T
    if t == 7: return np.fliplr(np.rot90(grid, 1))
    raise ValueError(f"dihedral id must be 0..7, got {t}")


def inverse_dihedral(grid, t):
    return dihedral(grid, INVERSE_T[t])


def grid_hash(grid):
    """sha256 over the (rows, cols) bytes then the uint8 cells: how the ARC vote keys grids."""
    g = np.ascontiguousarray(grid, dtype=np.uint8)
    return hashlib.sha256(bytes(g.shape) + g.tobytes()).hexdigest()


def aug_name(task_id, t, colour_map):
    """'<id>|||t<t>|||<ten digits>', the bare id for the identity (TRM's augmented puzzle names)."""
    m = [int(c) for c in colour_map]
    if t == 0 and m == list(range(10)):
        return task_id
    return f"{task_id}|||t{t}|||{''.join(map(str, m))}"


def parse_aug_name(name):
    """-> (task_id, t, colour_map uint8[10]); a name without separator is the identity."""
    parts = name.split("|||")
    if len(parts) == 1:
        return name, 0, np.arange(10, dtype=np.uint8)
    return parts[0], int(parts[1][1:]), np.array([int(c) for c in parts[2]], dtype=np.uint8)


def augment_grid(grid, t, colour_map):
    """Forward augmentation: recolour, then dihedral t; invert_aug undoes it."""
    return dihedral(np.asarray(colour_map, np.uint8)[np.asarray(grid, np.uint8)], t)


def invert_aug(grid, name):
    """Undo an augmentation: inverse dihedral, then inverse colour map (argsort of the map)."""
    _, t, m = parse_aug_name(name)
    return np.argsort(m).astype(np.uint8)[inverse_dihedral(np.asarray(grid), t)]


@functools.lru_cache(maxsize=4096)
def layout(h, w, stride):
    """Flat positions of an h x w grid, then its EOS row and column, on a canvas of row `stride`."""
    r, c = np.divmod(np.arange(h * w), w)
    eos_row = h * stride + np.arange(w)
    eos_col = np.arange(h) * stride + w
    return np.concatenate([r * stride + c, eos_row, eos_col])


def encode_grid_pair(inp, out, r0=0, c0=0, canvas=GRID):
    """(input, output) grids -> two uint8 [canvas^2] token rows at offset (r0, c0), EOS-bordered."""
    res, s = [], canvas + 1
    for g in (np.asarray(inp, dtype=np.uint8), np.asarray(out, dtype=np.uint8)):
        h, w = g.shape
        # one extra row and column of scratch: an EOS border that falls off the canvas is cut away
        scratch = np.zeros(s * s, np.uint8)
        vals = np.concatenate([g.ravel() + 2, np.full(h + w, EOS, np.uint8)])
        scratch[r0 * s + c0 + layout(h, w, s)] = vals
        res.append(scratch.reshape(s, s)[:canvas, :canvas].reshape(-1))
    return res[0], res[1]


def crop_grid(tokens):
    """Square token canvas (side^2 tokens) -> grid: the largest top-left block of colour tokens,
    minus 2. Rows are scanned with a running width limit (a ragged prediction gives the largest
    top-left 'staircase' rectangle, the first on ties); PAD or EOS at (0, 0) gives a 0 x 0 grid."""
    t = np.asarray(tokens).reshape(-1)
    side = math.isqrt(t.size)
    if side * side != t.size:
        raise ValueError(f"crop_grid needs a square canvas, got {t.size} tokens")
    t = t.reshape(side, side)
    valid = (t >= 2) & (t <= 11)
    first_bad = np.where(valid.all(1), side, np.argmin(valid, axis=1))
    widths = np.minimum.accumulate(first_bad)                  # running width limit over rows
    areas = np.arange(1, side + 1) * widths
    r = int(np.argmax(areas))                                  # first strict maximum
    if areas[r] == 0:
        return np.zeros((0, 0), np.uint8)
    return (t[:r + 1, :widths[r]] - 2).astype(np.uint8)
