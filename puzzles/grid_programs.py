"""Grid programs: a synthetic family of ARC-like tasks in which a held-out task is solved only by
reading its demonstrations (ETRM on a laptop).

A program recolours a grid by a permutation of its `colours` colours, then applies one of the first
`geometry` dihedral transforms (puzzles/grids.dihedral: identity, rotations, flips, transposes). A
task is one program; a puzzle is one instance of a task: `demos` demonstration pairs and one query,
fresh random grids each, every colour present in every grid (so every pair shows the whole
permutation). The programs are split once: the test split's `test_programs` never occur in
training. A test puzzle's identifier is its program's, unseen in training, so a puzzle embedding
learns nothing about it, and with another task's demonstrations the answer is wrong.

Tokens as ARC's (puzzles/grids.py): PAD 0, EOS 1 (unused: every grid fills the size x size canvas),
colour c -> c + 2; vocab 12. Deterministic from the seed, byte for byte.
"""
import itertools
import os

import numpy as np

from puzzles.common import AtomicDir, DataError, metadata, write_json, write_split
from puzzles.grids import dihedral


def programs(colours, geometry):
    """Every (transform id, colour permutation) pair, in a fixed order."""
    return [(t, p) for t in range(geometry) for p in itertools.permutations(range(colours))]


def random_grid(rng, size, colours):
    """A size x size grid of colours 0..colours-1 holding each of them at least once."""
    cells = np.concatenate([np.arange(colours), rng.integers(colours, size=size * size - colours)])
    return rng.permutation(cells).reshape(size, size).astype(np.uint8)


def run_program(program, grid):
    t, perm = program
    return dihedral(np.asarray(perm, np.uint8)[grid], t)


def build_grid_programs(out_dir, num_train=4000, num_test=256, seed=0, size=4, colours=6,
                        geometry=1, demos=3, test_programs=120):
    """Colour permutations + dihedral transforms of small grids, held-out programs (seconds).
    size: grid side (seq_len size^2); colours: 2..10 per grid; geometry: how many of the 8 dihedral
    transforms the programs use (1 = colour permutations only); test_programs: programs only the
    test split has. The defaults are the ETRM recipe's family (docs/teach.md): 720 colour
    permutations on 4x4 grids, 120 of them held out."""
    for name, value in (("num_train", num_train), ("num_test", num_test), ("demos", demos)):
        if value < 1:  # data.OPTION_RULES allow 0 for other builders; a family needs one of each
            raise DataError(f"{name}={value}: expected an integer >= 1")
    if not 2 <= colours <= min(10, size * size):
        raise DataError(f"colours={colours}: expected 2..10 and at most size^2 = {size * size}")
    if not 1 <= geometry <= 8:
        raise DataError(f"geometry={geometry}: expected 1..8 dihedral transforms")
    progs = programs(colours, geometry)
    if test_programs >= len(progs):
        raise DataError(f"test_programs={test_programs}: must leave training programs "
                        f"(there are {len(progs)})")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(progs))          # program order[i] gets identifier i + 1
    split_ids = {"test": np.arange(1, test_programs + 1),
                 "train": np.arange(test_programs + 1, len(progs) + 1)}
    per, L = demos + 1, size * size
    with AtomicDir(out_dir) as tmp:
        for split, n in (("train", num_train), ("test", num_test)):
            ids = rng.choice(split_ids[split], size=n)
            inputs = np.zeros((n * per, L), np.uint8)
            labels = np.zeros_like(inputs)
            for e in range(n * per):
                grid = random_grid(rng, size, colours)
                inputs[e] = grid.reshape(-1) + 2
                labels[e] = run_program(progs[order[ids[e // per] - 1]], grid).reshape(-1) + 2
            write_split(tmp, split, inputs, labels, ids, np.arange(n + 1) * per, np.arange(n + 1),
                        metadata(L, 12, len(progs) + 1, n, n, n * per),
                        is_demo=np.tile(np.arange(per) < demos, n))
        names = [f"t{progs[i][0]}-{''.join(map(str, progs[i][1]))}" for i in order]
        write_json(os.path.join(tmp, "identifiers.json"), ["<blank>"] + names)
    return out_dir
