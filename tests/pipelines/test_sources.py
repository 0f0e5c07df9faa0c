"""Source kinds: found by their URI, listed for planning and in the pipeline alike; a new kind is one file."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import pipelines.sources
from pipelines.pipeline import ScoringConfig, run_scoring
from pipelines.sources import SourceError, open_source
from pipelines.sources.folder import FolderSource
from pipelines.sources.manifest import ManifestSource
from pipelines.store import OutputStore
from scoring import ScoringSettings
from tests.pipelines.conftest import TINY


@pytest.fixture
def glob_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test-only ``glob:`` source registered for one test, as if it shipped in pipelines/sources/."""
    monkeypatch.setattr(pipelines.sources, "_KINDS", list(pipelines.sources._KINDS))
    monkeypatch.delitem(sys.modules, "tests.pipelines.glob_source", raising=False)
    importlib.import_module("tests.pipelines.glob_source")


def test_a_uri_names_its_kind() -> None:
    assert isinstance(open_source("s3://feed/cameras/"), FolderSource)
    assert isinstance(open_source("/data/feed.CSV"), ManifestSource)
    assert isinstance(open_source("gs://feed/2026-11-26.parquet"), ManifestSource)
    assert open_source("s3://feed/cameras/").name == "cameras"
    assert open_source("/data/feed.jsonl").name == "feed.jsonl"
    assert open_source("/data/a").key != open_source("/data/b").key
    assert open_source("/data/a").key == open_source("/data/a").key  # stable: outputs of a re-run replace its own


def test_missing_sources_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is not a folder, prefix or manifest"):
        open_source(str(tmp_path / "nope")).check()
    with pytest.raises(SourceError, match=r"manifest .* does not exist"):
        open_source(str(tmp_path / "nope.csv")).check()


@pytest.mark.usefixtures("glob_kind")
def test_a_new_source_kind_is_one_file_planning_and_pipeline_alike(odd_folder: Path, tmp_path: Path) -> None:
    uri = f"glob:{odd_folder}/cam-*/*.png"
    source = open_source(uri)
    assert type(source).__name__ == "GlobSource"
    planned = sorted(Path(ref.uri).name for ref in source.list())
    assert planned == ["0.png", "1.png", "2.png", "3.png", "truncated.png"]
    summary = run_scoring(ScoringConfig(source=uri, out=str(tmp_path / "out"), scoring=ScoringSettings(model=TINY)))
    assert (summary.listed, summary.scored, dict(summary.rejected)) == (5, 4, {"decode/truncated": 1})
    scored = OutputStore(str(tmp_path / "out")).read_table("scores").column("uri").to_pylist()
    assert sorted(Path(uri).name for uri in scored) == ["0.png", "1.png", "2.png", "3.png"]
