"""experiments/ smoke tests: every script runs end to end on a CPU with the smallest budget and
writes its table and its plot; the tables hold the runs' own numbers.

Run: python -m pytest -q tests/test_experiments.py      (CPU; about a minute on 2 quiet cores)
Checks against: the run folder's metrics.jsonl (the last evaluation row train.py wrote) and its
config.json; for teach.py's headline, planted numbers read back through --report-only; for the
others, that the files exist and the table has one row per variant / step / N.
"""
import json
import os
import shutil

import pytest
import torch

import data
from experiments import ablate, acc_vs_aug, compare, recursion_strip, teach

pytestmark = pytest.mark.slow  # the full tier (python -m pytest tests); see README

FAST = ["global_batch_size=16", "eval_batches=1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return data.build_toy(str(tmp_path_factory.mktemp("data") / "toy"), num_train=400, num_test=32)


@pytest.fixture(scope="module")
def arc(tmp_path_factory):  # 2 training + 1 evaluation task of ARC-AGI-1, 3 augmentations each
    return data.build_arc(str(tmp_path_factory.mktemp("data") / "arc"), max_tasks=1, num_aug=3)


ARC_TINY = ["hidden_size=16", "num_heads=1", "H_cycles=1", "L_cycles=1", "puzzle_emb_ndim=16",
            "global_batch_size=4"]


def table_rows(out):
    lines = [l for l in open(os.path.join(out, "table.md"))
             if l.startswith("| ") and "---" not in l]
    return [[c.strip() for c in l.strip().strip("|").split("|")] for l in lines]


def last_eval(run_dir, key="eval/accuracy"):
    """The last evaluation row train.py wrote into the run's metrics.jsonl."""
    return [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if key in l][-1]


def test_compare_table_holds_the_runs_own_metrics(toy, tmp_path):
    rows = compare.main(["--data", toy, "--steps", "2", "--out", str(tmp_path), "--config", *FAST])
    assert [r["model"] for r in rows] == ["trm", "hrm", "etrm", "prr", "deep_recursive"]
    assert os.path.getsize(tmp_path / "compare.png") > 0
    header, *table = table_rows(tmp_path)
    for r, line in zip(rows, table):
        cell = dict(zip(header, line))
        last = last_eval(tmp_path / r["model"])
        assert cell["token acc"] == f"{last['eval/accuracy']:.3f}" == f"{r['accuracy']:.3f}"
        assert cell["exact acc"] == f"{last['eval/exact_accuracy']:.3f}"
        assert cell["steps"] == "2"
        assert int(cell["trunk params"].replace(",", "")) > 0
    assert "n/a (not an ARC dataset)" in open(tmp_path / "table.md").read()


def test_compare_on_arc_adds_pass2_with_and_without_adaptation(arc, tmp_path):
    rows = compare.main(["--models", "trm", "--data", arc, "--steps", "1", "--tta-steps", "1",
                         "--out", str(tmp_path), "--config", *ARC_TINY])
    header, line = table_rows(tmp_path)
    cell = dict(zip(header, line))
    pass2 = last_eval(tmp_path / "trm", "eval/ARC/pass@2")["eval/ARC/pass@2"]
    assert cell["pass@2"] == f"{pass2:.3f}"
    assert cell["pass@2 unseen, no TTA"] == f"{rows[0]['tta_none']:.3f}"
    assert "pass@2 unseen, TTA 1 steps" in cell
    assert os.path.exists(tmp_path / "trm" / "solve" / "embeddings" / "scores.json")


@pytest.mark.parametrize("family", ["trm", "prr", "etrm", "deep_recursive"])
def test_ablation_writes_table_and_plot(family, toy, tmp_path):
    rows = ablate.main([family, "--quick", "--data", toy, "--steps", "2", "--tto-steps", "1",
                        "--out", str(tmp_path), "--config", *FAST])
    variants = len(ablate.QUICK[family]) + (family == "etrm")
    assert len(table_rows(tmp_path)) == len(rows) + 1 == variants + 1
    assert os.path.getsize(tmp_path / f"ablate_{family}.png") > 0


def test_acc_vs_aug_revotes_one_set_of_predictions(arc, tmp_path):
    rows = acc_vs_aug.main(["--data", arc, "--steps", "1", "--draws", "2", "--out", str(tmp_path),
                            "--config", *ARC_TINY])
    assert [r["N"] for r in rows] == ["identity only", 1, 2, 4]
    # every version voted = train.py's own evaluation
    assert rows[-1]["pass@2"] == last_eval(tmp_path / "trm", "eval/ARC/pass@2")["eval/ARC/pass@2"]
    assert os.path.getsize(tmp_path / "acc_vs_aug.png") > 0 and len(table_rows(tmp_path)) == 5


def test_recursion_strip_shows_every_act_step(toy, tmp_path):
    rows = recursion_strip.main(["--data", toy, "--steps", "2", "--out", str(tmp_path),
                                 "--config", *FAST])
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # halt_max_steps=4: evaluation runs every step
    assert all(0 <= r["q"] <= 1 for r in rows)
    assert os.path.getsize(tmp_path / "recursion_strip.png") > 0


@pytest.fixture(scope="module")
def teach_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("teach")
    return out, teach.main(["--smoke", "--workers", "0", "--out", str(out)])


def test_teach_smoke_writes_every_headline_key_in_0_1(teach_smoke):
    out, results = teach_smoke
    saved = json.load(open(out / "results.json"))
    assert saved == json.loads(json.dumps(results))
    assert set(saved) == {"depth", "extrapolation", "models", "etrm_heldout", "attention_mazes"}
    assert len({e["task"] for e in saved["depth"]}) >= 2
    for e in saved["depth"]:
        assert {"task", "one_call", "recursive", "params"} <= set(e) and e["params"] > 0
    ex = saved["extrapolation"]
    assert set(ex) == {"model", "train_size", "test_size", "depths", "exact"}
    assert ex["test_size"] > ex["train_size"] and ex["model"] == "deep_recursive"
    assert len(ex["depths"]) == len(ex["exact"]) >= 3 and ex["depths"] == sorted(set(ex["depths"]))
    assert set(saved["models"]) == {"trm", "hrm", "etrm", "prr", "deep_recursive"}
    for m in saved["models"].values():
        assert {"task", "exact", "control", "control_exact"} <= set(m) and m["control"]
    assert set(saved["etrm_heldout"]) == {"task", "exact", "wrong_demos_exact"}
    assert set(saved["attention_mazes"]) == {"recipe", "steps", "exact"}
    assert saved["attention_mazes"]["recipe"].startswith("trm ")
    held = saved["etrm_heldout"]
    numbers = [*ex["exact"], held["exact"], held["wrong_demos_exact"],
               saved["attention_mazes"]["exact"]]
    numbers += [e[k] for e in saved["depth"] for k in ("one_call", "recursive")]
    numbers += [m[k] for m in saved["models"].values() for k in ("exact", "control_exact")]
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in numbers)
    for png in ("teach_models.png", "teach_depth.png", "teach_extrapolation.png"):
        assert os.path.getsize(out / png) > 0
    table = open(out / "table.md").read()
    assert table.splitlines()[0].endswith("smoke (smallest budget, numbers mean nothing)")
    assert "wall" in table and "CPU" in table and len(table_rows(out)) >= 20


def test_teach_controls_share_the_weights_count_samples_and_data(teach_smoke):
    """Each control is its recipe with the control's keys on top: same task, steps x batch,
    weights."""
    out, _ = teach_smoke
    details = json.load(open(out / "details.json"))
    runs = details["runs"]
    for name, recipe in details["recipes"].items():
        if recipe["control_keys"] is None:  # ETRM: the same checkpoint, another task's demos
            continue
        run, control = runs[name], runs[name + "_control"]
        a, b = (json.load(open(os.path.join(r["out_dir"], "config.json"))) for r in (run, control))
        for key in ("data", "global_batch_size", "epochs", "lr", "lr_min_ratio"):  # same schedule
            assert a["train"][key] == b["train"][key]
        assert run["step"] == control["step"]
        for pair in recipe["control_keys"]:
            key, value = pair.split("=")
            assert str(b["model_config"][key]) == value
        if name != "prr":  # PRR's K branch inits are K x D weights
            assert run["trunk_params"] == control["trunk_params"]
        # every entry is that run's own final evaluation
        for r in (run, control):
            assert r["exact_accuracy"] == last_eval(r["out_dir"])["eval/exact_accuracy"]


def test_teach_headline_reads_each_number_from_its_own_run(teach_smoke, tmp_path):
    """--report-only on planted, all-different numbers: every headline entry picks its own run."""
    out, results = teach_smoke
    assert teach.main(["--report-only", "--out", str(out)]) == results
    details = json.load(open(out / "details.json"))
    for i, r in enumerate(details["runs"].values()):
        r["exact_accuracy"] = (i + 1) / 100
    ex = details["extrapolation"]
    ex["sizes"] = {s: [(j + 1) / 10 + int(s) / 1000 for j in range(len(ex["depths"]))]
                   for s in ex["sizes"]}
    details["etrm_heldout"].update(exact=0.91, wrong_demos_exact=0.19)
    json.dump(details, open(tmp_path / "details.json", "w"))
    res, runs = teach.main(["--report-only", "--out", str(tmp_path)]), details["runs"]
    for m, entry in res["models"].items():
        if m == "etrm":
            assert (entry["exact"], entry["control_exact"]) == (0.91, 0.19)
        else:
            planted = runs[m]["exact_accuracy"], runs[m + "_control"]["exact_accuracy"]
            assert (entry["exact"], entry["control_exact"]) == planted
    for e, name in zip(res["depth"], teach.DEPTH):
        assert (e["recursive"], e["one_call"]) == (runs[name]["exact_accuracy"],
                                                   runs[name + "_control"]["exact_accuracy"])
    assert res["extrapolation"]["exact"] == ex["sizes"]["11"]
    assert res["attention_mazes"]["exact"] == runs[teach.ATTENTION_MAZES]["exact_accuracy"]
    assert (res["etrm_heldout"]["exact"], res["etrm_heldout"]["wrong_demos_exact"]) == (0.91, 0.19)


def test_teach_demo_swap_feeds_another_tasks_demos(teach_smoke, monkeypatch):
    """A stand-in model right exactly when it reads the query's own demos: 1.0 own, 0.0 swapped."""
    out, _ = teach_smoke
    details = json.load(open(out / "details.json"))
    path = details["datasets"][details["etrm_heldout"]["task"]]
    own = {bytes(q.numpy()): bytes(d.numpy())
           for b in data.PuzzleDataset(path, "test", 4, with_demos=True)
           for q, d in zip(b["inputs"], b["demo_inputs"])}

    def reads_demos(model, batch):
        right = torch.tensor([own[bytes(q.numpy())] == bytes(d.numpy())
                              for q, d in zip(batch["inputs"], batch["demo_inputs"])])
        return None, {"preds": torch.where(right[:, None], batch["labels"], -1)}

    monkeypatch.setattr(teach.evaluate, "run_batch", reads_demos)
    ckpt = os.path.join(details["runs"]["etrm"]["out_dir"], "checkpoint.pt")
    assert teach.demo_swap_exact(ckpt, path) == (1.0, 0.0, True)


def test_teach_only_reruns_the_named_recipe_and_keeps_every_other_run(teach_smoke, tmp_path):
    out, _ = teach_smoke
    copy = tmp_path / "teach"
    shutil.copytree(out, copy)
    before = json.load(open(copy / "details.json"))["runs"]
    teach.main(["--smoke", "--workers", "0", "--out", str(copy), "--only", "sudoku"])
    after = json.load(open(copy / "details.json"))
    assert after["only"] == "sudoku" and set(after["runs"]) == set(before)
    for name, run in before.items():
        rerun = after["runs"][name]["seconds"] != run["seconds"]
        assert rerun == (name in ("sudoku", "sudoku_control")), name


@pytest.mark.parametrize("argv, message", [
    (["--scale", "0"], "error: --scale 0.0"), (["--workers", "-1"], "error: --workers -1"),
    (["--report-only"], "error: --report-only: "), (["--only", "trm"], "error: --only trm: "),
    (["--only", "nope"], "error: --only nope: no recipe 'nope'")])
def test_teach_refuses_bad_flags_in_one_line_before_writing(argv, message, tmp_path):
    with pytest.raises(SystemExit) as e:
        teach.main([*argv, "--out", str(tmp_path / "out")])
    assert str(e.value.code).startswith(message) and "\n" not in str(e.value.code)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", [compare, ablate, acc_vs_aug, recursion_strip, teach])
def test_help(script, capsys):
    with pytest.raises(SystemExit) as e:
        script.main(["--help"])
    assert e.value.code == 0 and "--out" in capsys.readouterr().out
