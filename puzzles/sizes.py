"""The size of a build before it starts: examples x tokens x 2 bytes (inputs and labels, uint8),
from a builder's options, so data.py can refuse a multi-GB build nobody asked for by name.
"""
import inspect
import os

from puzzles.arc import build_arc
from puzzles.arc_small import build_arc_small
from puzzles.arc_sources import load_arc_tasks
from puzzles.grid_programs import build_grid_programs
from puzzles.grids import GRID
from puzzles.maze import build_maze
from puzzles.small_sudoku import build_small_sudoku
from puzzles.sudoku import build_sudoku


def _csv_rows(o, split, n, width):
    """Rows a CSV builder keeps of one split: n, or every row of its source file (by its size)."""
    f = os.path.join(o["source"] or "", f"{split}.csv")
    if n or not o["source"] or not os.path.isfile(f):
        return n or 1000  # generated, num_test 0: 1000 puzzles
    return os.path.getsize(f) // (2 * width + 4)


def _arc(o):
    tasks = load_arc_tasks(o.get("version", "arc1"), o["source"], o.get("concept_path"),
                           o["max_tasks"], o["canvas"])
    pairs = sum(len(t["train"]) + len(t["test"]) for _, subset in tasks for _, t, _ in subset)
    return pairs * (o["num_aug"] + 1), o["canvas"] ** 2


# builder -> (examples, tokens per example) from its options o; any other builder:
# num_train x (num_aug + 1) + num_test examples of seq_len, canvas^2 or 900 tokens
SHAPES = {
    build_arc: _arc,
    build_arc_small: _arc,
    build_sudoku: lambda o: (_csv_rows(o, "train", o["num_train"], 81) * (o["num_aug"] + 1)
                             + _csv_rows(o, "test", o["num_test"], 81), 81),
    build_maze: lambda o: (_csv_rows(o, "train", o["num_train"], 900) * (8 if o["aug"] else 1)
                           + _csv_rows(o, "test", o["num_test"], 900), 900),
    build_small_sudoku: lambda o: (o["num_train"] * (o["num_aug"] + 1) + o["num_test"], 36),
    build_grid_programs: lambda o: ((o["num_train"] + o["num_test"]) * (o["demos"] + 1),
                                    o["size"] ** 2),
}


def build_bytes(fn, **options):
    """Bytes builder `fn` (or a functools.partial of one) writes with `options`."""
    builder = getattr(fn, "func", fn)
    o = {p.name: p.default for p in inspect.signature(builder).parameters.values()}
    o.update(getattr(fn, "keywords", {}), **options)
    if builder in SHAPES:
        examples, tokens = SHAPES[builder](o)
    else:
        n = lambda key: o.get(key) or 0  # noqa: E731
        examples = n("num_train") * (n("num_aug") + 1) + n("num_test")
        tokens = n("seq_len") or n("canvas") ** 2 or GRID * GRID
    return 2 * examples * tokens
