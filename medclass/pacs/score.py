"""``medclass score --dicomweb``: studies pulled from a PACS, scored study by study, the SR pushed back.

Each study goes: QIDO-RS list of instances → WADO-RS pull of those not yet scored (into a private folder
beside the output, removed after the study) → the local engine that scores files
(:func:`~medclass.score.runner.local_engine`)
(same rows, committed per batch) → one Comprehensive SR per study pushed to every pusher. Rows are keyed
by the instance's WADO-RS URL and the frame, so ``--resume`` skips what is done and the SR, whose UID is
derived from the study and the weights, replaces nothing and duplicates nothing when pushed again.

A study the server cannot serve now (unreachable, 5xx after the retries) commits no row: the run ends with
exit 3 and ``--resume`` takes it up later. A study or instance the server answers with something unusable
gets an error row, like a corrupt file.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medclass.errors import ConfigError, PacsError, PacsUnavailable
from medclass.names import REFUSED
from medclass.pacs.client import Connection, PacsClient
from medclass.pacs.outputs import score_sr
from medclass.pacs.push import Pusher
from medclass.pacs.source import PulledStudy, header_of, pull_study, resolve_studies, study_url
from medclass.pacs.uids import output_uid
from medclass.score.decide import DecisionRule
from medclass.score.inputs import WorkItem
from medclass.score.job import ScoreConfig, ScoreJob, load_meta, output_format
from medclass.score.pipeline import Counts
from medclass.score.runner import ScoreReport, local_engine
from medclass.score.summary import study_rows, write_summary
from medclass.score.writer import PROB_PREFIX, ScoreOutput, row_key, score_columns

log = logging.getLogger(__name__)


@dataclass
class PacsSource:
    """Which studies of which server (``--dicomweb``, ``--study``, ``--query``)."""

    connection: Connection
    studies: Sequence[str] = ()
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class StudyResult:
    """What happened to one study (one progress line)."""

    study_uid: str
    instances: int = 0
    pulled: int = 0
    skipped: int = 0
    scored: int = 0
    failed: int = 0
    pushed: int = 0
    error: str = ""  # the study could not be listed / pushed: why
    unavailable: bool = False  # nothing committed for it; run again (--resume) later
    pull_s: float = 0.0
    push_s: float = 0.0
    n_bytes: int = 0

    def line(self) -> str:
        state = "server unavailable, run again with --resume" if self.unavailable else (self.error or "ok")
        return (
            f"study {self.study_uid}: {self.instances} instance(s), {self.pulled} pulled, {self.skipped} already "
            f"done, {self.scored} scored, {self.failed} failed, {self.pushed} pushed — {state}"
        )


@dataclass
class PacsReport:
    """The run: the score report (as for files) and one :class:`StudyResult` per study."""

    score: ScoreReport
    studies: list[StudyResult]

    @property
    def incomplete(self) -> int:
        """Studies with something left to do (server unavailable, push refused)."""
        return sum(1 for s in self.studies if s.unavailable or s.error)


class _StudyRows:
    """The output as the engine sees it for one study: rows go to the scores file and are kept here
    (error texts name the instance URL, not the pulled file)."""

    def __init__(self, output: ScoreOutput, files: dict[str, str]) -> None:
        self.output, self.files, self.rows = output, files, []  # type: ignore[var-annotated]

    def open(self) -> None:
        self.output.open()

    def close(self) -> None:
        self.output.close()

    def append(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            err = str(row.get("error") or "")
            for file, url in self.files.items():
                if file in err:
                    row["error"] = err.replace(file, url)
        self.output.append(rows)
        self.rows.extend(rows)


def score_from_pacs(
    config: ScoreConfig,
    source: PacsSource,
    pushers: Sequence[Pusher] = (),
    on_study: Callable[[StudyResult], None] | None = None,
) -> PacsReport:
    """Score the studies of ``source`` into ``config.out`` and push one SR per study to ``pushers``.

    Raises :class:`ConfigError`/:class:`~medclass.errors.CheckpointError` for bad settings (as
    :func:`~medclass.score.run_scoring`), :class:`PacsUnavailable`/:class:`PacsError` when the study list
    itself cannot be had; per-study failures are in the report.
    """
    scorer = PacsScorer(config, source.connection, pushers)
    studies = resolve_studies(scorer.client, source.studies, source.query)
    if not studies:
        raise ConfigError(f"no study on {source.connection.shown} matches --study/--query")
    results: list[StudyResult] = []
    try:
        for uid in studies:
            results.append(scorer.study(uid))
            if on_study is not None:
                on_study(results[-1])
    finally:
        report = scorer.close()
    return PacsReport(report, results)


class PacsScorer:
    """Scores studies of one server one at a time into one output (``score --dicomweb`` and ``watch``).

    Use: ``study(uid)`` for each study, then ``close()`` (finalizes the output and the study
    summary; returns the :class:`ScoreReport`). Raises as :func:`score_from_pacs` when created.
    """

    def __init__(self, config: ScoreConfig, connection: Connection, pushers: Sequence[Pusher] = ()) -> None:
        if config.batch_size < 1:
            raise ConfigError(f"--batch-size must be ≥ 1, got {config.batch_size}")
        if config.engine != "local":
            raise ConfigError("--dicomweb scores study by study on the local engine; drop --engine")
        meta, model = load_meta(config)
        self.meta, self.model = meta, model
        self.config, self.rule = config, DecisionRule.from_meta(meta, calibrated=config.calibrated)
        self.model_sha = str(meta.get("sha256", ""))
        self.model_name = str(meta.get("input", {}).get("model_name", "inception_v3"))
        out = Path(config.out)
        self.format = output_format(out, config.format)
        self.output = ScoreOutput(out, self.format, score_columns(self.rule.classes))
        self.output.check(resume=config.resume, overwrite=config.overwrite)
        if config.overwrite:
            self.output.clear()
        self.client = PacsClient(connection)
        self.done = self.output.done_rows(self.model_sha, self.rule.scale) if config.resume else {}
        self.settings: dict[str, Any] = {}
        self.pushers = list(pushers)
        self.pull_root = out.parent / f".{out.name}.pull"
        self.counts = Counts()
        self.results: list[StudyResult] = []

    def close(self) -> ScoreReport:
        shutil.rmtree(self.pull_root, ignore_errors=True)
        rows = self.output.finalize([])
        out = Path(self.config.out)
        report = ScoreReport(self.counts, out, sum(r.instances for r in self.results),
                             settings=self.settings | {"format": self.format})  # fmt: skip
        report.counts.skipped = sum(r.skipped for r in self.results)
        report.failed_in_output = sum(1 for r in rows if r.get("error"))
        report.summary, report.n_studies = write_summary(out, rows, self.rule, self.config.aggregate)
        return report

    def study(self, uid: str) -> StudyResult:
        """Pull, score and push one study (see the module docstring); never raises for the server's sake."""
        result = StudyResult(uid)
        self.results.append(result)
        counts = self.counts
        prefix = study_url(self.client.connection.url, uid)
        if self.done.get(f"{prefix}#") is not None:  # failed for good in an earlier run
            result.error = "failed in an earlier run (see its row)"
            return result
        per_instance: dict[str, int] = {}
        for row in self.done.values():
            path = str(row.get("path", ""))
            if path.startswith(prefix + "/"):
                per_instance[path] = per_instance.get(path, 0) + 1
        t0 = time.perf_counter()
        try:
            pulled = pull_study(self.client, uid, self.pull_root / "study", slice_policy=self.config.slice_policy,
                                done=per_instance)  # fmt: skip
        except PacsUnavailable as exc:
            result.unavailable, result.error = True, str(exc)
            log.debug("%s", exc)  # the study's progress line says it; watch logs one line per outage
            return result
        except PacsError as exc:
            pulled = PulledStudy(uid, errors=[WorkItem(prefix, None, error=str(exc))])
        result.pull_s = time.perf_counter() - t0
        result.instances, result.skipped = len(pulled.refs), pulled.skipped
        result.pulled, result.n_bytes = len(pulled.files), pulled.n_bytes
        items = [i for i in (*pulled.errors, *pulled.items) if i.key not in self.done]
        sink = _StudyRows(self.output, {i.file: i.path for i in pulled.items if i.file})
        job = ScoreJob(self.config, self.meta, self.model, self.rule, items, sink)  # type: ignore[arg-type]
        c, used = local_engine(job) if items else (Counts(), {})  # the loop that scores files
        self.settings = used or self.settings
        counts.scored, counts.failed = counts.scored + c.scored, counts.failed + c.failed
        counts.errors.extend(c.errors[: max(0, 5 - len(counts.errors))])
        result.scored, result.failed = c.scored, c.failed
        for row in sink.rows:
            self.done.setdefault(row_key(row), row)
        if self.pushers and pulled.refs:
            t1 = time.perf_counter()
            try:
                result.pushed = self._push(uid, prefix, pulled)
            except PacsError as exc:
                result.unavailable = isinstance(exc, PacsUnavailable)
                result.error = f"push failed: {exc}"
                log.warning("study %s: %s", uid, result.error)
            result.push_s = time.perf_counter() - t1
        shutil.rmtree(self.pull_root / "study", ignore_errors=True)
        return result

    def _push(self, uid: str, prefix: str, pulled: PulledStudy) -> int:
        refs = {f"{prefix}/series/{r.series_uid}/instances/{r.sop_uid}": r for r in pulled.refs}
        rows = [
            r
            for r in self.done.values()
            if not r.get("error") and r.get("decision") != REFUSED and str(r.get("path")) in refs
        ]  # a row the input gate refused (--gate refuse) has no probabilities to report
        if not rows:
            return 0
        agg = study_rows([{**r, "study_uid": uid} for r in rows], self.rule, self.config.aggregate)[0]
        images = []
        for r in rows:
            ref = refs[str(r["path"])]
            images.append({
                "series_uid": ref.series_uid, "sop_uid": ref.sop_uid, "sop_class_uid": ref.sop_class_uid,
                "frame": int(r.get("frame") or 0), "n_frames": ref.frames,
                "probs": [float(r[PROB_PREFIX + c]) for c in self.rule.classes],
            })  # fmt: skip
        study = {
            "probs": [float(agg[PROB_PREFIX + c]) for c in self.rule.classes], "predicted": agg["predicted"],
            "decision": agg["decision"], "aggregation": agg["aggregation"], "n_images": agg["n_images"],
        }  # fmt: skip
        sr = score_sr(
            header_of(pulled, self.client), images=images, study=study, classes=self.rule.classes,
            model_name=self.model_name, weights_sha256=self.model_sha,
            sop_uid=output_uid(uid, None, self.model_sha, "score-sr"),
        )  # fmt: skip
        for push in self.pushers:
            push([sr])
            log.info("study %s: SR %s stored by %s", uid, sr.SOPInstanceUID, push.name)
        return 1
