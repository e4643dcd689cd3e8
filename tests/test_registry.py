"""The registry's promotion gate, --force and rollback, on a real sqlite MLflow registry."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fpn.registry import (
    CHALLENGER,
    CHAMPION,
    GateRefused,
    ProvenanceConflict,
    champion_status,
    promote,
    register_version,
    rollback,
)
from fpn.registry_cli import registry_main


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory):
    """An empty sqlite MLflow store, migrated once (each test gets a copy: migrations are slow)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("empty") / "mlflow.db"
    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    return path


@pytest.fixture()
def registry(tmp_path, empty_db):
    import shutil

    from mlflow.tracking import MlflowClient

    shutil.copy(empty_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("ga-fpn")
    src = tmp_path / "model"
    src.mkdir()

    def add(test_dice: float | str | None, fingerprint: str = "fp1", split: str = "test",
            provenance: bool = True) -> str:
        tags = ({"store_fingerprint": fingerprint, "test_split": split, "test_keys_sha": "k1"}
                if provenance else {})
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
    assert registry_main(["--mlflow", uri, "promote", "ga-fpn"]) == 2  # no test_dice tag
    err = capsys.readouterr().err
    assert "has no numeric tag 'test_dice'" in err and err.count("\n") == 1
    assert registry_main(["--mlflow", uri, "promote", "nope"]) == 2
    assert registry_main(["--mlflow", uri, "promote", "ga-fpn", "--version", "99"]) == 2


# -- gate bypasses (issue 13): each refused without --force, recorded with it --------------------

def _history(client) -> list[dict]:
    import json

    return json.loads(client.get_registered_model("ga-fpn").tags["fpn.champion_history"])


def _aliases(client) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model("ga-fpn").aliases.items()}


def test_direction_comes_from_the_metric_not_from_a_flag(registry, capsys):
    uri, client, add = registry
    v1, v2 = add(0.80), add(0.70)
    promote(uri, "ga-fpn", v1)
    before = _aliases(client)
    for flag in (["--mode", "min"], ["--direction", "lower"], ["--metric", "val_dice"]):
        assert registry_main(["--mlflow", uri, "promote", "ga-fpn", "--version", v2, *flag]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "--force" in err, err
    assert _aliases(client) == before  # nothing moved, no challenger either
    with pytest.raises(GateRefused, match="lower is better for test_dice"):
        promote(uri, "ga-fpn", v2, direction="min")
    # the agreeing direction is no override
    assert not promote(uri, "ga-fpn", v2, direction="higher").promoted
    # forced: promoted, and the override is recorded on the version and in the history
    assert registry_main(["--mlflow", uri, "promote", "ga-fpn", "--version", v2, "--mode", "min",
                          "--force"]) == 0
    assert _champion(client) == v2
    tags = client.get_model_version("ga-fpn", v2).tags
    assert tags["fpn.forced_promotion"] == "true" and "lower is better" in tags["fpn.gate_override"]
    last = _history(client)[-1]
    assert last["event"] == "force" and last["direction"] == "lower" and last["overrides"]


def test_hd95_is_lower_is_better(registry):
    uri, client, add = registry
    v1 = add(0.80)
    client.set_model_version_tag("ga-fpn", v1, "test_hd95", "5.0")
    promote(uri, "ga-fpn", v1)
    v2 = add(0.70)
    client.set_model_version_tag("ga-fpn", v2, "test_hd95", "3.0")
    d = promote(uri, "ga-fpn", v2, metric="test_hd95", force=True)
    assert d.promoted and "beats" in d.reason and "lower is better" in d.reason
    assert "metric test_hd95 instead of the gate's test_dice" in d.reason  # an override, recorded
    with pytest.raises(GateRefused, match="no known direction"):
        promote(uri, "ga-fpn", v1, metric="loss", force=True)


def test_champion_without_the_metric_is_not_replaced(registry, capsys):
    uri, client, add = registry
    v1 = add(None)
    assert promote(uri, "ga-fpn", v1, force=True).promoted  # an unevaluated champion, forced
    v2 = add(0.90)
    assert registry_main(["--mlflow", uri, "promote", "ga-fpn", "--version", v2]) == 2
    assert f"champion version {v1} has no numeric tag 'test_dice'" in capsys.readouterr().err
    assert _champion(client) == v1 and CHALLENGER not in _aliases(client)
    d = promote(uri, "ga-fpn", v2, force=True)
    assert d.promoted and d.reason.startswith("forced")
    assert client.get_model_version("ga-fpn", v2).tags["fpn.forced_promotion"] == "true"


def test_candidate_without_a_finite_metric_is_refused(registry, capsys):
    uri, client, add = registry
    v1 = add(0.80)
    promote(uri, "ga-fpn", v1)
    for value in (None, "inf", "nan", "n/a"):
        v = add(value)
        assert registry_main(["--mlflow", uri, "promote", "ga-fpn", "--version", v]) == 2
        assert f"candidate version {v} has no numeric tag" in capsys.readouterr().err
        assert _aliases(client) == {CHAMPION: v1}


def test_versions_without_provenance_are_not_comparable(registry, capsys):
    uri, client, add = registry
    v1 = add(0.50, provenance=False)
    with pytest.raises(GateRefused, match="has no provenance tag store_fingerprint"):
        promote(uri, "ga-fpn", v1)  # not even as the first champion
    promote(uri, "ga-fpn", v1, force=True)
    v2 = add(0.90, provenance=False)  # None == None is no proof of the same test data
    assert registry_main(["--mlflow", uri, "promote", "ga-fpn", "--version", v2]) == 2
    err = capsys.readouterr().err
    assert f"candidate version {v2} has no provenance" in err
    assert f"champion version {v1} has no provenance" in err
    assert _champion(client) == v1
    # one side only: refused as well
    v3 = add(0.95)
    with pytest.raises(GateRefused, match=f"champion version {v1} has no provenance"):
        promote(uri, "ga-fpn", v3)
    assert _champion(client) == v1


def test_out_of_gate_move_is_flagged_and_rollback_goes_back(registry, capsys):
    uri, client, add = registry
    v1, v2, v3 = add(0.7), add(0.8), add(0.9)
    for v in (v1, v2, v3):
        assert promote(uri, "ga-fpn", v).promoted
    client.set_registered_model_alias("ga-fpn", CHAMPION, v2)  # as the MLflow UI does
    assert "moved outside the gate" in champion_status(uri, "ga-fpn")
    assert registry_main(["--mlflow", uri, "list", "ga-fpn"]) == 0
    out = capsys.readouterr().out
    assert "outside-gate" in out and "WARNING: champion alias -> version 2" in out
    # the gate does not compare against a champion it did not choose
    v4 = add(0.95)
    with pytest.raises(GateRefused, match="moved outside the gate"):
        promote(uri, "ga-fpn", v4)
    # rollback follows the gate's history from where the alias is: back to v1, never forward
    d = rollback(uri, "ga-fpn")
    assert d.version == v1 and _champion(client) == v1 and "outside the gate" in d.reason
    assert champion_status(uri, "ga-fpn") is None
    with pytest.raises(GateRefused, match="no previous champion"):
        rollback(uri, "ga-fpn")


def test_rollback_from_a_never_gated_champion_returns_to_the_gates(registry):
    uri, client, add = registry
    v1, v2, v3 = add(0.7), add(0.8), add(0.1)
    promote(uri, "ga-fpn", v1)
    promote(uri, "ga-fpn", v2)
    client.set_registered_model_alias("ga-fpn", CHAMPION, v3)  # a worse model, by hand
    assert rollback(uri, "ga-fpn").version == v2 and _champion(client) == v2
    assert rollback(uri, "ga-fpn").version == v1


def test_rollback_to_a_deleted_version_fails_clearly(registry, capsys):
    uri, client, add = registry
    v1, v2 = add(0.7), add(0.8)
    promote(uri, "ga-fpn", v1)
    promote(uri, "ga-fpn", v2)
    client.delete_model_version("ga-fpn", v1)
    assert registry_main(["--mlflow", uri, "rollback", "ga-fpn"]) == 2
    err = capsys.readouterr().err
    assert f"cannot roll back to version {v1}: it no longer exists (deleted)" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _champion(client) == v2


def test_provenance_tags_are_written_once(registry, tmp_path):
    uri = registry[0]
    model = tmp_path / "registered"
    model.mkdir()
    tags = {"store_fingerprint": "fp1", "test_split": "test", "test_keys_sha": "k1",
            "test_dice": "0.8", "git_revision": "abc"}
    mv = register_version(uri, "ga-fpn", model.as_uri(), "run1", tags=tags, description="card 1")
    # the same model again (a resumed search): the same version, nothing rewritten
    again = register_version(uri, "ga-fpn", model.as_uri(), "run1",
                             tags={**tags, "git_revision": "def", "study": "s"},
                             description="card 2")
    assert again.version == mv.version
    assert again.tags["git_revision"] == "abc" and again.tags["study"] == "s"
    assert again.description == "card 1"
    # another store's fingerprint on the same model: refused, the tags stay
    with pytest.raises(ProvenanceConflict, match="store_fingerprint 'fp1' .* vs 'fp2'"):
        register_version(uri, "ga-fpn", model.as_uri(), "run1",
                         tags={**tags, "store_fingerprint": "fp2", "test_dice": "0.9"})
    from mlflow.tracking import MlflowClient

    kept = MlflowClient(uri, registry_uri=uri).get_model_version("ga-fpn", mv.version).tags
    assert kept["store_fingerprint"] == "fp1" and kept["test_dice"] == "0.8"
