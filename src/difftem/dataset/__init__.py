"""Dataset generation on Dask: many simulated items, each reproducible from (spec, index).

``build(spec, out, client=None)`` writes a store (Zarr or MRC + STAR) with a manifest;
``DatasetReader(out)`` reads it back as a ``torch.utils.data.Dataset``. See docs/datasets.md.
Dask and Zarr are imported only when a build or a Zarr read runs.
"""

from .build import BuildReport, SimulatedItem, build, ground_truth, simulate_item
from .reader import DatasetReader, collate_items
from .spec import DatasetSpec, item_seed, load_spec, spec_from_dict

__all__ = ["BuildReport", "DatasetReader", "DatasetSpec", "SimulatedItem", "build", "collate_items", "ground_truth",
           "item_seed", "load_spec", "simulate_item", "spec_from_dict"]
