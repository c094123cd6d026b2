"""Training cases held on the device as normalised volumes, in a pool sized by memory.

When the dataset fits (``pool_bytes`` 0 or large enough) every case is loaded
once. Otherwise the pool holds as many cases as fit and a background thread
loads and normalises the next case from disk while training runs; every
``refresh_every`` steps the next case replaces the oldest one (only the upload
happens on the training thread; the disk read was done meanwhile).

Deterministic: the swap happens at fixed steps whatever the disk's speed
(:meth:`CasePool.refresh` waits for the loader when it is not done yet, which
is rare: it had ``refresh_every`` steps), so which cases are in the pool at a
step depends only on the seed and the step. A resumed run rebuilds the pool of
its checkpoint step from the number of swaps (``refreshes``), and its training
is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass

import numpy as np
import slangpy as spy

from neumours.data import load_case, normalise
from neumours.data.nifti import read_header
from neumours.device import upload
from neumours.errors import NeumoursDataError
from neumours.torch.boundary import signed_distance
from neumours.train.augment import value_range


@dataclass
class HostCase:
    """What the sampler and the augmentation need of a case on the host: shape, flat labels,
    tumour voxel indices, the range of each normalised modality, and for the boundary loss
    the signed distances (mm) of every voxel to each tumour class's boundary."""

    case_id: str
    shape: tuple[int, int, int]
    label: np.ndarray           # (X * Y * Z,) uint8
    tumour: np.ndarray          # flat indices of label > 0
    value_range: np.ndarray | None = None  # (C, 2) lowest, highest nonzero normalised value per modality
    distances: np.ndarray | None = None    # (X * Y * Z, classes - 1) float32: signed_distance of classes 1..


def load_training_case(ref, force_geometry: bool = False, sdm_classes: int = 0) -> tuple[np.ndarray, HostCase]:
    """Load, check and normalise one case: ((4, X, Y, Z) float32, HostCase); with ``sdm_classes``
    (the class count) > 0 also the signed distances of the tumour classes (the boundary loss)."""
    case = load_case(ref, force_geometry=force_geometry)
    if case.label is None:
        raise NeumoursDataError(getattr(ref, "path", ref), "training case has no label volume")
    label = case.label.reshape(-1)
    images = normalise(case.images)
    distances = None
    if sdm_classes > 0:
        phi = signed_distance(case.label, sdm_classes, spacing=tuple(float(s) for s in case.spacing),
                              classes=range(1, sdm_classes))
        distances = np.ascontiguousarray(phi[1:].reshape(sdm_classes - 1, -1).T)
    return images, HostCase(case.case_id, tuple(case.images.shape[1:]), label,
                            np.flatnonzero(label).astype(np.int64), value_range(images), distances)


def _voxels(ref) -> int:
    path = ref.paths["t1n"] if hasattr(ref, "paths") else ref
    facts, _ = read_header(path, force_geometry=True)  # geometry is checked when the case is loaded
    return int(np.prod(facts.shape[:3]))


class CasePool:
    """Normalised volumes of training cases in one device buffer, one slot per case.

    Args:
        device: slangpy device.
        refs: training cases (CaseRefs or paths).
        num_modalities: channels per case (4).
        pool_bytes: device memory for volumes; 0 holds every case.
        seed: order in which cases enter the pool.
        refreshes: start as the pool is after this many :meth:`refresh` calls
            (a resumed run: :meth:`state` of its checkpoint).
        force_geometry: see :func:`neumours.data.load_case`.
        sdm_classes: with the boundary loss, the class count whose signed distance maps every
            case keeps on the host; 0 (default): none.

    Attributes:
        volumes, case_table: device buffers read by ``gather_inputs`` (see
            neumours.model.inputs.CaseVolumes).
        cases: the HostCase of every slot.
        distances: with ``sdm_classes``, (slots, voxels, sdm_classes - 1) float32 on the host: the
            signed distances of each slot's case (its :attr:`HostCase.distances` is a view of its
            slot), so the sampler gathers a micro-batch's in one indexing; else None.
    """

    def __init__(self, device: spy.Device, refs, num_modalities: int = 4, pool_bytes: int = 0, seed: int = 0,
                 refreshes: int = 0, force_geometry: bool = False, sdm_classes: int = 0):
        if not refs:
            raise NeumoursDataError("training split", "no training cases")
        self.device = device
        self.refs = list(refs)
        self.num_modalities = num_modalities
        order = np.random.default_rng(seed).permutation(len(self.refs))
        self._order = [self.refs[i] for i in order]
        self.slot_floats = num_modalities * max(_voxels(ref) for ref in self.refs)
        slot_bytes = 4 * self.slot_floats
        capacity = len(self.refs) if pool_bytes <= 0 else int(min(len(self.refs), max(1, pool_bytes // slot_bytes)))
        self.capacity = capacity
        self.force_geometry = force_geometry
        self.sdm_classes = int(sdm_classes)
        cycling = capacity < len(self.refs)
        self.refreshes = int(refreshes) if cycling else 0
        # Which case each slot holds after `refreshes` swaps: slot `oldest` takes order[next], in turn.
        slots, self._next, self._oldest = list(range(capacity)), capacity % len(self.refs), 0
        for _ in range(self.refreshes):
            slots[self._oldest] = self._next
            self._next, self._oldest = (self._next + 1) % len(self.refs), (self._oldest + 1) % capacity
        self.cases: list[HostCase] = []
        self.distances = None if not self.sdm_classes else np.zeros(
            (capacity, self.slot_floats // num_modalities, self.sdm_classes - 1), np.float32)
        volumes = np.zeros(capacity * self.slot_floats, np.float32)
        for slot, index in enumerate(slots):
            images, host = load_training_case(self._order[index], force_geometry, self.sdm_classes)
            volumes[slot * self.slot_floats: slot * self.slot_floats + images.size] = images.reshape(-1)
            self.cases.append(self._keep_distances(slot, host))
        self.volumes = upload(device, volumes)
        self.case_table = upload(device, self._table(), np.uint32)
        self._executor = None
        self._pending = None
        if cycling:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="case-pool")
            self._prefetch()

    @property
    def size(self) -> int:
        return len(self.cases)

    @property
    def cycling(self) -> bool:
        """True when the dataset does not fit and cases are swapped in during training."""
        return self._executor is not None

    def _keep_distances(self, slot: int, host: HostCase) -> HostCase:
        """Move a loaded case's signed distances into its slot of :attr:`distances` (no second copy)."""
        if self.distances is not None:
            self.distances[slot, :len(host.distances)] = host.distances
            host.distances = self.distances[slot, :len(host.distances)]
        return host

    def _table(self) -> np.ndarray:
        return np.array([(slot * self.slot_floats, *c.shape) for slot, c in enumerate(self.cases)], np.uint32)

    def _prefetch(self) -> None:
        ref = self._order[self._next]
        self._next = (self._next + 1) % len(self.refs)
        self._pending = self._executor.submit(load_training_case, ref, self.force_geometry, self.sdm_classes)

    def state(self) -> dict:
        """What a checkpoint needs to rebuild this pool: ``{"refreshes": n}``."""
        return {"refreshes": self.refreshes}

    def refresh(self) -> bool:
        """Swap the prefetched case into the oldest slot, waiting for the loader if it is not done.

        Waiting keeps runs deterministic (see the module docstring). Returns True
        when a case was swapped in (False when the pool is not cycling).

        Raises:
            NeumoursDataError: the next case cannot be loaded (naming its file).
        """
        if self._pending is None:
            return False
        images, host = self._pending.result()
        slot = self._oldest
        encoder = self.device.create_command_encoder()
        encoder.upload_buffer_data(self.volumes, 4 * slot * self.slot_floats, images.reshape(-1))
        self.device.submit_command_buffer(encoder.finish())
        self.cases[slot] = self._keep_distances(slot, host)
        self.case_table.copy_from_numpy(self._table())
        self._oldest = (self._oldest + 1) % self.capacity
        self.refreshes += 1
        self._prefetch()
        return True

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
