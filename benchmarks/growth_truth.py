"""A trained model's GA growth rates on a synthetic phantom, against the phantom's own truth.

The phantom's lesions grow by a known rule (``data_prep/synthetic/anatomy.py``: the lesion is
``lesion_field >= lesion_threshold(day)``); :func:`data_prep.synthetic.truth.replay_eyes` draws
the written data set's eyes again, so the generator's own lesion area is known at every visit.
This script runs ``python -m fpn growth``'s read-out (:func:`fpn.readout.growth_readout`) on a
split of the store and prints, per eye and in summary (n eyes and patients), the rate error of
the model's areas against the generator's lesion and against the graded masks, in mm^2/year and
sqrt-mm/year; with the graded masks' own error against the generator beside it (the ``hard``
phantom's grader outlines the lesion with a margin).

    python benchmarks/growth_truth.py --model models:/ga-fpn@champion \\
        --mlflow sqlite:///fpn-search/mlflow.db \\
        --data fpn-search/data/<synthetic-...>/store.zarr --out /tmp/growth
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# no progress bar per downloaded file (a registered model is some 75 files)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def main(argv: list[str] | None = None) -> int:
    from data_prep.synthetic.truth import lesion_area_mm2, replay_eyes
    from fpn.agreement import rate_errors
    from fpn.growth import VisitArea, growth_per_eye
    from fpn.readout import growth_readout

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="run dir, checkpoint or models:/NAME@ALIAS")
    p.add_argument("--data", required=True, help="the phantom's store (<folder>/store.zarr)")
    p.add_argument("--source", help="the phantom's source folder (default: the store's sibling "
                   "'source', as tune.core.make_synthetic_store writes it)")
    p.add_argument("--split", default="test")
    p.add_argument("--mlflow", help="tracking URI (for models:/)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    source = Path(args.source) if args.source else Path(args.data).parent / "source"
    readout = growth_readout(args.model, args.data, out=args.out, split=args.split,
                             tracking_uri=args.mlflow)
    truth = {(e.patient_id, e.eye): e for e in replay_eyes(source)}
    model_vs_truth, graded_vs_truth = [], []
    for v in readout.visits:
        eye = truth[(v.patient_id, v.eye)]
        true_area = lesion_area_mm2(eye.anatomy, [v.day])[0]
        model_vs_truth.append(VisitArea(v.visit, v.patient_id, v.eye, v.day, v.area,
                                        v.member_areas, true_area))
        if v.graded_area is not None:
            graded_vs_truth.append(VisitArea(v.visit, v.patient_id, v.eye, v.day,
                                             v.graded_area, (), true_area))
    eyes = growth_per_eye(model_vs_truth)
    print(f"{len(readout.visits)} visits, {len(eyes)} eyes of "
          f"{len({e.patient_id for e in eyes})} patients ({args.split}); members "
          f"{readout.members}")
    print("| eye | days | model rate (mm²/y) [members] | true rate | graded rate |")
    print("|---|---|---|---|---|")
    for e in eyes:
        if e.area_rate is None:
            print(f"| {e.patient_id}/{e.eye} | {e.days} | – ({e.reason}) | | |")
            continue
        members = (f" [{min(e.member_area_rates):.2f}, {max(e.member_area_rates):.2f}]"
                   if e.member_area_rates else "")
        true = e.graded_area_rate.per_year if e.graded_area_rate else math.nan
        graded = next((g for g in readout.eyes if (g.patient_id, g.eye)
                       == (e.patient_id, e.eye)), None)
        graded_rate = (graded.graded_area_rate.per_year
                       if graded and graded.graded_area_rate else math.nan)
        print(f"| {e.patient_id}/{e.eye} | {e.days} | {e.area_rate.per_year:.2f}{members} | "
              f"{true:.2f} | {graded_rate:.2f} |")
    rows = [("model vs the generator's lesion", rate_errors(eyes))]
    if graded_vs_truth:
        rows.append(("graded masks vs the generator's lesion",
                     rate_errors(growth_per_eye(graded_vs_truth))))
    rows.append(("model vs the graded masks", rate_errors(readout.eyes)))
    print()
    print("| rate error (model/graded minus reference) | eyes | patients | mean mm²/y | MAE mm²/y "
          "| mean sqrt-mm/y | MAE sqrt-mm/y |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r.n_eyes} | {r.n_patients} | {r.mean:.3f} | {r.mae:.3f} | "
              f"{r.sqrt_mean:.4f} | {r.sqrt_mae:.4f} |")
    print()
    print("area agreement with the graded masks: " + ", ".join(
        f"{k} {v:.3f}" for k, v in readout.metrics.items()
        if k.startswith("area_") and math.isfinite(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
