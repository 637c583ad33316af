"""``medclass watch``: score (and explain) every new study of a PACS once and push the results back."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from medclass.cli import ExitCode, pacs_args
from medclass.cli.calibrate import add_no_calibration

HELP = "watch a PACS: score (and explain) each new study once, push the results back"
DESCRIPTION = """\
Poll a DICOMweb server (QIDO-RS with the --query filters) every --interval seconds; each study, once its
instance count stops changing, is pulled (WADO-RS), scored into STATE/scores.csv, and one Comprehensive SR
goes back into it (--push: the same root; --push-to, --push-dimse); with --explain the saliency overlays
too (STATE/explain/<study pseudonym>/, pushed as Secondary Captures). A progress line per study.

STATE/watch.sqlite records what is done: kill -9 and start again, and every study ends up scored once
(done rows are skipped, pushed objects have derived UIDs, so nothing is stored twice). When the server is
unreachable the watcher logs one line, retries with backoff, and says when it is back. Ctrl-C (or
SIGTERM) stops after the current study.

examples:
  MEDCLASS_PACS_TOKEN=... medclass watch --dicomweb https://pacs/dicom-web --checkpoint runs/r1/best \\
      --state /var/lib/medclass/watch --query ModalitiesInStudy=CR --interval 60 --push
  medclass watch --dicomweb http://localhost:8042/dicom-web --checkpoint runs/r1/best --state w --explain --push
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint stem (or .json/.safetensors)"
    )
    parser.add_argument(
        "--state", type=Path, required=True, help="folder for watch.sqlite, scores.csv, explain/"
    )
    add_no_calibration(parser)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    parser.add_argument(
        "--max-backoff", type=float, default=300.0, help="longest wait between polls in an outage"
    )
    parser.add_argument(
        "--explain", action="store_true", help="also explain each study and push the overlays"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--changes", action="store_true",
        help="Orthanc: follow its /changes log (StableStudy events) instead of QIDO-RS polling; the REST root "
        "is the DICOMweb root without its last path part (http://host:8042/dicom-web → http://host:8042)",
    )  # fmt: skip
    parser.add_argument("--once", action="store_true", help="one poll (two for a new study), then stop")
    pacs_args.add_source_arguments(parser, watch=True)
    pacs_args.add_push_arguments(parser)


def run(args: argparse.Namespace) -> ExitCode:
    from medclass.errors import ConfigError
    from medclass.pacs import PacsScorer, parse_query
    from medclass.pacs.watch import OrthancChanges, Watcher, WatchState
    from medclass.score import ScoreConfig

    pushers = pacs_args.pushers(args)
    config = ScoreConfig(paths=[], out=args.state / "scores.csv", checkpoint=args.checkpoint, resume=True,
                         batch_size=args.batch_size, workers=0, calibrated=not args.no_calibration)  # fmt: skip
    scorer = PacsScorer(config, pacs_args.connection(args), pushers)
    state = WatchState(args.state, scorer.model_sha)
    if args.changes and args.query:
        raise ConfigError("--changes follows every stable study of the server; it takes no --query")
    stop = threading.Event()
    explain = _explainer(args, pushers) if args.explain else None
    watcher = Watcher(
        scorer, state, query=parse_query(args.query), interval=args.interval, max_backoff=args.max_backoff,
        explain=explain, on_study=lambda r: print(r.line(), file=sys.stderr, flush=True), stop=stop,
        changes=OrthancChanges(scorer.client, state) if args.changes else None,
    )  # fmt: skip
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.once:
            for _ in range(2):
                watcher.poll()
        else:
            watcher.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        report = scorer.close()
        state.close()
    s = watcher.summary
    print(
        f"watch stopped: {s.studies} studies this run ({state_counts(args.state)}), {s.polls} polls, "
        f"{s.outages} outage(s) → {report.out}"
    )
    return ExitCode.OK


def state_counts(folder: Path) -> str:
    import sqlite3

    with sqlite3.connect(folder / "watch.sqlite") as db:
        rows = db.execute("SELECT status, COUNT(*) FROM studies GROUP BY status").fetchall()
    return ", ".join(f"{n} {status} in all" for status, n in rows) or "none recorded"


def _explainer(args: argparse.Namespace, pushers: list[Any]) -> Any:
    """``explain(uid) -> StudyResult``: one ExplainRun per study under STATE/explain/."""
    from medclass import checkpoint
    from medclass.calibrate import from_meta
    from medclass.explain import Explainer
    from medclass.explain.runner import ExplainRun, Settings
    from medclass.pacs import PacsSource
    from medclass.pacs.explain import PacsExplain
    from medclass.phi import pseudonym

    ckpt = checkpoint.load(args.checkpoint)
    settings = Settings(dicom=True, faithfulness=None, pdf=False)
    explainer = Explainer(
        ckpt.model, method=settings.method, layer=settings.layer, task=ckpt.task,
        calibration=from_meta(ckpt.meta, enabled=not args.no_calibration),
    )  # fmt: skip
    connection = pacs_args.connection(args)

    def explain(uid: str) -> Any:
        job = ExplainRun(ckpt, explainer, settings, args.state / "explain" / pseudonym(uid, prefix="S"))
        pacs = PacsExplain(
            PacsSource(connection, [uid]), pushers, weights_sha256=str(ckpt.meta.get("sha256", ""))
        )
        pacs.pull(job)
        job.finish()
        return pacs.push(job)[0]

    return explain
