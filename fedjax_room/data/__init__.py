"""Site data: declared schemas, in-memory datasets, file loaders, built-in sets and site partitions."""

from fedjax_room.data.builtin import BUILTIN_DATASETS, FRAUD_FEATURES, load_builtin, make_fraud
from fedjax_room.data.dataset import Dataset
from fedjax_room.data.loaders import FORMATS, load_dataset, save_dataset, schema_sidecar
from fedjax_room.data.partition import partition
from fedjax_room.data.schema import Schema, default_feature_names

__all__ = [
    "BUILTIN_DATASETS",
    "FORMATS",
    "FRAUD_FEATURES",
    "Dataset",
    "Schema",
    "default_feature_names",
    "load_builtin",
    "load_dataset",
    "make_fraud",
    "partition",
    "save_dataset",
    "schema_sidecar",
]
