"""The house rules a reader relies on, checked over every tracked .py file: imports run one way (no
module imports one that imports it back), files stay short enough to read in one sitting, lines
narrow enough to hold, every reference in the code resolves inside the repository (no pointers to
documents that do not ship with it), training happens only in train.py, and no test works in the
checkout."""
import ast
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked_py():
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True)
    files = out.stdout.split() if out.returncode == 0 else []
    if not files:  # not a git checkout (an unpacked copy): walk the tree instead
        for d, subdirs, names in os.walk(ROOT):
            subdirs[:] = [s for s in subdirs if not s.startswith(".") and s not in ("data", "runs", "__pycache__")]
            files += [os.path.relpath(os.path.join(d, n), ROOT) for n in names if n.endswith(".py")]
    return sorted(files)


def module_name(path):
    return path[:-3].replace("/", ".").removesuffix(".__init__")


def imports_of(path, modules):
    """Project modules that `path` imports (at any depth of the file, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(open(os.path.join(ROOT, path)).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_imports_run_one_way():
    files = [f for f in tracked_py() if not f.startswith("tests/")]
    modules = {module_name(f): f for f in files}
    graph = {m: imports_of(f, modules) - {m} for m, f in modules.items()}
    package = lambda m: m.split(".")[0]  # noqa: E731  (a package's own files may refer to each other)
    circles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a]
                      if a in graph.get(b, ()) and package(a) != package(b)})
    assert not circles, f"modules importing each other: {circles}"
    # and no longer cycles between top-level files either
    top = {package(m) for m in graph}
    edges = {p: {package(b) for a in graph if package(a) == p for b in graph[a]} - {p} for p in top}
    state = {}

    def visit(p, stack):
        state[p] = "open"
        for q in edges[p]:
            assert state.get(q) != "open", f"import cycle: {' -> '.join(stack + [p, q])}"
            if q not in state:
                visit(q, stack + [p])
        state[p] = "done"
    for p in sorted(top):
        if p not in state:
            visit(p, [])


def test_files_stay_readable():
    long = {f: n for f in tracked_py() if not f.startswith("tests/")
            for n in [sum(1 for _ in open(os.path.join(ROOT, f)))] if n > 500}
    assert not long, f"files over 500 lines: {long}"


def test_no_references_to_documents_that_do_not_ship():
    sect = "\u00a7"  # the section sign, spelt out so that this file does not match itself
    pattern = re.compile(rf"spec {sect}|\.md {sect}|shared/(spec|seeds)|briefing {sect}|\bissue #?\d+", re.IGNORECASE)
    hits = [f"{f}:{i}: {line.strip()}" for f in tracked_py()
            for i, line in enumerate(open(os.path.join(ROOT, f)), 1) if pattern.search(line)]
    assert not hits, "references that do not resolve in the repository:\n" + "\n".join(hits[:20])


MODEL_FILES = ("trm.py", "hrm.py", "etrm.py", "encoders.py", "prr.py", "deep_recursive.py")
CODE_BUDGET = 9000  # non-test lines; the features of a wave are paid for by what it removes


def test_no_model_backpropagates_inside_forward():
    """Training happens in one place (train.train_step); a model only returns its loss."""
    hits = [f"{f}:{i}" for f in MODEL_FILES
            for i, line in enumerate(open(os.path.join(ROOT, f)), 1) if ".backward(" in line]
    assert not hits, f".backward( in a model file: {hits}"


def test_lines_a_reader_can_hold():
    """At most 5% of any non-test file's lines over 100 characters; the code base within its budget."""
    files = [f for f in tracked_py() if not f.startswith("tests/")]
    wide, total = {}, 0
    for f in files:
        lines = open(os.path.join(ROOT, f)).read().splitlines()
        total += len(lines)
        n = sum(len(line) > 100 for line in lines)
        if lines and n > 0.05 * len(lines):
            wide[f] = f"{n} of {len(lines)}"
    assert not wide, f"files with more than 5% of their lines over 100 characters: {wide}"
    assert total <= CODE_BUDGET, f"{total} lines of non-test code, over the budget of {CODE_BUDGET}"


def test_no_test_touches_the_checkout():
    """Tests run their commands in their own temporary folder: none changes directory to the checkout, runs
    a command there, or lists it (a user's run writing runs/ beside the suite must not fail it)."""
    pattern = re.compile(r"cwd=ROOT|os\.chdir\(ROOT|listing\(ROOT|os\.walk\(ROOT|os\.listdir\(ROOT")
    hits = [f"{f}:{i}: {line.strip()}" for f in tracked_py() if f.startswith("tests/")
            and f != "tests/test_house.py"
            for i, line in enumerate(open(os.path.join(ROOT, f)), 1) if pattern.search(line)]
    assert not hits, "tests that work in the checkout:\n" + "\n".join(hits)
