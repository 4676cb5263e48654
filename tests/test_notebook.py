"""Execute notebooks/mechanism_analysis.ipynb on the small setting so it cannot rot."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_mechanism_notebook_runs_on_small_setting(tmp_path, monkeypatch):
    # A kernel spec written for this test that runs this very interpreter, so a fresh
    # machine needs no `ipykernel install` and a system-wide python3 spec cannot interfere.
    spec_dir = tmp_path / "jupyter" / "kernels" / "research-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "research (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MECH_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("MECH_RUN", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(ROOT / "notebooks" / "mechanism_analysis.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="research-test",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Mechanism analysis" in text and "tiny-a" in text
    assert (tmp_path / "out" / "plots" / "logit_lens.png").exists()
