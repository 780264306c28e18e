"""The datasets, one file each, and what they share: the spec and reader (base), the batch order and augmentation
draws (order), the augmentations (augment).

    mnist          MNIST, IDX files                 (mnist.py)
    fashion-mnist  Fashion-MNIST, IDX files         (mnist.py)
    cifar10        CIFAR-10, python pickle batches  (cifar.py)
    folder         your own images, ImageFolder's layout, read by torchvision (folder.py)

A new dataset is a new file here (base.py says what it declares); every module of this package is imported, so its
`@register_dataset` runs. The built-in ones register first, in the order above (the order error lines list them in).
"""
import importlib
import pkgutil

from arcdist.datasets.augment import AUGMENTATIONS, Augmentation
from arcdist.datasets.base import (DATASETS, DataError, Dataset, DatasetSpec, Splits, TorchvisionFiles, dataset_class,
                                   dataset_spec, load_dataset, normalization, register_dataset,
                                   run_spec)
from arcdist.datasets.order import Order, epoch_permutation, sample_indices

for _module in ("mnist", "cifar", "folder", *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["AUGMENTATIONS", "Augmentation", "DATASETS", "DataError", "Dataset", "DatasetSpec", "Order", "Splits",
           "TorchvisionFiles", "dataset_class", "dataset_spec", "epoch_permutation", "load_dataset",
           "normalization", "register_dataset", "run_spec", "sample_indices"]
