"""What every builder shares: the error type, input reading and checking, the layout's writers.

The layout (the reference TRM/HRM one, described in data.py) is written through `AtomicDir`, so a
failed or interrupted build leaves nothing behind, and an existing path is replaced only when it
is a dataset folder.
"""
import csv
import json
import multiprocessing
import os
import shutil
import sys
import time

import numpy as np

from cli import DataError  # noqa: F401  (raised here; every command reports it in one line)
from puzzles.grids import GRID

DATASET_ENTRIES = {"identifiers.json", "test_puzzles.json", "train", "test"}


# --------------------------------------------------------------------------------------------------
# Reading and checking inputs

def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a JSON file") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text)") from None


def check_grid(g, where, canvas=GRID):
    """A grid as a list of lists of ints 0..9, at most canvas x canvas -> uint8 array."""
    if not isinstance(g, list) or not g or not all(isinstance(r, list) for r in g):
        raise DataError(f"{where}: grid is not a non-empty list of rows")
    h, w = len(g), len(g[0])
    if any(len(r) != w for r in g):
        raise DataError(f"{where}: ragged rows (lengths {sorted({len(r) for r in g})})")
    if not (1 <= h <= canvas and 1 <= w <= canvas):
        raise DataError(f"{where}: grid is {h}x{w}, larger than {canvas}x{canvas} or empty")
    bad = [v for r in g for v in r if type(v) is not int or not 0 <= v <= 9]
    if bad:
        raise DataError(f"{where}: value {bad[0]!r} outside 0-9")
    return np.array(g, dtype=np.uint8)


def read_csv(path, width, charset):
    """Checked rows (question, answer, rating) of a source,question,answer,rating CSV."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            try:
                header = next(reader, None)
                if header is None or len(header) != 4:
                    raise DataError(f"{path}: expected the header source,question,answer,rating")
                for row in reader:
                    n = reader.line_num
                    if len(row) != 4:
                        raise DataError(f"{path}: row {n}: {len(row)} columns, expected 4 "
                                        "(source,question,answer,rating)")
                    for col, s in (("question", row[1]), ("answer", row[2])):
                        if len(s) != width:
                            raise DataError(f"{path}: row {n}: {col} has {len(s)} characters, "
                                            f"expected {width}")
                        if set(s) - set(charset):
                            raise DataError(f"{path}: row {n}: {col} has characters outside "
                                            f"{charset!r}")
                    try:
                        rows.append((row[1], row[2], float(row[3] or 0)))
                    except ValueError:
                        raise DataError(
                            f"{path}: row {n}: rating {row[3]!r} is not a number") from None
            except UnicodeDecodeError:
                raise DataError(
                    f"{path}: not UTF-8 text (near line {reader.line_num + 1})") from None
            except csv.Error as e:
                raise DataError(f"{path}: row {reader.line_num}: not valid CSV ({e})") from None
    except FileNotFoundError:
        raise DataError(
            f"{path}: no such file (a source folder holds train.csv and test.csv)") from None
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    return rows


# --------------------------------------------------------------------------------------------------
# Writing

def check_out(out):
    """Refuse an output path that exists and is not a dataset folder: a user's file stays."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise DataError(f"{out}: exists and is not a folder; refusing to replace it "
                        "(choose another --out)")
    if os.path.isdir(out):
        foreign = sorted(set(os.listdir(out)) - DATASET_ENTRIES)
        if foreign:
            raise DataError(f"{out}: exists and holds {', '.join(foreign[:3])}"
                            f"{' ...' if len(foreign) > 3 else ''}, which is not a dataset folder; "
                            "refusing to replace it (choose another --out)")


class AtomicDir:
    """Build into a temporary folder beside `out`; rename it over `out` on success, else delete."""

    def __init__(self, out):
        self.out = os.path.abspath(out)
        self.tmp = f"{self.out}.tmp-{os.getpid()}"

    def __enter__(self):
        check_out(self.out)
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            if os.path.exists(self.out):  # a dataset folder (check_out): replaced as a whole
                old = f"{self.out}.old-{os.getpid()}"
                os.rename(self.out, old)
                shutil.rmtree(old)
            os.rename(self.tmp, self.out)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False


def _named(e, path):
    """The OSError of a failed write (disk full, file too large) with the file's name in it."""
    return OSError(e.errno, e.strerror or str(e), path) if e.filename is None else e


class NpyWriter:
    """Writes a .npy of known final shape block by block of rows (header first, then the rows in
    order), so a 6.5 GB array never sits in memory. Same bytes as np.save."""

    def __init__(self, path, dtype, shape):
        self.path, self.f = path, open(path, "wb")
        self.dtype, self.shape, self.rows = np.dtype(dtype), shape, 0
        self._do(np.lib.format.write_array_header_1_0, self.f,
                 {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": shape})

    def _do(self, fn, *args):
        try:
            fn(*args)
        except OSError as e:
            self.f.close()
            raise _named(e, self.path) from None

    def write(self, block):
        block = np.ascontiguousarray(block, dtype=self.dtype)
        self._do(self.f.write, block.data)
        self.rows += len(block)

    def close(self):
        self._do(self.f.close)
        assert self.rows == self.shape[0], f"wrote {self.rows} rows, expected {self.shape[0]}"


def save_npy(path, arr):
    """np.save through NpyWriter (a failed write names its file)."""
    arr = np.asarray(arr)
    w = NpyWriter(path, arr.dtype, arr.shape)
    w.write(arr)
    w.close()


def metadata(seq_len, vocab, num_ids, groups, puzzles, examples, total_puzzles=None):
    return {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": vocab,
            "seq_len": seq_len, "num_puzzle_identifiers": num_ids, "total_groups": groups,
            "mean_puzzle_examples": examples / max(puzzles, 1),
            "total_puzzles": puzzles if total_puzzles is None else total_puzzles, "sets": ["all"]}


def write_json(path, obj, **kw):
    try:
        with open(path, "w") as f:
            json.dump(obj, f, **kw)
    except OSError as e:
        raise _named(e, path) from None


def write_split(out, split, inputs, labels, puzzle_ids, puzzle_indices, group_indices, meta,
                is_demo=None):
    """Write one in-memory split (the small datasets)."""
    d = os.path.join(out, split)
    os.makedirs(d, exist_ok=True)
    for field, arr in (("inputs", inputs), ("labels", labels), ("puzzle_identifiers", puzzle_ids),
                       ("puzzle_indices", puzzle_indices), ("group_indices", group_indices),
                       ("is_demo", is_demo)):
        if arr is not None:
            dtype = np.uint8 if field in ("inputs", "labels", "is_demo") else np.int32
            save_npy(os.path.join(d, f"all__{field}.npy"), np.asarray(arr, dtype=dtype))
    write_json(os.path.join(d, "dataset.json"), meta, indent=1)


class Progress:
    """A progress line on stderr: rewritten in place on a terminal; in a log file a plain line
    every `every` seconds and the last one."""

    def __init__(self, every=30.0):
        self.tty, self.every, self.last = sys.stderr.isatty(), every, time.time()

    def __call__(self, msg, final=False):
        if self.tty:
            print(f"\r{msg}", end="\n" if final else "", flush=True, file=sys.stderr)
        elif final or time.time() - self.last >= self.every:
            print(msg, flush=True, file=sys.stderr)
            self.last = time.time()


def generate_csv(path, worker, jobs, workers, label, chunksize=1):
    """Run `worker` over `jobs` in a process pool; cache the (question, answer, rating) rows it
    returns atomically as a source,question,answer,rating CSV (no Nones, no repeated questions)."""
    rows, seen, t0, progress = [], set(), time.time(), Progress()
    with multiprocessing.Pool(workers or os.cpu_count()) as pool:
        for k, res in enumerate(pool.imap(worker, jobs, chunksize=chunksize), 1):
            if res is not None and res[0] not in seen:
                seen.add(res[0])
                rows.append(("generated",) + tuple(res))
            progress(f"[{label}] generated {len(rows)}/{len(jobs)} ({time.time() - t0:.0f}s)",
                     final=k == len(jobs))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with open(path + ".tmp", "w", newline="") as f:
            csv.writer(f).writerows([("source", "question", "answer", "rating")] + rows)
        os.replace(path + ".tmp", path)
    finally:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
