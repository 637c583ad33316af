"""One DICOMweb server: QIDO-RS searches, WADO-RS retrievals and STOW-RS stores through ``dicomweb-client``.

:class:`Connection` holds what to reach and how (root URL, CA bundle, timeout, payload cap, retries);
:func:`load_auth` reads credentials from the environment or a file, never from the command line;
:class:`PacsClient` does the requests. Every failure comes out as one of two errors:

- :class:`~medclass.errors.PacsUnavailable`: the server could not be reached, timed out, or answered
  408/429/5xx, still after ``retries`` attempts with exponential backoff: worth trying again later;
- :class:`~medclass.errors.PacsError`: the server answered something unusable (4xx, a wrong content type,
  a part that is not DICOM, more than ``max_bytes``, malformed UIDs): an error of that study or instance.

Credentials: ``MEDCLASS_PACS_TOKEN`` (bearer), or ``MEDCLASS_PACS_USER`` + ``MEDCLASS_PACS_PASSWORD``
(basic), or a file (``--credentials-file``) holding one line ``bearer TOKEN`` or ``basic USER:PASSWORD``.
They go into the HTTP session only; URLs with ``user:password@`` are refused, and log lines name the
server by its URL without them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from medclass.errors import ConfigError, PacsError, PacsUnavailable
from medclass.pacs.uids import check_uid

log = logging.getLogger(__name__)

T = TypeVar("T")

TOKEN_ENV = "MEDCLASS_PACS_TOKEN"
USER_ENV = "MEDCLASS_PACS_USER"
PASSWORD_ENV = "MEDCLASS_PACS_PASSWORD"
#: HTTP statuses worth retrying (the server is busy or restarting)
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: SOP class prefixes that hold no image to score (SR/KO, encapsulated documents, presentation states, RT)
NOT_IMAGES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.104.", "1.2.840.10008.5.1.4.1.1.11.",
              "1.2.840.10008.5.1.4.1.1.481.")  # fmt: skip
PAGE = 500  # QIDO-RS results per request
MAX_PAGES = 200  # 100 000 results at most per search
DEFAULT_MAX_BYTES = 1 << 30  # one response (an instance, a search result) above 1 GiB is refused


@dataclass(frozen=True)
class Connection:
    """Where a DICOMweb root is and how to talk to it."""

    url: str
    credentials_file: Path | None = None
    ca_bundle: Path | None = None
    timeout: float = 30.0  # seconds, connect and read
    max_bytes: int = DEFAULT_MAX_BYTES
    retries: int = 3  # attempts per request on a transient failure
    backoff: float = 1.0  # seconds before the 2nd attempt, doubled after each

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"not an http(s) DICOMweb root: {display_url(self.url)!r}")
        if parts.username or parts.password:
            raise ConfigError(
                f"credentials in the URL are refused (they would show in process lists and logs); put them "
                f"in {TOKEN_ENV}, {USER_ENV}/{PASSWORD_ENV} or --credentials-file"
            )
        object.__setattr__(self, "url", self.url.rstrip("/"))

    @property
    def shown(self) -> str:
        """The URL as logs show it."""
        return display_url(self.url)


def display_url(url: str) -> str:
    """``url`` without any ``user:password@`` and without a query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def load_auth(
    credentials_file: Path | None = None, env: dict[str, str] | None = None
) -> tuple[str, str] | str | None:
    """``(user, password)`` for basic auth, a bearer token, or None. Raises :class:`ConfigError` for an
    unreadable or malformed credentials file."""
    env = dict(os.environ) if env is None else env
    if credentials_file is not None:
        try:
            text = Path(credentials_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the credentials file ({exc.strerror})", credentials_file) from exc
        scheme, _, value = text.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if scheme.lower() == "basic" and ":" in value:
            user, _, password = value.strip().partition(":")
            return (user, password)
        raise ConfigError(
            "expected one line 'bearer TOKEN' or 'basic USER:PASSWORD'", credentials_file
        )  # never quote the content: it is a secret
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV]
    if env.get(USER_ENV):
        return (env[USER_ENV], env.get(PASSWORD_ENV, ""))
    return None


def _cap_hook(max_bytes: int) -> Callable[..., Any]:
    """A requests response hook refusing bodies above ``max_bytes`` (declared or streamed)."""

    def hook(response: Any, *args: Any, **kwargs: Any) -> Any:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            response.close()
            raise PacsError(f"the server announced {int(declared)} bytes, more than the {max_bytes} allowed")
        inner = response.iter_content

        def capped(chunk_size: int | None = 1, decode_unicode: bool = False) -> Iterator[Any]:
            seen = 0
            for chunk in inner(chunk_size, decode_unicode):
                seen += len(chunk)
                if seen > max_bytes:
                    response.close()
                    raise PacsError(f"the server sent more than the {max_bytes} bytes allowed")
                yield chunk

        response.iter_content = capped
        return response

    return hook


def _session(ca_bundle: Path | None) -> Any:
    """A requests session that verifies TLS against ``ca_bundle`` when one is given, else the system's trust
    store. requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override a session's ``verify`` (set on
    many Debian and corporate machines), which would silently ignore ``--ca-bundle``; ours always wins, while
    the environment still supplies proxies and the default bundle."""
    import requests

    class Session(requests.Session):
        def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            settings: dict[str, Any] = super().merge_environment_settings(*args, **kwargs)
            if ca_bundle is not None:
                settings["verify"] = str(ca_bundle)
            return settings

    return Session()


def _classify(exc: BaseException, what: str) -> PacsError:
    """The medclass error for a failed request (transient → :class:`PacsUnavailable`)."""
    import requests

    if isinstance(exc, PacsError):
        return exc
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        kind = PacsUnavailable if status in RETRY_STATUSES else PacsError
        return kind(f"{what}: the server answered HTTP {status} {exc.response.reason or ''}".rstrip())
    if isinstance(exc, requests.exceptions.SSLError):  # not transient: retrying will not make it trusted
        reason = (
            "certificate not trusted" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else "TLS handshake failed"
        )
        return PacsError(
            f"{what}: {reason}; pass --ca-bundle FILE with the CA that signed the server's certificate"
        )
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return PacsUnavailable(f"{what}: server unreachable ({type(exc).__name__})")
    if isinstance(exc, requests.RequestException):
        return PacsError(f"{what}: {type(exc).__name__}")
    # a malformed answer: dicomweb-client's ValueError (media type, multipart), pydicom's InvalidDicomError,
    # a JSON decode error, a KeyError on a missing header...
    text = " ".join(str(exc).split())[:160]
    return PacsError(f"{what}: unusable answer ({type(exc).__name__}: {text})")


@dataclass(frozen=True)
class InstanceRef:
    """One instance of a study as QIDO-RS lists it (UIDs checked)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str = ""
    frames: int = 1
    series_description: str = ""

    @property
    def is_output(self) -> bool:
        """Not an image to score: a document, SR, presentation state, or a series medclass wrote."""
        return self.sop_class_uid.startswith(NOT_IMAGES) or self.series_description.startswith("medclass ")


class PacsClient:
    """Requests to one DICOMweb root (see the module docstring for the errors)."""

    def __init__(self, connection: Connection, *, sleep: Callable[[float], None] = time.sleep) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.connection = connection
        self._sleep = sleep
        session = _session(connection.ca_bundle)
        auth = load_auth(connection.credentials_file)
        if isinstance(auth, tuple):
            session.auth = auth
        elif isinstance(auth, str):
            session.headers["Authorization"] = f"Bearer {auth}"
        session.hooks["response"].append(_cap_hook(connection.max_bytes))
        self.session = session
        self._client = DICOMwebClient(connection.url, session=session, timeout=connection.timeout)
        self._client.set_http_retry_params(retry=False)  # retries are ours: every failure classified once

    # --- the retry loop ----------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried on transient failures; raises :class:`PacsError`/:class:`PacsUnavailable`."""
        delay = self.connection.backoff
        attempts = max(1, self.connection.retries)
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except Exception as exc:  # classified: nothing a server sends may crash the run
                err = _classify(exc, what)
                if not isinstance(err, PacsUnavailable) or attempt == attempts:
                    raise err from exc
                log.debug("%s (attempt %d of %d); retrying in %.1f s", err, attempt, attempts, delay)
                self._sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    # --- QIDO-RS -----------------------------------------------------------------------------------
    def search_studies(self, filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Study-level QIDO-RS results (DICOM JSON) for ``filters`` (all pages)."""
        return self._pages(
            "QIDO-RS studies",
            lambda extra: self._client.search_for_studies(
                fields=["NumberOfStudyRelatedInstances"], search_filters={**(filters or {}), **extra}
            ),
        )

    def study_counts(self, filters: dict[str, str] | None = None) -> dict[str, int]:
        """StudyInstanceUID → number of instances, for the studies matching ``filters`` (malformed UIDs
        logged and left out)."""
        out: dict[str, int] = {}
        for found in self.search_studies(filters):
            try:
                uid = check_uid(_first(found, "0020000D"), "StudyInstanceUID")
            except PacsError as exc:
                log.warning("%s", exc)
                continue
            count = _first(found, "00201208")
            out[uid] = int(count) if str(count or "").isdigit() else -1
        return out

    def study_uids(self, filters: dict[str, str] | None = None) -> list[str]:
        """The StudyInstanceUIDs matching ``filters``, in the server's order; malformed ones are logged
        and left out."""
        out = []
        for found in self.search_studies(filters):
            value = _first(found, "0020000D")
            try:
                out.append(check_uid(value, "StudyInstanceUID"))
            except PacsError as exc:
                log.warning("%s", exc)
        return out

    def instances(self, study_uid: str) -> list[InstanceRef]:
        """The instances of ``study_uid`` (QIDO-RS). Raises :class:`PacsError` for malformed UIDs."""
        found = self._pages(
            f"QIDO-RS instances of study {study_uid}",
            lambda extra: self._client.search_for_instances(
                study_instance_uid=study_uid,
                fields=["NumberOfFrames", "SOPClassUID", "SeriesDescription"],
                search_filters=extra,
            ),
        )
        refs = []
        for d in found:
            frames = _first(d, "00280008")
            refs.append(
                InstanceRef(
                    study_uid=check_uid(_first(d, "0020000D") or study_uid, "StudyInstanceUID"),
                    series_uid=check_uid(_first(d, "0020000E"), "SeriesInstanceUID"),
                    sop_uid=check_uid(_first(d, "00080018"), "SOPInstanceUID"),
                    sop_class_uid=str(_first(d, "00080016") or ""),
                    frames=int(frames) if str(frames or "").isdigit() else 1,
                    series_description=str(_first(d, "0008103E") or ""),
                )
            )
        if any(r.study_uid != study_uid for r in refs):
            raise PacsError(f"QIDO-RS for study {study_uid} listed instances of another study")
        return refs

    def _pages(self, what: str, search: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
        """Every page of a QIDO-RS search (``limit``/``offset``), stopping when a page comes back short, or
        repeats the previous one (a server that ignores ``offset``), or after ``MAX_PAGES``."""
        out: list[dict[str, Any]] = []
        previous: list[dict[str, Any]] | None = None
        for page_no in range(MAX_PAGES):
            extra = {"limit": PAGE, "offset": page_no * PAGE}
            page = self.call(what, lambda extra=extra: _json_list(search(extra)))  # type: ignore[misc]
            if page == previous:
                break
            out.extend(page)
            if len(page) < PAGE:
                break
            previous = page
        return out

    # --- WADO-RS -----------------------------------------------------------------------------------
    def retrieve(self, ref: InstanceRef) -> Any:
        """The instance as a pydicom Dataset in its stored transfer syntax. Raises :class:`PacsError` when
        the answer is not that instance."""
        ds = self.call(
            f"WADO-RS instance {ref.sop_uid}",
            lambda: self._client.retrieve_instance(
                ref.study_uid, ref.series_uid, ref.sop_uid, media_types=(("application/dicom", "*"),)
            ),
        )
        if (
            str(ds.get("SOPInstanceUID", "")) != ref.sop_uid
            or str(ds.get("StudyInstanceUID", "")) != ref.study_uid
        ):
            raise PacsError(f"WADO-RS for instance {ref.sop_uid} returned another instance")
        return ds

    def metadata(self, ref: InstanceRef) -> Any:
        """The header of one instance (WADO-RS metadata) as a pydicom Dataset, without bulk data."""
        from pydicom import Dataset

        found = self.call(
            f"WADO-RS metadata of {ref.sop_uid}",
            lambda: _json_list(self._client.retrieve_instance_metadata(ref.study_uid, ref.series_uid, ref.sop_uid),
                               one_ok=True),
        )  # fmt: skip
        if not found:
            raise PacsError(f"WADO-RS metadata of {ref.sop_uid}: empty answer")
        return self.call(
            f"WADO-RS metadata of {ref.sop_uid}",
            lambda: Dataset.from_json(found[0], bulk_data_uri_handler=lambda *a: b""),
        )

    # --- STOW-RS -----------------------------------------------------------------------------------
    def store(self, datasets: list[Any]) -> None:
        """Store ``datasets`` (STOW-RS). Raises :class:`PacsError` when the server refuses any of them."""
        if not datasets:
            return
        answer = self.call(
            f"STOW-RS {len(datasets)} instance(s)", lambda: self._client.store_instances(datasets)
        )
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise PacsError(
                f"STOW-RS refused {len(failed)} of {len(datasets)} instance(s) (reason {', '.join(reasons)})"
            )


def _json_list(value: Any, one_ok: bool = False) -> list[dict[str, Any]]:
    if one_ok and isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise PacsError(f"expected a JSON array of DICOM objects, got {type(value).__name__}")
    return value


def _first(dataset_json: dict[str, Any], tag: str) -> Any:
    element = dataset_json.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]
