"""The report and the CLI: tables, curves, summary and exit codes.

The numbers here are made up: these tests check the report's form, not parity.
"""

from __future__ import annotations

import pytest

from parity import __main__ as cli
from parity import suite
from parity.compare_training import Run
from parity.reference_training import EpochRecord
from parity.report import fmt, grouped_table, render, summary, write_report
from parity.rows import Row
from parity.suite import Results, Section


def fake_run(framework: str, seed: int, accs: list[float]) -> Run:
    records = [
        EpochRecord(i + 1, 2.0 - acc, acc - 0.01, acc, 1.0)
        for i, acc in enumerate(accs)
    ]
    return Run(framework, seed, records)


def fake_results(failing: bool = False) -> Results:
    pooling_rows = [
        Row("max_pool2d values: max k=2 (2,3,7,9)", 0.0, 1e-6, True),
        Row("max_pool2d values: max k=3 (2,3,7,9)", 1e-7, 1e-6, True),
        Row("avg_pool2d rejects: avg k=0 (2,3,7,9)", None, 0.0, not failing, "x"),
    ]
    sections = [
        Section("a", "Pooling", pooling_rows, 1.0, grouped=True),
        Section("e", "Accuracy", [Row("final | acc", 0.002, 0.01, True)], 2.0),
    ]
    return Results(
        sections=sections,
        same_weights=(
            fake_run("pytorch", 0, [0.5, 0.7]),
            fake_run("jax", 0, [0.5, 0.71]),
        ),
        seed_runs=[
            fake_run(fw, s, [0.6, 0.7 + 0.01 * s])
            for s in range(3)
            for fw in ("pytorch", "jax")
        ],
    )


def test_numbers_are_short_and_exact_at_zero():
    assert fmt(0.0) == "0"
    assert fmt(None) == "—"
    assert fmt(1.5e-7) == "1.50e-07"
    assert fmt(0.0123) == "0.0123"
    assert fmt(float("inf")) == "inf"


def test_grouped_table_totals_each_group():
    lines = grouped_table(fake_results().sections[0].rows)
    assert lines[0].startswith("| case | checks | failed | max abs diff | tolerance")
    assert "| max_pool2d values | 2 | 0 | 1.00e-07 | 1.00e-06 | yes |" in lines


def test_report_has_every_part(tmp_path):
    results = fake_results()
    path = write_report(results, tmp_path, {"command": "python -m parity"})
    text = path.read_text()
    assert text.startswith("# Parity report")
    assert "**PASS**: 4 of 4 checks passed." in text
    assert "| case | max abs diff | tolerance | pass | note |" in text
    assert "final \\| acc" in text  # a | in a case is escaped, not a new column
    assert "| 2 | 1.3000 | 1.2900 | -0.01 |" in text  # epoch 2's losses side by side
    assert "| ours (JAX) | 3 |" in text  # the seed statistics
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failure_is_reported():
    results = fake_results(failing=True)
    assert not results.passed
    text = render(results, {})
    assert "**FAIL**" in text and "**NO**" in text
    assert summary(results)[0][:3] == ("(a) Pooling", 3, 1)


@pytest.mark.parametrize("failing", [False, True])
def test_exit_code_follows_the_checks(monkeypatch, tmp_path, capsys, failing):
    monkeypatch.setattr(suite, "run_suite", lambda plan: fake_results(failing))
    code = cli.main(["--quick", "--output-dir", str(tmp_path), "--quiet"])
    assert code == (1 if failing else 0)
    assert (tmp_path / "report.md").exists()
    out = capsys.readouterr().out
    assert ("FAIL" in out) == failing and "checks" in out


def test_bad_options_exit_2():
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--epochs", "0"])
    assert e.value.code == 2
