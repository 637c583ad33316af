"""Synthetic chest radiographs with a known focal opacity, written as real DICOM (or PNG) files.

Used by ``medclass demo`` and by tests that need a ground truth: training (a learnable label), Grad-CAM (a
lesion at a recorded position), PHI scanning (marker strings in every header) and ingestion (MONOCHROME1,
rescale, 8/12/14/16-bit, RLE, padding). Every image is a phantom drawn in *display space*
(:mod:`medclass.synth.phantom`) and then stored consistently with its photometric interpretation, rescale
and bit depth (:mod:`medclass.synth.dicom`). Size, bit depth, photometric, transfer syntax, modality and
every other header value come from their own random stream, independent of the label, so none leaks it.
"""

from __future__ import annotations

from medclass.synth.dataset import (
    CSV_FIELDS,
    LABELS,
    SynthDataset,
    SynthRecord,
    generate_cxr_dataset,
    generate_png_dataset,
)
from medclass.synth.dicom import TRANSFER_SYNTAXES, Encoding, to_stored
from medclass.synth.phantom import (
    Anatomy,
    Lesion,
    Phantom,
    lung_mask,
    make_lesion_image,
    place_lesion,
    random_anatomy,
    render_phantom,
)

__all__ = [
    "CSV_FIELDS",
    "LABELS",
    "TRANSFER_SYNTAXES",
    "Anatomy",
    "Encoding",
    "Lesion",
    "Phantom",
    "SynthDataset",
    "SynthRecord",
    "generate_cxr_dataset",
    "generate_png_dataset",
    "lung_mask",
    "make_lesion_image",
    "place_lesion",
    "random_anatomy",
    "render_phantom",
    "to_stored",
]
