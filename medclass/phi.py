"""The one place that decides what leaves medclass about a patient.

Reports, logs, file names and score tables use :func:`pseudonym` (a salted hash) instead of the patient
ID; names, birth dates and accession numbers never leave unless the user opts in with ``--include-phi``.
"""

from __future__ import annotations

import hashlib
import os

# A deployment sets MEDCLASS_PHI_SALT so that pseudonyms cannot be reversed by hashing guessed IDs.
_DEFAULT_SALT = "medclass-v1"


def pseudonym(value: str | None, *, prefix: str = "P") -> str:
    """A stable, non-reversible short id for a patient (or study) identifier; ``""`` for none."""
    if not value:
        return ""
    salt = os.environ.get("MEDCLASS_PHI_SALT", _DEFAULT_SALT)
    digest = hashlib.sha256(f"{salt}\x00{value}".encode()).hexdigest()
    return f"{prefix}-{digest[:12]}"
