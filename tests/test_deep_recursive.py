"""Deep recursive model tests: memory-efficient and standard modes give the same gradients and log the same
whole objective, padding gets no loss, the square-canvas check, evaluation steps, checkpoints, task
conditioning that generalises to held-out inputs, and a run through train.py / evaluate.py with only --model
changed.

Run: python -m pytest -q tests/test_deep_recursive.py   (CPU, float32, tiny configs)
Checks against: the standard mode (one graph, one backward) for the memory-efficient one (backward per
segment inside forward, scaled by forward's loss_scale): same gradients, and 1/n_outer of the activation bytes
autograd saves at the peak (counted with saved_tensors_hooks, so it runs on CPU); the training objective and
the padding rule written out by hand (per-sample mean CE over labelled cells, mean over segments); the best
accuracy a task-blind model can reach on a task that needs the puzzle's vector.
"""
import dataclasses
import json
import math
import os

import pytest
import torch

import deep_recursive as dr
from conftest import hand_train, saved_and_reloaded, tiny_batch


def tiny_config(**kw):
    base = dict(base_channels=8, latent_channels=16, n_res_blocks=1, n_inner=2, n_outer=3, eval_n_steps=4,
                puzzle_emb_ndim=16, vocab_size=12, seq_len=16, num_puzzle_identifiers=5, forward_dtype="float32")
    base.update(kw)
    return dr.Config(**base)


def grads_of(model, batch, scale):
    """One training call as train.py makes it: loss_scale passed, returned loss * scale backpropagated."""
    model.zero_grad(set_to_none=True)
    _, loss, metrics, out = model(model.initial_carry(batch), batch, loss_scale=scale)
    (loss * scale).backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    g["puzzle_emb"] = model.puzzle_emb.local_weights.grad.clone()
    return g, metrics


def test_memory_efficient_and_standard_modes_give_the_same_gradients():
    torch.manual_seed(0)
    model = dr.Model(tiny_config()).train()
    with torch.no_grad():
        model.puzzle_emb.weights.normal_()  # non-zero task vectors, so FiLM is not the identity
        for p in model.parameters():        # zero-initialised convs would hide gradient paths
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    batch = tiny_batch(B=4, L=16)
    eff, m_eff = grads_of(model, batch, 1 / 32)
    model.config.memory_efficient = False
    std, m_std = grads_of(model, batch, 1 / 32)
    assert torch.allclose(m_eff["lm_loss"], m_std["lm_loss"])
    for k in std:
        assert std[k].abs().sum() > 0, k
        err = (eff[k] - std[k]).norm() / std[k].norm()
        assert err < 1e-5, (k, err.item())


def test_total_loss_is_the_whole_objective_in_both_modes():
    """metrics["total_loss"] = the mean over segments of the per-sample mean CE over labelled cells, summed over
    the batch, in both modes; the returned loss is the last segment's share (memory-efficient) or all of it."""
    torch.manual_seed(0)
    model = dr.Model(tiny_config(n_inner=2, n_outer=3)).train()
    with torch.no_grad():
        model.puzzle_emb.weights.normal_()
        for p in model.parameters():  # zero-initialised convs would make every step's answer alike
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    batch = tiny_batch(B=4, L=16)
    labels = batch["labels"].long()
    mask = labels != -100
    segments = []
    with torch.no_grad():  # the recursion and the loss written out
        x, film = model.embed(batch["inputs"], model.puzzle_emb.weights[batch["puzzle_identifiers"].long()])
        y, z = torch.zeros(4, 12, 4, 4), None
        for _ in range(3):
            for _ in range(2):
                y, z = model.step(x, y, z, film)
            logp = y.permute(0, 2, 3, 1).reshape(4, 16, 12).log_softmax(-1)
            ce = -logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0]
            segments.append(((ce * mask).sum(-1) / mask.sum(-1)).sum().item() / 3)
    assert len(set(round(v, 4) for v in segments)) == 3  # the segments differ, so the shares are told apart
    for efficient in (True, False):
        model.config.memory_efficient = efficient
        model.zero_grad(set_to_none=True)
        _, loss, metrics, _ = model(model.initial_carry(batch), batch, loss_scale=1 / 4)
        assert math.isclose(metrics["total_loss"].item(), sum(segments), rel_tol=1e-5), (efficient, metrics, segments)
        assert math.isclose(metrics["lm_loss"].item(), sum(segments), rel_tol=1e-5)
        assert math.isclose(loss.item(), segments[-1] if efficient else sum(segments), rel_tol=1e-5), efficient


class SavedBytes:
    """saved_tensors_hooks that count the bytes autograd holds for backward: live now, and the peak."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, t):
        meter = self

        class Box:
            def __init__(self):
                self.t, self.n = t, t.numel() * t.element_size()
                meter.live += self.n
                meter.peak = max(meter.peak, meter.live)

            def __del__(self):  # autograd drops it when backward frees the graph
                meter.live -= self.n
        return Box()

    def unpack(self, box):
        return box.t


def test_memory_efficient_mode_holds_one_segment_of_activations():
    """Peak bytes saved for backward: memory-efficient = standard / n_outer (the seed's claim, made true)."""
    peaks = {}
    for eff in (True, False):
        torch.manual_seed(0)
        model = dr.Model(tiny_config(n_outer=3, memory_efficient=eff)).train()
        batch = tiny_batch(B=4, L=16)
        meter = SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            _, loss, _, _ = model(model.initial_carry(batch), batch)
        loss.backward()
        peaks[eff] = meter.peak
        assert meter.live == 0
    assert abs(peaks[True] / peaks[False] - 1 / 3) < 0.01, peaks


def test_padding_cells_get_no_loss():
    torch.manual_seed(0)
    model = dr.Model(tiny_config(n_outer=2, n_inner=1, memory_efficient=False)).train()
    batch = tiny_batch(B=4, L=16)
    _, loss, metrics, out = model(model.initial_carry(batch), batch)
    # n_outer=2: loss = mean over the 2 segments; the last segment's term is the per-sample mean softmax CE
    # over the labelled cells, summed over the batch (checked on a 1-segment model below).
    one = dr.Model(tiny_config(n_outer=1, n_inner=1, memory_efficient=False)).train()
    _, loss1, _, out1 = one(one.initial_carry(batch), batch)
    mask = batch["labels"] != -100
    ce = -out1["logits"].log_softmax(-1).gather(-1, batch["labels"].long().clamp_min(0)[..., None])[..., 0]
    assert torch.allclose(loss1, ((ce * mask).sum(-1) / mask.sum(-1)).sum(), rtol=1e-5)
    # A batch whose cells are all padding: zero loss and not one non-zero gradient.
    empty = dict(batch, labels=torch.full_like(batch["labels"], -100))
    model.zero_grad(set_to_none=True)
    _, loss, metrics, _ = model(model.initial_carry(empty), empty)
    loss.backward()
    assert loss.item() == 0 and metrics["count"].item() == 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())


def test_non_square_seq_len_is_a_clear_error():
    with pytest.raises(ValueError, match="seq_len=15"):
        dr.Model(tiny_config(seq_len=15))


def test_protocol_halts_after_one_call_and_eval_runs_eval_n_steps():
    torch.manual_seed(0)
    model = dr.Model(tiny_config(eval_n_steps=5)).eval()
    batch = tiny_batch(B=4, L=16)
    calls = []
    model.step = (lambda f: lambda *a: calls.append(1) or f(*a))(model.step)
    with torch.no_grad():
        carry, loss, metrics, out = model(model.initial_carry(batch), batch)
    assert len(calls) == 5 and carry.halted.all() and metrics["count"].item() == 4
    assert out["logits"].shape == (4, 16, 12) and out["preds"].shape == (4, 16) and "q_halt_logits" not in out
    model.train()
    calls.clear()
    carry, loss, metrics, out = model(model.initial_carry(batch), batch)
    assert len(calls) == 2 * 3 and carry.halted.all()  # n_inner x n_outer in training


def test_checkpoint_roundtrip():
    model, other = saved_and_reloaded(lambda: dr.Model(tiny_config()))
    batch = tiny_batch(B=4, L=16)
    with torch.no_grad():
        a = model(model.initial_carry(batch), batch)[3]["logits"]
        b = other(other.initial_carry(batch), batch)[3]["logits"]
    assert torch.equal(a, b)


def recolour_batch(B, seed, L=16, bg=0.3):
    """Every non-background cell takes the puzzle's colour (id 1..4 -> token 4, 6, 8, 10), background (token 2)
    stays: the same input grid maps to a different output for each puzzle id, so only the task vector can tell."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(3, 12, (B, L), generator=g, dtype=torch.int32)
    inputs[torch.rand(B, L, generator=g) < bg] = 2
    ids = torch.randint(1, 5, (B,), generator=g, dtype=torch.int32)
    labels = torch.where(inputs == 2, 2, 2 + 2 * ids[:, None]).int()
    return dict(inputs=inputs, labels=labels, puzzle_identifiers=ids)


def test_task_conditioning_learns_and_generalises_to_held_out_inputs():
    """30 steps on fresh random grids, then 256 grids never seen: cell accuracy must beat by far the best any
    task-blind predictor can do (background right, every other cell the most common puzzle colour: ~0.48).
    Measured: ~0.95 with FiLM, ~0.48 with the task vector cut off."""
    torch.manual_seed(0)
    model = dr.Model(tiny_config(n_inner=1, n_outer=2, eval_n_steps=2)).train()
    losses = hand_train(model, [recolour_batch(8, seed) for seed in range(30)], lr=1e-2, emb_lr=0.1)
    test = recolour_batch(256, seed=10_000)
    with torch.no_grad():
        preds = model.eval()(model.initial_carry(test), test)[3]["preds"]
    accuracy = (preds == test["labels"]).float().mean().item()
    shape = test["inputs"] != 2
    blind = ((~shape).sum() + test["labels"][shape].bincount().max()).item() / shape.numel()
    assert accuracy > blind + 0.3, (accuracy, blind)
    assert losses[-1] < 0.25 * losses[0], losses[::10]


def test_train_and_evaluate_run_it_with_only_model_changed(tmp_path):
    """Both modes through train.py log the same loss curve (the whole objective), and evaluate.py rebuilds the
    model from the checkpoint alone and scores the same test batches the same."""
    data, train, evaluate = pytest.importorskip("data"), pytest.importorskip("train"), pytest.importorskip("evaluate")
    toy = data.build_toy(str(tmp_path / "toy"), num_train=256, num_test=64)  # seq_len 16: a 4x4 canvas
    logged, results = {}, {}
    for efficient in (True, False):
        out = tmp_path / f"run-{efficient}"
        results[efficient] = train.main([
            "--model", "deep_recursive", "--out", str(out), "--config", f"data={toy}", "base_channels=8",
            "latent_channels=16", "n_res_blocks=1", "puzzle_emb_ndim=16", "n_inner=1", "n_outer=2", "eval_n_steps=3",
            f"memory_efficient={efficient}", "global_batch_size=16", "max_steps=6", "log_interval=2", "eval_batches=2",
            "ema=True"])
        logged[efficient] = [r["loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r]
    assert results[True]["step"] == 6 and len(logged[True]) == 3
    assert logged[True] == pytest.approx(logged[False], rel=1e-4), logged
    result = results[True]
    again = evaluate.main(["--checkpoint", os.path.join(result["out_dir"], "checkpoint.pt"), "--max-batches", "2"])
    assert abs(again["accuracy"] - result["accuracy"]) < 1e-6, (again, result)


def test_training_recipe_names_train_config_keys_with_their_types():
    train = pytest.importorskip("train")
    assert dr.TRAIN_DEFAULTS == {"ema_rate": 0.9995, "grad_clip": 1.0}
    defaults = {f.name: f.default for f in dataclasses.fields(train.TrainConfig)}
    for key, value in dr.TRAIN_DEFAULTS.items():
        assert key in defaults and type(value) is type(defaults[key]) and value != defaults[key], key
