"""Names of explain's outputs: unique per input image, and traceable to the input as the user gave it.

Real files share UIDs (copies, anonymised exports), so an output is never named by SOPInstanceUID alone:
:func:`image_ids` keys the pseudonym by source file and frame and makes it unique within the run;
:func:`relative_source` gives the source path relative to the PATH argument it was found under.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def image_ids(meta: Any, taken: set[str]) -> tuple[str, str]:
    """(image id, study id): pseudonyms, safe for file names and de-identified outputs. The image id is
    keyed by the source file and frame (never by SOPInstanceUID alone: copies share UIDs) and made unique
    within ``taken`` (which it updates), so no two input images share an output name."""
    from medclass.phi import pseudonym

    image_id = pseudonym(f"{meta.source}#{meta.index}#{meta.sop_uid}", prefix="I")
    candidate, n = image_id, 2
    while candidate in taken:
        candidate, n = f"{image_id}-{n}", n + 1
    taken.add(candidate)
    study_key = meta.study_uid or meta.source
    return candidate, pseudonym(study_key, prefix="S")


def relative_source(source: str, inputs: list[Path]) -> str:
    """``source`` as the user gave it: relative to the folder argument it was found under (POSIX), the
    argument itself when it was a file, else the path as recorded."""
    path = Path(source)
    for given in inputs:
        if given.is_dir():
            try:
                return path.relative_to(given).as_posix()
            except ValueError:
                continue
        elif path == given or path.resolve() == given.resolve():
            return str(given)
    return str(path)
