"""Datasets for nanoTRM: the on-disk format, its loader, and `build(name)` over puzzles/' builders.

Format (the TRM/HRM reference layout, so reference data and ours load alike):

    <out>/identifiers.json     list: puzzle identifier id -> name; id 0 is "<blank>" (padding rows)
    <out>/test_puzzles.json    ARC only: {task_id: original task, test outputs included} (the vote)
    <out>/{train,test}/dataset.json        metadata, below
    <out>/{train,test}/all__inputs.npy     [examples, seq_len] tokens (uint8)
    <out>/{train,test}/all__labels.npy     [examples, seq_len] targets; label 0 (PAD) is not scored
    <out>/{train,test}/all__puzzle_identifiers.npy  int32 [puzzles]  identifier of each puzzle
    <out>/{train,test}/all__puzzle_indices.npy   int32 [puzzles + 1]  puzzle p: pi[p]..pi[p+1]
    <out>/{train,test}/all__group_indices.npy    int32 [groups + 1]   group g: gi[g]..gi[g+1]
    <out>/{train,test}/all__is_demo.npy    optional uint8 [examples]: 1 = a demo pair (ours only)

A group is one original puzzle, its puzzles the original and its augmented versions, a puzzle's
examples its (input, output) pairs. dataset.json: pad_id, ignore_label_id, blank_identifier_id (all
0), vocab_size, seq_len, num_puzzle_identifiers, total_groups, total_puzzles, mean_puzzle_examples,
sets (["all"]). A folder is checked when opened (files readable, tokens inside the vocabulary, array
lengths agreeing with each other and dataset.json, one seq_len): a DataError names file and fault.

Loader (`PuzzleDataset`): train = one iteration of epochs_per_iter epochs; per epoch the groups in
random order, from each group one random puzzle, all its examples in random order, cut at the batch
end; the last incomplete batch is dropped. test = every example in order, the last batch padded
(inputs PAD, labels -100, identifier 0). Every rank computes the same global batch and keeps its own
slice of rows. Labels equal to ignore_label_id become -100. with_demos=True (models that read
demonstrations, e.g. ETRM): a target's demos are the demonstration examples of its own puzzle; a
puzzle without any (the standard test split) borrows those of the train puzzle with the same
identifier (the same augmented version); only query examples are then targets. Without an is_demo
file (reference data) every train example is a demo and a train target is left out of its own demos.

Building: a named dataset is built on first use into <root>/<name>, unless its estimated size is
above LARGE (ARC-AGI-1 with 1000 augmentations: 6.5 GB); that one is built only by name:
    python data.py arc1          # or arc1 --num-aug 8 --out DIR; `python data.py --help` lists all
"""
import argparse
import functools
import inspect
import os
import sys

import numpy as np

import rules
from cli import DataError, OneLineParser, one_line_errors
from puzzles.arc import build_arc
from puzzles.arc_small import build_arc_small
from puzzles.common import check_out, read_json
from puzzles.grid_programs import build_grid_programs
from puzzles.maze import build_maze
from puzzles.sizes import build_bytes
from puzzles.small_maze import build_small_maze
from puzzles.small_sudoku import build_small_sudoku
from puzzles.sudoku import build_sudoku
from puzzles.toy import build_toy


def _variant(builder, doc, **keywords):
    """`builder` with some keywords fixed, and its own one-line description for the help."""
    fn = functools.partial(builder, **keywords)
    fn.__doc__ = doc
    return fn


# One line per dataset: name -> builder(out_dir, **options); the first docstring line is its help.
DATASETS = {
    "arc1": _variant(build_arc, "ARC-AGI-1 as TRM builds it, tested on the evaluation tasks "
                     "(6.5 GB)", version="arc1"),
    "arc2": _variant(build_arc, "ARC-AGI-2 as TRM builds it, tested on the evaluation tasks "
                     "(9.3 GB)", version="arc2"),
    "sudoku": build_sudoku,
    "maze": build_maze,
    "toy": build_toy,
    "arc_small": build_arc_small,
    "maze_small": _variant(build_small_maze, "7x7 perfect mazes on an 11x11 wall canvas, tested "
                           "on 7x7 (CPU minutes)", train_size=7, test_size=7, canvas=11),
    "maze_small_big": _variant(build_small_maze, "maze_small's training mazes, tested on 11x11 "
                               "(test-time depth)", train_size=7, test_size=11, canvas=11),
    "maze_small_aug": _variant(build_small_maze, "maze_small + 8 dihedral versions", aug=True),
    **{f"maze_small_{n}": _variant(build_small_maze, f"{n}x{n} test mazes on a {n}x{n} canvas, "
                                   "for canvas-free models trained on maze_small", train_size=7,
                                   test_size=n, canvas=n, num_train=16) for n in (15, 21)},
    "sudoku6": build_small_sudoku,
    "grid_programs": build_grid_programs,
}

# dataset.json keys the loader needs, with their least value
META_INTS = {"pad_id": 0, "blank_identifier_id": 0, "vocab_size": 1, "seq_len": 1,
             "num_puzzle_identifiers": 1, "total_groups": 0}
# The rule of each builder option, by name, in the grammar of the config fields (rules.py); an
# option left unset (None) takes its builder's default. Paths are checked when they are opened.
OPTION_RULES = {"num_aug": "int >= 0", "num_train": "int >= 0", "num_test": "int >= 0",
                "max_tasks": "int >= 1", "workers": "int >= 1", "canvas": "int >= 1",
                "seed": "int in [0, 2**32)", "min_path": "int >= 0", "min_difficulty": "float",
                "target_backtracks": "int >= 0", "min_backtracks": "int >= 0",
                "num_rules": "int >= 1", "length": "int >= 1", "seq_len": "int >= 1",
                "demos": "int >= 0", "shift": "int >= 0", "held_out": "bool", "aug": "bool",
                "size": "int >= 1", "colours": "int in [2, 10]", "geometry": "int in [1, 8]",
                "test_programs": "int >= 1", "train_size": "int >= 3", "test_size": "int >= 3"}


# --------------------------------------------------------------------------------------------------
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
            raise DataError(f"{f}: key {key!r} is {meta.get(key)!r}, expected an integer >= "
                            f"{least}")
    return meta


def load_arrays(path, split, meta):
    """A split's arrays (inputs, labels memory-mapped), checked together and with dataset.json."""
    d, a = os.path.join(path, split), {}
    name = {k: os.path.join(d, f"all__{k}.npy") for k in (
        "inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices", "is_demo")}
    for field, f in name.items():
        if field == "is_demo" and not os.path.exists(f):
            a[field] = None
            continue
        try:
            a[field] = np.load(f, mmap_mode="r" if field in ("inputs", "labels") else None)
        except FileNotFoundError:
            raise DataError(f"{f}: missing") from None
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{f}: not a readable .npy file, truncated or corrupt "
                            f"({str(e).splitlines()[0]})") from None
        if a[field].dtype.kind not in "iub":
            raise DataError(f"{f}: dtype {a[field].dtype}, expected integers")
    n_ex, n_puz = len(a["inputs"]), len(a["puzzle_identifiers"])
    if a["inputs"].ndim != 2 or a["inputs"].shape[1] != meta["seq_len"]:
        raise DataError(f"{name['inputs']}: shape {a['inputs'].shape}, expected [examples, "
                        f"{meta['seq_len']}] (seq_len in {d}/dataset.json)")
    if a["labels"].shape != a["inputs"].shape:
        raise DataError(f"{name['labels']}: shape {a['labels'].shape}, expected "
                        f"{a['inputs'].shape} as the inputs")
    for field, n, total in (("puzzle_indices", n_puz, n_ex), ("group_indices", None, n_puz)):
        x = a[field]
        if x.ndim != 1 or (n is not None and len(x) != n + 1) or len(x) < 1 or x[0] != 0 \
                or x[-1] != total or (np.diff(x) < 0).any():
            raise DataError(f"{name[field]}: expected {'' if n is None else f'{n + 1} '}increasing "
                            f"offsets from 0 to {total}")
    if len(a["group_indices"]) - 1 != meta["total_groups"]:
        raise DataError(f"{name['group_indices']}: {len(a['group_indices']) - 1} groups, but "
                        f"{d}/dataset.json says total_groups {meta['total_groups']}")
    ids, n_ids = a["puzzle_identifiers"], meta["num_puzzle_identifiers"]
    if n_puz and (ids.min() < 0 or ids.max() >= n_ids):
        bad = ids.max() if ids.max() >= n_ids else ids.min()
        raise DataError(f"{name['puzzle_identifiers']}: puzzle identifier {bad} outside "
                        f"0..{n_ids - 1} (num_puzzle_identifiers in {d}/dataset.json)")
    check_tokens(a["inputs"], name["inputs"], meta)
    check_tokens(a["labels"], name["labels"], meta, meta.get("ignore_label_id"))
    if a["is_demo"] is not None and a["is_demo"].shape != (n_ex,):
        raise DataError(f"{name['is_demo']}: {len(a['is_demo'])} flags for {n_ex} examples")
    return a


def check_tokens(x, name, meta, ignore=None):
    """Every token in 0..vocab_size-1 (labels may also hold ignore_label_id): a stray one would
    index past the embedding table or the logits. One pass over the (mmapped) array per bound."""
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
            raise DataError(f"{path}/test/dataset.json: {key} {meta['test'][key]}, but the train "
                            f"split's is {meta['train'][key]}")
    f = os.path.join(path, "identifiers.json")
    n_ids = meta["train"]["num_puzzle_identifiers"]
    if os.path.exists(f) and (not isinstance(names := read_json(f), list) or len(names) < n_ids):
        raise DataError(f"{f}: expected a list of {n_ids} names")
    f = os.path.join(path, "test_puzzles.json")
    if os.path.exists(f) and not isinstance(read_json(f), dict):
        raise DataError(f"{f}: expected a JSON object of task_id -> task")
    return meta["train"]


def check_fit(trained, meta, ckpt, path, rows=None, any_canvas=False):
    """A checkpoint's model config (a dict) against dataset `path`'s metadata: the same vocabulary,
    canvas (seq_len; any for an any_canvas model), at most `rows` puzzle identifiers (its table)."""
    for key in ("vocab_size", "seq_len"):
        if key in trained and meta[key] != trained[key] and not (key == "seq_len" and any_canvas):
            why = "; the model is not canvas-free (any_canvas)" if key == "seq_len" else ""
            raise DataError(f"{path} has {key}={meta[key]}, but {ckpt} was trained with "
                            f"{key}={trained[key]}{why}")
    if rows is not None and meta["num_puzzle_identifiers"] > rows:  # puzzles it has no vector for
        raise DataError(f"{path} has {meta['num_puzzle_identifiers']} puzzle identifiers, but the "
                        f"puzzle-embedding table of {ckpt} has {rows} rows (solve.py adds rows for "
                        "new puzzles)")


# --------------------------------------------------------------------------------------------------
# Loader

def demo_tensors(sources, max_demos, seq_len, pad_id=0):
    """Per row None or (inputs, labels, example indices) of its demos -> demo_inputs, demo_labels
    int32 [B, K, L] (raw tokens), demo_mask bool [B, K]; the first K = max_demos demos in order."""
    import torch  # here and in _collate only: building datasets starts without torch's 5-8 s import
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
    """Iterates batches (dicts of torch tensors: inputs, labels, puzzle_identifiers, plus demo_*
    with with_demos) over one split of a dataset folder (module docstring); state_dict() and
    load_state_dict() resume the order."""

    def __init__(self, path, split, global_batch_size, rank=0, world_size=1, seed=0,
                 epochs_per_iter=1, with_demos=False, max_demos=10):
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} must be >= 1 and divisible by "
                             f"world_size {world_size}")
        self.path, self.split, self.metadata = path, split, load_metadata(path, split)
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.rank, self.seed, self.epochs_per_iter = rank, seed, epochs_per_iter
        self.with_demos, self.max_demos = with_demos, max_demos
        self.arrays = self._load(split)
        self.iteration, self.batch_index, self._skip = 0, 0, 0
        self.example_puzzle = np.repeat(np.arange(len(self.arrays["puzzle_identifiers"])),
                                        np.diff(self.arrays["puzzle_indices"]))
        flags = self.arrays["is_demo"]  # a test puzzle's demos are given, not asked: every model
        self.is_query = ~flags if split == "test" and flags is not None else \
            np.ones(len(self.arrays["inputs"]), bool)  # is scored on the same queries
        if with_demos:
            self._setup_demos()

    def _load(self, split):
        meta = self.metadata if split == self.split else load_metadata(self.path, split)
        arrays = load_arrays(self.path, split, meta)
        if arrays["is_demo"] is not None:
            arrays["is_demo"] = np.asarray(arrays["is_demo"]).astype(bool)
        return arrays

    def _setup_demos(self):
        """Per puzzle of this split: its demo examples and which split's arrays hold them."""
        own = self.arrays
        train = own if self.split == "train" else self._load("train")
        self.leave_one_out = train["is_demo"] is None and own is train
        if train["is_demo"] is None:  # reference data: every train example is a demo
            train["is_demo"] = np.ones(len(train["inputs"]), bool)
        if own["is_demo"] is None:
            own["is_demo"] = np.zeros(len(own["inputs"]), bool)
        # targets: queries; for reference train data every example, left out of its own demos
        self.is_query = np.ones(len(own["inputs"]), bool) if self.leave_one_out else ~own["is_demo"]
        n_puz = len(own["puzzle_identifiers"])
        own_demos = np.nonzero(own["is_demo"])[0]
        has_own = np.bincount(self.example_puzzle[own_demos], minlength=n_puz) > 0
        # demos borrowed by identifier from the train split (its first puzzle with demos and id)
        t_puz_of_ex = np.repeat(np.arange(len(train["puzzle_identifiers"])),
                                np.diff(train["puzzle_indices"]))
        t_demo_ex = np.nonzero(train["is_demo"])[0]
        t_ids = train["puzzle_identifiers"][t_puz_of_ex[t_demo_ex]]
        first_puz = {}
        for ident, p in zip(t_ids[::-1].tolist(), t_puz_of_ex[t_demo_ex][::-1].tolist()):
            first_puz[ident] = p
        self.demo_src = []  # per puzzle: (arrays, example indices) or None
        by_puzzle = np.split(own_demos,
                             np.searchsorted(self.example_puzzle[own_demos], np.arange(1, n_puz)))
        for p in range(n_puz):
            if has_own[p]:
                self.demo_src.append((own, by_puzzle[p][:self.max_demos]))
                continue
            q = first_puz.get(int(own["puzzle_identifiers"][p]))
            if q is None:
                self.demo_src.append(None)
                continue
            lo, hi = train["puzzle_indices"][q], train["puzzle_indices"][q + 1]
            demos = lo + np.nonzero(train["is_demo"][lo:hi])[0]
            self.demo_src.append((train, demos[:self.max_demos]))

    # -- resumability
    def state_dict(self):
        return {"iteration": self.iteration, "batch_index": self.batch_index}

    def load_state_dict(self, state):
        """The next __iter__ continues iteration state["iteration"] after its first
        state["batch_index"] batches."""
        self.iteration, self._skip = state["iteration"] - 1, state["batch_index"]

    # -- batches
    def _train_batches(self, rng):
        gi, pi = self.arrays["group_indices"], self.arrays["puzzle_indices"]
        groups = np.arange(len(gi) - 1)
        if self.with_demos:  # only groups whose puzzles have query examples
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
        ex = np.nonzero(self.is_query)[0]
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
            order = np.argsort(mine)  # sorted reads from the memory map
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
                    if self.leave_one_out:
                        demo_ex = demo_ex[demo_ex != e]
                    src = (arrays["inputs"], arrays["labels"], demo_ex)
                sources.append(src)
            batch.update(demo_tensors(sources + [None] * (B - n), self.max_demos, L, m["pad_id"]))
        return batch

    def __iter__(self):
        self.iteration += 1
        skip, self._skip, self.batch_index = self._skip, 0, 0
        if self.split == "test":
            batches = self._test_batches()
        else:
            rng = np.random.Generator(np.random.Philox(seed=self.seed + self.iteration))
            batches = self._train_batches(rng)
        for idx in batches:
            self.batch_index += 1
            if self.batch_index <= skip:  # resuming: replay the order, skip the data reads
                continue
            yield self._collate(idx)


# --------------------------------------------------------------------------------------------------
# Building: build(name), ensure_dataset, the command line

LARGE = 1e9        # bytes: a bigger dataset is built only when asked for (`python data.py NAME`)
BUILD_RATE = 30e6  # bytes/s the ARC builder writes (measured: arc1 num_aug=64, 413 MB in 14 s)


def options_of(name):
    """The keyword options dataset `name`'s builder takes (its CLI flags)."""
    return [p for p in inspect.signature(DATASETS[name]).parameters.values()
            if p.name != "out_dir" and p.name not in getattr(DATASETS[name], "keywords", {})]


def build(name, out_dir=None, **options):
    """Build dataset `name` into out_dir (default data/<name>) -> out_dir. Options are checked
    before anything is written; an existing out_dir is replaced only if it is a dataset folder."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    takes = {p.name for p in options_of(name)}
    for key, value in options.items():
        if key not in takes:
            raise DataError(f"dataset {name!r} takes no option {key!r} (it takes "
                            f"{', '.join(sorted(takes))})")
        rule = OPTION_RULES.get(key)
        broken = value is not None and rule and rules.parse(rule).broken(value)
        if broken:
            raise DataError(f"{key}={value!r} must be {broken}")
    out_dir = out_dir or os.path.join("data", name)
    check_out(out_dir)
    DATASETS[name](out_dir, **options)
    return out_dir


def ensure_dataset(name_or_path, root="data", **options):
    """A dataset folder (checked, returned as is) or a registry name (built into root/<name> when
    missing, if it is at most LARGE) -> path."""
    if os.path.isfile(os.path.join(name_or_path, "train", "dataset.json")):
        check_dataset(name_or_path)
        return name_or_path
    if name_or_path not in DATASETS:
        raise DataError(f"unknown dataset {name_or_path!r}: not a dataset folder (no "
                        f"train/dataset.json) and not one of {', '.join(DATASETS)}")
    path = os.path.join(root, name_or_path)
    if not os.path.isfile(os.path.join(path, "train", "dataset.json")):
        size = build_bytes(DATASETS[name_or_path], **options)  # estimated before building
        mb = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
        if size > LARGE:
            flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in options.items())
            raise DataError(f"dataset {name_or_path!r} is about {mb} and takes about "
                            f"{size / BUILD_RATE / 60:.1f} min to build, so it is built only when "
                            f"asked: run `python data.py {name_or_path} --out {path}{flags}` first")
        print(f"building dataset {name_or_path!r} into {path} (about {mb}) ...", file=sys.stderr)
        build(name_or_path, path, **options)
    check_dataset(path)
    return path


def summarize(path):
    """One line: puzzles, examples, groups per split and bytes on disk."""
    parts = []
    for split in ("train", "test"):
        m = load_metadata(path, split)
        a = load_arrays(path, split, m)
        parts.append(f"{split}: {len(a['puzzle_identifiers']):,} puzzles, {len(a['inputs']):,} "
                     f"examples, {m['total_groups']:,} groups")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return f"{path}: " + "; ".join(parts) + f"; {size:,} bytes"


def main(argv=None):
    """The command line -> exit code (0 built, 2 bad input)."""
    return one_line_errors(_main, argv)


def _main(argv):
    p = OneLineParser(description="Build a nanoTRM dataset in the reference TRM/HRM layout.",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("dataset", choices=list(DATASETS), help="which dataset to build (listed below)")
    add("--out", help="output folder (default data/<dataset>); an existing one must be a dataset")
    add("--source", help="ARC: Kaggle or per-task JSON folder; sudoku/maze: train.csv + test.csv")
    add("--seed", type=int, help="random seed (default 42 for ARC, 0 otherwise)")
    add("--num-aug", type=int, help="augmented versions per puzzle (ARC, sudoku)")
    add("--concept", dest="concept_path", help="ARC: ConceptARC corpus/ or *_concept_challenges")
    add("--held-out", action=argparse.BooleanOptionalAction, default=None,
        help="ARC: evaluation tasks (demos and queries) only in the test split")
    add("--max-tasks", type=int, help="ARC: only the first N tasks of each subset (tests/CI)")
    add("--canvas", type=int, help="ARC: canvas side (seq_len = side^2); keeps the tasks that fit")
    add("--num-train", type=int, help="train puzzles (for a CSV, a seeded subsample)")
    add("--num-test", type=int, help="test puzzles; with a CSV source, 0 keeps the whole test.csv")
    add("--min-difficulty", type=float, help="sudoku: keep rows with rating >= this")
    add("--target-backtracks", type=int, help="sudoku generator: backtracks (default: mean 22)")
    add("--min-path", type=int, help="maze generator: shortest path must be longer than this (110)")
    add("--aug", action="store_true", default=None, help="maze: 8 dihedral versions per train maze")
    add("--workers", type=int, help="processes for the sudoku/maze generators (default: all cores)")
    flags = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings}
    for name in DATASETS:  # a new builder's other keywords become flags too
        for o in options_of(name):
            if o.name not in flags and isinstance(o.default, (bool, int, float, str)):
                flags[o.name] = "--" + o.name.replace("_", "-")
                kind = {"action": argparse.BooleanOptionalAction} if isinstance(o.default, bool) \
                    else {"type": type(o.default)}
                add(flags[o.name], dest=o.name, default=None, help=f"{name} (default {o.default})",
                    **kind)
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
