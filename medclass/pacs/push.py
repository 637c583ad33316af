"""Sending outputs to a PACS: STOW-RS to a DICOMweb root, or C-STORE (pynetdicom) to a DICOM node.

A pusher is a callable ``push(datasets)`` that stores every dataset or raises
:class:`~medclass.errors.PacsUnavailable` (unreachable, association refused or aborted: try again) or
:class:`~medclass.errors.PacsError` (an instance refused). Pushing the same instance again is harmless:
output UIDs are derived (:mod:`medclass.pacs.uids`), so the PACS keeps one copy.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from medclass.errors import ConfigError, PacsError, PacsUnavailable
from medclass.pacs.client import Connection, PacsClient

log = logging.getLogger(__name__)

_NODE = re.compile(
    r"^(?P<aet>[^@\\]{1,16})@(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})$"
)
#: C-STORE statuses that mean stored (0x0000 success, 0xB0xx warnings such as coercion)
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class Pusher(Protocol):
    name: str

    def __call__(self, datasets: Sequence[Any]) -> None: ...


class StowPusher:
    """STOW-RS through a :class:`PacsClient` (``--push``: the source's root; ``--push-to URL``: another)."""

    def __init__(self, client: PacsClient) -> None:
        self.client = client
        self.name = f"STOW-RS {client.connection.shown}"

    def __call__(self, datasets: Sequence[Any]) -> None:
        self.client.store(list(datasets))


@dataclass(frozen=True)
class DicomNode:
    """``AET@HOST:PORT`` of a C-STORE SCP."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DicomNode:
        """Raises :class:`ConfigError` unless ``text`` is ``AET@HOST:PORT`` (AE title ≤ 16 characters)."""
        m = _NODE.match(text.strip())
        if m is None or not 0 < int(m["port"]) < 65536:
            raise ConfigError(
                f"--push-dimse takes AET@HOST:PORT (e.g. ORTHANC@pacs.example.org:4242), got {text!r}"
            )
        return cls(m["aet"].strip(), m["host"].strip("[]"), int(m["port"]))

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


class DimsePusher:
    """C-STORE to a DICOM node, one association per call, as ``calling_aet``."""

    def __init__(self, node: DicomNode, *, calling_aet: str = "MEDCLASS", timeout: float = 30.0) -> None:
        self.node, self.calling_aet, self.timeout = node, calling_aet, timeout
        self.name = f"C-STORE {node}"

    def __call__(self, datasets: Sequence[Any]) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        if not datasets:
            return
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets})
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class, [*syntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.node.host, self.node.port, ae_title=self.node.aet)
        if not assoc.is_established:
            raise PacsUnavailable(f"C-STORE to {self.node}: no association (refused, aborted or unreachable)")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(getattr(status, "Status", -1)) if status else -1
                if code == -1:
                    raise PacsUnavailable(f"C-STORE to {self.node}: no answer for {ds.SOPInstanceUID}")
                if code not in _STORED:
                    raise PacsError(
                        f"C-STORE to {self.node} refused {ds.SOPInstanceUID} (status 0x{code:04X})"
                    )
        finally:
            if assoc.is_established:
                assoc.release()


def make_pushers(
    source: Connection | None,
    *,
    push: bool = False,
    push_to: Sequence[str] = (),
    push_dimse: Sequence[str] = (),
    calling_aet: str = "MEDCLASS",
) -> list[Pusher]:
    """The pushers the flags ask for (``--push`` needs the ``source`` connection; ``--push-to`` roots share
    its credentials file, CA bundle and timeouts). Raises :class:`ConfigError` for a malformed target."""
    out: list[Pusher] = []
    if push:
        if source is None:
            raise ConfigError(
                "--push sends results back to --dicomweb; give --dicomweb (or use --push-to URL)"
            )
        out.append(StowPusher(PacsClient(source)))
    base = source or Connection("http://localhost")
    for url in push_to:
        out.append(StowPusher(PacsClient(Connection(url, base.credentials_file, base.ca_bundle, base.timeout,
                                                    base.max_bytes, base.retries, base.backoff))))  # fmt: skip
    for text in push_dimse:
        out.append(DimsePusher(DicomNode.parse(text), calling_aet=calling_aet, timeout=base.timeout))
    return out
