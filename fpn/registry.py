"""The MLflow model registry: versions with provenance tags, a gated ``champion`` alias, rollback.

Every version of a registered model ``<task>-<model>`` is an fpn pyfunc ensemble (input an OCT
volume ``(S, D, W)`` or a batch ``(B, S, D, W)``, output the en-face probability map ``(S, W)`` /
``(B, S, W)``). Its tags say where it came from (ratio, ssl, validation and test Dice, store
fingerprint, test split, study, trial, git revision) and its description is the model card. The
provenance tags are written once, when the version is registered, and never rewritten: registering
the same model again with a different provenance (another store, another test set) is refused.

Promotion is gated on :data:`GATE_METRIC` (``test_dice``); the direction of a metric comes from the
metric itself (:data:`METRIC_DIRECTIONS`: Dice higher is better, HD95 lower is better), never from
the caller. ``champion`` moves to a candidate only if the candidate beats the current champion on
that metric measured on the same test split of the same store; a better-looking candidate on other
test data becomes ``challenger``. The gate refuses (:class:`GateRefused`, nothing changed) when the
metric or the provenance tags are missing on either side, or when the champion alias was moved
outside the gate (MLflow UI or API). ``force=True`` (``--force``) overrides any of this, including
another metric or direction, and the override is recorded on the version
(``fpn.forced_promotion``, ``fpn.gate_override``) and in the history.

The registered model's tag ``fpn.champion_stack`` (JSON list of versions, last = the gate's current
champion) is the gate's record: ``list`` flags a champion alias that differs from it, ``rollback``
follows it back (never "the previous version number") and refuses a version that was deleted.
``fpn.champion_history`` keeps an append-only log of the events (the newest that fit in a tag).

Its command line (``python -m fpn registry {list, promote, rollback} NAME ...``) is
:mod:`fpn.registry_cli`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fpn import tags as T

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "COMPARABILITY_TAGS",
    "DIRECTION_ALIASES",
    "GATE_METRIC",
    "METRIC_DIRECTIONS",
    "PROVENANCE_TAGS",
    "Decision",
    "GateRefused",
    "ProvenanceConflict",
    "champion_status",
    "list_versions",
    "promote",
    "register_version",
    "rollback",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
#: a metric is comparable between versions only when these tags are present and equal
COMPARABILITY_TAGS = (T.VERSION_STORE_FINGERPRINT, T.VERSION_TEST_SPLIT, T.VERSION_TEST_KEYS_SHA)
#: the metric the gate compares unless overridden with ``force``
GATE_METRIC = T.VERSION_TEST_DICE
#: the direction of each known metric: ``higher`` or ``lower`` is better
METRIC_DIRECTIONS: dict[str, str] = {
    "test_dice": "higher", "val_dice": "higher", "dice": "higher", "dice_mean": "higher",
    "test_hd95": "lower", "val_hd95": "lower", "hd95": "lower", "hd95_mean": "lower",
}
#: version tags that say what a version is; once written, a different value is refused
PROVENANCE_TAGS = COMPARABILITY_TAGS + (
    T.VERSION_RATIO, T.VERSION_SSL, T.VERSION_STUDY, T.VERSION_TRIAL, T.VERSION_MLFLOW_RUN_ID,
    T.VERSION_PRETRAINED, T.VERSION_VAL_DICE, T.VERSION_TEST_DICE, T.VERSION_TEST_DICE_STD)
STACK_TAG = T.CHAMPION_STACK
HISTORY_TAG = T.CHAMPION_HISTORY
SOURCE_TAG = T.MODEL_URI
_TAG_CHARS = 4900  # registered-model tag values are VARCHAR(5000) in MLflow's SQL stores
DIRECTION_ALIASES = {"max": "higher", "min": "lower", "higher": "higher", "lower": "lower"}


class GateRefused(ValueError):
    """The gate (or rollback) refused; the registry was not changed."""


class ProvenanceConflict(ValueError):
    """A registered version already carries different provenance tags; nothing was rewritten."""


@dataclass(frozen=True)
class Decision:
    """What ``promote`` or ``rollback`` did: ``alias`` is ``champion`` or ``challenger``."""

    name: str
    version: str
    alias: str
    promoted: bool
    reason: str
    previous_champion: str | None = None

    def message(self) -> str:
        what = "is now champion" if self.promoted else "stays challenger (champion unchanged)"
        return f"{self.name} version {self.version} {what}: {self.reason}"


def _client(tracking_uri: str | None) -> Any:
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        from fpn.config import default_mlflow_uri

        uri = default_mlflow_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def register_version(tracking_uri: str, name: str, model_uri: str, run_id: str, *,
                     tags: Mapping[str, Any], description: str = "") -> Any:
    """Register ``model_uri`` as a version of ``name``, once.

    A model already registered from the same URI is returned as it is: tags it lacks are added,
    tags it has are never rewritten, and its description is set only if it has none.

    Returns:
        The ``ModelVersion``.

    Raises:
        ProvenanceConflict: the existing version carries a different value of a
            :data:`PROVENANCE_TAGS` tag (e.g. another store fingerprint); nothing is written.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.create_registered_model(
            name, description="fpn en-face segmentation ensembles; input OCT (S, D, W), output "
            "probability map (S, W). See each version's description (model card).")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
            raise
    str_tags = {k: str(v) for k, v in tags.items()}
    str_tags[SOURCE_TAG] = model_uri
    existing = [v for v in client.search_model_versions(f"name='{name}'")
                if v.tags.get(SOURCE_TAG) == model_uri]
    if not existing:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        mv = mlflow.register_model(model_uri, name, tags=str_tags)
        if description:
            client.update_model_version(name, mv.version, description=description)
        return client.get_model_version(name, mv.version)

    mv = min(existing, key=lambda v: int(v.version))
    conflicts = [f"{k} {mv.tags[k]!r} (registered) vs {v!r} (now)" for k, v in str_tags.items()
                 if k in PROVENANCE_TAGS and k in mv.tags and mv.tags[k] != v]
    if conflicts:
        raise ProvenanceConflict(
            f"{name} version {mv.version} ({model_uri}) is already registered with other "
            f"provenance: {'; '.join(conflicts)}; its tags are never rewritten (register the "
            "model from a new run instead)")
    for k, v in str_tags.items():
        if k not in mv.tags:  # write once: add what is missing, keep what is there
            client.set_model_version_tag(name, mv.version, k, v)
    if description and not mv.description:
        client.update_model_version(name, mv.version, description=description)
    return client.get_model_version(name, mv.version)


def _metric(version: Any, metric: str) -> float:
    """The version's metric tag as a float; NaN when missing, not a number or not finite."""
    try:
        value = float(version.tags[metric])
    except (KeyError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _missing_provenance(version: Any) -> list[str]:
    return [t for t in COMPARABILITY_TAGS if not str(version.tags.get(t) or "").strip()]


def _stack(client: Any, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    try:
        return [str(v) for v in json.loads(tags.get(STACK_TAG, "[]"))]
    except ValueError:
        return []


def _fit(items: list[Any]) -> str:
    """JSON of the newest ``items`` that fit in one registered-model tag value."""
    while True:
        text = json.dumps(items)
        if len(text) <= _TAG_CHARS or len(items) <= 1:
            return text
        items = items[1:]


def _record(client: Any, name: str, stack: list[str], event: dict[str, Any]) -> None:
    tags = client.get_registered_model(name).tags
    try:
        history = json.loads(tags.get(HISTORY_TAG, "[]"))
    except ValueError:
        history = []
    history = history + [{**event, "at": _now()}]
    client.set_registered_model_tag(name, STACK_TAG, _fit(stack))
    client.set_registered_model_tag(name, HISTORY_TAG, _fit(history))


def _aliases(client: Any, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def _all_versions(client: Any, name: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_model_versions(f"name='{name}'"))
    except MlflowException as exc:
        raise ValueError(f"registered model {name!r}: {exc.message}") from exc


def _version(client: Any, name: str, version: str | None) -> Any:
    versions = _all_versions(client, name)
    if not versions:
        raise ValueError(f"registered model {name!r} does not exist or has no versions")
    if version is None:
        return max(versions, key=lambda v: int(v.version))
    for v in versions:
        if str(v.version) == str(version):
            return v
    raise ValueError(f"registered model {name!r} has no version {version} "
                     f"(versions: {', '.join(sorted((str(v.version) for v in versions), key=int))})")


def _gate_state(client: Any, name: str) -> tuple[str | None, list[str], str | None]:
    """(champion alias, the gate's stack, why the alias disagrees with the gate or None)."""
    champion = _aliases(client, name).get(CHAMPION)
    stack = _stack(client, name)
    gate_last = stack[-1] if stack else None
    if champion == gate_last:
        return champion, stack, None
    existing = {str(v.version) for v in _all_versions(client, name)}
    if champion is None:
        if gate_last not in existing:  # MLflow drops a deleted version's aliases with it
            return None, stack, None
        return None, stack, (f"there is no champion alias although the gate last made version "
                             f"{gate_last} champion: the alias was removed outside the gate")
    if gate_last is None:
        return champion, stack, (f"champion alias -> version {champion} was set outside the gate "
                                 "(the gate has no record of a champion)")
    return champion, stack, (f"champion alias -> version {champion}, but the gate last made "
                             f"version {gate_last} champion: the alias was moved outside the "
                             "gate (MLflow UI or API)")


def champion_status(tracking_uri: str | None, name: str) -> str | None:
    """None when the champion alias is where the gate put it, else what is wrong (one line)."""
    client = _client(tracking_uri)
    _version(client, name, None)
    return _gate_state(client, name)[2]


def _direction(metric: str, direction: str | None) -> tuple[str, list[str]]:
    """(the direction used, the overrides it implies); unknown names raise."""
    if direction is not None:
        if direction not in DIRECTION_ALIASES:
            raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
        direction = DIRECTION_ALIASES[direction]
    overrides = []
    if metric != GATE_METRIC:
        overrides.append(f"metric {metric} instead of the gate's {GATE_METRIC}")
    known = METRIC_DIRECTIONS.get(metric)
    if known is None:
        if direction is None:
            raise GateRefused(
                f"metric {metric!r} has no known direction (known: "
                f"{', '.join(sorted(METRIC_DIRECTIONS))}); give its direction with --force")
        return direction, overrides
    if direction is not None and direction != known:
        overrides.append(f"{direction} is better for {metric}, whose own direction is {known}")
    return direction or known, overrides


def promote(tracking_uri: str | None, name: str, version: str | int | None = None, *,
            metric: str = GATE_METRIC, direction: str | None = None,
            force: bool = False) -> Decision:
    """Move ``champion`` to ``version`` (default: the newest) if it beats the champion.

    Args:
        tracking_uri: MLflow tracking/registry URI.
        name: registered model name.
        version: candidate version; None: the newest.
        metric: version tag compared; anything but :data:`GATE_METRIC` is an override.
        direction: ``higher``/``lower`` (or ``max``/``min``); None: the metric's own
            (:data:`METRIC_DIRECTIONS`); a different one is an override.
        force: promote whatever the gate says; every override is recorded (version tags
            ``fpn.forced_promotion`` and ``fpn.gate_override``, and the history).

    Returns:
        The :class:`Decision` (champion, or challenger when the candidate does not beat the
        champion or was measured on other test data).

    Raises:
        GateRefused: without ``force``: an override of metric or direction, the metric or a
            provenance tag missing on the candidate or the champion, or a champion alias moved
            outside the gate. Nothing is changed.
        ValueError: unknown model or version.
    """
    client = _client(tracking_uri)
    cand = _version(client, name, None if version is None else str(version))
    v = str(cand.version)
    used_direction, overrides = _direction(metric, direction)
    better_word = "higher" if used_direction == "higher" else "lower"
    champion, _, moved = _gate_state(client, name)
    if champion == v and moved is None:
        return Decision(name, v, CHAMPION, True, "it already is the champion", champion)

    problems = list(overrides)
    if moved:
        problems.append(moved)
    cand_value = _metric(cand, metric)
    if math.isnan(cand_value):
        problems.append(f"candidate version {v} has no numeric tag {metric!r}")
    if missing := _missing_provenance(cand):
        problems.append(f"candidate version {v} has no provenance tag {', '.join(missing)}")
    champ = champ_value = None
    differs: list[str] = []
    if champion is not None and champion != v:
        champ = _version(client, name, champion)
        champ_value = _metric(champ, metric)
        if math.isnan(champ_value):
            problems.append(f"champion version {champion} has no numeric tag {metric!r}")
        if missing := _missing_provenance(champ):
            problems.append(f"champion version {champion} has no provenance tag "
                            f"{', '.join(missing)}")
        differs = [t for t in COMPARABILITY_TAGS
                   if t not in missing and t not in _missing_provenance(cand)
                   and cand.tags.get(t) != champ.tags.get(t)]
    if problems and not force:
        raise GateRefused(f"{name} version {v} not promoted: {'; '.join(problems)}; nothing "
                          "changed (--force overrides and is recorded)")

    if champ is None:
        better, reason = True, ("there was no champion" if champion is None
                                else "it already is the champion")
    elif differs:
        better = False
        reason = (f"not comparable with champion version {champion}: "
                  + ", ".join(f"{t} {cand.tags.get(t)!r} vs {champ.tags.get(t)!r}" for t in differs))
    elif math.isnan(cand_value) or math.isnan(champ_value):
        better, reason = False, f"{metric} cannot be compared"
    else:
        better = cand_value > champ_value if used_direction == "higher" else cand_value < champ_value
        reason = (f"{metric} {cand_value:.4f} {'beats' if better else 'does not beat'} champion "
                  f"version {champion}'s {champ_value:.4f} ({better_word} is better) on the same "
                  "test data")
    event: dict[str, Any] = {"version": v, "metric": metric, "direction": used_direction}
    if force and (problems or not better):
        event["overrides"] = problems + ([] if better else [reason])
        reason = f"forced ({'; '.join(problems + [reason])})"

    if not (better or force):
        client.set_registered_model_alias(name, CHALLENGER, v)
        client.set_model_version_tag(name, v, T.GATE, reason)
        _record(client, name, _stack(client, name), {"event": "challenger", **event,
                                                     "reason": reason})
        return Decision(name, v, CHALLENGER, False, reason, champion)

    forced = force and (bool(problems) or not better)
    client.set_registered_model_alias(name, CHAMPION, v)
    if _aliases(client, name).get(CHALLENGER) == v:
        client.delete_registered_model_alias(name, CHALLENGER)
    client.set_model_version_tag(name, v, T.PROMOTED_AT, _now())
    client.set_model_version_tag(name, v, T.GATE, reason[:4900])
    if forced:
        client.set_model_version_tag(name, v, T.FORCED_PROMOTION, "true")
        client.set_model_version_tag(name, v, T.GATE_OVERRIDE, reason[:4900])
    stack = [s for s in _stack(client, name) if s != v] + [v]
    _record(client, name, stack, {"event": "force" if forced else "promote", **event,
                                  "previous": champion, "reason": reason[:1000]})
    return Decision(name, v, CHAMPION, True, reason, champion)


def rollback(tracking_uri: str | None, name: str) -> Decision:
    """Give ``champion`` back to the gate's previous champion, following its recorded stack.

    The current champion's place in the stack decides: the version before it becomes champion.
    A champion alias moved outside the gate to a version the gate never promoted goes back to the
    gate's last champion; a missing champion alias counts as the gate's last champion.

    Raises:
        GateRefused: no recorded history, no previous champion, or the version to go back to
            no longer exists (deleted); nothing is changed.
    """
    client = _client(tracking_uri)
    _version(client, name, None)  # checks that the model exists
    current, stack, moved = _gate_state(client, name)
    if not stack:
        raise GateRefused(f"{name}: the gate has no recorded champion history to roll back"
                          + (f" ({moved})" if moved else ""))
    if current is not None and current not in stack:
        target, keep = stack[-1], stack  # undo the move outside the gate
    else:
        at = stack.index(current) if current is not None else len(stack) - 1
        if at == 0:
            raise GateRefused(f"{name}: champion version {stack[0]} has no previous champion in "
                              "the gate's history")
        target, keep = stack[at - 1], stack[:at]
    existing = {str(v.version) for v in _all_versions(client, name)}
    if target not in existing:
        raise GateRefused(f"{name}: cannot roll back to version {target}: it no longer exists "
                          "(deleted); nothing changed (choose a version with `registry promote "
                          "--version N --force`)")
    client.set_registered_model_alias(name, CHAMPION, target)
    if current is not None and current in existing:
        client.set_model_version_tag(name, current, T.ROLLED_BACK_AT, _now())
    reason = f"rolled back from version {current}" if current else "rolled back"
    if moved:
        reason += f" ({moved})"
    _record(client, name, keep, {"event": "rollback", "version": target, "from": current,
                                 "outside_gate": bool(moved)})
    return Decision(name, target, CHAMPION, True, reason, current)


def list_versions(tracking_uri: str | None, name: str) -> list[dict[str, Any]]:
    """One row per version: version, aliases, ratio, ssl, val/test Dice, store, run id, forced,
    and ``gate``: ``outside-gate`` on a champion the gate did not put there."""
    client = _client(tracking_uri)
    versions = sorted(_version_list(client, name), key=lambda v: int(v.version))
    aliases: dict[str, list[str]] = {}
    for alias, ver in _aliases(client, name).items():
        aliases.setdefault(ver, []).append(alias)
    champion, _, moved = _gate_state(client, name)
    rows = []
    for v in versions:
        rows.append({
            "version": str(v.version), "aliases": ",".join(sorted(aliases.get(str(v.version), []))),
            "ratio": v.tags.get(T.VERSION_RATIO, ""), "ssl": v.tags.get(T.VERSION_SSL, ""),
            "val_dice": v.tags.get(T.VERSION_VAL_DICE, ""),
            "test_dice": v.tags.get(T.VERSION_TEST_DICE, ""),
            "store": v.tags.get(T.VERSION_STORE_FINGERPRINT, "")[:12], "run_id": v.run_id or "",
            "forced": v.tags.get(T.FORCED_PROMOTION, ""),
            "gate": "outside-gate" if moved and str(v.version) == champion else "",
        })
    return rows


def _version_list(client: Any, name: str) -> list[Any]:
    _version(client, name, None)
    return _all_versions(client, name)
