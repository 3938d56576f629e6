"""Tests of etrm.py and encoders.py, the encoder TRM. Run: python -m pytest -q tests/test_etrm.py

What they check, on tiny configs (hidden 32) on CPU, for every encoder type:
- the context is [B, T, D] and respects the demo mask (garbage in a masked demo slot changes neither the
  context nor the logits; a sample without demos gets a zero context); permuting the demo slots changes nothing;
- gradients reach every encoder weight at every ACT step, in both training modes; ETRM-FCT takes fresh samples
  exactly as fast as TRM's ACT with the same steps per sample;
- the KL term equals its closed form (clamp included); `context_var` is the variance of the mean context, so a
  collapsed variational encoder logs 0 although its samples vary; the collapse warning is printed once;
- leave-one-out never lets a pair see itself; test-time optimisation lowers the demos' loss to the value it
  reports, changes predictions and leaves the weights alone; checkpoints and TRM decoder init round-trip;
- a tiny ETRM with each of the nine encoders learns a family of colour maps, each defined only by its demos, and solves maps it never saw;
  two controls must score far lower: another puzzle's demos, and the trained decoder given the encoder's
  initial weights (so an encoder that never trains fails the test).
"""
import copy
import itertools
import json
import os

import pytest
import torch

import config
import encoders
import etrm
import train
import trm


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Ops this small only pay for thread sync: on the shared 2-core machine, 2 threads made the learning test
    10x slower (381 s vs 34 s wall)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ENCODERS = list(encoders.KINDS)
VARIATIONAL = [e for e, (_, vae, _) in encoders.KINDS.items() if vae]
V, L, K, B = 7, 8, 4, 3


def tiny_config(**kw):
    base = dict(hidden_size=32, num_heads=4, expansion=2, H_cycles=2, L_cycles=2, L_layers=1, puzzle_emb_len=4,
                halt_max_steps=3, vocab_size=V, seq_len=L, encoder_num_layers=1, lpn_width=16, lpn_latent_dim=8,
                encoder_H_cycles=2, encoder_L_layers=1)
    return etrm.Config(**(base | kw))


def random_batch(seed=0, b=B, k=K, mask=None):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, lo=0: torch.randint(lo, V, s, generator=g, dtype=torch.int32)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool) if mask is None else mask
    labels = r(b, L, lo=1)
    labels[:, -2:] = -100  # PAD positions of a label are ignored
    return dict(inputs=r(b, L), labels=labels, puzzle_identifiers=torch.zeros(b, dtype=torch.int32),
                demo_inputs=r(b, k, L), demo_labels=r(b, k, L), demo_mask=mask)


def run(model, batch, seed=0, calls=1):
    torch.manual_seed(seed)  # same exploration / reparameterisation draws for runs compared with each other
    carry = model.initial_carry(batch)
    for _ in range(calls):
        carry, loss, metrics, out = model(carry, batch)
    return carry, loss, metrics, out


@pytest.mark.parametrize("encoder,pooling", [(e, "mean") for e in ENCODERS] + [("standard", "attention"),
                                                                              ("standard", "weighted")])
def test_context_shape_mask_and_permutation(encoder, pooling):
    torch.manual_seed(0)
    model = etrm.Model(tiny_config(encoder_type=encoder, encoder_pooling_method=pooling))
    batch = random_batch()
    carry, loss, metrics, out = run(model, batch, calls=2)
    assert out["context"].shape == (B, 4, 32) and out["logits"].shape == (B, L, V) and out["preds"].shape == (B, L)
    assert torch.isfinite(loss) and "context_var" in metrics
    assert ("kl_loss" in metrics) == (encoder in VARIATIONAL)
    assert out["context"].abs().sum() > 0

    garbage = dict(batch, demo_inputs=batch["demo_inputs"].clone(), demo_labels=batch["demo_labels"].clone())
    garbage["demo_inputs"][~batch["demo_mask"]] = 5
    garbage["demo_labels"][~batch["demo_mask"]] = 3
    _, loss_g, _, out_g = run(model, garbage, calls=2)
    torch.testing.assert_close(out_g["context"], out["context"], rtol=0, atol=0)
    torch.testing.assert_close(out_g["logits"], out["logits"], rtol=0, atol=0)
    torch.testing.assert_close(loss_g, loss, rtol=0, atol=0)

    model.eval()  # deterministic encoders (the variational ones use mu), so slot order is the only change
    _, _, _, ref = run(model, batch, calls=2)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = dict(batch, **{k: batch[k][:, perm] for k in ("demo_inputs", "demo_labels", "demo_mask")})
    _, _, _, out_p = run(model, permuted, calls=2)
    # Equal up to float32 summation order (the demos are summed in another order), grown through the blocks.
    torch.testing.assert_close(out_p["context"], ref["context"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_p["logits"], ref["logits"], rtol=1e-3, atol=2e-4)
    other = dict(batch, demo_labels=batch["demo_labels"].roll(1, 0))  # the demos do matter
    assert not torch.allclose(run(model, other, calls=2)[3]["context"], ref["context"])


@pytest.mark.parametrize("encoder", ENCODERS)
def test_sample_without_demos_gets_zero_context(encoder):
    model = etrm.Model(tiny_config(encoder_type=encoder))
    batch = random_batch(mask=torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool))
    _, loss, _, out = run(model, batch)
    assert torch.isfinite(loss) and out["context"][1].abs().sum() == 0 and out["context"][0].abs().sum() > 0


@pytest.mark.parametrize("mode", ["dynamic", "fixed"])
@pytest.mark.parametrize("encoder", ["standard", "lpn_variational", "hybrid_variational", "lpn_var", "iterative"])
def test_gradient_reaches_encoder_every_step(mode, encoder):
    torch.manual_seed(0)
    model = etrm.Model(tiny_config(encoder_type=encoder, act_mode=mode, num_act_steps=3, halt_max_steps=4))
    batch = random_batch()
    carry = model.initial_carry(batch)
    for step in range(3):  # no sample halts before step 3 (q_halt starts at -5), so the encoder is not re-fed
        model.zero_grad()
        carry, loss, _, _ = model(carry, batch)
        loss.backward()
        dead = [n for n, p in model.encoder.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not dead, f"step {step}: no gradient for {dead}"
    if mode == "fixed":  # ETRM-FCT: everyone halts after exactly num_act_steps calls
        assert carry.halted.all() and (carry.steps == 3).all()


def test_iterative_encoder_state_persists_across_act_steps():
    """Its context moves from one ACT step to the next (its own carry) and restarts with a new sample."""
    torch.manual_seed(0)
    model = etrm.Model(tiny_config(encoder_type="iterative", halt_max_steps=3)).eval()
    batch = random_batch()
    carry = model.initial_carry(batch)
    contexts = []
    with torch.no_grad():
        for _ in range(4):
            carry, _, _, out = model(carry, batch)
            contexts.append(out["context"])
    assert not torch.allclose(contexts[1], contexts[0]) and not torch.allclose(contexts[2], contexts[1])
    torch.testing.assert_close(contexts[3], contexts[0])  # step 4 = a new sample's first step
    torch.testing.assert_close(carry.enc_H, contexts[3])


def test_fixed_mode_holds_the_batch():
    model = etrm.Model(tiny_config(act_mode="fixed", num_act_steps=2))
    a, b = random_batch(0), random_batch(1)
    carry = model.initial_carry(a)
    carry, *_ = model(carry, a)
    assert not carry.halted.any()
    carry, *_ = model(carry, b)  # the second batch is ignored: the first is still being worked on
    assert torch.equal(carry.current_data["inputs"], a["inputs"]) and carry.halted.all()
    carry, *_ = model(carry, b)
    assert torch.equal(carry.current_data["inputs"], b["inputs"])


def fresh_samples_per_call(model, batches):
    """How many rows take a new sample from the loader's batch at each call (TRM's protocol: halted rows)."""
    carry, taken = model.initial_carry(batches[0]), []
    torch.manual_seed(0)
    for batch in batches:
        taken.append(int(carry.halted.sum()))
        carry, *_ = model(carry, batch)
    return taken


def test_fixed_mode_takes_data_as_fast_as_act():
    """ETRM-FCT with N steps per sample takes B/N fresh samples per optimizer step on average, as ETRM's and
    TRM's ACT do when their samples run N steps: no mode drops more of the loader's data than another."""
    N, batches = 3, [random_batch(seed) for seed in range(9)]
    fct = etrm.Model(tiny_config(act_mode="fixed", num_act_steps=N, halt_max_steps=16))
    act = etrm.Model(tiny_config(halt_max_steps=N, halt_exploration_prob=0.0))
    tcfg = {k: v for k, v in vars(tiny_config(halt_max_steps=N, halt_exploration_prob=0.0)).items()
            if k in trm.Config.__dataclass_fields__}
    base = trm.Model(trm.Config(**(tcfg | dict(puzzle_emb_ndim=32, num_puzzle_identifiers=1))))
    taken = fresh_samples_per_call(fct, batches)
    assert taken == [B, 0, 0] * 3 and sum(taken) == len(batches) * B // N
    assert fresh_samples_per_call(act, batches) == taken == fresh_samples_per_call(base, batches)


def test_leave_one_out_never_sees_itself():
    torch.manual_seed(0)
    b, k = 64, 4
    mask = torch.rand(b, k) < 0.7
    batch = random_batch(seed=3, b=b, k=k, mask=mask)
    ids = torch.arange(b * k, dtype=torch.int32).view(b, k)
    for d in range(3):                                                                # every pair unique
        batch["demo_inputs"][..., d] = ids // V ** d % V
    batch["demo_labels"][..., -1] = 0                                                 # a PAD cell in each output
    out = etrm.leave_one_out(batch, 1.0)
    swapped = (out["inputs"] != batch["inputs"]).any(-1)
    n = mask.sum(-1)
    assert torch.equal(swapped, n >= 2)  # p = 1: every sample with >= 2 demos becomes one of its demos
    for i in range(b):
        removed = (mask[i] & ~out["demo_mask"][i]).nonzero().flatten().tolist()
        if not swapped[i]:
            assert removed == [] and torch.equal(out["labels"][i], batch["labels"][i])
            continue
        assert len(removed) == 1 and not (out["demo_mask"][i] & ~mask[i]).any()
        j = removed[0]
        assert torch.equal(out["inputs"][i], batch["demo_inputs"][i, j])
        assert torch.equal(out["labels"][i], torch.where(batch["demo_labels"][i, j] > 0, batch["demo_labels"][i, j], -100))
        assert not (batch["demo_inputs"][i][out["demo_mask"][i]] == out["inputs"][i]).all(-1).any()
    # Uniform over the valid demos: each slot of a 4-demo sample is picked about 1/4 of the time.
    full = random_batch(seed=4, b=4000, k=4, mask=torch.ones(4000, 4, dtype=torch.bool))
    picked = (~etrm.leave_one_out(full, 1.0)["demo_mask"]).float().mean(0)
    assert torch.allclose(picked, torch.full((4,), 0.25), atol=0.03)
    # In the model: only training, only newly loaded samples.
    model = etrm.Model(tiny_config(leave_one_out=1.0, halt_max_steps=3))
    carry, *_ = run(model, batch)
    assert (carry.current_data["demo_mask"].sum(-1) == torch.where(n >= 2, n - 1, n)).all()


def set_gaussian(model, mu, logvar):
    """Zero weights and known biases: every q(z | h) becomes N(mu, exp(logvar)), whatever the demos."""
    with torch.no_grad():
        for lin, bias in ((model.encoder.gaussian.mu, mu), (model.encoder.gaussian.logvar, logvar)):
            lin.weight.zero_()
            lin.bias.copy_(bias)


@pytest.mark.parametrize("encoder", VARIATIONAL)
def test_kl_closed_form(encoder):
    mu, logvar = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([0.0, 0.0, 2.0 * torch.log(torch.tensor(3.0))])
    # 1/2 sum (s^2 + mu^2 - 1 - log s^2): 0 + 1/2 + 1/2 (9 + 4 - 1 - log 9)
    expect = 0.5 + 0.5 * (9 + 4 - 1 - torch.log(torch.tensor(9.0)))
    torch.testing.assert_close(encoders.gaussian_kl(mu[None], logvar[None]), expect.view(1))
    # In the encoder: per demo or pooled, every sample's KL is that value (the mean over its valid demos).
    model = etrm.Model(tiny_config(encoder_type=encoder, latent_dim=3, lpn_latent_dim=3, kl_weight=0.5))
    set_gaussian(model, mu, logvar)
    batch = random_batch()
    _, loss, metrics, _ = run(model, batch)
    torch.testing.assert_close(metrics["kl_loss"], B * expect)
    model.config.kl_weight = 0.0
    _, loss0, _, _ = run(model, batch)
    torch.testing.assert_close(loss - loss0, 0.5 * B * expect)
    # log sigma^2 is clamped to [-10, 10]: a bias of 30 counts as 10 (KL 1/2 (e^10 - 1 - 10) per dim).
    set_gaussian(model, torch.zeros(3), torch.full((3,), 30.0))
    _, _, metrics, _ = run(model, batch)
    torch.testing.assert_close(metrics["kl_loss"], B * 1.5 * (torch.tensor(10.0).exp() - 11))


def test_context_variance_by_hand():
    ctx = torch.zeros(3, 2, 2)
    ctx[1] = 2.0                     # rows 0, 1: values 0 and 2 -> variance 1 in every entry; row 2 is padding
    ctx[2] = 100.0
    assert etrm.context_variance(ctx, torch.tensor([True, True, False])).item() == 1.0
    ctx = torch.randn(5, 3, 4)
    rows = torch.tensor([True, True, False, True, False])
    torch.testing.assert_close(etrm.context_variance(ctx, rows), ctx[rows].var(0, unbiased=False).mean())
    assert etrm.context_variance(ctx[:1].expand(4, 3, 4), torch.ones(4, dtype=torch.bool)) < 1e-12  # collapse


@pytest.mark.parametrize("encoder", VARIATIONAL)
def test_context_var_reads_the_mean_in_training(encoder):
    """In training the logged context_var is the cross-sample variance of the context of mu (what evaluation
    uses), not of the sampled z: a collapsed encoder (mu the same for every task) logs 0 however much its samples
    vary."""
    torch.manual_seed(0)
    model = etrm.Model(tiny_config(encoder_type=encoder, halt_max_steps=1))
    batch = random_batch()
    _, _, metrics, out = run(model.train(), batch)
    model.eval()
    with torch.no_grad():
        mean_ctx = model.encode(batch)[0]                  # evaluation: z = mu
    model.train()
    expect = mean_ctx.var(0, unbiased=False).mean()        # all B rows halted (halt_max_steps=1) and are real
    torch.testing.assert_close(metrics["context_var"] / metrics["count"], expect)
    assert metrics["count"] == B and expect > 1e-4
    assert not torch.allclose(out["context"], mean_ctx)    # the decoder did get a sample
    d = model.encoder.gaussian.mu.bias.numel()
    set_gaussian(model, torch.full((d,), 0.3), torch.zeros(d))          # collapsed: mu = 0.3, sigma = 1 for all
    _, _, metrics, out = run(model, batch)
    assert metrics["context_var"].item() < 1e-12
    assert out["context"].float().var(0).mean() > 1e-3     # while the sampled contexts still differ


def test_collapse_warning_is_printed_once(capsys):
    model = etrm.Model(tiny_config(collapse_patience=3, halt_max_steps=1))
    varied = random_batch()
    same = dict(varied, **{k: varied[k][:1].expand_as(varied[k]).clone() for k in ("demo_inputs", "demo_labels", "demo_mask")})
    carry = model.initial_carry(varied)
    for batch in (same, same, varied, same, same):  # the varied batch restarts the count
        carry, *_ = model(carry, batch)
    assert capsys.readouterr().out == ""
    for _ in range(4):
        carry, *_ = model(carry, same)
    printed = capsys.readouterr().out
    assert printed.count("etrm: warning") == 1 and "collapse" in printed and "Try:" in printed


def test_a_negative_initial_log_variance_is_a_valid_setting():
    """encoder_init_logvar is a logarithm: any real is allowed (the tests and RESULTS use -4), others stay >= 0."""
    config.check(etrm.Config(encoder_init_logvar=-4.0), "etrm")
    with pytest.raises(SystemExit, match="'kl_weight' for model 'etrm' must be a finite number >= 0"):
        config.check(etrm.Config(kl_weight=-1.0), "etrm")


def test_train_defaults_are_train_keys():
    assert etrm.TRAIN_DEFAULTS == {"grad_clip": 1.0}
    assert set(etrm.TRAIN_DEFAULTS) <= set(train.TrainConfig.__dataclass_fields__)


# lr 0.05 overshoots in latent space for some untrained inits (a step that never beats the start); 0.01 does not.
@pytest.mark.parametrize("encoder,target,lr", [("standard", "context", 0.05), ("standard", "latent", 0.01),
                                               ("lpn_variational", "latent", 0.01), ("hybrid_variational", "latent", 0.01),
                                               ("lpn_var", "context", 0.03)])
def test_test_time_optimisation(encoder, target, lr):
    torch.manual_seed(0)
    model = etrm.Model(tiny_config(encoder_type=encoder, tto_steps=6, tto_lr=lr, tto_target=target, tto_act_steps=2))
    model.eval()
    batch = random_batch(mask=torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))
    with torch.no_grad():  # as evaluate.py calls it
        carry, _, metrics, out = run(model, batch, calls=3)
    assert carry.halted.all() and metrics["count"] == B
    init, best = carry.tto_loss.unbind(-1)
    assert (best < init - 1e-3).all(), (init, best)
    torch.testing.assert_close(metrics["tto_demo_loss_best"], best.sum())
    # The kept context really has the reported loss on the demos (not, say, the last step's context).
    mask = batch["demo_mask"]
    owner, slot = mask.nonzero(as_tuple=True)
    with torch.no_grad():
        per_demo = model.demo_loss(carry.context[owner], batch["demo_inputs"][owner, slot],
                                   etrm.to_targets(batch["demo_labels"][owner, slot]))
    torch.testing.assert_close(torch.zeros(B).index_add(0, owner, per_demo) / mask.sum(-1), best, rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())
    model.config.tto_steps = 0  # without it the context is the encoder's output and the answer differs
    with torch.no_grad():
        _, _, _, plain = run(model, batch, calls=3)
    assert not torch.allclose(plain["context"], out["context"])
    assert (plain["preds"] != out["preds"]).any()


def test_checkpoint_round_trip_and_trm_decoder_init(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(encoder_type="lpn_standard")
    model = etrm.Model(cfg).eval()
    batch = random_batch()
    path = tmp_path / "etrm.pt"
    torch.save({"model_name": "etrm", "model": model.state_dict()}, path)
    torch.manual_seed(1)
    again = etrm.Model(cfg).eval()
    again.load_state_dict(torch.load(path)["model"])
    torch.testing.assert_close(run(again, batch, calls=3)[3]["logits"], run(model, batch, calls=3)[3]["logits"], rtol=0, atol=0)
    assert not any(isinstance(m, trm.SparseEmbedding) for m in model.modules())  # no puzzle table at all

    # A TRM with the same decoder shape (its puzzle table of any size) initialises the decoder.
    tcfg = config.config_from(trm.Config, {**vars(cfg), "puzzle_emb_ndim": 32 * 4, "num_puzzle_identifiers": 11})
    teacher = trm.Model(tcfg)
    ema = {k: p.detach() + 1.0 for k, p in teacher.named_parameters()}
    torch.save({"model_name": "trm", "model": teacher.state_dict(), "ema": ema}, tmp_path / "trm.pt")
    student = etrm.Model(etrm.Config(**(vars(cfg) | {"decoder_init": str(tmp_path / "trm.pt")})))
    sd = student.state_dict()
    torch.testing.assert_close(sd["L_level.layers.0.mlp.down_proj.weight"], ema["L_level.layers.0.mlp.down_proj.weight"])
    torch.testing.assert_close(sd["H_init"], teacher.H_init)
    assert not any(k.startswith("puzzle_emb") for k in sd)
    # The reference's prefixed state dict works too; a decoder of another width is refused.
    etrm.load_trm_decoder(student, {f"_orig_mod.model.inner.{k}": v for k, v in teacher.state_dict().items()})
    torch.testing.assert_close(student.state_dict()["lm_head.weight"], teacher.lm_head.weight)
    with pytest.raises(ValueError, match="do not fit"):
        etrm.load_trm_decoder(etrm.Model(tiny_config(hidden_size=64)), teacher.state_dict())


def test_bad_settings_are_refused():
    for kw, match in ((dict(encoder_type="vae"), "'encoder_type' for model 'etrm' must be one of"),
                      (dict(act_mode="fast"), "act_mode"),
                      (dict(encoder_type="iterative", tto_steps=2), "feed-forward encoder"),
                      (dict(encoder_pooling_method="max"), "encoder_pooling_method")):
        with pytest.raises(SystemExit, match=match):
            config.check(tiny_config(**kw), "etrm")


def colour_map_batch(maps, b, gen, colours=4, length=6):
    """Puzzles of one family: recolour every cell by a map f: colours -> colours, known only from the demos.
    Demo k is a grid of one colour c_k (all colours shown, in random order) and its image f(c_k); the query is
    a random grid. Tokens: 0 PAD, 1 EOS, colour c -> c + 2."""
    f = torch.tensor([maps[i] for i in torch.randint(len(maps), (b,), generator=gen)])               # (b, C)
    shown = torch.argsort(torch.rand(b, colours, generator=gen), -1)                                  # (b, K=C)
    x = torch.randint(colours, (b, length), generator=gen)
    i32 = lambda t: t.to(torch.int32) + 2
    return dict(inputs=i32(x), labels=i32(torch.gather(f, 1, x)), puzzle_identifiers=torch.zeros(b, dtype=torch.int32),
                demo_inputs=i32(shown[..., None].expand(b, colours, length)),
                demo_labels=i32(torch.gather(f, 1, shown)[..., None].expand(b, colours, length)),
                demo_mask=torch.ones(b, colours, dtype=torch.bool))


def fit(model, batches, lr):
    """One ACT step per batch (halt_max_steps=1), AdamW with the recipe's grad clip 1.0; then eval()."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for batch in batches:
        _, loss, _, _ = model(model.initial_carry(batch), batch)
        opt.zero_grad()
        (loss / len(batch["inputs"])).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()


def learn_colour_maps(encoder, steps, init_logvar):
    """Train on 200 of the 256 maps of 4 colours; return held-out exact accuracy on the 56 others, with the right
    demos, with another puzzle's demos, and with the encoder's initial weights put back under the trained decoder."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    maps = list(itertools.product(range(4), repeat=4))
    order = torch.randperm(len(maps), generator=gen).tolist()
    seen, unseen = [maps[i] for i in order[:200]], [maps[i] for i in order[200:]]
    model = etrm.Model(etrm.Config(hidden_size=32, num_heads=4, expansion=2, H_cycles=1, L_cycles=1, L_layers=1,
                                   puzzle_emb_len=4, halt_max_steps=1, vocab_size=6, seq_len=6, encoder_num_layers=1,
                                   lpn_width=32, lpn_latent_dim=16, encoder_H_cycles=2, encoder_L_layers=1,
                                   loss_type="softmax", encoder_type=encoder, encoder_init_logvar=init_logvar))
    initial = copy.deepcopy(model.encoder.state_dict())
    fit(model, (colour_map_batch(seen, 32, gen) for _ in range(steps)), lr=1e-3)
    test = colour_map_batch(unseen, 256, torch.Generator().manual_seed(5))
    shifted = dict(test, **{k: test[k].roll(1, 0) for k in ("demo_inputs", "demo_labels", "demo_mask")})
    exact = lambda b: model(model.initial_carry(b), b)[2]["exact_accuracy"].item() / 256
    with torch.no_grad():
        held_out, wrong_demos = exact(test), exact(shifted)
        model.encoder.load_state_dict(initial)
        initial_encoder = exact(test)
    return held_out, wrong_demos, initial_encoder


# encoder -> (steps, initial log sigma^2): every encoder past its sharp learning transition on this family, with a
# margin. Measured at lr 1e-3 over seeds 0-3 (held-out exact at these steps, experiments/RESULTS.md): standard,
# lpn_standard, lpn_variational(_v2) >= 0.95 at 300; hybrid_standard >= 0.88 at 500; lpn >= 0.89 at 400;
# hybrid_variational 0.60-1.0 at 800; lpn_var >= 0.95 at 700 except seed 0 (0.95 at 750); iterative, which learns
# gradually rather than in one jump, 0.62-0.87 at 1000-1200. The variational encoders start at sigma = e^-2: at
# sigma = 1 (the public code's start) all but lpn_variational stay near chance for 800 steps.
LEARN = {"standard": (300, 0.0), "lpn_standard": (300, 0.0), "lpn_variational": (300, -4.0),
         "lpn_variational_v2": (300, -4.0), "hybrid_standard": (500, 0.0), "lpn": (400, 0.0),
         "hybrid_variational": (800, -4.0), "lpn_var": (800, -4.0), "iterative": (1200, 0.0)}


@pytest.mark.slow
@pytest.mark.parametrize("encoder", list(LEARN))
def test_learns_a_family_and_generalises_to_unseen_members(encoder):
    """256 colour maps on 4 colours: train on 200, solve the 56 never seen (exact: all 6 cells; chance 4^-6).
    The decoder alone cannot solve a map it never saw, so held-out success means the demos are read; with the
    encoder's initial weights back under the trained decoder it must fail, so the encoder itself has learnt
    (a random, never-trained encoder is readable enough on this family to pass the other two checks)."""
    held_out, wrong_demos, initial_encoder = learn_colour_maps(encoder, *LEARN[encoder])
    assert held_out > 0.5, (held_out, wrong_demos, initial_encoder)
    assert wrong_demos < held_out - 0.35 and initial_encoder < held_out - 0.35, (held_out, wrong_demos, initial_encoder)


def test_etrm_builds_on_trm_hooks_without_patching(monkeypatch):
    """Everything trm.Model.__init__ builds stays as built: ETRM changes what it needs through the
    hooks (prefix_len, build_prefix), so nothing is overwritten afterwards, the P context slots count
    in the networks (TRM-MLP mixes P + L tokens), and no method is transplanted."""
    built = {}
    init = trm.Model.__init__

    def recording(self, config):
        init(self, config)
        built.update(vars(self), **self._modules, **self._buffers)

    monkeypatch.setattr(trm.Model, "__init__", recording)
    cfg = tiny_config(mlp_t=True, encoder_type="iterative")
    model = etrm.Model(cfg)
    now = dict(vars(model), **model._modules, **model._buffers)
    assert [k for k, v in built.items() if now[k] is not v] == []
    assert model.config is cfg and model.puzzle_emb_len == 4 and model.embed.prefix_len == 4
    assert model.L_level.layers[0].mlp_t.gate_up_proj.weight.shape[1] == L + 4
    assert not hasattr(model, "puzzle_emb") and "encoder" in built
    assert not {"build_reasoning", "reason", "input_embeddings"} & set(vars(etrm.Model))
    assert not {"reason", "rope", "config"} & set(vars(encoders.IterativeEncoder))
    _, loss, _, out = run(model, random_batch(), calls=2)
    assert torch.isfinite(loss) and out["logits"].shape == (B, L, V)


def test_deep_recursion_is_trms_step():
    """trm.Model.reason is deep_recursion over its L_level; the gradient reaches only the last round."""
    torch.manual_seed(0)
    model = trm.Model(trm.Config(hidden_size=32, num_heads=4, L_layers=1, H_cycles=3, L_cycles=2,
                                 vocab_size=V, seq_len=L, puzzle_emb_ndim=0, forward_dtype="float32"))
    z = torch.randn(2, L, 32)
    x = torch.randn(2, L, 32, requires_grad=True)
    cos, sin = model.rope()
    ref = trm.deep_recursion(model.L_level, z, z, x, 3, 2, cos, sin)
    torch.testing.assert_close(model.reason(z, z, x), ref, rtol=0, atol=0)
    by_hand_H, by_hand_L = z, z
    for _ in range(3):
        for _ in range(2):
            by_hand_L = model.L_level(by_hand_L, by_hand_H + x, cos, sin)
        by_hand_H = model.L_level(by_hand_H, by_hand_L, cos, sin)
    torch.testing.assert_close(ref, (by_hand_H, by_hand_L))
    (grad,) = torch.autograd.grad(ref[0].sum(), x)
    two = trm.deep_recursion(model.L_level, z, z, x, 2, 2, cos, sin)           # the first two rounds
    last = trm.deep_recursion(model.L_level, *[t.detach() for t in two], x, 1, 2, cos, sin)
    torch.testing.assert_close(last, ref, rtol=0, atol=0)
    torch.testing.assert_close(grad, torch.autograd.grad(last[0].sum(), x)[0])  # only the last round


# ----------------------------------------------------------------------------------------------
# The grid_programs dataset (puzzles/grid_programs.py)

GP = dict(num_train=40, num_test=12, size=3, colours=3, geometry=4, demos=2, test_programs=5)


def read_split(path, split):
    import numpy as np
    return {f: np.load(os.path.join(path, split, f"all__{f}.npy")) for f in
            ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices", "is_demo")}


def test_grid_programs_dataset(tmp_path):
    import numpy as np

    import data
    from puzzles.grids import dihedral
    path = data.build("grid_programs", str(tmp_path / "a"), **GP)
    names = json.load(open(os.path.join(path, "identifiers.json")))
    assert len(names) == 1 + 4 * 6 and len(set(names)) == len(names) and names[0] == "<blank>"
    ids = {}
    for split, n in (("train", 40), ("test", 12)):
        a = read_split(path, split)
        meta = json.load(open(os.path.join(path, split, "dataset.json")))
        assert meta["seq_len"] == 9 and meta["vocab_size"] == 12 and meta["num_puzzle_identifiers"] == 25
        assert a["inputs"].shape == a["labels"].shape == (3 * n, 9)
        assert list(a["puzzle_indices"]) == list(range(0, 3 * n + 1, 3))
        assert list(a["is_demo"]) == [1, 1, 0] * n
        for e, (x, y) in enumerate(zip(a["inputs"], a["labels"])):
            assert sorted(set(x.tolist())) == sorted(set(y.tolist())) == [2, 3, 4]  # every colour
            t, perm = names[a["puzzle_identifiers"][e // 3]].split("-")        # "t<t>-<perm>"
            want = dihedral(np.array([int(c) for c in perm])[x.reshape(3, 3) - 2], int(t[1:]))
            assert (y.reshape(3, 3) - 2 == want).all()
        ids[split] = set(a["puzzle_identifiers"].tolist())
    assert not ids["train"] & ids["test"] and ids["test"] <= set(range(1, 6))  # disjoint programs
    again = data.build("grid_programs", str(tmp_path / "b"), **GP)
    other = data.build("grid_programs", str(tmp_path / "c"), **(GP | {"seed": 1}))
    files = [os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs]
    read = lambda root, f: open(os.path.join(root, f), "rb").read()
    assert all(read(path, f) == read(again, f) for f in files)  # byte-stable from the seed
    assert read(path, "train/all__inputs.npy") != read(other, "train/all__inputs.npy")
    loader = data.PuzzleDataset(path, "test", 12, with_demos=True)   # held out: its own demos
    batch = next(iter(loader))
    test = read_split(path, "test")
    assert batch["demo_mask"].sum(-1).tolist() == [2] * 12
    assert (batch["demo_inputs"][:, :2].numpy() == test["inputs"].reshape(12, 3, 9)[:, :2]).all()


@pytest.mark.parametrize("flag,value,match", [("--colours", "11", "colours=11"),
                                              ("--geometry", "0", "geometry=0"),
                                              ("--test-programs", "24", "test_programs=24"),
                                              ("--size", "0", "size=0")])
def test_grid_programs_bad_options(tmp_path, capsys, flag, value, match):
    import data
    out = tmp_path / "gp"
    code = data.main(["grid_programs", "--out", str(out), "--size", "3", "--colours", "3",
                      "--geometry", "4", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and match in err and len(err.splitlines()) == 1
    assert not os.path.exists(out) and os.listdir(tmp_path) == []


def test_train_and_evaluate_end_to_end(tmp_path):
    """train.py / evaluate.py drive etrm through the protocol alone (loader with demos, metrics, checkpoint)."""
    import data
    import evaluate
    path = data.build_toy(str(tmp_path / "toy"), num_train=256, num_test=64)
    result = train.main(["--model", "etrm", "--out", str(tmp_path / "run"), "--config", f"data={path}",
                         "hidden_size=32", "num_heads=4", "expansion=2.0", "H_cycles=1", "L_cycles=1", "L_layers=1",
                         "puzzle_emb_len=2", "halt_max_steps=2", "encoder_num_layers=1", "global_batch_size=16",
                         "max_steps=4", "eval_batches=1", "ema=False", "leave_one_out=0.5", "tto_steps=2",
                         "encoder_type=hybrid_variational"])
    assert result["count"] > 0 and "context_var" in result
    assert result["tto_demo_loss_best"] < result["tto_demo_loss_init"]  # two Adam steps lowered the demo loss
    again = evaluate.main(["--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--max-batches", "1"])
    assert again["count"] == result["count"] and abs(again["accuracy"] - result["accuracy"]) < 1e-6
