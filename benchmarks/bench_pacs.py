"""PACS round trip through a real local Orthanc: studies/min for score --dicomweb --push, and instances/s for
the WADO-RS pull, STOW-RS push and C-STORE push.

    .venv/bin/python benchmarks/bench_pacs.py [--studies 20] [--size 96]

Starts its own Orthanc (as the tests do, tests/orthanc_server.py), uploads ``--studies`` copies of the
3-slice CT series of ../shared/data (new UIDs per copy, 512×512 int16), scores them with a random
``--size`` px checkpoint (the model's cost is not what is measured here) and pushes one SR per study; then
pushes every source instance again under new UIDs by STOW-RS and by C-STORE to time the push paths alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pydicom

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent)]

from _common import environment_line, write_results  # noqa: E402
from orthanc_server import PASSWORD, USER, Orthanc  # noqa: E402
from test_score import make_checkpoint  # noqa: E402


def copies(ct: list[Path], n: int) -> list[list[pydicom.Dataset]]:
    from pydicom.uid import generate_uid

    out = []
    for _ in range(n):
        study, series = generate_uid(), generate_uid()
        group = []
        for f in ct:
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            group.append(ds)
        out.append(group)
    return out


def main() -> None:
    import os

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "dicom_samples")
    args = parser.parse_args()
    os.environ["MEDCLASS_PACS_USER"], os.environ["MEDCLASS_PACS_PASSWORD"] = USER, PASSWORD
    from medclass.pacs import (
        Connection,
        DicomNode,
        DimsePusher,
        PacsClient,
        PacsSource,
        StowPusher,
        score_from_pacs,
    )
    from medclass.score import ScoreConfig

    print(environment_line())
    ct = sorted((args.data / "dcmqi_ct-3slice").glob("0*.dcm"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = Orthanc(root / "orthanc").start()
        try:
            client = PacsClient(Connection(server.dicomweb))
            for group in copies(ct, args.studies):
                client.store(group)
            ckpt = make_checkpoint(root / "ck", size=args.size)
            config = ScoreConfig(paths=[], out=root / "scores.csv", checkpoint=ckpt, workers=0, batch_size=16)
            t0 = time.perf_counter()
            report = score_from_pacs(config, PacsSource(Connection(server.dicomweb)), [StowPusher(client)])
            wall = time.perf_counter() - t0
            pulled = sum(r.pulled for r in report.studies)
            pull_s = sum(r.pull_s for r in report.studies)
            push_s = sum(r.push_s for r in report.studies)
            srs = sum(r.pushed for r in report.studies)
            results = {
                "studies": len(report.studies), "instances": pulled, "wall_s": round(wall, 2),
                "studies_per_min": round(60 * len(report.studies) / wall, 1),
                "pull_instances_per_s": round(pulled / pull_s, 1), "pull_mb_per_s": round(
                    sum(r.n_bytes for r in report.studies) / pull_s / 1e6, 1),
                "sr_push_per_s": round(srs / push_s, 1),
            }  # fmt: skip
            for name, push in (
                ("stow", StowPusher(client)),
                ("cstore", DimsePusher(DicomNode.parse(server.node))),
            ):
                batches = copies(ct, args.studies)
                t1 = time.perf_counter()
                for group in batches:
                    push(group)
                dt = time.perf_counter() - t1
                results[f"{name}_instances_per_s"] = round(sum(map(len, batches)) / dt, 1)
        finally:
            server.stop()
    print(json.dumps(results, indent=1))
    write_results("pacs", results)


if __name__ == "__main__":
    main()
