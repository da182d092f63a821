"""Pictures of decision regions with matplotlib figures that never touch pyplot's global
state or backend (they render with Agg when saved; no display needed).

Every picture uses the same class colours (:func:`class_colors`), draws maps with
``origin="lower"`` over the plane's bounds, and marks anchors: a circle in the colour of
the clean class, with a star in the colour of the noisy label on top when the two differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib import animation
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from overparam_lit.regions.maps import LabelMaps, load_label_maps
from overparam_lit.regions.planes import PlaneBank
from overparam_lit.utils import atomic_savefig


def class_colors(num_classes: int) -> np.ndarray:
    """``(C, 4)`` RGBA colours, fixed per class index (tab10, tab20, then an HSV wheel)."""
    if num_classes <= 10:
        cmap = mpl.colormaps["tab10"]
        return np.array([cmap(i) for i in range(num_classes)])
    if num_classes <= 20:
        cmap = mpl.colormaps["tab20"]
        return np.array([cmap(i) for i in range(num_classes)])
    cmap = mpl.colormaps["hsv"]
    return np.array([cmap(i / num_classes) for i in range(num_classes)])


def map_image(pred: np.ndarray, num_classes: int, confidence: np.ndarray | None = None) -> np.ndarray:
    """``(R, R, 4)`` RGBA image of one class map; with ``confidence``, low-confidence points
    fade towards white."""
    rgba = class_colors(num_classes)[np.asarray(pred, dtype=np.int64)]
    if confidence is not None:
        shade = (0.25 + 0.75 * np.clip(confidence, 0.0, 1.0))[..., None]
        rgba[..., :3] = rgba[..., :3] * shade + (1.0 - shade)
    return np.clip(rgba, 0.0, 1.0)


def draw_plane(
    ax: Axes,
    pred: np.ndarray,
    bank: PlaneBank,
    plane: int,
    num_classes: int,
    confidence: np.ndarray | None = None,
    anchors: bool = True,
    title: str | None = None,
) -> None:
    """Draw one class map of ``bank``'s plane ``plane`` on ``ax`` with its anchors."""
    u0, u1, v0, v1 = bank.bounds[plane].tolist()
    ax.imshow(
        map_image(pred, num_classes, confidence), origin="lower", extent=(u0, u1, v0, v1),
        interpolation="nearest", aspect="auto",
    )
    if anchors and bank.anchor_coords.shape[1] > 0:
        colors = class_colors(num_classes)
        xy = bank.anchor_coords[plane].numpy()
        yt = bank.anchor_y_true[plane].numpy()
        yn = bank.anchor_y[plane].numpy()
        many = xy.shape[0] > 3
        size = 14 if many else 80
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c=colors[yt], edgecolors="black",
                   linewidths=0.5 if many else 1.2, zorder=3)
        flip = yn != yt
        if flip.any():
            ax.scatter(xy[flip, 0], xy[flip, 1], s=size * 1.6, c=colors[yn[flip]], marker="*",
                       edgecolors="white", linewidths=0.6, zorder=4)
        if not many:
            for (u, v), t, n in zip(xy, yt, yn, strict=True):
                txt = f"{t}" if t == n else f"{t}\u2192{n}"
                ax.annotate(txt, (u, v), xytext=(4, 4), textcoords="offset points", fontsize=7,
                            color="black", zorder=5,
                            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.6,
                                  "lw": 0})
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _legend(fig: Figure, num_classes: int) -> int:
    colors = class_colors(num_classes)
    handles = [Patch(color=to_rgba(colors[c]), label=str(c)) for c in range(num_classes)]
    handles.append(Line2D([], [], marker="o", ls="", mfc="grey", mec="black",
                              label="anchor (clean class)"))
    handles.append(Line2D([], [], marker="*", ls="", mfc="grey", mec="white", ms=10,
                              label="noisy label"))
    ncol = max(2, min(len(handles), int(fig.get_figwidth() / 0.75)))
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=6, frameon=False,
               handlelength=1.0, columnspacing=0.8)
    return -(-len(handles) // ncol)


def plane_grid(
    maps: Sequence[np.ndarray],
    bank: PlaneBank,
    planes: Sequence[int],
    num_classes: int,
    col_titles: Sequence[str],
    path: str | Path,
    confidences: Sequence[np.ndarray] | None = None,
    suptitle: str | None = None,
    cell: float = 1.8,
) -> Path:
    """A grid of pictures: one row per plane, one column per map (epochs or widths).

    ``maps[k]`` is the ``(P, R, R)`` prediction array of column ``k`` on ``bank``; rows are
    the bank's ``planes``.
    """
    rows, cols = len(planes), len(maps)
    fig = Figure(figsize=(cell * cols, cell * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k in range(cols):
        for i, p in enumerate(planes):
            conf = None if confidences is None else confidences[k][p]
            draw_plane(axes[i, k], maps[k][p], bank, p, num_classes, conf,
                       title=col_titles[k] if i == 0 else None)
        if cols > 0:
            for i, p in enumerate(planes):
                axes[i, 0].set_ylabel(f"plane {p}", fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    legend_rows = _legend(fig, num_classes)
    bottom = min(0.5, 0.16 * legend_rows / fig.get_figheight())
    fig.tight_layout(rect=(0, bottom, 1, 0.97 if suptitle else 1))
    out = atomic_savefig(fig, path, dpi=110)
    return out


def plane_row(
    pred: np.ndarray,
    bank: PlaneBank,
    planes: Sequence[int],
    num_classes: int,
    path: str | Path,
    confidence: np.ndarray | None = None,
    title: str | None = None,
    cell: float = 2.2,
) -> Path:
    """One snapshot: the listed planes side by side, shaded by confidence if given."""
    fig = Figure(figsize=(cell * len(planes), cell + 0.9))
    axes = fig.subplots(1, len(planes), squeeze=False)[0]
    for ax, p in zip(axes, planes, strict=True):
        draw_plane(ax, pred[p], bank, p, num_classes,
                   None if confidence is None else confidence[p], title=f"plane {p}")
    if title:
        fig.suptitle(title, fontsize=9)
    legend_rows = _legend(fig, num_classes)
    bottom = min(0.5, 0.16 * legend_rows / fig.get_figheight())
    fig.tight_layout(rect=(0, bottom, 1, 0.93 if title else 1))
    return atomic_savefig(fig, path, dpi=110)


def filmstrip(
    maps: Sequence[np.ndarray],
    bank: PlaneBank,
    plane: int,
    num_classes: int,
    titles: Sequence[str],
    path: str | Path,
    max_frames: int = 12,
) -> Path:
    """One plane through training, side by side (at most ``max_frames``, evenly spaced)."""
    idx = np.unique(np.linspace(0, len(maps) - 1, min(max_frames, len(maps))).round().astype(int))
    return plane_grid([maps[i] for i in idx], bank, [plane], num_classes,
                      [titles[i] for i in idx], path, cell=2.0)


def animate(
    maps: Sequence[np.ndarray],
    bank: PlaneBank,
    plane: int,
    num_classes: int,
    titles: Sequence[str],
    path: str | Path,
    fps: int = 3,
) -> Path:
    """An animated GIF of one plane through training (matplotlib's Pillow writer)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(3.6, 3.8))
    ax = fig.subplots()

    def frame(k: int) -> list:
        ax.clear()
        draw_plane(ax, maps[k][plane], bank, plane, num_classes, title=titles[k])
        return []

    anim = animation.FuncAnimation(fig, frame, frames=len(maps), blit=False)
    tmp = path.with_name(f".{path.name}.tmp.gif")
    anim.save(str(tmp), writer=animation.PillowWriter(fps=fps), dpi=80)
    tmp.replace(path)
    return path


def summary_pictures(
    preds: Sequence[np.ndarray],
    titles: Sequence[str],
    bank: PlaneBank,
    planes: Sequence[int],
    film_plane: int,
    num_classes: int,
    folder: str | Path,
) -> dict[str, Path]:
    """The pictures of a run's snapshots: ``overview.png`` (planes x up to 8 snapshots),
    ``filmstrip.png`` and ``filmstrip.gif`` (one plane through training)."""
    folder = Path(folder)
    cols = np.unique(np.linspace(0, len(preds) - 1, min(8, len(preds))).round().astype(int))
    return {
        "overview": plane_grid([preds[i] for i in cols], bank, list(planes), num_classes,
                               [titles[i] for i in cols], folder / "overview.png"),
        "filmstrip": filmstrip(preds, bank, film_plane, num_classes, titles, folder / "filmstrip.png"),
        "gif": animate(preds, bank, film_plane, num_classes, titles, folder / "filmstrip.gif"),
    }


def snapshot_picture(maps: LabelMaps, bank: PlaneBank, render_planes: int, num_classes: int,
                     path: str | Path, epoch: int, fragmentation: float) -> Path:
    """The picture of one snapshot (``epochNNNN.png``): its first ``render_planes`` planes side by
    side, shaded by confidence, titled with the (member mean) fragmentation; a stack shows
    member 0."""
    stacked = maps.pred.ndim == 4
    pred = maps.pred[0] if stacked else maps.pred
    conf = maps.confidence[0] if stacked else maps.confidence
    planes = list(range(min(render_planes, bank.num_planes)))
    return plane_row(pred, bank, planes, num_classes, path, confidence=conf,
                     cell=4.0 if len(planes) == 1 else 2.2,
                     title=f"epoch {epoch}: {fragmentation:.2f} regions per class"
                     + (" (member mean; member 0 shown)" if stacked else ""))


def history_pictures(history: Sequence[dict], folder: str | Path, bank: PlaneBank, render_planes: int,
                     film_plane: int, num_classes: int) -> dict[str, Path] | None:
    """:func:`summary_pictures` of the snapshots listed in ``history`` (``history.json``'s
    entries) whose maps are in ``folder`` (member 0 of a stack); ``None`` when there are none."""
    folder = Path(folder)
    done = [h for h in history if "maps" in h and (folder / h["maps"]).exists()]
    if not done:
        return None
    preds = [load_label_maps(str(folder / h["maps"])).pred for h in done]
    preds = [p if p.ndim == 3 else p[0] for p in preds]
    planes = list(range(min(render_planes, bank.num_planes)))
    return summary_pictures(preds, [f"epoch {h['epoch']}" for h in done], bank, planes, film_plane,
                            num_classes, folder)
