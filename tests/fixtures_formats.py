"""Helpers that write real fixture files in every supported format, with independent libraries.

NIfTI with nibabel, TIFF with tifffile, DICOM with pydicom, PNG with Pillow, ``.npy`` with numpy,
and Heidelberg ``.vol`` with ``struct`` following the published file layout (not eyepy's writer),
so that the readers are tested against files they did not produce themselves.
"""

from __future__ import annotations

import csv
import json
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "index_volume",
    "line_positions",
    "write_dicom",
    "write_manifest",
    "write_nifti",
    "write_npy",
    "write_png",
    "write_reference_json",
    "write_reference_visit",
    "write_tiff",
    "write_vol",
]


def index_volume(s: int, d: int, w: int, dtype: type = np.float32) -> np.ndarray:
    """``(S, D, W)`` volume whose value encodes its index: ``10000 * s + 100 * d + w``.

    Needs ``d, w < 100``; any axis swap or flip changes the values, so orientation bugs show.
    """
    assert d < 100 and w < 100
    grid = np.indices((s, d, w))
    return (10000 * grid[0] + 100 * grid[1] + grid[2]).astype(dtype)


def write_npy(path: Path, array: np.ndarray) -> Path:
    """``np.save`` through a file handle, so that a name like ``v.NPY`` is kept as given."""
    with open(path, "wb") as fh:
        np.save(fh, array)
    return path


def write_nifti(path: Path, volume: np.ndarray, spacing: Sequence[float] | None = None,
                unit: str = "mm") -> Path:
    """Write ``(S, D, W)`` as NIfTI with voxel axes ``(i, j, k) = (W, D, S)`` (the documented order)."""
    import nibabel as nib

    data = np.ascontiguousarray(volume.transpose(2, 1, 0))
    img = nib.Nifti1Image(data, affine=np.eye(4))
    if spacing is not None:
        s, d, w = spacing
        img.header.set_zooms((w, d, s))
        img.header.set_xyzt_units(xyz=unit)
    nib.save(img, str(path))
    return path


def write_tiff(path: Path, volume: np.ndarray, spacing: Sequence[float] | None = None) -> Path:
    """Multi-page TIFF, one page per B-scan; with ``spacing``, ImageJ metadata in mm."""
    import tifffile

    if spacing is None:
        tifffile.imwrite(str(path), volume)
    else:
        s, d, w = spacing
        tifffile.imwrite(str(path), volume, imagej=True, resolution=(1.0 / w, 1.0 / d),
                         metadata={"spacing": s, "unit": "mm", "axes": "ZYX"})
    return path


def write_dicom(path: Path, volume: np.ndarray, spacing: Sequence[float] | None = None,
                where: str = "shared", rescale: tuple[float, float] | None = None) -> Path:
    """Multi-frame Ophthalmic Tomography DICOM: frames = B-scans, rows = depth, columns = A-scans.

    Args:
        volume: ``(S, D, W)`` uint16.
        spacing: ``(s, d, w)`` mm.
        where: ``"shared"`` (SharedFunctionalGroupsSequence/PixelMeasuresSequence with
            SliceThickness), ``"per_frame"`` (PerFrameFunctionalGroupsSequence) or ``"top"``
            (top-level PixelSpacing + SpacingBetweenSlices).
        rescale: optional ``(slope, intercept)`` written at the top level.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image Storage
    volume = np.asarray(volume, dtype=np.uint16)
    n_frames, rows, columns = volume.shape
    instance = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OPT"
    ds.PatientID = "FIXTURE"
    ds.ImageLaterality = "R"
    ds.NumberOfFrames = n_frames
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if spacing is not None:
        s, d, w = spacing
        if where == "top":
            ds.PixelSpacing = [d, w]
            ds.SpacingBetweenSlices = s
        else:
            measures = Dataset()
            measures.PixelSpacing = [d, w]
            measures.SliceThickness = s
            group = Dataset()
            group.PixelMeasuresSequence = DicomSequence([measures])
            if where == "shared":
                ds.SharedFunctionalGroupsSequence = DicomSequence([group])
            else:
                frames = []
                for _ in range(n_frames):
                    per_frame = Dataset()
                    per_frame.PixelMeasuresSequence = DicomSequence([measures])
                    frames.append(per_frame)
                ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = volume.astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def line_positions(n_bscans: int, x0: float, x1: float, y0: float, dy: float) -> np.ndarray:
    """Horizontal B-scan lines ``(S, 2, 2)``: B-scan ``s`` from ``(x0, y0 + s dy)`` to ``(x1, same y)``."""
    ys = y0 + dy * np.arange(n_bscans)
    return np.stack([np.stack([np.full(n_bscans, x0), ys], -1),
                     np.stack([np.full(n_bscans, x1), ys], -1)], axis=1)


# Heidelberg VOL: 2048-byte file header, SLO bytes, then per B-scan header + float32 data.
_VOL_HEADER = struct.Struct(
    "<12s"   # Version "HSF-OCT-103"
    "I I I"  # SizeX (A-scans per B-scan), NumBScans, SizeZ (depth samples)
    "d d d"  # ScaleX (mm per A-scan), Distance (mm between B-scans), ScaleZ (mm per depth sample)
    "I I"    # SizeXSlo, SizeYSlo
    "d d"    # ScaleXSlo, ScaleYSlo (mm per SLO pixel)
    "I d"    # FieldSizeSlo (degrees), ScanFocus (dpt)
    "4s"     # ScanPosition "OD"/"OS"
    "Q"      # ExamTime (100 ns since 1601-01-01)
    "i I"    # ScanPattern, BScanHdrSize
    "16s 16s"  # ID, ReferenceID
    "I 21s 3s"  # PID, PatientID, Padding
    "d"      # DOB (days since 1899-12-30)
    "I 24s"  # VID, VisitID
    "d"      # VisitDate
    "I I I I"  # GridType, GridOffset, GridType1, GridOffset1
    "34s"    # ProgID
)
_VOL_HEADER_SIZE = 2048
_BSCAN_HEADER = struct.Struct(
    "<12s"   # Version "HSF-BS-103"
    "I"      # BScanHdrSize
    "d d d d"  # StartX, StartY, EndX, EndY (mm, SLO frame)
    "I I"    # NumSeg, OffSeg
    "f I"    # Quality, Shift
    "6f"     # IVTrafo
)
_BSCAN_GENERAL_SIZE = 256


def write_vol(path: Path, volume: np.ndarray, spacing: Sequence[float], slo: np.ndarray,
              slo_scale_mm: Sequence[float], bscan_positions: np.ndarray, eye: str = "OD",
              num_seg: int = 2, bscan_header_size: int = 4096) -> Path:
    """Write a Heidelberg ``.vol`` file by hand from the published layout.

    Args:
        volume: ``(S, D, W)`` float32 reflectivities; B-scan ``s`` is stored ``s``-th, each as
            ``D`` rows of ``W`` floats.
        spacing: ``(s, d, w)`` mm = (Distance, ScaleZ, ScaleX).
        slo: ``(H, W_slo)`` uint8 SLO image.
        slo_scale_mm: ``(row, column)`` mm per SLO pixel = (ScaleYSlo, ScaleXSlo).
        bscan_positions: ``(S, 2, 2)`` = ``[[start_x, start_y], [end_x, end_y]]`` mm.
        num_seg: segmentation lines stored per B-scan (filled with a flat line).
    """
    volume = np.asarray(volume, dtype="<f4")
    n_bscans, depth, width = volume.shape
    slo = np.asarray(slo, dtype=np.uint8)
    s, d, w = spacing
    header = _VOL_HEADER.pack(
        b"HSF-OCT-103", width, n_bscans, depth, w, s, d,
        slo.shape[1], slo.shape[0], slo_scale_mm[1], slo_scale_mm[0],
        30, 0.0, eye.encode("ascii"), 131_000_000_000_000_000, 3, bscan_header_size,
        b"1234", b"", 42, b"FIXTURE", b"", 25000.0, 7, b"#visit", 44000.0, 0, 0, 0, 0, b"")
    assert _VOL_HEADER.size <= _VOL_HEADER_SIZE
    assert _BSCAN_HEADER.size <= _BSCAN_GENERAL_SIZE
    assert _BSCAN_GENERAL_SIZE + num_seg * 4 * width <= bscan_header_size
    with open(path, "wb") as fh:
        fh.write(header.ljust(_VOL_HEADER_SIZE, b"\0"))
        fh.write(slo.tobytes())
        for index in range(n_bscans):
            (x0, y0), (x1, y1) = bscan_positions[index]
            general = _BSCAN_HEADER.pack(b"HSF-BS-103", bscan_header_size, x0, y0, x1, y1,
                                         num_seg, _BSCAN_GENERAL_SIZE, 30.0, 0, *([0.0] * 6))
            segmentation = np.full((num_seg, width), depth / 2, dtype="<f4").tobytes()
            fh.write((general.ljust(_BSCAN_GENERAL_SIZE, b"\0") + segmentation)
                     .ljust(bscan_header_size, b"\0"))
            fh.write(np.ascontiguousarray(volume[index]).tobytes())
    return path


def write_png(path: Path, image: np.ndarray) -> Path:
    """Grey PNG (uint8 or uint16) written with Pillow."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image)).save(path)
    return path


def write_manifest(path: Path, rows: Sequence[dict[str, object]],
                   columns: Sequence[str] | None = None) -> Path:
    """CSV manifest; missing keys become empty cells."""
    columns = list(columns or ["patient_id", "eye", "day", "oct", "faf", "slo", "mask"])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return path


def write_reference_visit(root: Path, patient: str, position: str, day: str, file_set: str,
                          volume: np.ndarray, spacing: Sequence[float] | None = (0.12, 0.004, 0.011),
                          faf: np.ndarray | None = None, slo: np.ndarray | None = None,
                          mask: np.ndarray | None = None) -> Path:
    """One visit folder of the reference layout; returns the folder."""
    folder = root / f"{patient}_{position}" / day
    images = folder / "preprocessed_images"
    images.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"bscan_flat.{file_set}.npy", volume.astype(np.float32))
    if spacing is not None:
        np.save(folder / f"spacing.{file_set}.npy", np.asarray(spacing, dtype=np.float64))
    for name, image in (("faf", faf), ("slo", slo), ("mask_faf", mask)):
        if image is not None:
            write_png(images / f"bscan_size.{name}.{file_set}.png", image)
    return folder


def write_reference_json(root: Path, data_info: dict, split: dict | None) -> None:
    """``data_info.json`` and (unless ``split`` is None) ``split.json``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data_info.json").write_text(json.dumps(data_info), encoding="utf-8")
    if split is not None:
        (root / "split.json").write_text(json.dumps(split), encoding="utf-8")
