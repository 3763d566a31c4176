"""The finishing touches every benchmark chart shares."""

from __future__ import annotations

from pathlib import Path


def finish_axes(ax, xlabel: str, ylabel: str, title: str, legend_size: int = 7, **legend) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, **legend)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
