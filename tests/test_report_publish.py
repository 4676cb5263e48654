"""Publishing a run's report into docs/results."""

from __future__ import annotations


def test_report_publishing_names_its_run(tmp_path):
    from research.report import main as report_main

    run = tmp_path / "runs" / "demo" / "r1"
    run.mkdir(parents=True)
    (run / "report.md").write_text("# Demo\n\n| a | b |\n")
    (run / "config.json").write_text('{"run": {"name": "r1"}}')
    out = tmp_path / "docs" / "demo.md"
    assert report_main([str(run), "--out", str(out)]) == 0
    text = out.read_text()
    assert f"Run folder `{run}`" in text and text.endswith("# Demo\n\n| a | b |\n")
    assert report_main([str(tmp_path), "--out", str(out)]) == 2
