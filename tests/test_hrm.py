"""HRM model tests: parameter count, forward/backward, ACT with the Q-learning target, the one-step
gradient, checkpoints, the 2-D mixer, and a tiny HRM that learns the toy task through train.py /
evaluate.py.

Run: python -m pytest -q tests/test_hrm.py   (CPU, float32, well under a minute)
Checks against: the reference's parameter count (27,276,290 at the ARC config); HRM's
one-step-gradient schedule written out by hand (the last L and H update alone, started from the
no-grad states, must give the same gradients, and the autograd graph must not grow with the
cycles); the ACT rules (Q-learning halting in training, exactly halt_max_steps in evaluation).
"""
import os

import pytest
import torch

import hrm
import trm
from conftest import hand_train, saved_and_reloaded, tiny_batch


def tiny_config(**kw):
    base = dict(hidden_size=32, num_heads=2, H_cycles=2, L_cycles=2, H_layers=1, L_layers=1,
                vocab_size=12, seq_len=8, num_puzzle_identifiers=5, puzzle_emb_ndim=32,
                halt_max_steps=4, forward_dtype="float32")
    base.update(kw)
    return hrm.Config(**base)


def test_defaults_and_parameter_count_match_reference_at_arc_config():
    c = hrm.Config(num_puzzle_identifiers=3, forward_dtype="float32")
    got = (c.hidden_size, c.H_cycles, c.L_cycles, c.H_layers, c.L_layers, c.no_ACT_continue)
    assert got == (512, 2, 2, 4, 4, False)
    model = hrm.Model(c)
    assert sum(p.numel() for p in model.parameters()) == 27_276_290
    assert model.puzzle_emb_len == 1  # ceil(512 / 512): HRM has no puzzle_emb_len key


def test_forward_shapes_and_backward():
    model = hrm.Model(tiny_config()).train()
    batch = tiny_batch()
    carry, loss, metrics, out = model(model.initial_carry(batch), batch)
    assert out["logits"].shape == (6, 8, 12) and out["preds"].shape == (6, 8)
    assert out["q_halt_logits"].shape == out["q_continue_logits"].shape == (6,)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "_level" in n)
    assert model.puzzle_emb.local_weights.grad.abs().sum() > 0


def test_bootstrapped_q_target_only_in_training():
    model = hrm.Model(tiny_config())
    batch = tiny_batch()
    _, loss_tr, metrics, out = model.train()(model.initial_carry(batch), batch)
    assert "target_q_continue" in out and "q_continue_loss" in metrics
    assert ((out["target_q_continue"] > 0) & (out["target_q_continue"] < 1)).all()
    _, _, metrics, out = model.eval()(model.initial_carry(batch), batch)
    assert "target_q_continue" not in out and "q_continue_loss" not in metrics


def test_halting_q_learning_in_training_and_fixed_steps_in_eval():
    torch.manual_seed(0)
    model = hrm.Model(tiny_config(halt_max_steps=5, halt_exploration_prob=0.0))
    batch = tiny_batch()
    with torch.no_grad():
        model.q_head.bias.copy_(torch.tensor([1.0, 2.0]))  # 0 < q_halt < q_continue: no halt
    carry, _, _, _ = model.train()(model.initial_carry(batch), batch)
    assert not carry.halted.any()
    with torch.no_grad():
        model.q_head.bias.copy_(torch.tensor([2.0, 1.0]))  # q_halt > q_continue: halt
    carry, _, _, _ = model(model.initial_carry(batch), batch)
    assert carry.halted.all()
    model.eval()  # eval ignores Q: exactly halt_max_steps calls
    carry = model.initial_carry(batch)
    for step in range(1, 6):
        carry, _, metrics, _ = model(carry, batch)
        assert bool(carry.halted.all()) == (step == 5)
        assert metrics["count"].item() == (6 if step == 5 else 0)


def graph_size(t):
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize("cycles", [(1, 1), (2, 3), (3, 2)])
def test_one_step_gradient(cycles):
    """Gradients equal those of the last L and H update alone from the no-grad states; the graph
    does not grow with H_cycles x L_cycles."""
    H, Lc = cycles
    torch.manual_seed(0)
    model = hrm.Model(tiny_config(H_cycles=H, L_cycles=Lc)).train()
    x = torch.randn(2, 9, 32, requires_grad=True)  # [B, P+L, D]
    z_H0, z_L0 = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    w = torch.randn(2, 9, 32)
    z_H, _ = model.reason(z_H0, z_L0, x)
    (z_H * w).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    got_x = x.grad.clone()
    model.zero_grad()
    x.grad = None

    cos, sin = model.rope()
    with torch.no_grad():  # written out: H*Lc - 1 L updates and H - 1 H updates, interleaved
        zh, zl = z_H0, z_L0
        for i in range(H * Lc - 1):
            zl = model.L_level(zl, zh + x, cos, sin)
            if (i + 1) % Lc == 0:
                zh = model.H_level(zh, zl, cos, sin)
    zl = model.L_level(zl, zh + x, cos, sin)
    zh = model.H_level(zh, zl, cos, sin)
    assert torch.allclose(zh, z_H, atol=1e-6)
    (zh * w).sum().backward()
    assert set(got) == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got[n], p.grad, atol=1e-6, rtol=1e-5), n
    assert torch.allclose(got_x, x.grad, atol=1e-6)

    one = hrm.Model(tiny_config(H_cycles=1, L_cycles=1))
    assert graph_size(z_H) == graph_size(one.reason(z_H0, z_L0, x)[0])


def test_checkpoint_roundtrip_and_reference_keys():
    model, other = saved_and_reloaded(lambda: hrm.Model(tiny_config()))
    batch = tiny_batch()
    a = model(model.initial_carry(batch), batch)[3]
    b = other(other.initial_carry(batch), batch)[3]
    for k in ("logits", "q_halt_logits", "q_continue_logits"):
        assert torch.equal(a[k], b[k]), k
    # The reference's keys: wrapped in the loss head (model.inner.) and maybe compiled (_orig_mod.).
    ref = {"_orig_mod.model.inner." + k: v for k, v in model.state_dict().items()}
    assert "_orig_mod.model.inner.H_level.layers.0.self_attn.qkv_proj.weight" in ref
    third = hrm.Model(tiny_config())
    third.load_state_dict(hrm.convert_reference_state_dict(ref))
    assert all(torch.equal(v, third.state_dict()[k]) for k, v in model.state_dict().items())
    assert hrm.convert_reference_state_dict is trm.convert_reference_state_dict


def test_tiny_hrm_learns_a_fixed_batch():
    """Overfitting 8 fixed samples (a per-puzzle recolouring) with Adam: the loss falls by 4x."""
    torch.manual_seed(0)
    model = hrm.Model(tiny_config(halt_max_steps=1)).train()
    batch = tiny_batch(B=8)
    recoloured = (batch["inputs"] + batch["puzzle_identifiers"][:, None]) % 12
    batch["labels"] = torch.where(batch["labels"] == -100, -100, recoloured)
    losses = hand_train(model, [batch] * 60)
    assert losses[-1] < 0.25 * losses[0], losses[::10]


@pytest.mark.slow
def test_train_and_evaluate_run_hrm_with_only_model_changed(tmp_path):
    data, train = pytest.importorskip("data"), pytest.importorskip("train")
    evaluate = pytest.importorskip("evaluate")
    toy = data.build_toy(str(tmp_path / "toy"), num_train=256, num_test=64)
    result = train.main([
        "--model", "hrm", "--out", str(tmp_path / "run"), "--config", f"data={toy}",
        "hidden_size=32", "num_heads=2", "H_layers=1", "L_layers=1", "halt_max_steps=2",
        "puzzle_emb_ndim=32", "global_batch_size=16", "max_steps=6", "log_interval=2",
        "eval_batches=2", "ema=True"])
    assert result["step"] == 6
    # evaluate.py rebuilds the model from the checkpoint alone and scores the same batches the same.
    checkpoint = os.path.join(result["out_dir"], "checkpoint.pt")
    again = evaluate.main(["--checkpoint", checkpoint, "--max-batches", "2"])
    assert abs(again["accuracy"] - result["accuracy"]) < 1e-6, (again, result)


def test_mixer_in_both_levels_and_exactly_the_paper_model_at_init():
    """conv_kernel reaches the blocks of H_level and L_level (trm.Block); zero-initialised, the
    model computes exactly what the paper's does, and the conv weights get gradients."""
    torch.manual_seed(0)
    paper = hrm.Model(tiny_config(seq_len=9)).eval()
    torch.manual_seed(0)
    mixer = hrm.Model(tiny_config(seq_len=9, conv_kernel=3)).eval()
    assert set(mixer.state_dict()) - set(paper.state_dict()) == {
        "H_level.layers.0.mlp.conv.weight", "L_level.layers.0.mlp.conv.weight"}
    batch = tiny_batch(L=9)
    a = paper(paper.initial_carry(batch), batch)[3]
    b = mixer(mixer.initial_carry(batch), batch)[3]
    assert torch.equal(a["logits"], b["logits"])
    assert torch.equal(a["q_halt_logits"], b["q_halt_logits"])
    mixer.train()(mixer.initial_carry(batch), batch)[1].backward()
    convs = [p for n, p in mixer.named_parameters() if n.endswith("conv.weight")]
    assert all(p.grad.abs().sum() > 0 for p in convs)
