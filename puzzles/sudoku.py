"""Sudoku-Extreme builder: the Hugging Face CSVs (sapientinc/sudoku-extreme), or puzzles made here
in the same spirit (minimal, unique solution, hill-climbed on a fixed solver's backtracks).

Tokens: PAD 0, blank 1, digit d -> d + 1 (vocab 11, seq_len 81). Every puzzle is its own group:
the original plus num_aug validity-preserving copies (train split only), one example each, all
with puzzle identifier 0. As in the reference, total_puzzles in dataset.json equals total_groups.
The subsample of a CSV is seeded (the reference's is not). Difficulty: the solver propagates naked
and hidden singles, branches on the cell with the fewest candidates, digits in increasing order,
and counts dead ends; on the Magictour top1465 list it needs 24.6 backtracks on average (the HRM
paper quotes a mean of 22 for Sudoku-Extreme).
"""
import os
import sys
import time

import numpy as np

from puzzles.common import (AtomicDir, DataError, generate_csv, metadata, read_csv, write_json,
                            write_split)

_UNITS = ([[r * 9 + c for c in range(9)] for r in range(9)]  # rows, columns, boxes
          + [[r * 9 + c for r in range(9)] for c in range(9)]
          + [[(br + i) * 9 + bc + j for i in range(3) for j in range(3)]
             for br in (0, 3, 6) for bc in (0, 3, 6)])
_PEERS = [sorted({p for u in _UNITS if c in u for p in u} - {c}) for c in range(81)]
_BIT_DIGIT = {1 << d: d + 1 for d in range(9)}
_POP = [bin(m).count("1") for m in range(512)]


def _sd_place(vals, cand, c, bit):
    vals[c], cand[c] = _BIT_DIGIT[bit], 0
    for p in _PEERS[c]:
        cand[p] &= ~bit


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
                return False  # a digit has no place left in this unit
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
        stats[0] += 1  # dead end = one backtrack
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
    """board: 81 ints (0 blank) -> (solutions (up to `limit`), backtracks). Fixed order (digits
    increasing, fewest-candidate cell): the backtrack count rates difficulty. rng: random digits."""
    vals, cand = [0] * 81, [511] * 81
    for c, v in enumerate(board):
        if v:
            if not cand[c] & (1 << (v - 1)) and vals[c] == 0:
                return [], 0  # givens contradict each other
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
    """One puzzle: random full grid, minimal puzzle, then hill climbing on the backtrack count to
    >= target: remove a clue, add two from the solution, re-add until unique, re-minimise, keep if
    not easier."""
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
    """Write n generated puzzles as a Sudoku-Extreme-style CSV. target None: a per-puzzle target
    drawn from an exponential with mean 22 capped at 80, easy and hard mixed like the original."""
    seed = list(np.atleast_1d(seed))  # e.g. [build seed, split]
    rng = np.random.default_rng(seed + [7])
    targets = (np.minimum(rng.exponential(22, n), 80).astype(int) if target_backtracks is None
               else np.full(n, target_backtracks))
    # measured: ~12 CPU s per puzzle at target 30, 0.04 s for target 0; cached, so once per setting
    print(f"[sudoku] generating {n} puzzles into {path} "
          f"(targets mean {targets.mean():.1f} backtracks)", file=sys.stderr)
    generate_csv(path, _sd_generate,
                 [(seed + [8, i], int(targets[i]), max_steps) for i in range(n)], workers, "sudoku")


def _sudoku_augment(board, solution, n, rng):
    """n validity-preserving copies: transpose (p 1/2) first, band/row and stack/column
    shuffles, digit map."""
    k = np.arange(n)[:, None]
    digits = np.concatenate([np.zeros((n, 1), np.int64),
                             rng.permuted(np.tile(np.arange(1, 10), (n, 1)), axis=1)], 1)
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


def build_sudoku(out_dir, source=None, num_train=1000, num_test=1000, num_aug=1000, seed=0,
                 min_difficulty=None, target_backtracks=None, workers=None):
    """Sudoku-Extreme (9x9, 81 tokens) from its CSVs, or generated minimal puzzles of similar
    difficulty. source: folder with train.csv/test.csv (Hugging Face sapientinc/sudoku-extreme), or
    None to generate (slow for hard targets; cached in <out>/../.cache); num_test 0/None: all."""
    t0 = time.time()
    if source is None:
        source = os.path.join(os.path.dirname(os.path.abspath(out_dir)), ".cache",
                              f"sudoku-gen-s{seed}-n{num_train}-{num_test}-t{target_backtracks}")
        for split, n, s in (("train", num_train, [seed, 1]), ("test", num_test or 1000, [seed, 2])):
            path = os.path.join(source, f"{split}.csv")
            if not os.path.exists(path):
                generate_sudoku_csv(path, n, s, target_backtracks, workers)
    rng = np.random.default_rng(seed)
    with AtomicDir(out_dir) as tmp:
        for split, n in (("train", num_train), ("test", num_test)):
            path = os.path.join(source, f"{split}.csv")
            rows = [r for r in read_csv(path, 81, ".0123456789")
                    if min_difficulty is None or r[2] >= min_difficulty]
            if not rows:
                raise DataError(f"{path}: no rows with rating >= {min_difficulty}")
            if n and n < len(rows):  # 0 / None: every row
                rows = [rows[i] for i in np.sort(rng.choice(len(rows), n, replace=False))]
            q = np.frombuffer("".join(r[0] for r in rows).replace(".", "0").encode(),
                              np.uint8).reshape(-1, 81) - 48
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
            inputs = np.concatenate(inputs) + 1  # blank -> 1, digit d -> d + 1
            labels = np.concatenate(labels) + 1
            P = len(inputs)
            write_split(tmp, split, inputs, labels, np.zeros(P), np.arange(P + 1),
                        np.arange(0, P + 1, versions),  # total_puzzles: the reference's quirk
                        metadata(81, 11, 1, len(rows), P, P, total_puzzles=len(rows)))
        write_json(os.path.join(tmp, "identifiers.json"), ["<blank>"])
    print(f"[sudoku] done in {time.time() - t0:.0f}s", file=sys.stderr)
    return out_dir
