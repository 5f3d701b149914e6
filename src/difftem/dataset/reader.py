"""Read a dataset store as a ``torch.utils.data.Dataset`` of per-item tensors and metadata."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..core.errors import ConfigError
from .store import Store


class DatasetReader(Dataset):
    """The complete items of a store (Zarr or MRC layout), in index order.

    ``reader[k]`` is a dict: one tensor per array (``micrograph``, ``noiseless``, ``potential``, …;
    float32 (H, W) or (n_tilts, H, W), complex64 for ``exit_wave``) plus, with ``metadata=True``,
    ``index``, ``item_seed``, ``pixel_size_a``, ``params`` (sampled values by dotted path),
    ``ground_truth`` (particles, CTF per image/tilt, MTF, dose) and ``config`` (resolved config).
    Failed or missing items are not listed. Safe to use with DataLoader workers: files are opened
    per access.
    """

    def __init__(self, store: str | Path, outputs: Iterable[str] | None = None, metadata: bool = True,
                 transform: Callable[[dict], dict] | None = None):
        self.root = Path(store)
        record = Store.inspect(self.root)
        if record is None:
            raise ConfigError(f"{self.root}: no dataset store here (build one with `difftem dataset`)")
        self.record = record
        self._store = Store(self.root, record["format"])
        self.indices = sorted(self._store.done_indices())
        self.outputs = list(outputs) if outputs is not None else list(record["spec"]["outputs"])
        unknown = set(self.outputs) - set(record["spec"]["outputs"])
        if unknown:
            raise ConfigError(f"outputs: {sorted(unknown)} not in this store; it holds {record['spec']['outputs']}")
        self.metadata = metadata
        self.transform = transform

    @property
    def n_items(self) -> int:
        """Items the spec asks for (``len(self)`` counts only the complete ones)."""
        return int(self.record["n_items"])

    @property
    def fingerprint(self) -> str:
        return self.record["fingerprint"]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        if not -len(self) <= k < len(self):
            raise IndexError(f"item {k} out of range for {len(self)} complete items")
        return self.item(self.indices[k])

    def item(self, index: int) -> dict:
        """Item by its dataset index (as in the manifest), not by position."""
        arrays, attrs = self._store.read_item(index, self.outputs)
        out: dict = {name: torch.from_numpy(arr) for name, arr in arrays.items()}
        if self.metadata:
            out.update(index=attrs["index"], item_seed=attrs["item_seed"],
                       pixel_size_a=attrs["ground_truth"]["pixel_size_a"], params=attrs["params"],
                       ground_truth=attrs["ground_truth"], config=attrs["config"])
        return self.transform(out) if self.transform is not None else out


def collate_items(batch: list[dict]) -> dict:
    """DataLoader ``collate_fn``: stack tensors of equal shape; keep everything else as a list."""
    out = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
