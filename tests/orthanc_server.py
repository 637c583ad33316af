"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) for tests, on 127.0.0.1 with free ports.

Each :class:`Orthanc` has its own temporary configuration and storage folder, HTTP basic auth on, and the
DICOMweb plugin at ``/dicom-web``. ``stop()`` + ``start()`` keeps the storage and the ports (an outage and
a restart). Missing binaries skip the test with the reason, and fail it under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

USER, PASSWORD = "medclass", "s3cret-for-tests"
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/lib/*/orthanc/libOrthancDicomWeb.so*",
)


def _need(what: str) -> None:
    msg = f"{what} not installed (scripts/system-deps.sh installs Debian's orthanc and orthanc-dicomweb)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {msg}", pytrace=False)
    pytest.skip(msg)


def orthanc_binary() -> str:
    exe = shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.path.exists(p)), None
    )
    if exe is None:
        _need("Orthanc")
    return str(exe)


def dicomweb_plugin() -> str:
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    _need("the Orthanc DICOMweb plugin")
    raise AssertionError("unreachable")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: all sockets are held open until every port is chosen (asked one at a
    time, the kernel may hand out the same port twice: one CI run gave Orthanc's HTTP and DICOM servers the
    same port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


class Orthanc:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.http_port, self.dicom_port = free_ports(2)
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = self.root / "orthanc.json"
        (self.root / "db").mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps({
            "Name": "medclass-test", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [dicomweb_plugin()], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1, "OverwriteInstances": False, "ConcurrentJobs": 1, "HttpThreadsCount": 8,
        }))  # fmt: skip
        self.exe = orthanc_binary()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def node(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom_port}"

    def start(self, timeout: float = 60) -> Orthanc:
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 (kept by the process)
        self.proc = subprocess.Popen([self.exe, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                if self.get("/system").ok:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer within the timeout")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, auth=(USER, PASSWORD), timeout=30, **kw)

    def upload(self, path: Path) -> dict[str, Any]:
        r = requests.post(
            self.url + "/instances", data=Path(path).read_bytes(), auth=(USER, PASSWORD), timeout=60
        )
        r.raise_for_status()
        return r.json()

    def find(self, level: str, query: dict[str, str]) -> list[str]:
        r = requests.post(
            self.url + "/tools/find", json={"Level": level, "Query": query}, auth=(USER, PASSWORD), timeout=30
        )
        r.raise_for_status()
        return list(r.json())

    def n_instances(self) -> int:
        return int(self.get("/statistics").json()["CountInstances"])
