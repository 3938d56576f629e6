"""Small mazes for a CPU: perfect mazes of several sizes, each on a fixed square canvas.

An n x n maze (n odd) is drawn in the top-left corner of a canvas x canvas grid whose other cells
are walls, so mazes of different sizes share one seq_len and a model trained on n x n can be run on
larger m x m mazes: the "deep thinking" extrapolation test (Schwarzschild et al. 2021; Bansal et
al. 2022), where a recurrent network trained on small mazes solves bigger ones by running more
iterations at test time. A model that does not depend on the canvas can also be tested on a bigger
canvas (data.py: maze_small_15, maze_small_21).

Tokens are the Maze-Hard ones (1 + index in "# SGo"): wall 1, open 2, start 3, goal 4, and in the
label the cells strictly between S and G on the shortest path are 5; PAD 0 is never used (the
canvas is full). A maze is a random spanning tree of the k x k room lattice (k = (n + 1) / 2 rooms
at even coordinates, the cells between two linked rooms opened): every two rooms are joined by
exactly one path, and each built maze is checked again with a breadth-first search that counts
shortest paths, so exact match is well defined. S and G are two rooms at least `min_path` steps
apart (default: n, the path crosses the maze). Removing the dead ends one layer per step solves
such a maze, and the number of steps grows with its size: a job for recursion.

`aug=True` stores each training maze in its 8 rotations and reflections, one group per maze (the
loader draws one version per maze and epoch): a maze in the canvas corner then meets the canvas
border on every side, as a bigger maze does, which a convolution over a zero-padded canvas tells
apart. The test split is drawn from its own random stream and every test maze whose input also
occurs in the train split (any version) is dropped and redrawn, so the splits are disjoint.
"""
import os

import numpy as np

from puzzles.common import AtomicDir, DataError, metadata, write_json, write_split
from puzzles.grids import GRID, dihedral
from puzzles.maze import maze_bfs, maze_path

WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5


def spanning_tree_maze(n, rng):
    """n x n grid (n odd >= 3) of WALL/OPEN: a random depth-first spanning tree of the rooms at
    even (r, c)."""
    k = (n + 1) // 2
    grid = np.full((n, n), WALL, np.uint8)
    seen = np.zeros((k, k), bool)
    r, c = (int(v) for v in rng.integers(k, size=2))
    stack, seen[r, c] = [(r, c)], True
    grid[2 * r, 2 * c] = OPEN
    while stack:
        r, c = stack[-1]
        nbs = [(r + dr, c + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
               if 0 <= r + dr < k and 0 <= c + dc < k and not seen[r + dr, c + dc]]
        if not nbs:
            stack.pop()
            continue
        nr, nc = nbs[rng.integers(len(nbs))]
        seen[nr, nc] = True
        grid[2 * nr, 2 * nc] = grid[r + nr, c + nc] = OPEN   # the room and the cell before it
        stack.append((nr, nc))
    return grid


def shortest_paths(grid, s, g):
    """(distance S -> G, number of shortest paths, cells strictly between S and G on one) by BFS."""
    n = grid.shape[0]
    dist, count = maze_bfs(list((grid != WALL).reshape(-1)), s[0] * n + s[1])
    d = dist[g[0] * n + g[1]]
    path = [divmod(p, n) for p in maze_path(dist, g[0] * n + g[1])] if d > 0 else []
    return d, count[g[0] * n + g[1]], path


def make_maze(n, canvas, rng, min_path=None):
    """-> (input, label) uint8 [canvas, canvas], or None when no S/G pair is far enough apart."""
    grid = spanning_tree_maze(n, rng)
    rooms = [(r, c) for r in range(0, n, 2) for c in range(0, n, 2)]
    s = rooms[rng.integers(len(rooms))]
    least = n if min_path is None else min_path
    far = [g for g in rooms if shortest_paths(grid, s, g)[0] >= least]
    if not far:
        return None
    g = far[rng.integers(len(far))]
    _, ways, path = shortest_paths(grid, s, g)
    if ways != 1:  # cannot happen in a spanning tree; the check keeps exact match well defined
        return None
    inp = np.full((canvas, canvas), WALL, np.uint8)
    inp[:n, :n] = grid
    inp[s], inp[g] = START, GOAL
    lab = inp.copy()
    for cell in path:
        lab[cell] = PATH
    return inp, lab


def draw(n, canvas, count, rng, exclude=(), min_path=None):
    """`count` distinct mazes of size n whose inputs are not in `exclude` (a set of input bytes)."""
    seen, inputs, labels = set(exclude), [], []
    for _ in range(50 * count + 1000):
        if len(inputs) == count:
            break
        m = make_maze(n, canvas, rng, min_path)
        if m is not None and m[0].tobytes() not in seen:
            seen.add(m[0].tobytes())
            inputs.append(m[0].reshape(-1))
            labels.append(m[1].reshape(-1))
    if len(inputs) < count:
        raise DataError(f"small maze: only {len(inputs)} distinct {n}x{n} mazes of {count} found "
                        f"(min_path {min_path}); ask for fewer or a larger size")
    return np.stack(inputs), np.stack(labels)


def build_small_maze(out_dir, train_size=7, test_size=7, canvas=11, num_train=2000, num_test=256,
                     seed=0, min_path=None, aug=False):
    """Train split: num_train train_size-mazes; test split: num_test test_size-mazes (disjoint
    from train); both on a canvas x canvas wall canvas (seq_len canvas^2, vocab 6, no puzzle
    identifiers); aug: each train maze's 8 dihedral versions in one group. The train split
    depends only on (seed, train_size, canvas, num_train, min_path, aug), so builds that differ
    only in their test size share it: a model trained on one is tested on the other's larger
    mazes."""
    for name, v in (("train_size", train_size), ("test_size", test_size)):
        if not (isinstance(v, int) and 3 <= v <= canvas and v % 2 == 1):
            raise DataError(f"small maze: {name}={v!r}: expected an odd size between 3 and "
                            f"canvas={canvas}")
    if not 3 <= canvas <= GRID:
        raise DataError(f"small maze: canvas={canvas!r}: expected 3..{GRID}")
    stream = lambda split, n: np.random.default_rng([seed, split, n, canvas])  # noqa: E731
    train = draw(train_size, canvas, num_train, stream(1, train_size), min_path=min_path)
    versions = 8 if aug else 1
    if aug:  # a transposed corner maze stays in its corner: test mazes avoid every version
        train = tuple(np.stack([dihedral(g.reshape(canvas, canvas), t).reshape(-1)
                                for g in grids for t in range(8)]) for grids in train)
    exclude = {row.tobytes() for row in train[0]}
    test = draw(test_size, canvas, num_test, stream(2, test_size), exclude, min_path=min_path)
    with AtomicDir(out_dir) as tmp:
        for split, (q, a), v in (("train", train, versions), ("test", test, 1)):
            P, G = len(q), len(q) // v
            write_split(tmp, split, q, a, np.zeros(P), np.arange(P + 1), np.arange(0, P + 1, v),
                        metadata(canvas * canvas, 6, 1, G, P, P))
        write_json(os.path.join(tmp, "identifiers.json"), ["<blank>"])
    return out_dir
