"""PRR model tests: the Best-of-K loss and the branch metrics written out, the soft-min's limits,
the two communication schedules and their gradients, the protocol, checkpoints, a scorer that must
learn to pick the right branch, the 2-D mixer, and a tiny PRR that learns the toy task through
train.py / evaluate.py.

Run: python -m pytest -q tests/test_prr.py   (CPU, float32, well under a minute)
Checks against: the public PRR code's formulas written out by hand (per-branch mean stablemax CE,
soft-min, scorer CE toward the lowest-loss branch, mean off-diagonal cosine of the position-mean
latents), the oracle and scorer metrics computed by hand from the branch predictions, and branch 0 /
chance for the scorer.
"""
import dataclasses
import json
import math

import pytest
import torch

import prr
import trm
from conftest import tiny_batch
from kernels.cross_entropy import cross_entropy_reference


def tiny_config(**kw):
    base = dict(hidden_size=32, num_heads=2, num_layers=1, num_branches=4, num_steps=4,
                grad_steps=2, vocab_size=12, seq_len=8, num_puzzle_identifiers=5,
                puzzle_emb_ndim=32, puzzle_emb_len=2, forward_dtype="float32")
    base.update(kw)
    return prr.Config(**base)


def test_defaults_and_parameter_count():
    c = prr.Config()
    got = (c.num_branches, c.num_steps, c.grad_steps, c.hidden_size, c.num_heads, c.num_layers)
    assert got == (8, 8, 2, 256, 4, 2)
    assert (c.comm_alpha, c.comm_temp, c.comm_interval, c.init_noise_std) == (0.1, 1.0, 2, 0.1)
    assert (c.tau, c.scorer_weight, c.diversity_weight, c.loss_type) == (0.1, 0.5, 0.1, "stablemax")
    assert (c.puzzle_emb_ndim, c.puzzle_emb_len, c.public_schedule) == (256, 16, False)
    model = prr.Model(prr.Config(num_puzzle_identifiers=3, forward_dtype="float32"))
    # the public config's trunk: ~1.7M, not its README's 3M
    assert sum(p.numel() for p in model.parameters()) == 1_745_153
    assert model.core.layers[0].mlp.down_proj.weight.shape == (256, 768)
    assert model.scorer.fc2.weight.abs().sum() == 0 and model.scorer.fc2.bias.item() == -5


@pytest.mark.parametrize("train_mode", [True, False])
def test_forward_shapes_and_protocol(train_mode):
    model = prr.Model(tiny_config()).train(train_mode)
    batch = tiny_batch()
    carry = model.initial_carry(batch)
    assert carry.halted.all()
    carry, loss, metrics, out = model(carry, batch)
    assert carry.halted.all() and loss.ndim == 0
    assert out["logits"].shape == (6, 8, 12) and out["preds"].shape == (6, 8)
    assert out["q_halt_logits"].shape == (6,)
    assert out["scores"].shape == (6, 4) and out["branch_preds"].shape == (6, 4, 8)
    assert out["oracle_preds"].shape == (6, 8)
    pick = out["scores"].argmax(-1)
    assert torch.equal(out["preds"], out["branch_preds"][torch.arange(6), pick])  # scorer's choice
    assert torch.equal(out["q_halt_logits"], out["scores"][torch.arange(6), pick])
    assert out["oracle_q_halt_logits"].shape == (6,)
    for k in ("count", "accuracy", "exact_accuracy", "lm_loss", "scorer_loss", "diversity_loss",
              "oracle_accuracy", "oracle_exact_accuracy", "scorer_accuracy",
              "scorer_exact_accuracy", "scorer_picks_best", "branch_accuracy_spread",
              "mean_branch_diversity"):
        assert k in metrics, k
    assert metrics["count"].item() == 6
    assert all(not v.requires_grad for v in out.values())


def test_loss_matches_the_formula_written_out():
    torch.manual_seed(0)
    model = prr.Model(tiny_config(tau=0.3, scorer_weight=0.7, diversity_weight=0.2)).eval()
    with torch.no_grad():
        model.scorer.fc2.weight.normal_()  # distinct scores: the scorer CE is not the uniform log K
    batch = tiny_batch()
    batch["labels"][0] = -100  # a padding row: no label, no scorer target
    _, loss, metrics, out = model(model.initial_carry(batch), batch)
    with torch.no_grad():
        z, s = model.rollout(batch["inputs"], batch["puzzle_identifiers"])
        logits = model.decode(z)
    B, K = s.shape
    total = 0.0
    for b in range(B):
        lab = batch["labels"][b]
        n = (lab != -100).sum().item()
        l = [cross_entropy_reference(logits[b, k], lab).sum().item() / max(n, 1) for k in range(K)]
        main = -0.3 * math.log(sum(math.exp(-lk / 0.3) for lk in l)) if n else 0.0
        kstar = min(range(K), key=lambda k: l[k])
        scorer = -(s[b, kstar] - torch.logsumexp(s[b], 0)).item() if n else 0.0
        u = [z[b, k].mean(0) for k in range(K)]
        cos = [torch.cosine_similarity(u[j], u[k], 0).item()
               for j in range(K) for k in range(K) if j != k]
        total += main + 0.7 * scorer + 0.2 * sum(cos) / len(cos)
    assert math.isclose(loss.item(), total, rel_tol=1e-5)
    assert metrics["count"].item() == B - 1
    # The branch metrics from the branch predictions, by hand (row 0 has no label: counts nowhere).
    want = dict.fromkeys(("scorer_accuracy", "scorer_exact_accuracy", "oracle_accuracy",
                          "oracle_exact_accuracy", "scorer_picks_best", "branch_accuracy_spread"),
                         0.0)
    for b in range(1, B):
        lab = batch["labels"][b]
        mask = lab != -100
        acc = [((out["branch_preds"][b, k] == lab) & mask).sum().item() / mask.sum().item()
               for k in range(K)]
        l = [cross_entropy_reference(logits[b, k], lab).sum().item() for k in range(K)]
        pick = int(s[b].argmax())
        want["scorer_accuracy"] += acc[pick]
        want["scorer_exact_accuracy"] += acc[pick] == 1.0
        want["oracle_accuracy"] += max(acc)
        want["oracle_exact_accuracy"] += max(acc) == 1.0
        want["scorer_picks_best"] += pick == min(range(K), key=lambda k: l[k])
        want["branch_accuracy_spread"] += max(acc) - min(acc)
    for k, v in want.items():
        assert math.isclose(metrics[k].item(), v, abs_tol=1e-5), (k, metrics[k], v)
    assert math.isclose(metrics["accuracy"].item(), want["scorer_accuracy"], abs_tol=1e-5)
    assert want["oracle_accuracy"] > want["scorer_accuracy"]  # the batch tells oracle from scorer


def test_k1_without_communication_or_diversity_is_plain_cross_entropy():
    model = prr.Model(tiny_config(num_branches=1, comm_interval=0, diversity_weight=0.0)).eval()
    batch = tiny_batch()
    _, loss, metrics, out = model(model.initial_carry(batch), batch)
    every = torch.ones(6, dtype=torch.bool)
    ce, _, _ = trm.token_loss_and_metrics(out["logits"], batch["labels"], every, "stablemax")
    assert math.isclose(loss.item(), ce.item(), rel_tol=1e-6)
    assert metrics["scorer_loss"].item() == 0 and metrics["diversity_loss"].item() == 0
    assert metrics["oracle_exact_accuracy"] == metrics["exact_accuracy"]
    assert metrics["scorer_picks_best"] == 6
    # With one branch the exchange is the identity, so switching communication on changes nothing.
    on = prr.Model(tiny_config(num_branches=1, comm_interval=1, comm_alpha=0.5,
                               diversity_weight=0.0)).eval()
    on.load_state_dict(model.state_dict())
    assert torch.allclose(on(on.initial_carry(batch), batch)[1], loss, rtol=1e-6)


def test_soft_min_limits_and_gradient():
    l = torch.tensor([[0.9, 0.3, 0.5, 2.0], [4.0, 4.0, 1e3, 3.5]])
    assert torch.allclose(prr.soft_min(l, 1e-4), l.min(-1).values, atol=1e-3)
    assert torch.all(prr.soft_min(l, 0.1) <= l.min(-1).values)  # a soft min lies below the min
    big = prr.soft_min(l[:1], 1e4)  # τ -> inf: mean - τ log K
    assert math.isclose(big.item(), l[0].mean().item() - 1e4 * math.log(4), rel_tol=1e-5)
    l.requires_grad_(True)
    prr.soft_min(l, 0.1).sum().backward()
    assert torch.allclose(l.grad, torch.softmax(-l.detach() / 0.1, -1), atol=1e-6)
    assert torch.isfinite(prr.soft_min(torch.tensor([[1e4, 2e4]]), 1e-3)).all()


def test_communication_alpha_zero_and_one():
    torch.manual_seed(0)
    z, s = torch.randn(3, 4, 5, 8), torch.randn(3, 4)
    model = prr.Model(tiny_config(comm_alpha=0.0, comm_temp=0.5))
    assert torch.equal(model.communicate(z, s), z)
    model.config.comm_alpha = 1.0
    w = torch.softmax(s / 0.5, -1)
    mean = sum(w[:, k, None, None] * z[:, k] for k in range(4))  # [3, 5, 8]
    mixed = model.communicate(z, s)
    for k in range(4):
        assert torch.allclose(mixed[:, k], mean, atol=1e-6)


def test_exchange_schedules():
    model = prr.Model(tiny_config(num_steps=8, grad_steps=2, comm_interval=2))
    # the last exchange lies inside the grad window
    assert [t for t in range(8) if model.exchanges_after(t)] == [0, 2, 4, 6]
    model.config.public_schedule = True
    assert [t for t in range(8) if model.exchanges_after(t)] == [1, 3, 5]  # public: all no_grad
    model.config.comm_interval = 0
    assert not any(model.exchanges_after(t) for t in range(8))


def record_core_calls(model):
    calls = []
    forward = model.core.forward

    def spy(h, injection, cos=None, sin=None):
        out = forward(h, injection, cos, sin)
        calls.append((h.shape[0], torch.is_grad_enabled(), out.requires_grad))
        return out
    model.core.forward = spy
    return calls


@pytest.mark.parametrize("public", [False, True])
def test_gradient_window_branch_vectors_and_communication(public):
    torch.manual_seed(0)
    model = prr.Model(tiny_config(num_steps=4, grad_steps=2, public_schedule=public,
                                  scorer_weight=0.0, diversity_weight=0.0)).train()
    calls = record_core_calls(model)
    batch = tiny_batch()
    _, loss, _, _ = model(model.initial_carry(batch), batch)
    # One call per step with all B*K sequences (no loop over branches); the first S - grad_steps
    # build no graph.
    assert calls == [(6 * 4, False, False)] * 2 + [(6 * 4, True, True)] * 2
    loss.backward()
    scorer_grad = model.scorer.fc2.weight.grad
    # S=4, c=2: public exchanges after step 1 only (no_grad); ours after 0 and 2 (2 under grad).
    if public:  # the public defects: b_k never learn, and the main loss never reaches the scorer
        assert model.branch_init.grad is None
        assert scorer_grad is None or scorer_grad.abs().sum() == 0
    else:  # defaults: b_k reach the gradient window; the exchange after step S-2 is differentiable
        assert model.branch_init.grad.abs().sum() > 0
        assert scorer_grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.core.parameters())


def test_grad_steps_equal_to_num_steps_trains_inits_even_in_public_schedule():
    model = prr.Model(tiny_config(num_steps=3, grad_steps=3, public_schedule=True)).train()
    batch = tiny_batch()
    model(model.initial_carry(batch), batch)[1].backward()
    assert model.branch_init.grad.abs().sum() > 0  # public code: inits learn only if grad_steps = S


def test_noise_only_in_training_and_state_dict_round_trip():
    torch.manual_seed(0)
    model = prr.Model(tiny_config())
    batch = tiny_batch()
    with torch.no_grad():
        model.puzzle_emb.weights.normal_()
        model.scorer.fc2.weight.normal_()
        a = model.eval()(model.initial_carry(batch), batch)
        b = model(model.initial_carry(batch), batch)
        assert torch.equal(a[3]["logits"], b[3]["logits"])  # eval: no noise, deterministic
        t1 = model.train()(model.initial_carry(batch), batch)[3]["scores"]
        t2 = model(model.initial_carry(batch), batch)[3]["scores"]
        assert not torch.equal(t1, t2)  # training: fresh N(0, σ²) on the inits each call
    torch.manual_seed(1)
    other = prr.Model(tiny_config())
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        c = other.eval()(other.initial_carry(batch), batch)
    assert torch.equal(c[1], a[1]) and torch.equal(c[3]["logits"], a[3]["logits"])
    assert "puzzle_emb.weights" in model.state_dict() and "branch_init" in model.state_dict()


def test_scorer_learns_to_pick_the_right_branch():
    """Branches that differ by construction: the trunk is frozen (no noise, no exchange), and each
    sample's labels are the answer of branch (puzzle id mod K). Trained alone on its CE target for
    30 steps, the scorer must pick that branch on held-out inputs far more often than branch 0 (or
    any constant choice) is right. Measured: picks the lowest-loss branch ~0.98 of the time, exact
    ~1.0; a constant scorer: ~0.25."""
    torch.manual_seed(0)
    K = 4
    model = prr.Model(tiny_config(num_branches=K, comm_interval=0, init_noise_std=0.0,
                                  diversity_weight=0.0)).eval()
    with torch.no_grad():
        model.puzzle_emb.weights.normal_()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("scorer."))

    def branch_task(B, seed):
        batch = tiny_batch(B=B, seed=seed)
        with torch.no_grad():
            preds = model(model.initial_carry(batch), batch)[3]["branch_preds"]  # [B, K, L]
        batch["labels"] = preds[torch.arange(B), batch["puzzle_identifiers"].long() % K].int()
        return batch

    opt = torch.optim.Adam(model.scorer.parameters(), lr=1e-2)
    for step in range(30):
        batch = branch_task(16, seed=step)
        model(model.initial_carry(batch), batch)[1].backward()
        opt.step()
        opt.zero_grad()
    test = branch_task(128, seed=10_000)
    with torch.no_grad():
        _, _, metrics, out = model(model.initial_carry(test), test)
    exact = {k: (out["branch_preds"][:, k] == test["labels"]).all(-1).float().mean().item()
             for k in range(K)}
    assert max(exact.values()) < 0.6  # the branches differ: no single branch answers most samples
    assert metrics["oracle_exact_accuracy"].item() == 128  # and one of them always does
    scorer_exact = metrics["exact_accuracy"].item() / 128
    assert scorer_exact > exact[0] + 0.3 and scorer_exact > 0.8, (scorer_exact, exact)
    assert metrics["scorer_picks_best"].item() / 128 > 0.8, metrics["scorer_picks_best"]


@pytest.mark.slow
def test_tiny_prr_learns_toy_task(tmp_path):
    """Through train.main and evaluate.main on a small toy (2 rules, 6 tokens): the loss falls and
    the scorer's pick is right, in training and in evaluate.py from the checkpoint alone."""
    import data
    import evaluate
    import train
    toy = data.build_toy(str(tmp_path / "toy"), num_train=1000, num_test=64, num_rules=2, length=6,
                         seq_len=8)
    out = tmp_path / "run"
    result = train.main([
        "--model", "prr", "--out", str(out), "--config", f"data={toy}", "hidden_size=32",
        "num_heads=2", "num_layers=1", "num_branches=3", "num_steps=3", "grad_steps=2",
        "puzzle_emb_ndim=32", "puzzle_emb_len=1", "global_batch_size=16", "lr=3e-3",
        "lr_warmup_steps=10", "weight_decay=0.01", "puzzle_emb_weight_decay=0.01", "ema=False",
        "max_steps=80", "eval_interval=100000", "log_interval=10"])
    rows = [json.loads(line) for line in open(out / "metrics.jsonl") if '"loss"' in line]
    assert rows[-1]["lm_loss"] < 0.6 * rows[0]["lm_loss"], rows
    assert result["exact_accuracy"] >= 0.9, result
    again = evaluate.main(["--checkpoint", str(out / "checkpoint.pt"), "--max-batches", "1"])
    assert again["count"] > 0 and again["exact_accuracy"] >= 0.9


def test_training_recipe_names_train_config_keys_with_their_types():
    train = pytest.importorskip("train")
    assert prr.TRAIN_DEFAULTS == {"global_batch_size": 256}
    defaults = {f.name: f.default for f in dataclasses.fields(train.TrainConfig)}
    for key, value in prr.TRAIN_DEFAULTS.items():
        assert key in defaults and type(value) is type(defaults[key]), key
        assert value != defaults[key], key


def test_mixer_reaches_the_shared_core_and_is_exactly_the_plain_core_at_init():
    """prr's conv_kernel builds trm.py's grid mixer into the shared core (prefix slots left out);
    zero-initialised it changes nothing (eval: no noise), and it learns under gradient."""
    torch.manual_seed(0)
    plain = prr.Model(tiny_config(seq_len=9)).eval()
    torch.manual_seed(0)
    mixer = prr.Model(tiny_config(seq_len=9, conv_kernel=3)).eval()
    assert set(mixer.state_dict()) - set(plain.state_dict()) == {"core.layers.0.mlp.conv.weight"}
    batch = tiny_batch(L=9)
    with torch.no_grad():
        mixer.puzzle_emb.weights.normal_()
        plain.puzzle_emb.weights.copy_(mixer.puzzle_emb.weights)
    a = plain(plain.initial_carry(batch), batch)[3]
    b = mixer(mixer.initial_carry(batch), batch)[3]
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["scores"], b["scores"])
    mixer.train()(mixer.initial_carry(batch), batch)[1].backward()
    assert mixer.core.layers[0].mlp.conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not a square"):
        prr.Model(tiny_config(seq_len=8, conv_kernel=3))
