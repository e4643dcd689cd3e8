"""The registry's promotion gate, --force and rollback, on a real sqlite MLflow registry."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fpn.registry import CHALLENGER, CHAMPION, promote, registry_main, rollback


@pytest.fixture()
def registry(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("ga-fpn")
    src = tmp_path / "model"
    src.mkdir()

    def add(test_dice: float | None, fingerprint: str = "fp1", split: str = "test") -> str:
        tags = {"store_fingerprint": fingerprint, "test_split": split, "test_keys_sha": "k1"}
        if test_dice is not None:
            tags["test_dice"] = str(test_dice)
        return str(client.create_model_version("ga-fpn", src.as_uri(), tags=tags).version)

    return uri, client, add


def _champion(client) -> str | None:
    value = client.get_registered_model("ga-fpn").aliases.get(CHAMPION)
    return None if value is None else str(value)


def test_gate_never_promotes_a_worse_candidate(registry):
    uri, client, add = registry
    v1 = add(0.80)
    assert promote(uri, "ga-fpn", v1).promoted  # no champion yet
    v2 = add(0.70)
    d = promote(uri, "ga-fpn", v2)
    assert not d.promoted and d.alias == CHALLENGER and "does not beat" in d.reason
    assert _champion(client) == v1
    assert str(client.get_registered_model("ga-fpn").aliases[CHALLENGER]) == v2
    v3 = add(0.90)
    assert promote(uri, "ga-fpn").promoted  # default candidate: the newest
    assert _champion(client) == v3


def test_gate_refuses_a_different_test_set(registry):
    uri, client, add = registry
    v1 = add(0.50)
    promote(uri, "ga-fpn", v1)
    v2 = add(0.99, fingerprint="other-store")
    d = promote(uri, "ga-fpn", v2)
    assert not d.promoted and "not comparable" in d.reason and "store_fingerprint" in d.reason
    assert _champion(client) == v1


def test_force_is_recorded_and_rollback_returns_the_previous_champion(registry, capsys):
    uri, client, add = registry
    v1, v2 = add(0.80), add(0.60)
    promote(uri, "ga-fpn", v1)
    # through the CLI, as `python -m fpn registry ...`
    assert registry_main(["--mlflow", uri, "promote", "ga-fpn", "--version", v2]) == 0
    assert "stays challenger" in capsys.readouterr().out
    assert _champion(client) == v1
    assert registry_main(["--mlflow", uri, "promote", "ga-fpn", "--version", v2, "--force"]) == 0
    assert _champion(client) == v2
    assert client.get_model_version("ga-fpn", v2).tags["fpn.forced_promotion"] == "true"
    assert registry_main(["--mlflow", uri, "rollback", "ga-fpn"]) == 0
    assert _champion(client) == v1
    assert '"rollback"' in client.get_registered_model("ga-fpn").tags["fpn.champion_history"]
    with pytest.raises(ValueError, match="no previous champion"):
        rollback(uri, "ga-fpn")
    assert registry_main(["--mlflow", uri, "list", "ga-fpn"]) == 0
    assert "champion" in capsys.readouterr().out


def test_errors_exit_non_zero(registry, capsys):
    uri, _, add = registry
    add(None)
    assert registry_main(["--mlflow", uri, "promote", "ga-fpn"]) == 1  # no test_dice tag
    assert "has no numeric tag 'test_dice'" in capsys.readouterr().err
    assert registry_main(["--mlflow", uri, "promote", "nope"]) == 1
    assert registry_main(["--mlflow", uri, "promote", "ga-fpn", "--version", "99"]) == 1
