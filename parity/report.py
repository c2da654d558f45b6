"""The parity report: Markdown tables of every section, and the training curves.

`write_report` writes `report.md` and `curves.png` into a directory; `summary`
gives the short table the CLI prints at the end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from parity.compare_training import Run, seed_statistics
from parity.rows import Row
from parity.suite import Results, Section

MAX_FAILURES_LISTED = 100


def fmt(x: float | None) -> str:
    """A number for a table cell: short, and exact where it is 0."""
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if x == 0:
        return "0"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.4g}"
    return f"{x:.2e}"


def _pass(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows_table(rows: Sequence[Row]) -> list[str]:
    """One Markdown table row per check."""
    lines = [
        "| case | max abs diff | tolerance | pass | note |",
        "|---|---:|---:|:---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {_cell(r.case)} | {fmt(r.max_abs_diff)} | {fmt(r.tolerance)} | "
            f"{_pass(r.passed)} | {_cell(r.note)} |"
        )
    return lines


def group_of(row: Row) -> str:
    return row.case.split(": ", 1)[0]


def grouped_table(rows: Sequence[Row]) -> list[str]:
    """One Markdown row per group of checks: how many, the worst difference."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(group_of(row), []).append(row)
    # Max pooling's groups first, then average pooling's, then the rest.
    family = {"max": 0, "avg": 1}
    groups = dict(
        sorted(groups.items(), key=lambda kv: family.get(kv[0][:3].lower(), 2))
    )
    lines = [
        "| case | checks | failed | max abs diff | tolerance | pass |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for name, members in groups.items():
        diffs = [r.max_abs_diff for r in members if r.max_abs_diff is not None]
        failed = sum(not r.passed for r in members)
        lines.append(
            f"| {_cell(name)} | {len(members)} | {failed} | "
            f"{fmt(max(diffs)) if diffs else '—'} | {fmt(members[0].tolerance)} | "
            f"{_pass(failed == 0)} |"
        )
    return lines


def section_lines(section: Section) -> list[str]:
    failed = [r for r in section.rows if not r.passed]
    lines = [
        f"## ({section.key}) {section.title}",
        "",
        f"{len(section.rows)} checks, {len(failed)} failed, {section.seconds:.1f} s.",
        "",
    ]
    if section.grouped:
        lines += grouped_table(section.rows)
        if failed:
            lines += ["", f"### Failed checks in ({section.key})", ""]
            lines += rows_table(failed[:MAX_FAILURES_LISTED])
            if len(failed) > MAX_FAILURES_LISTED:
                lines.append(f"\n... and {len(failed) - MAX_FAILURES_LISTED} more.")
    else:
        lines += rows_table(section.rows)
    if section.skipped:
        lines += ["", f"Not run: {section.skipped}."]
    return lines + [""]


def epoch_table(torch_run: Run, our_run: Run) -> list[str]:
    """The same-weights runs side by side, one row per epoch."""
    lines = [
        "| epoch | train loss PyTorch | train loss ours | loss diff | "
        "train acc PyTorch | train acc ours | test acc PyTorch | test acc ours | "
        "test acc diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t, o in zip(torch_run.records, our_run.records, strict=True):
        lines.append(
            f"| {t.epoch} | {t.train_loss:.4f} | {o.train_loss:.4f} | "
            f"{fmt(o.train_loss - t.train_loss)} | {t.train_acc:.4f} | "
            f"{o.train_acc:.4f} | {t.test_acc:.4f} | "
            f"{o.test_acc:.4f} | {o.test_acc - t.test_acc:+.4f} |"
        )
    secs_t = sum(r.seconds for r in torch_run.records)
    secs_o = sum(r.seconds for r in our_run.records)
    lines += [
        "",
        f"Training time: PyTorch {secs_t:.1f} s, ours {secs_o:.1f} s "
        "(steps only, evaluation excluded).",
    ]
    return lines


def seed_tables(runs: Sequence[Run]) -> list[str]:
    """Final test accuracy of every seed run, then each side's statistics."""
    lines = [
        "| seed | PyTorch final test acc | ours final test acc |",
        "|---:|---:|---:|",
    ]
    by_key = {(r.framework, r.seed): r for r in runs}
    for seed in sorted({r.seed for r in runs}):
        t, o = by_key.get(("pytorch", seed)), by_key.get(("jax", seed))
        lines.append(
            f"| {seed} | {t.final_test_acc if t else float('nan'):.4f} | "
            f"{o.final_test_acc if o else float('nan'):.4f} |"
        )
    lines += [
        "",
        "| framework | runs | mean | min | max | std |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for framework, name in (("pytorch", "PyTorch"), ("jax", "ours (JAX)")):
        s = seed_statistics(list(runs), framework)
        lines.append(
            f"| {name} | {s['runs']} | {s['mean']:.4f} | {s['min']:.4f} | "
            f"{s['max']:.4f} | {s['std']:.4f} |"
        )
    return lines


def init_table(stats: Sequence[dict]) -> list[str]:
    """Per tensor: the bound and the pooled statistics of both sides."""
    lines = [
        "| tensor | bound | theory std | values a side | ours min / max | "
        "PyTorch min / max | ours mean | PyTorch mean | ours std | PyTorch std |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in stats:
        o, t = s["ours"], s["pytorch"]
        lines.append(
            f"| {s['tensor']} | {s['bound']:.5f} | {s['std']:.5f} | {o.n} | "
            f"{o.min:.5f} / {o.max:.5f} | {t.min:.5f} / {t.max:.5f} | "
            f"{o.mean:+.5f} | {t.mean:+.5f} | {o.std:.5f} | {t.std:.5f} |"
        )
    return lines


def summary(results: Results) -> list[tuple[str, int, int, str]]:
    """(section, checks, failed, worst diff/tolerance ratio) for each section."""
    out = []
    for s in results.sections:
        failed = sum(not r.passed for r in s.rows)
        ratios = [
            abs(r.max_abs_diff) / r.tolerance
            for r in s.rows
            if r.max_abs_diff is not None and r.tolerance > 0
        ]
        worst = f"{max(ratios):.3g}" if ratios else "—"
        out.append((f"({s.key}) {s.title}", len(s.rows), failed, worst))
    return out


def summary_table(results: Results) -> list[str]:
    lines = [
        "| section | checks | failed | worst diff / tolerance |",
        "|---|---:|---:|---:|",
    ]
    for name, checks, failed, worst in summary(results):
        lines.append(f"| {name} | {checks} | {failed} | {worst} |")
    return lines


def render(results: Results, meta: dict[str, str]) -> str:
    """The whole report as Markdown."""
    total = len(results.rows)
    failed = sum(not r.passed for r in results.rows)
    verdict = "PASS" if failed == 0 else "FAIL"
    lines = [
        "# Parity report: lenet-jax against the book's PyTorch LeNet",
        "",
        f"**{verdict}**: {total - failed} of {total} checks passed.",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in meta.items()]
    lines += ["", "## Summary", ""] + summary_table(results) + [""]
    lines += [
        "Differences are absolute; a row passes when its difference is within its "
        "tolerance. Expected values always come from PyTorch.",
        "",
    ]
    for section in results.sections:
        lines += section_lines(section)
        if section.key == "e":
            lines += accuracy_lines(results)
        if section.key == "f" and results.init_stats:
            lines += init_table(results.init_stats) + [""]
    return "\n".join(lines) + "\n"


def accuracy_lines(results: Results) -> list[str]:
    lines = []
    if results.same_weights:
        torch_run, our_run = results.same_weights
        lines += [
            "### (i) Same initial weights, same batches in the same order",
            "",
            "PyTorch's book init (seed 0) copied into ours with `lenet_from_torch`; "
            "the order of each epoch from `epoch_permutation(60000, 0, epoch)`.",
            "",
        ]
        lines += epoch_table(torch_run, our_run) + [""]
    if results.seed_runs:
        lines += [
            "### (ii) Independent seeds",
            "",
            "Each side draws its own initial weights and shuffle from each seed.",
            "",
        ]
        lines += seed_tables(results.seed_runs) + [""]
    lines += ["![training curves](curves.png)", ""]
    return lines


def plot_curves(results: Results, path: Path) -> Path:
    """Loss and accuracy per epoch of both frameworks, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = 3 if results.seed_runs else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    colors = {"pytorch": "tab:orange", "jax": "tab:blue"}
    names = {"pytorch": "PyTorch", "jax": "ours (JAX)"}
    if results.same_weights:
        for run, style in zip(results.same_weights, ("-", "--"), strict=True):
            epochs = [r.epoch for r in run.records]
            c, name = colors[run.framework], names[run.framework]
            axes[0].plot(
                epochs,
                [r.train_loss for r in run.records],
                style,
                marker="o",
                color=c,
                label=name,
            )
            axes[1].plot(
                epochs,
                [r.test_acc for r in run.records],
                style,
                marker="o",
                color=c,
                label=f"{name} test",
            )
            axes[1].plot(
                epochs,
                [r.train_acc for r in run.records],
                style,
                marker=".",
                color=c,
                alpha=0.5,
                label=f"{name} train",
            )
    axes[0].set(title="Same weights: train loss", xlabel="epoch", ylabel="loss")
    axes[1].set(title="Same weights: accuracy", xlabel="epoch", ylabel="accuracy")
    if results.seed_runs:
        for framework in ("pytorch", "jax"):
            accs = np.array(
                [
                    [r.test_acc for r in run.records]
                    for run in results.seed_runs
                    if run.framework == framework
                ]
            )
            epochs = np.arange(1, accs.shape[1] + 1)
            c = colors[framework]
            axes[2].plot(
                epochs,
                accs.mean(0),
                color=c,
                marker="o",
                label=f"{names[framework]} mean",
            )
            axes[2].fill_between(epochs, accs.min(0), accs.max(0), color=c, alpha=0.2)
        axes[2].set(
            title=f"Independent seeds ({len(results.seed_runs) // 2} a side): "
            "test acc, min-max",
            xlabel="epoch",
            ylabel="accuracy",
        )
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: Results, out_dir: Path, meta: dict[str, str]) -> Path:
    """Write report.md and curves.png into out_dir; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(results, out_dir / "curves.png")
    path = out_dir / "report.md"
    path.write_text(render(results, meta))
    return path
