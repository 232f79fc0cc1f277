"""PNG charts for docs/benchmarks.md (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DOCS = Path(__file__).parent.parent / "docs"


def line(name: str, title: str, xlabel: str, ylabel: str,
         series: dict[str, tuple[list[float], list[float]]], logx: bool = False,
         marker: str = "o") -> Path:
    figure, axes = plt.subplots(figsize=(7, 4))
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, marker=marker, label=label)
    if logx:
        axes.set_xscale("log")
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, name)


def distribution(name: str, title: str, xlabel: str, samples: dict[str, list[float]]) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4))
    for label, values in samples.items():
        ordered = sorted(values)
        axes.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    axes.set_xscale("log")
    axes.set(title=title, xlabel=xlabel, ylabel="share of messages")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, name)


def timeline(name: str, title: str, rates: dict[str, tuple[list[float], list[float]]],
             limits: dict[str, tuple[list[float], list[float]]], window: float = 2.0) -> Path:
    """Messages/s against seconds for each run, above the auto limit against seconds."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                         height_ratios=(2, 1))
    for label, (xs, ys) in rates.items():
        top.plot(xs, ys, label=label)
    top.set(title=title, ylabel=f"messages/s ({window:g} s average)")
    for label, (xs, ys) in limits.items():
        bottom.plot(xs, ys, label=label)
    bottom.set(xlabel="seconds", ylabel="requests at once")
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    return _save(figure, name)


def _save(figure: matplotlib.figure.Figure, name: str) -> Path:
    DOCS.mkdir(exist_ok=True)
    path = DOCS / name
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
