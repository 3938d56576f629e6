"""Small Sudoku for a CPU: 6 x 6 boards with 2 x 3 boxes, minimal puzzles with a unique solution.

Tokens as in Sudoku-Extreme (digit + 1): blank 1, digits 1..6 -> 2..7, PAD 0 unused; seq_len 36,
vocab 8. A puzzle is a random full board with clues removed in random order while the solution
stays unique, until none can be (a minimal puzzle, typically 8-12 clues): every clue is needed, so
the solution is reasoned out cell by cell through chains of eliminations, which one pass of a
small network does not do. `min_backtracks` keeps only puzzles on which naked singles stall at
least that many times in a depth-first search (0: every minimal puzzle).

Train puzzles get `num_aug` validity-preserving copies in their group (digit relabelling, band and
row-in-band, stack and column-in-stack shuffles; no transpose: it turns 2 x 3 boxes into 3 x 2).
Test puzzles come from their own stream; one whose board or solution occurs in the train split
(copies included) is redrawn, so the splits are disjoint.
"""
import os

import numpy as np

from puzzles.common import AtomicDir, DataError, metadata, write_json, write_split

N, BR, BC = 6, 2, 3  # side, box rows, box columns
UNITS = ([[r * N + c for c in range(N)] for r in range(N)]
         + [[r * N + c for r in range(N)] for c in range(N)]
         + [[(br + i) * N + bc + j for i in range(BR) for j in range(BC)]
            for br in range(0, N, BR) for bc in range(0, N, BC)])
PEERS = [sorted({p for u in UNITS if c in u for p in u} - {c}) for c in range(N * N)]
FULL = (1 << N) - 1


def _candidates(board):
    cand = [0] * (N * N)
    for c in range(N * N):
        if not board[c]:
            used = 0
            for p in PEERS[c]:
                if board[p]:
                    used |= 1 << (board[p] - 1)
            cand[c] = FULL & ~used
    return cand


def solve(board, limit=2, rng=None, stats=None):
    """board: 36 ints (0 blank) -> up to `limit` solutions: naked singles, then branch on the cell
    with fewest candidates (digits shuffled by rng); stats["branches"] counts the branchings."""
    board = list(board)
    sols = []

    def search(b):
        b = list(b)
        while True:                                          # naked singles to a fixpoint
            cand = _candidates(b)
            best, changed = None, False
            for c in range(N * N):
                if b[c]:
                    continue
                m = cand[c]
                if m == 0:
                    return
                if m & (m - 1) == 0:
                    b[c] = m.bit_length()
                    changed = True
                    break
                if best is None or bin(m).count("1") < bin(cand[best]).count("1"):
                    best = c
            if not changed:
                break
        if best is None:
            sols.append(b)
            return
        if stats is not None:
            stats["branches"] = stats.get("branches", 0) + 1
        digits = [d + 1 for d in range(N) if cand[best] >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        for d in digits:
            b[best] = d
            search(b)
            if len(sols) >= limit:
                return

    search(board)
    return sols


def minimal_puzzle(rng):
    """-> (puzzle, solution) 36-int lists: a full board, clues removed while uniquely solvable."""
    solution = solve([0] * (N * N), limit=1, rng=rng)[0]
    puzzle = list(solution)
    for c in rng.permutation(N * N):
        keep, puzzle[c] = puzzle[c], 0
        if len(solve(puzzle, limit=2)) != 1:
            puzzle[c] = keep
    return puzzle, solution


def augment(puzzle, solution, rng):
    """One random validity-preserving copy: digits relabelled, bands/rows/stacks/columns moved."""
    digits = np.concatenate([[0], rng.permutation(N) + 1])
    rows = np.concatenate([b * BR + rng.permutation(BR) for b in rng.permutation(N // BR)])
    cols = np.concatenate([s * BC + rng.permutation(BC) for s in rng.permutation(N // BC)])
    f = lambda x: digits[np.asarray(x).reshape(N, N)[rows][:, cols]].reshape(-1)
    return f(puzzle), f(solution)


def draw(count, rng, exclude=(), min_backtracks=0):
    seen, out, tries = set(exclude), [], 0
    while len(out) < count:
        tries += 1
        if tries > 20 * count + 1000:
            raise DataError(f"small sudoku: only {len(out)} of {count} new puzzles found "
                            f"(min_backtracks {min_backtracks}); ask for fewer")
        p, s = minimal_puzzle(rng)
        stats = {}
        solve(p, limit=2, stats=stats)
        key = bytes(p)
        if key in seen or bytes(s) in seen or stats.get("branches", 0) < min_backtracks:
            continue
        seen.add(key)
        out.append((np.array(p), np.array(s)))
    return out


def build_small_sudoku(out_dir, num_train=1000, num_test=256, num_aug=7, seed=0, min_backtracks=0):
    """6x6 minimal Sudoku (2x3 boxes, 36 tokens), unique solutions. Train split: num_train groups
    of 1 + num_aug shuffled copies; test split: num_test puzzles (no copies)."""
    if num_train < 1 or num_test < 1 or num_aug < 0:
        raise DataError(f"small sudoku: num_train={num_train}, num_test={num_test}, "
                        f"num_aug={num_aug}: expected >= 1, >= 1, >= 0")
    rng = np.random.default_rng([seed, 1])
    train = draw(num_train, rng, min_backtracks=min_backtracks)
    exclude = {bytes(b.tolist()) for p, s in train for b in (p, s)}
    arng = np.random.default_rng([seed, 3])
    groups = [[(p, s)] + [augment(p, s, arng) for _ in range(num_aug)] for p, s in train]
    exclude |= {bytes(b.tolist()) for g in groups for p, s in g for b in (p, s)}
    test = [[ps] for ps in draw(num_test, np.random.default_rng([seed, 2]), exclude,
                                min_backtracks)]
    with AtomicDir(out_dir) as tmp:
        for split, gs in (("train", groups), ("test", test)):
            q = np.stack([p for g in gs for p, _ in g]) + 1
            a = np.stack([s for g in gs for _, s in g]) + 1
            P = len(q)
            sizes = np.cumsum([0] + [len(g) for g in gs])
            write_split(tmp, split, q, a, np.zeros(P), np.arange(P + 1), sizes,
                        metadata(N * N, N + 2, 1, len(gs), P, P))
        write_json(os.path.join(tmp, "identifiers.json"), ["<blank>"])
    return out_dir
