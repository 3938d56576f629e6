"""The CPU-sized tasks: small mazes on a fixed wall canvas and 6x6 minimal Sudoku.

Run: python -m pytest -q tests/test_small_tasks.py      (CPU, seconds)
Checks against: an independent breadth-first search written here (shortest-path count and the path itself) for
the mazes; an independent brute-force solution count and the Sudoku rules for the 6x6 boards; the on-disk
layout of data.md (index arrays, metadata) read back through data.PuzzleDataset.
"""
import collections
import json
import os

import numpy as np
import pytest

import data
from puzzles import small_maze, small_sudoku


def bfs(grid, s):
    """Distances and shortest-path counts from s over non-wall cells of a 2-D token grid."""
    n = grid.shape[0]
    dist, ways = {s: 0}, collections.Counter({s: 1})
    queue = [s]
    for r, c in queue:
        for nb in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nb[0] < n and 0 <= nb[1] < n and grid[nb] != 1:
                if nb not in dist:
                    dist[nb] = dist[(r, c)] + 1
                    queue.append(nb)
                if dist[nb] == dist[(r, c)] + 1:
                    ways[nb] += ways[(r, c)]
    return dist, ways


@pytest.fixture(scope="module")
def mazes(tmp_path_factory):
    root = tmp_path_factory.mktemp("maze")
    small = data.DATASETS["maze_small"](str(root / "small"), num_train=60, num_test=20)
    big = data.DATASETS["maze_small_big"](str(root / "big"), num_train=60, num_test=20)
    return small, big


def arrays(path, split):
    return {f: np.load(os.path.join(path, split, f"all__{f}.npy")) for f in
            ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")}


@pytest.mark.parametrize("which,size", [(0, 7), (1, 11)])
def test_maze_layout_tokens_and_unique_path(mazes, which, size):
    path = mazes[which]
    for split, n in (("train", 7), ("test", size)):
        a, meta = arrays(path, split), data.load_metadata(path, split)
        assert meta["seq_len"] == 121 and meta["vocab_size"] == 6 and meta["total_puzzles"] == len(a["inputs"])
        assert a["inputs"].shape == a["labels"].shape == (len(a["inputs"]), 121) and a["inputs"].dtype == np.uint8
        assert list(a["puzzle_indices"]) == list(a["group_indices"]) == list(range(len(a["inputs"]) + 1))
        for inp, lab in zip(a["inputs"].reshape(-1, 11, 11), a["labels"].reshape(-1, 11, 11)):
            assert set(np.unique(inp)) == {1, 2, 3, 4} and set(np.unique(lab)) <= {1, 2, 3, 4, 5}
            assert (inp[n:] == 1).all() and (inp[:, n:] == 1).all()            # the canvas outside is wall
            assert ((inp[:n, :n] != 1).sum(0) > 0).all()                          # the maze fills its n x n corner
            assert (inp == 3).sum() == 1 and (inp == 4).sum() == 1
            assert (lab[inp != 2] == inp[inp != 2]).all() and set(np.unique(lab[inp == 2])) <= {2, 5}
            s, g = tuple(np.argwhere(inp == 3)[0]), tuple(np.argwhere(inp == 4)[0])
            dist, ways = bfs(inp, s)
            assert ways[g] == 1 and dist[g] >= n                                  # unique, crosses the maze
            on_path = {tuple(p) for p in np.argwhere(lab == 5)}
            assert len(on_path) == dist[g] - 1
            back, _ = bfs(inp, g)                                                 # every marked cell lies on it
            assert all(dist[p] + back[p] == dist[g] for p in on_path)


def test_maze_splits_disjoint_and_train_shared(mazes):
    small, big = (arrays(p, "train") for p in mazes)
    assert (small["inputs"] == big["inputs"]).all()                  # same training mazes, other test sizes
    for path in mazes:
        train = {r.tobytes() for r in arrays(path, "train")["inputs"]}
        test = [r.tobytes() for r in arrays(path, "test")["inputs"]]
        assert not train & set(test) and len(set(test)) == len(test) and len(train) == 60


def test_tiny_mazes_fill_their_few_layouts_without_sharing_one_across_splits(tmp_path):
    # 3x3 mazes (2x2 rooms) have only a few dozen layouts: drawn at random, two splits of 8 would overlap
    path = small_maze.build_small_maze(str(tmp_path / "m3"), train_size=3, test_size=3, canvas=5, num_train=8,
                                       num_test=8)
    train, test = ({r.tobytes() for r in arrays(path, s)["inputs"]} for s in ("train", "test"))
    assert len(train) == len(test) == 8 and not train & test


def test_maze_aug_keeps_each_train_maze_in_its_eight_versions_none_in_the_test_split(tmp_path):
    plain, aug = (small_maze.build_small_maze(str(tmp_path / f"m{a}"), num_train=6, num_test=4,
                                              aug=a) for a in (False, True))
    p, a = arrays(plain, "train"), arrays(aug, "train")
    assert a["inputs"].shape == (48, 121) and list(a["group_indices"]) == list(range(0, 49, 8))
    for i, (q, lab) in enumerate(zip(p["inputs"], p["labels"])):
        versions = {(x.tobytes(), y.tobytes()) for x, y in zip(a["inputs"][8 * i:8 * i + 8],
                                                               a["labels"][8 * i:8 * i + 8])}
        want = {(np.rot90(g, r).tobytes(), np.rot90(h, r).tobytes()) for r in range(4)
                for g, h in ((q.reshape(11, 11), lab.reshape(11, 11)),
                             (q.reshape(11, 11).T, lab.reshape(11, 11).T))}
        assert versions == want
    test = {r.tobytes() for r in arrays(aug, "test")["inputs"]}
    assert len(test) == 4 and not test & {r.tobytes() for r in a["inputs"]}
    # 3x3 mazes have a few dozen layouts: a transposed train maze (still in its corner) would be drawn
    tiny = small_maze.build_small_maze(str(tmp_path / "m3"), train_size=3, test_size=3, canvas=5,
                                       num_train=8, num_test=8, aug=True)
    train, test = ({r.tobytes() for r in arrays(tiny, s)["inputs"]} for s in ("train", "test"))
    assert len(train) > 8 and len(test) == 8 and not train & test
    meta = json.load(open(os.path.join(aug, "train", "dataset.json")))
    assert (meta["total_groups"], meta["total_puzzles"]) == (6, 48)


def test_maze_loader_and_bad_sizes(mazes, tmp_path):
    batch = next(iter(data.PuzzleDataset(mazes[1], "test", 8)))
    assert batch["inputs"].shape == (8, 121) and int(batch["labels"].min()) >= 1   # no PAD: every cell supervised
    for kw in ({"train_size": 8}, {"test_size": 13}, {"canvas": 40, "test_size": 35}):
        with pytest.raises(data.DataError, match="small maze"):
            small_maze.build_small_maze(str(tmp_path / "bad"), num_train=2, num_test=2, **kw)
        assert not os.path.exists(tmp_path / "bad")


def count_solutions(board, limit=3):
    """Plain depth-first search over the rules (no propagation), independent of the builder's solver."""
    b = list(board)
    try:
        c = b.index(0)
    except ValueError:
        return 1
    total = 0
    for d in range(1, 7):
        if all(b[p] != d for p in small_sudoku.PEERS[c]):
            b[c] = d
            total += count_solutions(b, limit - total)
            b[c] = 0
            if total >= limit:
                break
    return total


def valid_solution(s):
    return all(sorted(s[i] for i in u) == list(range(1, 7)) for u in small_sudoku.UNITS)


@pytest.fixture(scope="module")
def sudoku(tmp_path_factory):
    return data.DATASETS["sudoku6"](str(tmp_path_factory.mktemp("s6") / "s6"), num_train=6, num_test=5, num_aug=3)


def test_sudoku_layout_unique_minimal_and_disjoint(sudoku):
    tr, te = arrays(sudoku, "train"), arrays(sudoku, "test")
    assert tr["inputs"].shape == (24, 36) and te["inputs"].shape == (5, 36)
    assert list(tr["group_indices"]) == [0, 4, 8, 12, 16, 20, 24] and list(te["group_indices"]) == list(range(6))
    meta = data.load_metadata(sudoku, "train")
    assert meta["vocab_size"] == 8 and meta["seq_len"] == 36 and meta["total_groups"] == 6
    for a in (tr, te):
        for q, s in zip(a["inputs"].astype(int) - 1, a["labels"].astype(int) - 1):
            assert q.min() >= 0 and q.max() <= 6 and s.min() >= 1 and valid_solution(s)
            assert ((q == 0) | (q == s)).all() and count_solutions(q) == 1
            for c in np.nonzero(q)[0][:4]:                        # minimal: dropping a clue breaks uniqueness
                r = q.copy()
                r[c] = 0
                assert count_solutions(r, 2) == 2
    train = {r.tobytes() for r in tr["inputs"]} | {r.tobytes() for r in tr["labels"]}
    assert not train & ({r.tobytes() for r in te["inputs"]} | {r.tobytes() for r in te["labels"]})
    names = json.load(open(os.path.join(sudoku, "identifiers.json")))
    assert names == ["<blank>"]


def test_data_cli_lists_the_small_tasks(capsys):
    with pytest.raises(SystemExit):
        data.main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("maze_small", "maze_small_big", "sudoku6"))
