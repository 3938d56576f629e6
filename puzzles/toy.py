"""A toy task for tests and the CPU quickstart: recolouring rules, one per puzzle identifier."""
import os

import numpy as np

from puzzles.common import AtomicDir, DataError, metadata, write_json, write_split


def build_toy(out_dir, num_train=4000, num_test=512, seed=0, num_rules=8, length=14, seq_len=16,
              demos=3, shift=0):
    """Toy recolouring rules (16 tokens): seconds to build, for tests and the CPU quickstart. Each
    puzzle = demos + 1 examples of one rule, out[i] = perm[in[(i + shift) % length]]: each colour
    recoloured by the rule's permutation, the row rotated left by `shift`. The rule is the puzzle
    identifier, so the puzzle embedding (or the demos) must carry it. Inputs: `length` colour
    tokens, then PAD (label ignored) up to seq_len; one puzzle per group, its first `demos` examples
    flagged as demos. A 2-layer width-64 transformer (AdamW 1e-3, batch 64) is 100% exact by step
    250 at shift=0; shift=1 and a reversal were near chance (loss ~2.0) after 750 steps."""
    if length > seq_len:
        raise DataError(f"length={length} is longer than seq_len={seq_len}")
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(10) for _ in range(num_rules)]) + 2
    per = demos + 1
    with AtomicDir(out_dir) as tmp:
        for split, n in (("train", num_train), ("test", num_test)):
            n_puz = max(1, n // per)
            rule = rng.integers(num_rules, size=n_puz)
            colours = rng.integers(10, size=(n_puz * per, length))
            inputs = np.zeros((n_puz * per, seq_len), np.uint8)
            labels = np.zeros_like(inputs)
            inputs[:, :length] = colours + 2
            labels[:, :length] = perms[np.repeat(rule, per)[:, None],
                                       np.roll(colours, -shift, axis=1)]
            write_split(tmp, split, inputs, labels, rule + 1, np.arange(n_puz + 1) * per,
                        np.arange(n_puz + 1),
                        metadata(seq_len, 12, num_rules + 1, n_puz, n_puz, n_puz * per),
                        is_demo=np.tile(np.arange(per) < demos, n_puz))
        write_json(os.path.join(tmp, "identifiers.json"),
                   ["<blank>"] + [f"rule{i}" for i in range(num_rules)])
    return out_dir
