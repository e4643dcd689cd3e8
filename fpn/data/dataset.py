"""PyTorch datasets over the store: random training crops and whole validation volumes.

Both open the store lazily in the process that reads (a DataLoader worker, a Ray Train worker),
so they pickle cheaply and every reader process has its own handle, also after a fork.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fpn.config import DataConfig
from fpn.data.transforms import (
    augment,
    bscan_stats,
    crop_window,
    crop_window_around,
    target_from,
    zscore,
)

__all__ = ["CropDataset", "VolumeDataset", "select_visits", "stored_name"]


def stored_name(target: str) -> str:
    """The store array a target is read from (``inverted_faf`` is computed from ``faf``)."""
    return "faf" if target == "inverted_faf" else target


def select_visits(store: Any, target: str, splits: str | Sequence[str],
                  patients: Sequence[str] | None = None) -> list[str]:
    """Keys of the visits in ``splits`` that carry the target (optionally of given patients)."""
    chosen = set(patients) if patients is not None else None
    return [
        v.key
        for v in store.visits_for(splits=splits, require=stored_name(target))
        if chosen is None or v.patient_id in chosen
    ]


@dataclass
class _StoreHandle:
    """Opens the store on first use in whichever process reads, and caches B-scan statistics.

    The handle belongs to the process that opened it: a forked DataLoader worker inherits the
    parent's handle, whose object-store client (s3fs/aiohttp) is bound to the parent's event loop
    and fails in the child ("HTTPClientError ... Task pending"), so a process that did not open
    the handle opens its own (keyed by ``os.getpid()``). Pickling (spawn, Ray) drops it too.
    """

    path: str
    storage_options: dict[str, Any]
    _store: Any = field(default=None, repr=False)
    _pid: int | None = field(default=None, repr=False)
    _stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _foreground: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "storage_options": self.storage_options,
                "_store": None, "_pid": None, "_stats": {}, "_foreground": {}}

    @property
    def store(self) -> Any:
        if self._store is None or self._pid != os.getpid():
            from fpn.data.store import open_store

            self._store = open_store(self.path, storage_options=self.storage_options)
            self._pid = os.getpid()
        return self._store

    def stats(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        # z-score statistics are over whole B-scans, so crops and full-volume inference see the
        # same normalisation; computed once per visit per process.
        if key not in self._stats:
            self._stats[key] = bscan_stats(self.store.read(key, "oct"))
        return self._stats[key]

    def foreground(self, key: str) -> np.ndarray:
        """The ``(S, W)`` positions of the visit's GA pixels, ``(n, 2)`` (read once per
        visit per process; the en-face mask is small)."""
        if key not in self._foreground:
            self._foreground[key] = np.argwhere(self.store.read(key, "mask") >= 0.5)
        return self._foreground[key]


class CropDataset(Dataset):
    """``length`` random crops per epoch (default ``multiplier x len(keys)``, the reference's
    crops per volume; a run with a budget in optimizer steps gives ``steps x batch x workers``).

    Item ``i`` of epoch ``e`` is a crop of visit ``keys[i % len(keys)]`` (the crops cycle over
    the visits) drawn with the seed ``(seed, e, i)``: the same on every run, different every
    epoch. Call :meth:`set_epoch` before iterating (DataLoader workers must not be persistent,
    so they see the new epoch). With ``cfg.foreground_fraction`` > 0 (masks only), each crop is,
    with that probability drawn from its own seed, a window around one of its visit's GA pixels
    (uniform among them); a visit without GA gives a uniform crop.

    Returns ``(oct, target)``: ``(1, cs, D, cw)`` z-scored OCT and ``(1, cs, cw)`` target,
    ``cs, cw = min(crop, volume)`` (every volume is cropped to the smallest common size, so that
    crops batch).
    """

    def __init__(self, cfg: DataConfig, keys: Sequence[str], seed: int = 0,
                 length: int | None = None):
        if not keys:
            raise ValueError(f"{cfg.store}: no visits with target {cfg.target!r} to train on")
        if length is not None and length < 1:
            raise ValueError(f"CropDataset length must be >= 1, got {length}")
        self.cfg = cfg
        self.keys = list(keys)
        self.seed = seed
        self.length = length if length is not None else cfg.multiplier * len(self.keys)
        self.epoch = 0
        self._handle = _StoreHandle(cfg.store, dict(cfg.storage_options))
        shapes = [self._handle.store.visit(k).shape for k in self.keys]
        self.crop = (
            min(cfg.crop[0], *(s[0] for s in shapes)),
            min(cfg.crop[1], *(s[2] for s in shapes)),
        )
        self.depth = shapes[0][1]
        if any(s[1] != self.depth for s in shapes):
            raise ValueError(f"{cfg.store}: volumes differ in depth {sorted({s[1] for s in shapes})}; "
                             "convert them to one depth first")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def _window(self, key: str, shape_sw: tuple[int, int],
                rng: np.random.Generator) -> tuple[slice, slice]:
        fraction = self.cfg.foreground_fraction if self.cfg.target == "mask" else 0.0
        # nothing drawn when off: the crops are then exactly those of a run without the option
        if fraction > 0 and rng.random() < fraction:
            points = self._handle.foreground(key)
            if len(points):
                s, w = points[int(rng.integers(len(points)))]
                return crop_window_around(shape_sw, self.crop, (int(s), int(w)), rng)
        return crop_window(shape_sw, self.crop, rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        key = self.keys[index % len(self.keys)]
        store = self._handle.store
        info = store.visit(key)
        ws, ww = self._window(key, (info.shape[0], info.shape[2]), rng)
        oct_crop = store.read(key, "oct", region=(ws, slice(None), ww))
        mean, std = self._handle.stats(key)
        oct_crop = zscore(oct_crop, mean[ws], std[ws], self.cfg.zscore_eps)
        target = target_from(self.cfg.target,
                             store.read(key, stored_name(self.cfg.target), region=(ws, ww)))
        if self.cfg.augment:
            oct_crop, target = augment(oct_crop, target, rng, noise_std=self.cfg.noise_std,
                                       offset_std=self.cfg.offset_std)
        return torch.from_numpy(oct_crop)[None], torch.from_numpy(np.ascontiguousarray(target))[None]


class VolumeDataset(Dataset):
    """Whole volumes on their native grid, for validation, testing and prediction.

    Returns ``(oct, target, key)``: ``(1, S, D, W)`` z-scored OCT, ``(1, S, W)`` target (zeros
    when the visit has none), and the visit key.
    """

    def __init__(self, cfg: DataConfig, keys: Sequence[str], target: str | None = None):
        self.cfg = cfg
        self.keys = list(keys)
        self.target = target or cfg.target
        self._handle = _StoreHandle(cfg.store, dict(cfg.storage_options))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        key = self.keys[index]
        store = self._handle.store
        vol = store.read(key, "oct")
        mean, std = bscan_stats(vol)
        vol = zscore(vol, mean, std, self.cfg.zscore_eps)
        info = store.visit(key)
        name = stored_name(self.target)
        if name in info.has:
            target = target_from(self.target, store.read(key, name))
        else:
            target = np.zeros((vol.shape[0], vol.shape[2]), np.float32)
        return torch.from_numpy(vol)[None], torch.from_numpy(target)[None], key
