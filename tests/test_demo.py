"""`onnx-snn demo` without MiniLM's real export or conversion (both stand-ins): it says whether it
exports or uses the cached export, exports only when nothing is cached, and prints each T's
conversion time."""

from __future__ import annotations

import pytest

from onnx_snn import demo, export


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """The cache in tmp_path; the exporter and the conversion recorded instead of run."""
    monkeypatch.setenv("ONNX_SNN_CACHE", str(tmp_path))
    calls = {"export": [], "fidelity": []}

    def export_minilm(form):
        calls["export"].append(form)
        path = export.minilm_export_path(form)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"exported")
        return path

    def minilm_fidelity(form, timesteps, path=None, **options):
        calls["fidelity"].append((form, timesteps, path))
        return {"timesteps": timesteps, "mean_cosine": 0.99, "min_cosine": 0.98, "convert_seconds": 1.25 * timesteps,
                "report": type("Report", (), {"format": lambda self: "the report"})()}

    monkeypatch.setattr(demo, "export_minilm", export_minilm)
    monkeypatch.setattr(demo, "minilm_fidelity", minilm_fidelity)
    return calls


def test_demo_exports_when_nothing_is_cached(stand_ins, capsys):
    assert demo.run("legacy17", (16, 8)) == 0
    out, err = capsys.readouterr()
    path = export.minilm_export_path("legacy17")
    assert "exporting all-MiniLM-L6-v2 (legacy17)" in err and "cached" not in err
    assert stand_ins["export"] == ["legacy17"]
    assert stand_ins["fidelity"] == [("legacy17", 16, path), ("legacy17", 8, path)]  # the export, not another
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["16"], ["8"])}
    assert rows["16"][-1] == "20.0" and rows["8"][-1] == "10.0"  # each T's conversion time, in seconds


def test_demo_uses_the_cached_export(stand_ins, capsys):
    path = export.minilm_export_path("legacy14")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"cached")
    assert demo.run("legacy14", (16,)) == 0
    _, err = capsys.readouterr()
    assert f"using the cached export of all-MiniLM-L6-v2 (legacy14): {path}" in err and "exporting" not in err
    assert stand_ins["export"] == [] and stand_ins["fidelity"] == [("legacy14", 16, path)]
    assert path.read_bytes() == b"cached"


def test_a_cached_export_is_returned_without_loading_the_model(tmp_path, monkeypatch):
    """export_minilm itself: a cached file is returned as it is; nothing loads torch or the weights."""
    def unexpected(*args, **kwargs):
        raise AssertionError("the cached export was redone")

    monkeypatch.setattr(export, "minilm", unexpected)
    path = export.minilm_export_path("dynamo", tmp_path)
    path.write_bytes(b"cached")
    assert export.export_minilm("dynamo", tmp_path) == path and path.read_bytes() == b"cached"
    with pytest.raises(ValueError, match="unknown export form"):
        export.minilm_export_path("legacy13")
