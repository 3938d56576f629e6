"""evaluate.py tests: ARC voting, pass@K and the submission on hand-made predictions; a checkpoint scored on
another folder and with more recursion at test time than in training.

Run: python -m pytest -q tests/test_evaluate.py   (CPU, seconds)
Checks against: the voting and scoring rules (evaluate.py docstring) worked out by hand for a two-task set:
predictions are made in augmented space, inverted, voted by (count, mean sigmoid q), scored macro.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import data
import draw
import evaluate
import train
import trm
from puzzles import grids

A_IN, A_OUT, A_WRONG = [[1, 2, 0], [0, 3, 4]], [[4, 3, 0], [0, 2, 1]], [[4, 4, 4], [0, 2, 1]]
B_IN1, B_OUT1 = [[5]], [[6]]
B_IN2, B_OUT2 = [[7, 7]], [[8, 8]]


def augment(grid, t, cmap):
    return grids.dihedral(np.asarray(cmap, dtype=np.uint8)[np.asarray(grid, dtype=np.uint8)], t)


def make_dataset(tmp_path):
    cmap = [0, 2, 3, 4, 5, 6, 7, 8, 9, 1]
    names = ["<blank>", "A", grids.aug_name("A", 1, cmap), grids.aug_name("A", 6, cmap), "B"]
    tests = {"A": {"train": [{"input": A_IN, "output": A_OUT}], "test": [{"input": A_IN, "output": A_OUT}]},
             "B": {"train": [{"input": B_IN1, "output": B_OUT1}],
                   "test": [{"input": B_IN1, "output": B_OUT1}, {"input": B_IN2, "output": B_OUT2}]}}
    json.dump(names, open(tmp_path / "identifiers.json", "w"))
    json.dump(tests, open(tmp_path / "test_puzzles.json", "w"))
    return names, cmap


def encoded(inp, out):
    i, o = grids.encode_grid_pair(np.asarray(inp, dtype=np.uint8), np.asarray(out, dtype=np.uint8))
    return torch.as_tensor(i.astype(np.int64)), torch.as_tensor(o.astype(np.int64))


def test_vote_pass_at_k_and_submission(tmp_path):
    names, cmap = make_dataset(tmp_path)
    rows = []  # (identifier, input grid in that version's space, predicted grid in that space, q)
    rows.append((1, A_IN, A_WRONG, 3.0))                                       # identity: wrong, confident
    rows.append((2, augment(A_IN, 1, cmap), augment(A_OUT, 1, cmap), -1.0))  # rot90 version: right
    rows.append((3, augment(A_IN, 6, cmap), augment(A_OUT, 6, cmap), -2.0))  # transpose version: right
    rows.append((4, B_IN1, B_OUT1, 0.0))                                       # B test 1: right
    rows.append((4, B_IN2, [[8, 1]], 0.0))                                     # B test 2: wrong
    rows.append((0, B_IN2, B_OUT2, 9.0))                                       # padding row: ignored
    inputs, preds = zip(*(encoded(i, p) for _, i, p, _ in rows))
    voter = evaluate.ARCVoter(str(tmp_path))
    voter.update(torch.stack(inputs), torch.tensor([r[0] for r in rows]), torch.stack(preds),
                 torch.tensor([r[3] for r in rows]))
    res = voter.result()
    # A: the right grid has 2 votes against 1 (majority beats the confident wrong one) -> 1.0; B: 1 of 2 -> 0.5
    assert res["ARC/pass@1"] == 0.75 and res["ARC/pass@2"] == 0.75
    assert res["ARC/pass@2_micro"] == 2 / 3 and res["ARC/pass@2_strict"] == 0.5
    sub = res["submission"]
    assert sub["A"][0] == {"attempt_1": A_OUT, "attempt_2": A_WRONG}
    assert len(sub["B"]) == 2 and sub["B"][1]["attempt_1"] == [[8, 1]] == sub["B"][1]["attempt_2"]


def test_ties_broken_by_mean_q_and_missing_inputs_get_fallback(tmp_path):
    make_dataset(tmp_path)
    rows = [(1, A_IN, A_WRONG, 2.0), (1, A_IN, A_OUT, -2.0)]  # one vote each: higher q wins
    inputs, preds = zip(*(encoded(i, p) for _, i, p, _ in rows))
    voter = evaluate.ARCVoter(str(tmp_path))
    voter.update(torch.stack(inputs), torch.tensor([1, 1]), torch.stack(preds), torch.tensor([2.0, -2.0]))
    res = voter.result()
    assert res["ARC/pass@1"] == 0.0 and res["ARC/pass@2"] == 0.5  # A right at rank 2; B has no prediction
    assert res["submission"]["B"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}] * 2


def test_render_task_writes_png(tmp_path):
    task = {"train": [{"input": A_IN, "output": A_OUT}], "test": [{"input": A_IN, "output": A_OUT}]}
    draw.render_task(task, [{"attempt_1": A_OUT, "attempt_2": A_WRONG}], str(tmp_path / "t.png"), "A")
    assert (tmp_path / "t.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny TRM trained 2 steps on toy, and two more toy folders: same layout, and a longer seq_len."""
    root = tmp_path_factory.mktemp("run")
    toy = data.build_toy(str(root / "toy"), num_train=256, num_test=64)
    data.build_toy(str(root / "toy_b"), num_train=64, num_test=48, seed=1)
    data.build_toy(str(root / "wide"), num_train=64, num_test=16, seq_len=20, length=14)
    train.main(["--model", "trm", "--out", str(root / "run"), "--config", f"data={toy}", "hidden_size=32", "num_heads=2",
                "L_layers=1", "H_cycles=1", "L_cycles=1", "halt_max_steps=2", "puzzle_emb_ndim=32", "puzzle_emb_len=1",
                "global_batch_size=16", "max_steps=2", "eval_batches=1"])
    return root


def test_deeper_recursion_at_test_time_and_another_folder(trained):
    run = str(trained / "run")  # a run folder stands for its checkpoint.pt
    base = evaluate.main(["--checkpoint", run, "--max-batches", "1"])
    deep = evaluate.main(["--checkpoint", run, "--max-batches", "1", "--config", "halt_max_steps=5", "H_cycles=3"])
    assert base["steps"] == 2 and deep["steps"] == 5  # every sample ran the test-time depth, not the trained one
    assert base["count"] == deep["count"] == 16
    other = evaluate.main(["--checkpoint", run, "--data", str(trained / "toy_b"), "--batch-size", "48"])
    assert other["count"] == 12  # the other folder's whole test split: its 12 queries
    with pytest.raises(SystemExit, match=r"wide has seq_len=20, but .*run was trained with seq_len=16"):
        evaluate.main(["--checkpoint", run, "--data", str(trained / "wide")])
    with pytest.raises(SystemExit, match=r"--config hidden_size cannot change at evaluation"):
        evaluate.main(["--checkpoint", run, "--config", "hidden_size=64"])
    with pytest.raises(SystemExit, match=r"'halt_max_steps' for model 'trm' must be an integer >= 1, got 0"):
        evaluate.main(["--checkpoint", run, "--config", "halt_max_steps=0"])


def test_a_canvas_free_model_is_rebuilt_for_another_canvas(trained, monkeypatch):
    """--data of another seq_len: refused for a model tied to its canvas, scored with the same weights
    for one that sets any_canvas (TRM with RoPE has no weight that depends on seq_len)."""
    run, wide = str(trained / "run"), str(trained / "wide")
    with pytest.raises(SystemExit, match="wide has seq_len=20, but .* seq_len=16; the model is not"):
        evaluate.main(["--checkpoint", run, "--data", wide])
    monkeypatch.setattr(trm.Model, "any_canvas", True, raising=False)
    result = evaluate.main(["--checkpoint", run, "--data", wide, "--batch-size", "16"])
    assert result["count"] == 4 and 0 <= result["accuracy"] <= 1  # 16 examples, 4 queries


def test_show_draws_every_step(trained, tmp_path, capsys, monkeypatch):
    run, out = str(trained / "run"), tmp_path / "show"
    shown = evaluate.main(["--checkpoint", run, "--show", "2", "--out", str(out),
                           "--config", "halt_max_steps=3"])
    assert shown["steps"] == [3, 3]  # one answer per ACT step
    text = capsys.readouterr().out
    assert text.count("test puzzle") == 2 and text.count("step 3") == 2 and "target" in text
    assert text.count("\033[48;2;") >= 2 * 5 * 14  # 2 puzzles x 5 panels x 14 coloured cells
    assert Image.open(out / "show.gif").n_frames == 3 and Image.open(out / "show.png").size[0] > 400
    real = trm.Model.forward

    def forward(self, carry, batch, *args, **kwargs):  # a model that reports 2 steps per call
        carry, loss, metrics, outputs = real(self, carry, batch, *args, **kwargs)
        return carry, loss, metrics, {**outputs, "step_preds": torch.stack([outputs["preds"]] * 2, 1)}
    monkeypatch.setattr(trm.Model, "forward", forward)
    assert evaluate.main(["--checkpoint", run, "--show", "1", "--out", str(out)])["steps"] == [4]
    assert Image.open(out / "show.gif").n_frames == 4
