"""Loss and evaluation curves as a PNG (matplotlib: the optional extra `kubetune[plot]`)."""

from __future__ import annotations

from pathlib import Path

from kubetune.usercli import CliError


def series(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric, in step order (rlhf stages are told apart by the caller)."""
    points = [
        (r["step"], float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]
    return sorted(points)


def eval_keys(records: list[dict]) -> list[str]:
    """eval_loss and the per-task eval_<task>_loss keys present, eval_loss first."""
    keys = sorted({k for r in records for k in r if k.startswith("eval_") and k.endswith("loss")})
    return sorted(keys, key=lambda k: (k != "eval_loss", k))


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install 'kubetune[plot]'") from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_runs(runs: dict[str, list[dict]], png: str | Path, title: str = "") -> Path:
    """One PNG: training loss (left) and evaluation loss (right), one line per run (one run: its per-task
    evaluation losses too)."""
    plt = _pyplot()
    fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4))
    any_eval = False
    for label, records in runs.items():
        train = series(records, "loss")
        if train:
            train_ax.plot(*zip(*train, strict=True), label=label)
        keys = eval_keys(records) if len(runs) == 1 else ["eval_loss"]
        for key in keys:
            points = series(records, key)
            if points:
                any_eval = True
                name = label if len(runs) > 1 else key
                eval_ax.plot(*zip(*points, strict=True), "o-", markersize=3, label=name)
    for ax, what in ((train_ax, "training loss"), (eval_ax, "evaluation loss")):
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(what)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    if not any_eval:
        eval_ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=eval_ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(png)
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise CliError(f"{path}: cannot write the plot ({err.strerror})") from None
    finally:
        plt.close(fig)
    return path
