"""The MLflow model registry: versions with provenance tags, a gated ``champion`` alias, rollback.

Every version of a registered model ``<task>-<model>`` is an fpn pyfunc ensemble (input an OCT
volume ``(S, D, W)`` or a batch ``(B, S, D, W)``, output the en-face probability map ``(S, W)`` /
``(B, S, W)``). Its tags say where it came from (ratio, ssl, validation and test Dice, store
fingerprint, test split, study, trial, git revision) and its description is the model card.

Promotion is gated: ``champion`` moves to a candidate only if the candidate beats the current
champion on the same metric measured on the same test split of the same store; otherwise the
candidate becomes ``challenger``. ``--force`` overrides the gate and is recorded. The registered
model's tag ``fpn.champion_stack`` (JSON list of versions, last = current champion) makes
``rollback`` possible; ``fpn.champion_history`` keeps an append-only log of the events.

CLI: ``python -m fpn registry {list, promote, rollback} NAME ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "COMPARABILITY_TAGS",
    "Decision",
    "list_versions",
    "promote",
    "register_version",
    "registry_main",
    "rollback",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
#: a metric is comparable between versions only when these tags are equal
COMPARABILITY_TAGS = ("store_fingerprint", "test_split", "test_keys_sha")
STACK_TAG = "fpn.champion_stack"
HISTORY_TAG = "fpn.champion_history"
SOURCE_TAG = "fpn.model_uri"
_HISTORY_KEEP = 40  # events kept in the history tag (tag values are length-limited)


@dataclass(frozen=True)
class Decision:
    """What ``promote`` did: ``alias`` is ``champion`` or ``challenger``."""

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
    """Register ``model_uri`` as a version of ``name`` (once: a model already registered from
    the same URI gets its tags and description refreshed instead of a second version).

    Returns:
        The ``ModelVersion``.
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
    if existing:
        mv = existing[0]
    else:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        mv = mlflow.register_model(model_uri, name, tags=str_tags)
    for k, v in str_tags.items():
        if mv.tags.get(k) != v:
            client.set_model_version_tag(name, mv.version, k, v)
    if description:
        client.update_model_version(name, mv.version, description=description)
    return client.get_model_version(name, mv.version)


def _metric(version: Any, metric: str) -> float:
    try:
        value = float(version.tags[metric])
    except (KeyError, ValueError):
        return math.nan
    return value


def _stack(client: Any, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    try:
        return [str(v) for v in json.loads(tags.get(STACK_TAG, "[]"))]
    except ValueError:
        return []


def _record(client: Any, name: str, stack: list[str], event: dict[str, Any]) -> None:
    tags = client.get_registered_model(name).tags
    try:
        history = json.loads(tags.get(HISTORY_TAG, "[]"))
    except ValueError:
        history = []
    history = (history + [{**event, "at": _now()}])[-_HISTORY_KEEP:]
    client.set_registered_model_tag(name, STACK_TAG, json.dumps(stack))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


def _aliases(client: Any, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def _version(client: Any, name: str, version: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        raise ValueError(f"registered model {name!r}: {exc.message}") from exc
    if not versions:
        raise ValueError(f"registered model {name!r} does not exist or has no versions")
    if version is None:
        return max(versions, key=lambda v: int(v.version))
    for v in versions:
        if str(v.version) == str(version):
            return v
    raise ValueError(f"registered model {name!r} has no version {version} "
                     f"(versions: {', '.join(sorted((str(v.version) for v in versions), key=int))})")


def promote(tracking_uri: str | None, name: str, version: str | int | None = None, *,
            metric: str = "test_dice", mode: str = "max", force: bool = False) -> Decision:
    """Move ``champion`` to ``version`` (default: the newest) if it beats the champion.

    Args:
        tracking_uri: MLflow tracking/registry URI.
        name: registered model name.
        version: candidate version; None: the newest.
        metric: version tag compared (``test_dice`` by default).
        mode: ``max`` (higher is better) or ``min``.
        force: promote whatever the comparison says (recorded as tag ``fpn.forced_promotion``).

    Returns:
        The :class:`Decision`.

    Raises:
        ValueError: unknown model or version, or a candidate without the metric (unless forced).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    client = _client(tracking_uri)
    cand = _version(client, name, None if version is None else str(version))
    v = str(cand.version)
    cand_value = _metric(cand, metric)
    if math.isnan(cand_value) and not force:
        raise ValueError(f"{name} version {v} has no numeric tag {metric!r}; "
                         "evaluate it first or use --force")
    champion = _aliases(client, name).get(CHAMPION)
    if champion == v:
        return Decision(name, v, CHAMPION, True, "it already is the champion", champion)

    reason = ""
    promote_it = force
    if champion is None:
        promote_it, reason = True, "there was no champion"
    else:
        champ = _version(client, name, champion)
        champ_value = _metric(champ, metric)
        differs = [t for t in COMPARABILITY_TAGS if cand.tags.get(t) != champ.tags.get(t)]
        if differs:
            reason = (f"not comparable with champion version {champion}: "
                      + ", ".join(f"{t} {cand.tags.get(t)!r} vs {champ.tags.get(t)!r}" for t in differs))
        elif math.isnan(champ_value):
            promote_it, reason = True, f"champion version {champion} has no {metric}"
        else:
            better = cand_value > champ_value if mode == "max" else cand_value < champ_value
            cmp = "beats" if better else "does not beat"
            reason = (f"{metric} {cand_value:.4f} {cmp} champion version {champion}'s "
                      f"{champ_value:.4f} on the same test data")
            promote_it = promote_it or better
        if force and not reason.startswith("there"):
            reason = f"forced ({reason})"

    if not promote_it:
        client.set_registered_model_alias(name, CHALLENGER, v)
        client.set_model_version_tag(name, v, "fpn.gate", reason)
        _record(client, name, _stack(client, name),
                {"event": "challenger", "version": v, "reason": reason})
        return Decision(name, v, CHALLENGER, False, reason, champion)

    client.set_registered_model_alias(name, CHAMPION, v)
    if _aliases(client, name).get(CHALLENGER) == v:
        client.delete_registered_model_alias(name, CHALLENGER)
    client.set_model_version_tag(name, v, "fpn.promoted_at", _now())
    client.set_model_version_tag(name, v, "fpn.gate", reason)
    if force:
        client.set_model_version_tag(name, v, "fpn.forced_promotion", "true")
    stack = [s for s in _stack(client, name) if s != v] + [v]
    _record(client, name, stack, {"event": "force" if force else "promote", "version": v,
                                  "previous": champion, "reason": reason})
    return Decision(name, v, CHAMPION, True, reason, champion)


def rollback(tracking_uri: str | None, name: str) -> Decision:
    """Give ``champion`` back to the previous champion (the version before the current one).

    Raises:
        ValueError: no champion, or no previous champion to go back to.
    """
    client = _client(tracking_uri)
    _version(client, name, None)  # checks that the model exists
    current = _aliases(client, name).get(CHAMPION)
    if current is None:
        raise ValueError(f"{name}: there is no champion to roll back")
    stack = _stack(client, name)
    if stack and stack[-1] == current:
        stack = stack[:-1]
    if not stack:
        raise ValueError(f"{name}: champion version {current} has no previous champion")
    previous = stack[-1]
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current, "fpn.rolled_back_at", _now())
    _record(client, name, stack, {"event": "rollback", "version": previous, "from": current})
    return Decision(name, previous, CHAMPION, True, f"rolled back from version {current}", current)


def list_versions(tracking_uri: str | None, name: str) -> list[dict[str, Any]]:
    """One row per version: version, aliases, ratio, ssl, val/test Dice, run id, created."""
    client = _client(tracking_uri)
    versions = sorted(_version_list(client, name), key=lambda v: int(v.version))
    aliases: dict[str, list[str]] = {}
    for alias, ver in _aliases(client, name).items():
        aliases.setdefault(ver, []).append(alias)
    rows = []
    for v in versions:
        rows.append({
            "version": str(v.version), "aliases": ",".join(sorted(aliases.get(str(v.version), []))),
            "ratio": v.tags.get("ratio", ""), "ssl": v.tags.get("ssl", ""),
            "val_dice": v.tags.get("val_dice", ""), "test_dice": v.tags.get("test_dice", ""),
            "store": v.tags.get("store_fingerprint", "")[:12], "run_id": v.run_id or "",
            "forced": v.tags.get("fpn.forced_promotion", ""),
        })
    return rows


def _version_list(client: Any, name: str) -> list[Any]:
    _version(client, name, None)
    return list(client.search_model_versions(f"name='{name}'"))


def _format_rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no versions)"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fpn registry",
                                     description="List, promote and roll back registered models.")
    parser.add_argument("--mlflow", help="MLflow URI (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("list", help="versions, aliases and metrics")
    p.add_argument("name")
    p = sub.add_parser("promote", help="champion if it beats the champion, else challenger")
    p.add_argument("name")
    p.add_argument("--version", help="candidate version (default: the newest)")
    p.add_argument("--metric", default="test_dice", help="version tag compared (default test_dice)")
    p.add_argument("--mode", choices=["max", "min"], default="max")
    p.add_argument("--force", action="store_true", help="promote regardless (recorded as a tag)")
    p = sub.add_parser("rollback", help="champion back to the previous champion")
    p.add_argument("name")
    for p in sub.choices.values():
        p.add_argument("--mlflow", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def registry_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fpn registry``; 0 on success (also when the gate refuses)."""
    args = build_parser().parse_args(argv)
    try:
        if args.action == "list":
            print(_format_rows(list_versions(args.mlflow, args.name)))
        elif args.action == "promote":
            print(promote(args.mlflow, args.name, args.version, metric=args.metric,
                          mode=args.mode, force=args.force).message())
        else:
            print(rollback(args.mlflow, args.name).message())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(registry_main())
