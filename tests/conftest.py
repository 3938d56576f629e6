"""pytest setup: on a machine without CUDA, run the Triton kernels through the interpreter.

TRITON_INTERPRET must be set before anything imports `kernels` (the @triton.jit object is chosen at
decoration time), so it is set here, at the top of the first file pytest imports.
"""
import io
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One thread per process: the models are tiny, the 2-process tests already fill both cores, and OpenMP's
# spinning threads slowed tiny steps 13x when the cores were shared.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a learning run, a CLI process or a fault drill; the fast "
                            "tier (python -m pytest -m 'not slow' tests) leaves them out")


def tiny_batch(B=6, L=8, V=12, ids=5, seed=0):
    """A random batch in the loader's layout, the last two labels of each row ignored (shared by model tests)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, V, (B, L), generator=g, dtype=torch.int32)
    labels[:, -2:] = -100
    return dict(inputs=torch.randint(0, V, (B, L), generator=g, dtype=torch.int32), labels=labels,
                puzzle_identifiers=torch.randint(1, ids, (B,), generator=g, dtype=torch.int32))


def saved_and_reloaded(make_model):
    """A model with random puzzle-embedding rows, and a differently seeded copy loaded from its saved state_dict."""
    torch.manual_seed(0)
    model = make_model().eval()
    with torch.no_grad():
        model.puzzle_emb.weights.normal_()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    other = make_model().eval()
    other.load_state_dict(torch.load(buf))
    return model, other


def hand_train(model, batches, lr=3e-3, emb_lr=1e-2):
    """train.train_step once per batch, each from a fresh carry: AdamATan2 on the weights (no weight
    decay), sign-SGD on the batch's puzzle-embedding rows. Returns metrics["lm_loss"] per sample."""
    import optim
    import train
    s = train.State(model, optim.AdamATan2(model.parameters(), lr=lr, weight_decay=0.0))
    losses = []
    for batch in batches:
        B = batch["inputs"].shape[0]
        tcfg = train.TrainConfig(global_batch_size=B, lr=lr, lr_warmup_steps=0, puzzle_emb_lr=emb_lr,
                                 puzzle_emb_weight_decay=0.0, ema=False)
        s.carry = None
        stats, _ = train.train_step(s, batch, tcfg)
        losses.append(stats["lm_loss"] / B)
    return losses


def assert_rows_near_gold(name, got, ref, gold, slack=2.0, ulps=2.0):
    """Per row of 2-D [rows, cols] tensors: the kernel's max error against a float64 `gold` stays within
    `slack` x the reference's own max error on that row plus `ulps` units of the row's largest value in
    got's dtype. A bug confined to a few rows or one tile fails here even where a whole-tensor RMS hides it."""
    eps = torch.finfo(got.dtype).eps
    got, ref, gold = got.detach().double(), ref.detach().double(), gold.detach().double()
    e_got = (got - gold).abs().amax(1)
    e_ref = (ref - gold).abs().amax(1)
    bound = slack * e_ref + ulps * eps * gold.abs().amax(1)
    bad = ~(e_got <= bound)  # NaN counts as bad
    worst = (e_got / bound.clamp_min(1e-30)).nan_to_num(float("inf")).max().item()
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {len(bad)} rows beyond {slack} x the reference's "
                           f"error + {ulps} ulp (worst ratio {worst:.2f}); first rows {bad.nonzero()[:5].flatten().tolist()}")
    return worst
