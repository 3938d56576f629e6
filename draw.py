"""Pictures and terminal drawings of grid tasks: an ARC task with its attempts (PNG), and a model's
answers step by step (coloured terminal grids, a PNG and an animated GIF; evaluate.py --show).
ARC grids are drawn in the ARC palette; other tasks' tokens (maze cells, Sudoku digits) in a palette
of their own. matplotlib is imported only when a picture is drawn.
"""
import math
import os

import numpy as np

from puzzles.grids import PAD, crop_grid

ARC_COLOURS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE",
               "#FF851B", "#7FDBFF", "#870C25"]
# other tasks, by token - 1: a maze's wall, open cell, start, goal, path; Sudoku's blank, 1, 2, ...
TOKEN_COLOURS = ["#3C3C3C", "#F0F0F0", "#2ECC40", "#FF4136", "#FFDC00", "#7FDBFF", "#F012BE",
                 "#FF851B", "#0074D9", "#AAAAAA", "#B10DC9", "#01FF70"]


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def render_task(task, attempts, path, title=""):
    """A picture of one task: demonstration pairs, then each test input, its answer and the top
    attempts."""
    from matplotlib.colors import ListedColormap
    plt = pyplot()
    panels = [[("demo in", p["input"]), ("demo out", p["output"])] for p in task["train"]]
    for i, pair in enumerate(task["test"]):
        att = attempts[i] if i < len(attempts) else {}
        panels.append([("test in", pair["input"]), ("answer", pair.get("output", [[0]])),
                       ("attempt 1", att.get("attempt_1", [[0]])),
                       ("attempt 2", att.get("attempt_2", [[0]]))])
    ncols = max(len(r) for r in panels)
    fig, axes = plt.subplots(len(panels), ncols, figsize=(2.2 * ncols, 2.2 * len(panels)),
                             squeeze=False)
    for r, row in enumerate(panels):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                label, grid = row[c]
                right = " ✓" if grid == row[1][1] else " ✗"
                ok = right if label.startswith("attempt") else ""
                ax.imshow(np.array(grid), cmap=ListedColormap(ARC_COLOURS), vmin=0, vmax=9)
                ax.set_title(label + ok, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def as_grid(tokens, is_arc):
    """A token row -> what to draw: ARC the cropped grid of colours 0-9; other tasks their side x
    side canvas of tokens (side = sqrt(seq_len); one row when seq_len is no square)."""
    tokens = np.asarray(tokens).clip(min=0)
    if is_arc:
        return crop_grid(tokens.astype(np.uint8)).astype(int)
    side = math.isqrt(len(tokens))
    return tokens.reshape(side, side) if side * side == len(tokens) else tokens[None]


def ansi_lines(grid, is_arc):
    """A grid as lines of coloured cells (24-bit ANSI background; other tasks print token - 1)."""
    lines = []
    for row in grid:
        cells = []
        for v in row.tolist():
            if not is_arc and v == PAD:
                cells.append("\033[0m  ")
                continue
            hex_ = ARC_COLOURS[v] if is_arc else TOKEN_COLOURS[(v - 1) % len(TOKEN_COLOURS)]
            r, g, b = (int(hex_[i:i + 2], 16) for i in (1, 3, 5))
            ink = "30" if r + g + b > 380 else "97"  # black digits on light cells, white on dark
            cells.append(f"\033[48;2;{r};{g};{b};{ink}m" + ("  " if is_arc else f"{v - 1:>2}"))
        lines.append("".join(cells) + "\033[0m")
    return lines or ["(empty)"]


def print_panels(title, panels, is_arc, width):
    """One puzzle: its panels (label, grid) side by side, wrapped at the terminal's width."""
    print(title)
    drawn = []
    for label, g in panels:
        shown = 2 * g.shape[1] if g.size else len("(empty)")
        drawn.append((label, ansi_lines(g, is_arc), shown, max(shown, len(label))))
    while drawn:
        n, used = 1, drawn[0][3]
        while n < len(drawn) and used + 2 + drawn[n][3] <= width:
            used, n = used + 2 + drawn[n][3], n + 1
        row, drawn = drawn[:n], drawn[n:]
        print("  ".join(label.ljust(w) for label, _, _, w in row))
        for k in range(max(len(lines) for _, lines, _, _ in row)):
            print("  ".join(lines[k] + " " * (w - shown) if k < len(lines) else " " * w
                            for _, lines, shown, w in row))
        print()


def animate(rows, is_arc, out_dir):
    """show.png (a row per puzzle: input, every step, target) and show.gif (a frame per step)."""
    from matplotlib.animation import FuncAnimation, PillowWriter
    from matplotlib.colors import ListedColormap
    plt = pyplot()
    colours = ARC_COLOURS if is_arc else ["#FFFFFF"] + TOKEN_COLOURS  # PAD white

    def image(grid):  # -> colour indices (an empty ARC answer: one blank cell)
        if not grid.size:
            return np.ma.masked_all((1, 1))
        return grid if is_arc else np.where(grid == PAD, 0, 1 + (grid - 1) % len(TOKEN_COLOURS))
    kw = dict(cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1)
    files = {"png": os.path.join(out_dir, "show.png"), "gif": os.path.join(out_dir, "show.gif")}
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.8 * ncols, 1.8 * len(rows)),
                             squeeze=False)
    for r, panels in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(panels):
                ax.imshow(image(panels[c][1]), **kw)
                ax.set_title(panels[c][0], fontsize=8)
    fig.tight_layout()
    fig.savefig(files["png"], dpi=80)
    plt.close(fig)
    fig, axes = plt.subplots(len(rows), 3, figsize=(5.4, 1.8 * len(rows)), squeeze=False)
    for r, panels in enumerate(rows):
        for c, (label, grid) in enumerate((panels[0], panels[1], panels[-1])):
            axes[r][c].axis("off")
            axes[r][c].set_title(label, fontsize=8)
            axes[r][c].imshow(image(grid), **kw)

    def frame(t):  # a puzzle that halted earlier keeps its last answer
        for r, panels in enumerate(rows):
            label, grid = panels[1 + min(t, len(panels) - 3)]
            ax, cells = axes[r][1], image(grid)
            ax.images[0].set_data(cells)
            ax.images[0].set_extent((-0.5, cells.shape[1] - 0.5, cells.shape[0] - 0.5, -0.5))
            ax.set_title(label, fontsize=8)
    FuncAnimation(fig, frame, frames=ncols - 2).save(files["gif"], writer=PillowWriter(fps=2))
    plt.close(fig)
    return files
