"""experiments/ smoke tests: every script runs end to end on a CPU with the smallest budget and writes its table
and its plot; compare.py's table holds the run's own numbers.

Run: python -m pytest -q tests/test_experiments.py      (CPU; well under a minute on 2 quiet cores)
Checks against: the run folder's metrics.jsonl (the last evaluation row train.py wrote) for compare.py's table;
for the others, that the files exist and the table has one row per variant / step / N.
"""
import json
import os

import pytest

import data
from experiments import ablate, acc_vs_aug, compare, recursion_strip, teach

FAST = ["global_batch_size=16", "eval_batches=1"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return data.build_toy(str(tmp_path_factory.mktemp("data") / "toy"), num_train=400, num_test=32)


@pytest.fixture(scope="module")
def arc(tmp_path_factory):  # 2 training + 1 evaluation task of ARC-AGI-1, 3 augmentations each
    return data.build_arc(str(tmp_path_factory.mktemp("data") / "arc"), max_tasks=1, num_aug=3)


ARC_TINY = ["hidden_size=16", "num_heads=1", "H_cycles=1", "L_cycles=1", "puzzle_emb_ndim=16", "global_batch_size=4"]


def table_rows(out):
    lines = [l for l in open(os.path.join(out, "table.md")) if l.startswith("| ") and "---" not in l]
    return [[c.strip() for c in l.strip().strip("|").split("|")] for l in lines]


def test_compare_table_holds_the_runs_own_metrics(toy, tmp_path):
    rows = compare.main(["--data", toy, "--steps", "2", "--out", str(tmp_path), "--config", *FAST])
    assert [r["model"] for r in rows] == ["trm", "hrm", "etrm", "prr", "deep_recursive"]
    assert os.path.getsize(tmp_path / "compare.png") > 0
    header, *table = table_rows(tmp_path)
    for r, line in zip(rows, table):
        cell = dict(zip(header, line))
        last_eval = [json.loads(l) for l in open(tmp_path / r["model"] / "metrics.jsonl") if "eval/accuracy" in l][-1]
        assert cell["token acc"] == f"{last_eval['eval/accuracy']:.3f}" == f"{r['accuracy']:.3f}"
        assert cell["exact acc"] == f"{last_eval['eval/exact_accuracy']:.3f}"
        assert cell["steps"] == "2"
        assert int(cell["trunk params"].replace(",", "")) > 0
    assert "n/a (not an ARC dataset)" in open(tmp_path / "table.md").read()


def test_compare_on_arc_adds_pass2_with_and_without_adaptation(arc, tmp_path):
    rows = compare.main(["--models", "trm", "--data", arc, "--steps", "1", "--tta-steps", "1", "--out", str(tmp_path),
                         "--config", *ARC_TINY])
    header, line = table_rows(tmp_path)
    cell = dict(zip(header, line))
    last_eval = [json.loads(l) for l in open(tmp_path / "trm" / "metrics.jsonl") if "eval/ARC/pass@2" in l][-1]
    assert cell["pass@2"] == f"{last_eval['eval/ARC/pass@2']:.3f}"
    assert cell["pass@2 unseen, no TTA"] == f"{rows[0]['tta_none']:.3f}" and "pass@2 unseen, TTA 1 steps" in cell
    assert os.path.exists(tmp_path / "trm" / "solve" / "embeddings" / "scores.json")


@pytest.mark.parametrize("family", ["trm", "prr", "etrm", "deep_recursive"])
def test_ablation_writes_table_and_plot(family, toy, tmp_path):
    rows = ablate.main([family, "--quick", "--data", toy, "--steps", "2", "--tto-steps", "1", "--out", str(tmp_path),
                        "--config", *FAST])
    assert len(table_rows(tmp_path)) == len(rows) + 1 == len(ablate.QUICK[family]) + 1 + (family == "etrm")
    assert os.path.getsize(tmp_path / f"ablate_{family}.png") > 0


def test_acc_vs_aug_revotes_one_set_of_predictions(arc, tmp_path):
    rows = acc_vs_aug.main(["--data", arc, "--steps", "1", "--draws", "2", "--out", str(tmp_path), "--config", *ARC_TINY])
    assert [r["N"] for r in rows] == ["identity only", 1, 2, 4]
    last_eval = [json.loads(l) for l in open(tmp_path / "trm" / "metrics.jsonl") if "eval/ARC/pass@2" in l][-1]
    assert rows[-1]["pass@2"] == last_eval["eval/ARC/pass@2"]  # every version voted = train.py's own evaluation
    assert os.path.getsize(tmp_path / "acc_vs_aug.png") > 0 and len(table_rows(tmp_path)) == 5


def test_recursion_strip_shows_every_act_step(toy, tmp_path):
    rows = recursion_strip.main(["--data", toy, "--steps", "2", "--out", str(tmp_path), "--config", *FAST])
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # halt_max_steps=4: evaluation runs every step
    assert all(0 <= r["q"] <= 1 for r in rows)
    assert os.path.getsize(tmp_path / "recursion_strip.png") > 0


def test_teach_suite_end_to_end_at_its_smallest_budget(tmp_path):
    results = teach.main(["--smoke", "--workers", "0", "--out", str(tmp_path)])
    saved = json.load(open(tmp_path / "results.json"))
    assert saved == json.loads(json.dumps(results))
    assert set(saved) == {"depth", "extrapolation", "models", "etrm_heldout", "adaptation"}
    assert set(saved["depth"]) == {"task", "one_call", "recursive", "params"} and saved["depth"]["params"] > 0
    ex = saved["extrapolation"]
    assert set(ex) == {"train_size", "test_size", "depths", "exact"} and ex["test_size"] > ex["train_size"]
    assert len(ex["depths"]) == len(ex["exact"]) >= 3 and ex["depths"] == sorted(set(ex["depths"]))
    assert set(saved["models"]) == {"trm", "hrm", "etrm", "prr", "deep_recursive"}
    assert all(set(m) == {"task", "exact", "token_acc", "seconds"} for m in saved["models"].values())
    assert set(saved["etrm_heldout"]) == {"exact", "wrong_demos_exact"}
    assert set(saved["adaptation"]) == {"trm_before", "trm_after", "etrm_before", "etrm_after"}
    numbers = [saved["depth"]["one_call"], saved["depth"]["recursive"], *ex["exact"], *saved["etrm_heldout"].values(),
               *saved["adaptation"].values()] + [v for m in saved["models"].values() for v in (m["exact"], m["token_acc"])]
    assert all(0 <= v <= 1 for v in numbers)
    details = json.load(open(tmp_path / "details.json"))
    for m, entry in saved["models"].items():  # each entry is one of that model's runs, its own final evaluation
        runs = [r for name, r in details["runs"].items() if teach.RUNS[name][0] == m and r["task"] == entry["task"]
                and "one_call" not in name]
        last = [[json.loads(l) for l in open(os.path.join(r["out_dir"], "metrics.jsonl")) if "eval/accuracy" in l][-1]
                for r in runs]
        assert (entry["token_acc"], entry["exact"]) in [(e["eval/accuracy"], e["eval/exact_accuracy"]) for e in last]
        assert entry["exact"] == max(r["exact_accuracy"] for name, r in details["runs"].items()
                                     if teach.RUNS[name][0] == m and r["task"] != "arc_small" and "one_call" not in name)
    assert details["runs"]["trm"]["trunk_params"] == details["runs"]["one_call"]["trunk_params"]
    assert details["etrm_heldout"]["control_has_other_tasks"]
    assert teach.main(["--report-only", "--out", str(tmp_path)]) == saved
    for png in ("teach_depth.png", "teach_extrapolation.png", "teach_models.png"):
        assert os.path.getsize(tmp_path / png) > 0
    assert len(table_rows(tmp_path)) >= 5


@pytest.mark.parametrize("script", [compare, ablate, acc_vs_aug, recursion_strip, teach])
def test_help(script, capsys):
    with pytest.raises(SystemExit) as e:
        script.main(["--help"])
    assert e.value.code == 0 and "--out" in capsys.readouterr().out
