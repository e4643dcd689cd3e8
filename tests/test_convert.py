"""convert / preview / summary end to end: real files (numpy, Pillow), real Ray, real Zarr on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.__main__ import main as data_prep_main
from data_prep.convert import convert, convert_main, patient_split
from data_prep.preview import preview_main, summary_main
from data_prep.sources import VisitArrays
from data_prep.store_writer import Encoding, write_visit
from fpn.data.store import open_store

SHAPE = (8, 64, 32)  # (S, D, W)
SPACING = (0.12, 0.0039, 0.0113)


def _visit_arrays(rng: np.random.Generator, labelled: bool) -> dict[str, np.ndarray]:
    s, _, w = SHAPE
    arrays = {
        "oct": (rng.gamma(2.0, 40.0, size=SHAPE)).astype(np.float32),
        "faf": rng.integers(0, 256, size=(s, w), dtype=np.uint8),
        "slo": rng.integers(0, 256, size=(s, w), dtype=np.uint8),
    }
    if labelled:
        mask = np.zeros((s, w), dtype=np.uint8)
        mask[2:6, 8:20] = 1
        arrays["mask"] = mask
    return arrays


def write_reference_source(root: Path, patients: dict[str, list[tuple[str, int, bool]]],
                           split: dict[str, list[str]], seed: int = 0) -> dict[str, dict]:
    """Write a reference-layout source with numpy and Pillow; returns the arrays per visit key.

    Args:
        patients: ``{patient: [(eye, day, labelled), ...]}``.
        split: the ``split.json`` content.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    info: dict[str, list[dict[str, str]]] = {}
    expected: dict[str, dict] = {}
    for patient, visits in patients.items():
        info[patient] = []
        for number, (eye, day, labelled) in enumerate(visits, start=1):
            file_set = f"{number:02d}"
            info[patient].append({"FileSetId": file_set, "Position": eye, "DayInStudy": str(day)})
            folder = root / f"{patient}_{eye}" / str(day)
            images = folder / "preprocessed_images"
            images.mkdir(parents=True)
            arrays = _visit_arrays(rng, labelled)
            np.save(folder / f"bscan_flat.{file_set}.npy", arrays["oct"])
            np.save(folder / f"spacing.{file_set}.npy", np.asarray(SPACING, dtype=np.float64))
            Image.fromarray(arrays["faf"]).save(images / f"bscan_size.faf.{file_set}.png")
            Image.fromarray(arrays["slo"]).save(images / f"bscan_size.slo.{file_set}.png")
            if labelled:
                Image.fromarray(arrays["mask"] * 255).save(
                    images / f"bscan_size.mask_faf.{file_set}.png")
            expected[f"{patient}_{eye}_{day}"] = arrays
    (root / "data_info.json").write_text(json.dumps(info))
    (root / "split.json").write_text(json.dumps(split))
    return expected


PATIENTS = {
    "P01": [("OD", 0, True), ("OD", 90, True)],
    "P02": [("OS", 0, True)],
    "P03": [("OD", 0, True), ("OS", 0, False)],
    "P04": [("OD", 0, False)],            # in the split, but never labelled -> unlabelled
    "P05": [("OD", 0, True)],             # labelled, but not in the split -> unlabelled
}
SPLIT = {"train": ["P01", "P04"], "val": ["P02"], "test": ["P03"]}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("convert") / "source"
    return root, write_reference_source(root, PATIENTS, SPLIT)


def _check_store(store_path, expected, oct_tolerance):
    store = open_store(str(store_path))
    assert [v.key for v in store.visits] == sorted(expected)
    for key, arrays in expected.items():
        info = store.visit(key)
        assert info.spacing_mm == pytest.approx(SPACING)
        assert info.shape == SHAPE
        oct_volume = store.read(key, "oct")
        assert oct_volume.dtype == np.float32 and oct_volume.shape == SHAPE
        oct_tolerance(oct_volume, arrays["oct"], store.array(key, "oct"))
        for name in ("faf", "slo"):
            np.testing.assert_array_equal(store.read(key, name), arrays[name] / np.float32(255))
        if "mask" in arrays:
            np.testing.assert_array_equal(store.read(key, "mask"), arrays["mask"])
        else:
            assert "mask" not in info.has
    return store


def _exact(got, want, _):
    np.testing.assert_array_equal(got, want)


def _float16(got, want, _):
    np.testing.assert_allclose(got, want, rtol=2 ** -11, atol=0)


def _uint8(got, want, array):
    np.testing.assert_allclose(got, want, atol=float(array.attrs["scale"]) / 2 * 1.001 + 1e-4)


@pytest.mark.parametrize("dtype, tolerance", [("float32", _exact), ("float16", _float16),
                                              ("uint8", _uint8)])
def test_reference_layout_round_trip(source, tmp_path, ray_local, dtype, tolerance):
    root, expected = source
    out = tmp_path / "store.zarr"
    stats = convert(str(root), str(out), encoding=Encoding(oct_dtype=dtype), progress=False)
    assert stats.ok and stats.written == sorted(expected) and not stats.failed
    store = _check_store(out, expected, tolerance)
    assert store.oct_dtype == dtype and str(store.array("P01_OD_0", "oct").dtype) == dtype
    assert store.split_source == "source"
    assert store.split == {"train": ["P01"], "val": ["P02"], "test": ["P03"],
                           "unlabelled": ["P04", "P05"]}
    assert store.visit("P03_OS_0").split == "test"  # an unlabelled visit of a labelled patient
    assert store.patients == ["P01", "P02", "P03", "P04", "P05"]


def test_tensorstore_reads_the_same_values(source, tmp_path, ray_local):
    ts = pytest.importorskip("tensorstore")
    root, _ = source
    out = tmp_path / "store.zarr"
    assert convert(str(root), str(out), progress=False).ok  # float16, default chunks
    store = open_store(str(out))
    for key in ("P01_OD_0", "P04_OD_0"):
        array = ts.open({"driver": "zarr3",
                         "kvstore": {"driver": "file", "path": str(out / "visits" / key / "oct")}},
                        open=True).result()
        values = array.read().result()
        assert values.dtype == np.float16 and values.shape == SHAPE
        np.testing.assert_array_equal(values.astype(np.float32), store.read(key, "oct"))


def test_idempotent_rerun_skips_everything(source, tmp_path, ray_local, capsys):
    root, expected = source
    out = tmp_path / "store.zarr"
    assert convert_main([str(root), str(out), "--no-progress"]) == 0
    first = open_store(str(out)).fingerprint
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "visits").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert convert_main([str(root), str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"0 visit(s) written, {len(expected)} unchanged" in printed
    assert open_store(str(out)).fingerprint == first
    assert {p: p.stat().st_mtime_ns for p in (out / "visits").rglob("*") if p.is_file()} == mtimes


def test_bad_input_is_refused_and_nothing_written(tmp_path, ray_local, capsys):
    root = tmp_path / "source"
    expected = write_reference_source(root, PATIENTS, SPLIT)
    broken_mask = root / "P02_OS" / "0" / "preprocessed_images" / "bscan_size.mask_faf.01.png"
    Image.fromarray(np.zeros((3, 5), dtype=np.uint8)).save(broken_mask)  # wrong grid
    broken_oct = root / "P04_OD" / "0" / "bscan_flat.01.npy"
    broken_oct.write_bytes(b"not a numpy file")
    out = tmp_path / "store.zarr"

    assert convert_main([str(root), str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert str(broken_mask) in err and str(broken_oct) in err and "refusing" in err
    assert not out.exists()

    assert convert_main([str(root), str(out), "--no-progress", "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    assert "skipped invalid visits: P02_OS_0, P04_OD_0" in captured.err
    store = open_store(str(out))
    assert [v.key for v in store.visits] == sorted(set(expected) - {"P02_OS_0", "P04_OD_0"})
    # P02 lost its only (labelled) visit: it is not in the store's split at all.
    assert "P02" not in store.patients and store.split["val"] == []


def test_interrupted_conversion_then_rerun(source, tmp_path, ray_local):
    root, expected = source
    out = tmp_path / "store.zarr"
    stats = convert(str(root), str(out), progress=False, fault_visit="P03_OD_0")
    assert list(stats.failed) == ["P03_OD_0"] and "injected failure" in stats.failed["P03_OD_0"]
    assert not stats.ok
    store = open_store(str(out))
    assert "P03_OD_0" not in {v.key for v in store.visits}
    assert len(store.visits) == len(expected) - 1
    assert store.conversion == {"complete": False, "failed": ["P03_OD_0"]}
    assert not any(name.startswith(".tmp-") for name in os.listdir(out / "visits"))

    stats = convert(str(root), str(out), progress=False)
    assert stats.ok and stats.written == ["P03_OD_0"]
    assert len(stats.unchanged) == len(expected) - 1
    store = _check_store(out, expected, _float16)
    assert store.conversion == {"complete": True, "failed": []}

    clean = tmp_path / "clean.zarr"
    assert convert(str(root), str(clean), progress=False).fingerprint == store.fingerprint


def test_reader_skips_a_half_written_indexed_visit(source, tmp_path, ray_local):
    """A re-run rewriting a visit in place (URL stores) dies after its first array: the index still
    names the visit, but its group lacks ``complete`` -> the reader leaves it out."""
    root, expected = source
    url = f"memory://{tmp_path.name}/store.zarr"
    assert convert(str(root), url, progress=False).ok
    assert len(open_store(url).visits) == len(expected)
    arrays = VisitArrays(oct=np.full(SHAPE, 0.5, np.float32), spacing_mm=SPACING)
    with pytest.raises(RuntimeError, match="injected"):
        write_visit(url, "P01_OD_0", arrays, patient_id="P01", eye="OD", day=0,
                    fail_after_first_array=True)
    keys = {v.key for v in open_store(url).visits}
    assert "P01_OD_0" not in keys and len(keys) == len(expected) - 1


def test_file_url_store(source, tmp_path, ray_local):
    root, expected = source
    url = (tmp_path / "store.zarr").as_uri()
    assert url.startswith("file://")
    assert convert(str(root), url, encoding=Encoding("float32"), progress=False).ok
    _check_store(url, expected, _exact)


def test_seeded_patient_split_is_stable_and_disjoint():
    labelled = [f"P{i:02d}" for i in range(10)]
    split = patient_split(labelled, ["U1", "U2"], seed=3, fractions=(0.6, 0.2, 0.2))
    assert [len(split[p]) for p in ("train", "val", "test")] == [6, 2, 2]
    assert split["unlabelled"] == ["U1", "U2"]
    parts = [set(split[p]) for p in ("train", "val", "test")]
    assert set().union(*parts) == set(labelled) and sum(map(len, parts)) == len(labelled)
    assert patient_split(list(reversed(labelled)), ["U2", "U1"], 3) == split
    assert patient_split(labelled, [], 4) != split
    assert [len(v) for k, v in patient_split(["A", "B", "C"], [], 0).items()
            if k != "unlabelled"] == [1, 1, 1]
    with pytest.raises(ValueError, match="fractions"):
        patient_split(labelled, [], 0, fractions=(0.5, 0.2, 0.2))


def test_manifest_without_split_gets_a_seeded_split(source, tmp_path, ray_local):
    root, expected = source
    rows = ["patient_id,eye,day,oct,faf,mask,spacing_s,spacing_d,spacing_w"]
    for key in sorted(expected):
        patient, eye, day = key.split("_")
        number = [(e, d) for e, d, _ in PATIENTS[patient]].index((eye, int(day))) + 1
        folder = root / f"{patient}_{eye}" / day
        mask = folder / "preprocessed_images" / f"bscan_size.mask_faf.{number:02d}.png"
        rows.append(",".join([patient, eye, day, str(folder / f"bscan_flat.{number:02d}.npy"),
                              str(folder / "preprocessed_images" / f"bscan_size.faf.{number:02d}.png"),
                              str(mask) if mask.exists() else "", *map(str, SPACING)]))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "store.zarr"
    stats = convert(str(manifest), str(out), layout="manifest", seed=7, progress=False)
    assert stats.ok, stats.problems
    store = open_store(str(out))
    assert store.split_source == "seeded:7"
    assert store.split["unlabelled"] == ["P04"]
    assert sorted(store.split["train"] + store.split["val"] + store.split["test"]) == \
        ["P01", "P02", "P03", "P05"]
    assert all(len(store.split[p]) >= 1 for p in ("train", "val", "test"))


def test_preview_and_summary(source, tmp_path, ray_local, capsys):
    root, _ = source
    out = tmp_path / "store.zarr"
    assert convert(str(root), str(out), progress=False).ok
    png = tmp_path / "preview.png"
    assert preview_main([str(out), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "P01_OD_0" in capsys.readouterr().out  # the first labelled visit
    assert preview_main([str(out), "--visit", "P04_OD_0", "--out", str(png)]) == 0
    assert preview_main([str(out), "--visit", "NOPE", "--out", str(png)]) == 1
    assert summary_main([str(out)]) == 0
    printed = capsys.readouterr().out
    for text in ("fpn store v1", "train 1, val 1, test 1, unlabelled 2", "7 (5 labelled, 2 unlabelled)",
                 "8x64x32", "float16", "oct chunks   8x64x32"):
        assert text in printed, text


def test_cli_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as excinfo:
        data_prep_main(["convert"])
    assert excinfo.value.code == 2
    with pytest.raises(SystemExit) as excinfo:
        data_prep_main(["no-such-command"])
    assert excinfo.value.code == 2
    with pytest.raises(SystemExit) as excinfo:
        data_prep_main(["convert", "a", "b", "--storage-option", "novalue"])
    assert excinfo.value.code == 2


def test_demo_runs_synth_convert_summary_and_is_idempotent(tmp_path, ray_local, capsys):
    argv = ["demo", "--out", str(tmp_path / "demo"), "--patients", "3", "--unlabelled", "1",
            "--shape", "8", "64", "32", "--visits", "1"]
    assert data_prep_main(argv) == 0
    printed = capsys.readouterr().out
    assert "writing a synthetic source" in printed and "fpn store v1" in printed
    assert data_prep_main(argv) == 0
    printed = capsys.readouterr().out
    assert "already at" in printed and "store already complete" in printed
