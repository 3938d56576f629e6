"""Datasets for nanoTRM: the on-disk format, its loader, and `build(name)` over the builders in puzzles/.

Format (the TRM/HRM reference layout, so reference data and ours load alike):

    <out>/identifiers.json       list: puzzle identifier id -> name; id 0 is "<blank>" (padding rows)
    <out>/test_puzzles.json      ARC only: {task_id: original task, test outputs included}, for the vote
    <out>/{train,test}/dataset.json          metadata, below
    <out>/{train,test}/all__inputs.npy       [examples, seq_len] tokens (uint8)
    <out>/{train,test}/all__labels.npy       [examples, seq_len] target tokens; label 0 (PAD) is not scored
    <out>/{train,test}/all__puzzle_identifiers.npy   int32 [puzzles]      identifier of each puzzle
    <out>/{train,test}/all__puzzle_indices.npy       int32 [puzzles + 1]  puzzle p owns examples [pi[p], pi[p+1])
    <out>/{train,test}/all__group_indices.npy        int32 [groups + 1]   group g owns puzzles [gi[g], gi[g+1])
    <out>/{train,test}/all__is_demo.npy      optional uint8 [examples]: 1 = a demonstration pair (ours only)

A group is one original puzzle, its puzzles are the original and its augmented versions, a puzzle's examples
are its (input, output) pairs. dataset.json holds pad_id, ignore_label_id, blank_identifier_id (all 0),
vocab_size, seq_len, num_puzzle_identifiers, total_groups, total_puzzles, mean_puzzle_examples and sets (["all"]).
A folder is checked when it is opened (files present and readable, tokens inside the vocabulary, array lengths
agreeing with each other and with dataset.json, both splits with the same seq_len): a bad one is a DataError naming
the file and the fault.

Loader (`PuzzleDataset`): train = one iteration of epochs_per_iter epochs; per epoch the groups in random order,
from each group one random puzzle, all its examples in random order, cut at the batch end; the last incomplete
batch is dropped. test = every example in order, the last batch padded (inputs PAD, labels -100, identifier 0).
Every rank computes the same global batch and keeps its own slice of rows. Labels equal to ignore_label_id become
-100. with_demos=True (models that read demonstrations, e.g. ETRM): a target's demos are the demonstration
examples of its own puzzle; a puzzle without any (the standard test split) borrows those of the train puzzle with
the same identifier (the same augmented version); only query examples are then targets. Without an is_demo file
(reference data) every train example is a demo and a train target is left out of its own demos.

Commands (`python data.py --help` lists every dataset and its options):
    python data.py toy                         # seconds; the CPU quickstart
    python data.py arc_small                   # seconds; ARC-AGI-1 tasks on a 10x10 canvas
    python data.py arc1 --num-aug 8 --max-tasks 5 --out /tmp/arc_tiny
    python data.py sudoku --source path/to/sudoku-extreme   # or without --source: generate (slow, cached)
"""
import argparse
import functools
import inspect
import os
import sys

import numpy as np

from puzzles.arc import build_arc
from puzzles.arc_small import build_arc_small
from puzzles.arc_sources import load_arc_tasks  # noqa: F401  (public: the ARC tasks in the reference's order)
from puzzles.common import DataError, check_count, check_grid, check_out, read_json, write_json  # noqa: F401
from puzzles.grids import (EOS, GRID, PAD, aug_name, augment_grid, crop_grid, dihedral, encode_grid_pair,  # noqa: F401
                           grid_hash, invert_aug, inverse_dihedral, parse_aug_name)
from puzzles.maze import build_maze, maze_bfs  # noqa: F401
from puzzles.sudoku import build_sudoku, sudoku_solve  # noqa: F401
from puzzles.small_maze import build_small_maze
from puzzles.small_sudoku import build_small_sudoku
from puzzles.toy import build_toy


def _variant(builder, doc, **keywords):
    """`builder` with some keywords fixed, and its own one-line description for the help."""
    fn = functools.partial(builder, **keywords)
    fn.__doc__ = doc
    return fn


# One line per dataset: name -> builder(out_dir, **options); the first docstring line is its help.
DATASETS = {
    "arc1": _variant(build_arc, "ARC-AGI-1 as TRM builds it, tested on the evaluation tasks (6.5 GB)", version="arc1"),
    "arc2": _variant(build_arc, "ARC-AGI-2 as TRM builds it, tested on the evaluation tasks (9.3 GB)", version="arc2"),
    "sudoku": build_sudoku,
    "maze": build_maze,
    "toy": build_toy,
    "arc_small": build_arc_small,
    "maze_small": _variant(build_small_maze, "7x7 perfect mazes on an 11x11 wall canvas, tested on 7x7 (CPU "
                                             "minutes)", train_size=7, test_size=7, canvas=11),
    "maze_small_big": _variant(build_small_maze, "maze_small's training mazes, tested on larger 11x11 mazes "
                                                 "(test-time depth)", train_size=7, test_size=11, canvas=11),
    "maze_small_15": _variant(build_small_maze, "15x15 test mazes on a 15x15 canvas (for "
                              "canvas-free models trained on maze_small)", train_size=7,
                              test_size=15, canvas=15, num_train=16),
    "maze_small_21": _variant(build_small_maze, "21x21 test mazes on a 21x21 canvas (for "
                              "canvas-free models trained on maze_small)", train_size=7,
                              test_size=21, canvas=21, num_train=16),
    "sudoku6": build_small_sudoku,
}

META_INTS = {"pad_id": 0, "blank_identifier_id": 0, "vocab_size": 1, "seq_len": 1, "num_puzzle_identifiers": 1,
             "total_groups": 0}   # dataset.json keys the loader needs, with their smallest value
LEAST = {"num_aug": 0, "num_train": 0, "num_test": 0, "max_tasks": 1, "workers": 1, "canvas": 1, "seed": 0,
         "min_path": 0, "target_backtracks": 0, "num_rules": 1, "length": 1, "seq_len": 1, "demos": 0,
         "shift": 0}   # the least value of each count option


# ---------------------------------------------------------------------------------------------------------------
# Opening a dataset folder, checked

def load_metadata(path, split):
    d = os.path.join(path, split)
    if not os.path.isdir(d):
        raise DataError(f"{path}: no {split}/ split (a dataset folder holds train/ and test/)")
    f = os.path.join(d, "dataset.json")
    meta = read_json(f)
    if not isinstance(meta, dict):
        raise DataError(f"{f}: expected a JSON object of metadata")
    for key, least in META_INTS.items():
        if not isinstance(meta.get(key), int) or isinstance(meta[key], bool) or meta[key] < least:
            raise DataError(f"{f}: key {key!r} is {meta.get(key)!r}, expected an integer >= {least}")
    return meta


def load_arrays(path, split, meta):
    """The split's arrays (inputs and labels memory-mapped), checked against each other and dataset.json."""
    d, a = os.path.join(path, split), {}
    for field in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices", "is_demo"):
        f = os.path.join(d, f"all__{field}.npy")
        if field == "is_demo" and not os.path.exists(f):
            a[field] = None
            continue
        try:
            a[field] = np.load(f, mmap_mode="r" if field in ("inputs", "labels") else None)
        except FileNotFoundError:
            raise DataError(f"{f}: missing") from None
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{f}: not a readable .npy file, truncated or corrupt ({str(e).splitlines()[0]})") from None
        if a[field].dtype.kind not in "iub":
            raise DataError(f"{f}: dtype {a[field].dtype}, expected integers")
    name = {k: os.path.join(d, f"all__{k}.npy") for k in a}
    n_ex, n_puz = len(a["inputs"]), len(a["puzzle_identifiers"])
    if a["inputs"].ndim != 2 or a["inputs"].shape[1] != meta["seq_len"]:
        raise DataError(f"{name['inputs']}: shape {a['inputs'].shape}, expected [examples, {meta['seq_len']}] "
                        f"(seq_len in {d}/dataset.json)")
    if a["labels"].shape != a["inputs"].shape:
        raise DataError(f"{name['labels']}: shape {a['labels'].shape}, expected {a['inputs'].shape} as the inputs")
    for field, n, total in (("puzzle_indices", n_puz, n_ex), ("group_indices", None, n_puz)):
        x = a[field]
        if x.ndim != 1 or (n is not None and len(x) != n + 1) or len(x) < 1 or x[0] != 0 or x[-1] != total \
                or (np.diff(x) < 0).any():
            raise DataError(f"{name[field]}: expected {'' if n is None else f'{n + 1} '}increasing offsets from 0 to "
                            f"{total}")
    if len(a["group_indices"]) - 1 != meta["total_groups"]:
        raise DataError(f"{name['group_indices']}: {len(a['group_indices']) - 1} groups, but {d}/dataset.json says "
                        f"total_groups {meta['total_groups']}")
    ids = a["puzzle_identifiers"]
    n_ids = meta["num_puzzle_identifiers"]
    if n_puz and (ids.min() < 0 or ids.max() >= n_ids):
        bad = ids.max() if ids.max() >= n_ids else ids.min()
        raise DataError(f"{name['puzzle_identifiers']}: puzzle identifier {bad} outside 0..{n_ids - 1} "
                        f"(num_puzzle_identifiers in {d}/dataset.json)")
    for field in ("inputs", "labels"):
        check_tokens(a[field], name[field], meta, ignore=meta.get("ignore_label_id") if field == "labels" else None)
    if a["is_demo"] is not None and a["is_demo"].shape != (n_ex,):
        raise DataError(f"{name['is_demo']}: {len(a['is_demo'])} flags for {n_ex} examples")
    return a


def check_tokens(x, name, meta, ignore=None):
    """Every token in 0..vocab_size-1 (labels may also hold ignore_label_id): a stray one would index past the
    embedding table or the logits. One pass over the (memory-mapped) array for each bound."""
    V = meta["vocab_size"]
    if not x.size:
        return
    lo, hi = int(x.min()), int(x.max())
    if ignore is not None and (lo == ignore or hi == ignore) and not 0 <= ignore < V:
        kept = x[x != ignore]
        lo, hi = (int(kept.min()), int(kept.max())) if kept.size else (0, 0)
    if lo < 0 or hi >= V:
        raise DataError(f"{name}: token {lo if lo < 0 else hi} outside 0..{V - 1} (vocab_size in "
                        f"{os.path.dirname(name)}/dataset.json)")


def check_dataset(path):
    """Check a whole dataset folder (both splits and the JSON beside them); -> train metadata."""
    meta = {s: load_metadata(path, s) for s in ("train", "test")}
    for s in ("train", "test"):
        load_arrays(path, s, meta[s])
    for key in ("seq_len", "vocab_size", "num_puzzle_identifiers"):
        if meta["train"][key] != meta["test"][key]:
            raise DataError(f"{path}/test/dataset.json: {key} {meta['test'][key]}, but the train split's is "
                            f"{meta['train'][key]}")
    f = os.path.join(path, "identifiers.json")
    if os.path.exists(f):
        names = read_json(f)
        if not isinstance(names, list) or len(names) < meta["train"]["num_puzzle_identifiers"]:
            raise DataError(f"{f}: expected a list of {meta['train']['num_puzzle_identifiers']} names")
    f = os.path.join(path, "test_puzzles.json")
    if os.path.exists(f) and not isinstance(read_json(f), dict):
        raise DataError(f"{f}: expected a JSON object of task_id -> task")
    return meta["train"]


# ---------------------------------------------------------------------------------------------------------------
# Loader

def demo_tensors(sources, max_demos, seq_len, pad_id=0):
    """Per batch row None or (inputs, labels, example indices) of its demonstrations -> demo_inputs, demo_labels
    int32 [B, K, L] (raw tokens, PAD kept: the encoder reads them, they are not targets), demo_mask bool [B, K];
    the first K = max_demos demos in order."""
    import torch   # here and in _collate only: building datasets (the CLI) then starts without torch's 5-8 s import
    B, K = len(sources), max_demos
    d_in = np.full((B, K, seq_len), pad_id, np.int32)
    d_lab = np.full((B, K, seq_len), pad_id, np.int32)
    mask = np.zeros((B, K), bool)
    for row, src in enumerate(sources):
        if src is not None:
            inputs, labels, idx = src
            k = len(idx[:K])
            d_in[row, :k] = inputs[idx[:K]]
            d_lab[row, :k] = labels[idx[:K]]
            mask[row, :k] = True
    return {"demo_inputs": torch.from_numpy(d_in), "demo_labels": torch.from_numpy(d_lab),
            "demo_mask": torch.from_numpy(mask)}


class PuzzleDataset:
    """Iterates batches (dicts of torch tensors: inputs, labels, puzzle_identifiers, plus demo_* with with_demos)
    over one split of a dataset folder (module docstring); state_dict() / load_state_dict() resume the order."""

    def __init__(self, path, split, global_batch_size, rank=0, world_size=1, seed=0, epochs_per_iter=1,
                 with_demos=False, max_demos=10):
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} must be >= 1 and divisible by world_size "
                             f"{world_size}")
        self.path, self.split, self.metadata = path, split, load_metadata(path, split)
        self.global_batch_size, self.local_batch_size = global_batch_size, global_batch_size // world_size
        self.rank, self.seed, self.epochs_per_iter = rank, seed, epochs_per_iter
        self.with_demos, self.max_demos = with_demos, max_demos
        self.arrays = self._load(split)
        self.iteration, self.batch_index, self._skip = 0, 0, 0
        self.example_puzzle = np.repeat(np.arange(len(self.arrays["puzzle_identifiers"])),
                                        np.diff(self.arrays["puzzle_indices"]))
        self.is_query = np.ones(len(self.arrays["inputs"]), bool)
        if with_demos:
            self._setup_demos()

    def _load(self, split):
        meta = self.metadata if split == self.split else load_metadata(self.path, split)
        arrays = load_arrays(self.path, split, meta)
        if arrays["is_demo"] is not None:
            arrays["is_demo"] = np.asarray(arrays["is_demo"]).astype(bool)
        return arrays

    def _setup_demos(self):
        """Per puzzle of this split: the demo examples and which split's arrays hold them (module docstring)."""
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
        import torch
        m, a, B = self.metadata, self.arrays, self.local_batch_size
        mine = idx[self.rank * B:(self.rank + 1) * B]
        n, L = len(mine), m["seq_len"]
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
            sources = []
            for e in mine:
                src = self.demo_src[self.example_puzzle[e]]
                if src is not None:
                    arrays, demo_ex = src
                    src = (arrays["inputs"], arrays["labels"], demo_ex[demo_ex != e] if self.leave_one_out else demo_ex)
                sources.append(src)
            batch.update(demo_tensors(sources + [None] * (B - n), self.max_demos, L, m["pad_id"]))
        return batch

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
# Building: build(name), ensure_dataset, the command line

def options_of(name):
    """The keyword options dataset `name`'s builder takes (its CLI flags)."""
    return [p for p in inspect.signature(DATASETS[name]).parameters.values()
            if p.name != "out_dir" and p.name not in getattr(DATASETS[name], "keywords", {})]


def build(name, out_dir=None, **options):
    """Build dataset `name` (a key of DATASETS) into out_dir (default data/<name>) -> out_dir. Options are checked
    before anything is written; an existing out_dir is replaced only if it is a dataset folder."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    takes = {p.name for p in options_of(name)}
    for key, value in options.items():
        if key not in takes:
            raise DataError(f"dataset {name!r} takes no option {key!r} (it takes {', '.join(sorted(takes))})")
        if key in LEAST:
            check_count(key, value, LEAST[key])
    if options.get("seed") is not None and options["seed"] >= 2 ** 32:
        raise DataError(f"seed={options['seed']}: expected an integer below 2**32")
    out_dir = out_dir or os.path.join("data", name)
    check_out(out_dir)
    DATASETS[name](out_dir, **options)
    return out_dir


def ensure_dataset(name_or_path, root="data", **options):
    """A dataset folder (checked, returned as is) or a registry name (built into root/<name> when missing) -> path."""
    if os.path.isfile(os.path.join(name_or_path, "train", "dataset.json")):
        check_dataset(name_or_path)
        return name_or_path
    if name_or_path not in DATASETS:
        raise DataError(f"unknown dataset {name_or_path!r}: not a dataset folder (no train/dataset.json) and not "
                        f"one of {', '.join(DATASETS)}")
    path = os.path.join(root, name_or_path)
    if not os.path.isfile(os.path.join(path, "train", "dataset.json")):
        print(f"building dataset {name_or_path!r} into {path} ...", file=sys.stderr)
        build(name_or_path, path, **options)
    check_dataset(path)
    return path


def summarize(path):
    """One line: puzzles, examples, groups per split and bytes on disk."""
    parts = []
    for split in ("train", "test"):
        m = load_metadata(path, split)
        a = load_arrays(path, split, m)
        parts.append(f"{split}: {len(a['puzzle_identifiers']):,} puzzles, {len(a['inputs']):,} examples, "
                     f"{m['total_groups']:,} groups")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return f"{path}: " + "; ".join(parts) + f"; {size:,} bytes"


class OneLineParser(argparse.ArgumentParser):
    """argparse with a bad command line answered in one line (argparse's own adds the usage), exit code 2."""

    def error(self, message):
        print(f"error: {message} (see python {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def one_line_errors(main, *args):
    """Run a command's main(*args) -> exit code: a DataError, an OSError or a SystemExit("error: ...") is printed
    as its one line on stderr with exit code 2 (no traceback), Ctrl-C as one line with 130."""
    try:
        main(*args)
        return 0
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:                                   # read-only folder, disk full: builds removed their files
        where = str(e.filename).replace(f".tmp-{os.getpid()}", "")   # the path the user asked for, not the temp one
        print(f"error: {where}: {e.strerror or e}", file=sys.stderr)
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 2


def main(argv=None):
    """The command line -> exit code (0 built, 2 bad input)."""
    return one_line_errors(_main, argv)


def _main(argv):
    p = OneLineParser(description="Build a nanoTRM dataset in the reference TRM/HRM layout.",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=list(DATASETS), help="which dataset to build (listed below)")
    p.add_argument("--out", help="output folder (default data/<dataset>); an existing one must be a dataset folder")
    p.add_argument("--source", help="ARC: Kaggle or per-task JSON folder; sudoku/maze: train.csv + test.csv folder")
    p.add_argument("--seed", type=int, help="random seed (default 42 for ARC, 0 otherwise)")
    p.add_argument("--num-aug", type=int, help="augmented versions per puzzle (ARC, sudoku)")
    p.add_argument("--concept", dest="concept_path", help="ARC: ConceptARC corpus/ or *_concept_challenges.json folder")
    p.add_argument("--held-out", action=argparse.BooleanOptionalAction, default=None,
                   help="ARC: evaluation tasks (demos and queries) only in the test split")
    p.add_argument("--max-tasks", type=int, help="ARC: only the first N tasks of each subset (tests/CI)")
    p.add_argument("--canvas", type=int, help="ARC: canvas side (seq_len = side^2); smaller keeps the tasks that fit")
    p.add_argument("--num-train", type=int, help="train puzzles (for a CSV, a seeded subsample)")
    p.add_argument("--num-test", type=int, help="test puzzles; with a CSV source, 0 keeps the whole test.csv")
    p.add_argument("--min-difficulty", type=float, help="sudoku: keep rows with rating >= this")
    p.add_argument("--target-backtracks", type=int, help="sudoku generator: backtracks target (default: mean 22)")
    p.add_argument("--min-path", type=int, help="maze generator: shortest path must be longer than this (110)")
    p.add_argument("--aug", action="store_true", default=None, help="maze: 8 dihedral versions of each train maze")
    p.add_argument("--workers", type=int, help="processes for the sudoku/maze generators (default: all cores)")
    flags = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings}
    for name in DATASETS:                                  # a new builder's other keywords become flags too
        for o in options_of(name):
            if o.name not in flags and isinstance(o.default, (bool, int, float, str)):
                flags[o.name] = "--" + o.name.replace("_", "-")
                kind = {"action": argparse.BooleanOptionalAction} if isinstance(o.default, bool) else {
                    "type": type(o.default)}
                p.add_argument(flags[o.name], dest=o.name, default=None, help=f"{name} (default {o.default})", **kind)
    lines = []
    for name, fn in DATASETS.items():
        lines += [f"  {name}: {fn.__doc__.strip().splitlines()[0]}",
                  "      options: " + " ".join(flags.get(o.name, "") for o in options_of(name))]
    p.epilog = "datasets:\n" + "\n".join(lines)
    args = p.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("dataset", "out") and v is not None}
    print(summarize(build(args.dataset, args.out, **options)))


if __name__ == "__main__":
    sys.exit(main())
