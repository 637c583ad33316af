"""Data manifests: which image files (or frames) make up a data set, their labels, patients and splits.

``load_manifest`` reads and validates a manifest; ``sources`` turn folders, label tables, DICOM trees and
MedMNIST files into records; ``with_splits`` assigns patient-grouped, stratified, seeded splits;
``write_manifest`` writes them atomically; ``check_manifest`` finds leaks and missing files.
"""

from __future__ import annotations

from medclass.manifest.check import CheckReport, Problem, check_manifest, data_warnings, sha256_file
from medclass.manifest.meta import NEGATIVE_NAMES, is_negative_name, meta_path, positive_class, write_meta
from medclass.manifest.preflight import check_files
from medclass.manifest.sources import (
    PATIENT_RULES,
    Collected,
    from_dicom_tree,
    from_folders,
    from_labels_csv,
    from_npz,
    patient_rule,
)
from medclass.manifest.split import assign_splits, group_strata, with_splits
from medclass.manifest.table import (
    DATA_ROOT_ENV,
    FINDING_PREFIX,
    SPLITS,
    Manifest,
    ManifestRow,
    load_manifest,
    resolve_data_root,
    resolve_path,
    row_to_record,
    write_manifest,
)

__all__ = [
    "DATA_ROOT_ENV",
    "FINDING_PREFIX",
    "NEGATIVE_NAMES",
    "PATIENT_RULES",
    "SPLITS",
    "CheckReport",
    "Collected",
    "Manifest",
    "ManifestRow",
    "Problem",
    "assign_splits",
    "check_files",
    "check_manifest",
    "data_warnings",
    "from_dicom_tree",
    "from_folders",
    "from_labels_csv",
    "from_npz",
    "group_strata",
    "is_negative_name",
    "load_manifest",
    "meta_path",
    "patient_rule",
    "positive_class",
    "resolve_data_root",
    "resolve_path",
    "row_to_record",
    "sha256_file",
    "with_splits",
    "write_manifest",
    "write_meta",
]
