"""infra/prefect.yaml names flows that exist, with parameters they accept and no secrets."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_deployments_resolve(prefect_server, monkeypatch) -> None:
    for key, value in prefect_server.items():  # importing the flows imports Prefect: point it at a real server
        monkeypatch.setenv(key, value)
    document = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    names = set()
    for deployment in document["deployments"]:
        path, _, attribute = deployment["entrypoint"].partition(":")
        assert (REPO / path).exists()
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), attribute)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment["parameters"]) <= accepted, deployment["name"]
        assert not any("secret" in key.lower() or "password" in key.lower() for key in deployment["parameters"])
        names.add(deployment["name"])
    assert names == {"hourly", "backfill", "calibrate"}
    hourly = next(d for d in document["deployments"] if d["name"] == "hourly")
    assert hourly["schedules"][0]["cron"] == "5 * * * *"
