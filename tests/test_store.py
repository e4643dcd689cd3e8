"""The reader API (fpn.data.store) and the writer primitives, on real Zarr stores on disk."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from data_prep.sources import VisitArrays
from data_prep.store_writer import (
    Encoding,
    encode_oct,
    init_store,
    store_fingerprint,
    write_index,
    write_visit,
)
from fpn.data.store import StoreError, VisitInfo, open_store

SHAPE = (8, 64, 32)
SPACING = (0.12, 0.0039, 0.0113)
SPLIT = {"train": ["A"], "val": ["B"], "test": [], "unlabelled": ["C"]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A store of three patients written with the writer primitives (no Ray)."""
    rng = np.random.default_rng(1)
    location = str(tmp_path_factory.mktemp("store") / "store.zarr")
    init_store(location)
    arrays = {}
    index = {}
    for patient, eye, day, labelled in [("A", "OD", 0, True), ("A", "OD", 30, False),
                                        ("B", "OS", 0, True), ("C", "OD", 0, False)]:
        mask = (rng.random(SHAPE[::2]) > 0.5).astype(np.uint8) if labelled else None
        visit = VisitArrays(oct=rng.normal(0, 1, SHAPE).astype(np.float32), spacing_mm=SPACING,
                            faf=rng.random(SHAPE[::2]).astype(np.float32), mask=mask)
        key = f"{patient}_{eye}_{day}"
        arrays[key] = visit
        index[key] = write_visit(location, key, visit, patient_id=patient, eye=eye, day=day,
                                 encoding=Encoding("float32", oct_chunks=(4, None, 16)))
    write_index(location, index, SPLIT, "seeded:0", Encoding("float32"))
    return location, arrays, index


def test_visit_info_and_filters(built):
    location, arrays, _ = built
    store = open_store(location)
    assert store.format_version == 1 and len(store.fingerprint) == 64
    assert store.patients == ["A", "B", "C"] and store.split == SPLIT
    assert [v.key for v in store.visits] == sorted(arrays)
    info = store.visit("A_OD_30")
    assert isinstance(info, VisitInfo)
    assert (info.patient_id, info.eye, info.day, info.split) == ("A", "OD", 30, "train")
    assert info.shape == SHAPE and info.spacing_mm == pytest.approx(SPACING)
    assert info.has == frozenset({"oct", "faf"}) and not info.labelled
    assert [v.key for v in store.visits_for(splits="train")] == ["A_OD_0", "A_OD_30"]
    assert [v.key for v in store.visits_for(splits="train", require="mask")] == ["A_OD_0"]
    assert [v.key for v in store.visits_for(splits=("val", "unlabelled"))] == ["B_OS_0", "C_OD_0"]
    assert [v.key for v in store.visits_for(require=["mask", "faf"])] == ["A_OD_0", "B_OS_0"]
    assert [v.key for v in store.visits_for(patients=["C"])] == ["C_OD_0"]
    assert store.visits_for(require="slo") == []
    with pytest.raises(ValueError, match="split"):
        store.visits_for(splits="training")
    with pytest.raises(StoreError, match="no visit"):
        store.visit("Z_OD_0")


def test_read_regions_and_decoding(built):
    location, arrays, _ = built
    store = open_store(location)
    key = "A_OD_0"
    region = (slice(1, 7), slice(None), slice(5, 29))
    np.testing.assert_array_equal(store.read(key, "oct", region), arrays[key].oct[region])
    np.testing.assert_array_equal(store.read(key, "oct"), arrays[key].oct)
    faf = store.read(key, "faf")
    assert faf.dtype == np.float32 and 0.0 <= faf.min() and faf.max() <= 1.0
    np.testing.assert_allclose(faf, arrays[key].faf, atol=0.5 / 255 + 1e-6)
    mask = store.read(key, "mask", (slice(0, 4), slice(None)))
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, arrays[key].mask[:4])
    assert store.array(key, "oct").chunks == (4, 64, 16)
    with pytest.raises(StoreError, match="no 'mask'"):
        store.read("C_OD_0", "mask")
    again = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(again.read(key, "oct", region), arrays[key].oct[region])


def test_index_only_lists_complete_visits(built, tmp_path):
    location, _, index = built
    copy = tmp_path / "copy.zarr"
    import shutil

    shutil.copytree(location, copy)
    meta_path = copy / "visits" / "B_OS_0" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["complete"]  # what a crash before the last write leaves
    meta_path.write_text(json.dumps(meta))
    shutil.rmtree(copy / "visits" / "C_OD_0")  # indexed but gone
    store = open_store(str(copy))
    assert [v.key for v in store.visits] == ["A_OD_0", "A_OD_30"]
    assert store.fingerprint == store_fingerprint(index, SPLIT)  # the index itself is untouched


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="no Zarr group|not an fpn store"):
        open_store(str(tmp_path / "missing.zarr"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    with pytest.raises(StoreError, match="not empty"):
        init_store(str(tmp_path / "notes"))


def test_encode_oct_dtypes():
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 30, SHAPE).astype(np.float32)
    stored, scale, offset = encode_oct(volume, "uint8")
    assert stored.dtype == np.uint8 and stored.min() == 0 and stored.max() == 255
    assert np.abs(stored * scale + offset - volume).max() <= scale / 2 + 1e-4
    big = volume * 1000  # beyond float16's range: exact power-of-two rescaling
    stored, scale, offset = encode_oct(big, "float16")
    assert stored.dtype == np.float16 and np.isfinite(stored).all() and scale > 1
    np.testing.assert_allclose(stored.astype(np.float32) * scale, big, rtol=2 ** -11)
    assert encode_oct(volume, "float16")[1:] == (1.0, 0.0)


def test_float16_guards_underflow_by_an_exact_recorded_scale(tmp_path):
    """Small values (a linear-intensity export, ~1e-8) used to flush to zero in float16: a third
    of the voxels and more. Now a power-of-two scale recorded per visit keeps them."""
    rng = np.random.default_rng(0)
    tiny = rng.gamma(2.0, 2e-8, SHAPE).astype(np.float32)
    assert np.count_nonzero(tiny.astype(np.float16) == 0) > tiny.size // 3  # what plain casting did
    stored, scale, offset = encode_oct(tiny, "float16")
    assert scale < 1 and offset == 0 and np.log2(scale) == int(np.log2(scale))
    assert np.count_nonzero(stored) == tiny.size
    np.testing.assert_allclose(stored.astype(np.float32) * scale, tiny, rtol=2 ** -11)

    location = str(tmp_path / "store.zarr")
    init_store(location)
    entry = write_visit(location, "A_OD_0", VisitArrays(oct=tiny, spacing_mm=SPACING),
                        patient_id="A", eye="OD", day=0)
    write_index(location, {"A_OD_0": entry}, {"train": ["A"]}, "seeded:0", Encoding())
    store = open_store(location)
    assert float(store.array("A_OD_0", "oct").attrs["scale"]) == scale
    np.testing.assert_allclose(store.read("A_OD_0", "oct"), tiny, rtol=2 ** -11)


def test_float16_refuses_a_range_it_cannot_hold_naming_the_visit(tmp_path):
    volume = np.random.default_rng(0).gamma(2.0, 40.0, SHAPE).astype(np.float32)
    volume[0, 0, :4] = 1e-9  # 11 decades below the peak: beyond float16 at any scale
    with pytest.raises(ValueError, match="underflow float16.*--dtype float32"):
        encode_oct(volume, "float16")
    location = str(tmp_path / "store.zarr")
    init_store(location)
    arrays = VisitArrays(oct=volume, spacing_mm=SPACING)
    with pytest.raises(ValueError, match=r"bscan\.npy: visit A_OD_0: 4 of .* underflow float16"):
        write_visit(location, "A_OD_0", arrays, patient_id="A", eye="OD", day=0,
                    sources={"oct": {"path": "bscan.npy", "sha256": "x"}})
    # float32 holds it as it is
    write_visit(location, "A_OD_0", arrays, patient_id="A", eye="OD", day=0,
                encoding=Encoding("float32"))


@pytest.mark.parametrize("volume, cause", [
    (np.zeros(SHAPE, np.float32), "all zeros"),
    ((np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3 == 0), "boolean volume"),
    ((np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3 == 0).astype(np.float32), "only the values 0 and 1"),
])
@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_all_zero_and_boolean_volumes_are_refused_by_name(tmp_path, volume, cause, dtype):
    location = str(tmp_path / "store.zarr")
    init_store(location)
    arrays = VisitArrays(oct=volume, spacing_mm=SPACING)
    with pytest.raises(ValueError, match=f"bscan\\.npy: visit A_OD_0: OCT .*{cause}"):
        write_visit(location, "A_OD_0", arrays, patient_id="A", eye="OD", day=0,
                    sources={"oct": {"path": "bscan.npy", "sha256": "x"}},
                    encoding=Encoding(dtype))
    assert sorted(p.name for p in (tmp_path / "store.zarr" / "visits").iterdir()) == ["zarr.json"]


def test_fingerprint_covers_the_split(built, tmp_path):
    """Pretraining runs are reused by fingerprint: moving one patient between parts must change
    it, for the writer's value and for what the reader reports."""
    location, _, index = built
    moved = {**SPLIT, "train": [], "test": ["A"]}
    assert store_fingerprint(index, moved) != store_fingerprint(index, SPLIT)
    assert store_fingerprint(index, {"train": ["A"], "val": ["B"], "unlabelled": ["C"]}) == \
        store_fingerprint(index, SPLIT)  # parts not given are empty
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(location, copy)
    write_index(str(copy), index, moved, "seeded:1", Encoding("float32"))
    assert open_store(str(copy)).fingerprint == store_fingerprint(index, moved)
    assert open_store(str(copy)).fingerprint != open_store(location).fingerprint
    # a split edited by hand (or a store written before the fingerprint covered the split):
    # the reader recomputes the identity from what the store holds
    meta_path = copy / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["split"] = SPLIT
    meta_path.write_text(json.dumps(meta))
    assert open_store(str(copy)).fingerprint == open_store(location).fingerprint


def test_write_visit_rejects_bad_arrays(tmp_path):
    location = str(tmp_path / "store.zarr")
    init_store(location)
    bad = VisitArrays(oct=np.full(SHAPE, np.nan, np.float32), spacing_mm=SPACING)
    with pytest.raises(ValueError, match="NaN"):
        write_visit(location, "A_OD_0", bad, patient_id="A", eye="OD", day=0)
    wrong = VisitArrays(oct=np.zeros(SHAPE, np.float32), spacing_mm=SPACING,
                        mask=np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="mask shape"):
        write_visit(location, "A_OD_0", wrong, patient_id="A", eye="OD", day=0)
    assert sorted(p.name for p in (tmp_path / "store.zarr" / "visits").iterdir()) == ["zarr.json"]


def test_synthetic_store_fixture(synthetic_store):
    store = open_store(str(synthetic_store))
    assert store.visits_for(require="mask") and store.visits_for(splits="unlabelled")
    info = store.visits[0]
    assert store.read(info.key, "oct").shape == info.shape
