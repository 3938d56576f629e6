"""Maze-Hard builder: the Hugging Face CSVs (sapientinc/maze-30x30-hard-1k), or mazes made here.

Tokens: PAD 0, then 1 + the index in "# SGo": `#` wall 1, space 2, `S` start 3, `G` goal 4, `o` 5
on the path cells strictly between S and G (answer only); vocab 6, seq_len 900. One maze per
puzzle and group, identifier 0; aug=True puts each train maze's 8 dihedral versions in one group.
The reference's shortest paths are longer than 110, which random 30-50% walls (the Searchformer
generator the HRM paper names) practically never give on 30x30, so the generator walls off path
cells one at a time (undoing a wall that disconnects S from G) until the shortest path is long
enough and unique: exact match of the path is then a well-defined target.
"""
import functools
import math
import os
import sys
import time

import numpy as np

from puzzles.common import AtomicDir, generate_csv, metadata, read_csv, write_json, write_split
from puzzles.grids import GRID, dihedral

MAZE_CHARS = "# SGo"  # token = 1 + index


@functools.lru_cache(maxsize=None)
def neighbours(side):
    """For each cell of a side x side board (row-major), its neighbours up, down, left, right."""
    return [[(r + dr) * side + c + dc for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
             if 0 <= r + dr < side and 0 <= c + dc < side]
            for r in range(side) for c in range(side)]


def maze_bfs(open_, start):
    """BFS from start over the open cells of a square board (a flat list of side^2 booleans) ->
    (distance list, -1 = unreachable; number of shortest paths to each cell)."""
    nb_of = neighbours(math.isqrt(len(open_)))
    dist, count = [-1] * len(open_), [0] * len(open_)
    dist[start], count[start], queue = 0, 1, [start]
    for c in queue:
        for nb in nb_of[c]:
            if open_[nb]:
                if dist[nb] < 0:
                    dist[nb], count[nb] = dist[c] + 1, count[c]
                    queue.append(nb)
                elif dist[nb] == dist[c] + 1:
                    count[nb] += count[c]
    return dist, count


def maze_path(dist, goal):
    """Cells strictly between start and goal on one shortest path (walked back from the goal)."""
    nb_of, path, c = neighbours(math.isqrt(len(dist))), [], goal
    while dist[c] > 1:
        c = next(nb for nb in nb_of[c] if dist[nb] == dist[c] - 1)
        path.append(c)
    return path


def _maze_generate(args):
    """Random 30-50% walls (Searchformer's layouts), S/G at distance >= 30, then walls on the
    shortest path until it is unique and longer than min_path -> (question, answer, len) or None."""
    seed, min_path = args
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        open_ = list(rng.random(GRID * GRID) >= rng.uniform(0.3, 0.5))
        free = [c for c in range(GRID * GRID) if open_[c]]
        s = free[rng.integers(len(free))]
        dist, _ = maze_bfs(open_, s)
        far = [c for c in free if dist[c] >= GRID]
        if not far:
            continue
        g = far[rng.integers(len(far))]
        tried = set()
        while True:
            dist, count = maze_bfs(open_, s)
            if dist[g] > min_path and count[g] == 1:
                q = [MAZE_CHARS[1] if o else "#" for o in open_]
                q[s], q[g] = "S", "G"
                a = list(q)
                for c in maze_path(dist, g):
                    a[c] = "o"
                return "".join(q), "".join(a), dist[g]
            cells = [c for c in maze_path(dist, g) if c not in tried]
            if not cells:
                break
            c = cells[rng.integers(len(cells))]
            open_[c] = False
            if maze_bfs(open_, s)[0][g] < 0:  # disconnects S from G: undo, never try again
                open_[c] = True
                tried.add(c)
    return None


def _tokens(rows, k, lut, versions):
    """CSV column k -> tokens [len(rows) * versions, 900], each maze's versions in turn."""
    g = lut[np.frombuffer("".join(r[k] for r in rows).encode(), np.uint8)].reshape(-1, GRID, GRID)
    return np.stack([dihedral(b, t) for b in g for t in range(versions)]).reshape(-1, GRID * GRID)


def build_maze(out_dir, source=None, num_train=1000, num_test=1000, seed=0, min_path=110,
               aug=False, workers=None):
    """Maze-Hard (30x30, 900 tokens) from its CSVs, or generated mazes with a long unique shortest
    path. source: folder with train.csv/test.csv (Hugging Face sapientinc/maze-30x30-hard-1k), or
    None to generate (cached in <out>/../.cache). aug: a train maze's 8 dihedral versions."""
    t0 = time.time()
    if source is None:
        source = os.path.join(os.path.dirname(os.path.abspath(out_dir)), ".cache",
                              f"maze-gen-s{seed}-n{num_train}-{num_test}-p{min_path}")
        for split, n, s in (("train", num_train, 1), ("test", num_test or 1000, 2)):
            path = os.path.join(source, f"{split}.csv")
            if not os.path.exists(path):
                generate_csv(path, _maze_generate, [([seed, s, i], min_path) for i in range(n)],
                             workers, f"maze {split}", chunksize=4)
    rng = np.random.default_rng(seed)
    lut = np.zeros(256, np.uint8)
    lut[np.frombuffer(MAZE_CHARS.encode(), np.uint8)] = np.arange(1, 6)
    with AtomicDir(out_dir) as tmp:
        for split, n in (("train", num_train), ("test", num_test)):
            rows = read_csv(os.path.join(source, f"{split}.csv"), GRID * GRID, MAZE_CHARS)
            if n and n < len(rows):  # 0 / None: every row
                rows = [rows[i] for i in np.sort(rng.choice(len(rows), n, replace=False))]
            versions = 8 if aug and split == "train" else 1
            q, a = (_tokens(rows, k, lut, versions) for k in (0, 1))
            P = len(q)
            write_split(tmp, split, q, a, np.zeros(P), np.arange(P + 1),
                        np.arange(0, P + 1, versions),
                        metadata(GRID * GRID, 6, 1, len(rows), P, P, total_puzzles=len(rows)))
        write_json(os.path.join(tmp, "identifiers.json"), ["<blank>"])
    print(f"[maze] done in {time.time() - t0:.0f}s", file=sys.stderr)
    return out_dir
