"""Figures of the pipelines (matplotlib, written atomically as PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from jaxue import runs


def save(fig, path: str | os.PathLike) -> None:
  """Writes ``fig`` to ``path`` as a PNG, atomically, and closes it."""
  try:
    with runs.atomic_path(path, suffix=".png") as tmp:
      fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
  finally:
    plt.close(fig)


def image_grid(path: str | os.PathLike, clean: np.ndarray,
               rows: Mapping[str, np.ndarray], labels: np.ndarray, *,
               per_row: int = 10, class_names: Sequence[str] | None = None
               ) -> None:
  """Clean images, then each protected version and its amplified noise.

  Args:
    path: output PNG.
    clean: uint8 NHWC clean images (the first ``per_row`` are shown).
    rows: name -> uint8 released images aligned with ``clean``.
    labels: labels of the images, used as column titles.
    per_row: images per row.
    class_names: optional label names.
  """
  n = min(per_row, len(clean))
  panels = [("clean", clean[:n], False)]
  for name, released in rows.items():
    panels.append((name, released[:n], False))
    noise = released[:n].astype(np.float32) - clean[:n].astype(np.float32)
    scale = max(np.abs(noise).max(), 1.0)
    panels.append((f"{name} noise (x{255 / scale:.0f})",
                   noise / scale * 0.5 + 0.5, True))
  fig, axes = plt.subplots(len(panels), n, figsize=(1.2 * n, 1.3 *
                                                      len(panels)),
                           squeeze=False)
  for r, (name, images, is_noise) in enumerate(panels):
    for c in range(n):
      ax = axes[r, c]
      image = images[c]
      if not is_noise:
        image = image.astype(np.float32) / 255.0
      cmap = "gray" if image.shape[-1] == 1 else None
      ax.imshow(np.clip(image.squeeze(-1) if image.shape[-1] == 1 else image,
                        0, 1), cmap=cmap, vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        title = class_names[labels[c]] if class_names else str(labels[c])
        ax.set_title(title, fontsize=7)
      if c == 0:
        ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
  save(fig, path)


def accuracy_curves(path: str | os.PathLike,
                    curves: Mapping[str, Sequence[Sequence[float]]], *,
                    title: str = "victim clean test accuracy") -> None:
  """Per-epoch test accuracy per method; several seeds as thin lines around
  their mean."""
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for i, (name, seeds) in enumerate(curves.items()):
    color = f"C{i}"
    seeds = np.asarray(seeds, dtype=float)
    epochs = np.arange(1, seeds.shape[1] + 1)
    if len(seeds) > 1:
      for run in seeds:
        ax.plot(epochs, run, color=color, alpha=0.3, lw=0.8)
    ax.plot(epochs, seeds.mean(0), color=color, lw=2, label=name, marker="o",
            ms=3)
  ax.set_xlabel("epoch")
  ax.set_ylabel("clean test accuracy")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=9)
  save(fig, path)


def line_plot(path: str | os.PathLike,
              series: Mapping[str, Sequence[tuple[float, float | None]]], *,
              xlabel: str, ylabel: str, title: str = "",
              logx: bool = False) -> None:
  """One line per name through (x, y) points; None values are skipped."""
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for name, points in series.items():
    points = [(x, y) for x, y in points if y is not None]
    if points:
      xs, ys = zip(*points)
      ax.plot(xs, ys, marker="o", ms=3, label=name)
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=9)
  save(fig, path)


def heatmap(path: str | os.PathLike, values: np.ndarray, *,
            rows: Sequence[str], columns: Sequence[str], title: str = "",
            vmin: float = 0.0, vmax: float = 1.0) -> None:
  """A rows x columns heatmap with each cell's value written in it."""
  values = np.asarray(values, float)
  if values.shape != (len(rows), len(columns)):
    raise ValueError(f"values of shape {values.shape} do not match "
                     f"{len(rows)} rows x {len(columns)} columns")
  fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 2,
                                  0.45 * len(rows) + 1.5))
  image = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax,
                    aspect="auto")
  ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
  ax.set_yticks(range(len(rows)), rows)
  for (i, j), value in np.ndenumerate(values):
    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
            color="black" if value > (vmin + vmax) / 2 else "white")
  fig.colorbar(image, ax=ax, fraction=0.04)
  if title:
    ax.set_title(title)
  save(fig, path)


def certified_curves(path: str | os.PathLike,
                     curves: Mapping[str, Sequence[tuple[float,
                                                         float | None]]], *,
                     ylabel: str, title: str = "",
                     expected: Mapping[str, Sequence[tuple[float, float]]]
                     | None = None) -> None:
  """Certified learnability over the whole eta grid, one line per model.

  Abstentions (no certificate at that eta: N is too small) are drawn as an
  'x' on the bottom axis in the model's colour, so the grid is shown whole
  and a missing point is never mistaken for a low value. ``expected``:
  per model, the expected-learnability curve, dashed in the same colour.
  """
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  etas = sorted({float(e) for points in curves.values() for e, _ in points})
  logx = bool(etas) and etas[0] > 0
  abstains = False
  for i, (name, points) in enumerate(curves.items()):
    color = f"C{i}"
    xs = [float(e) for e, _ in points]
    # NaN breaks the line where the model abstains.
    ys = [np.nan if v is None else float(v) for _, v in points]
    ax.plot(xs, ys, marker="o", ms=3, color=color, label=name)
    if expected and name in expected:
      ax.plot([float(e) for e, _ in expected[name]],
              [float(v) for _, v in expected[name]], ls="--", color=color,
              label=f"{name} (expected)")
    missing = [float(e) for e, v in points if v is None]
    if missing:
      abstains = True
      ax.plot(missing, [0.0] * len(missing), ls="none", marker="x", ms=6,
              mew=1.5, color=color, clip_on=False)
  if abstains:
    ax.plot([], [], ls="none", marker="x", ms=6, mew=1.5, color="0.3",
            label="abstains (no certificate)")
  if logx:
    ax.set_xscale("log")
  if etas:
    lo, hi = etas[0], etas[-1]
    ax.set_xlim((lo / 1.5, hi * 1.5) if logx else
                (lo - 0.05 * (hi - lo or 1), hi + 0.05 * (hi - lo or 1)))
  ax.set_ylim(0, 1.02)
  ax.set_xlabel("eta (parameter-space radius)")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=9)
  save(fig, path)
