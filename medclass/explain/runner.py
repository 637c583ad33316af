"""The explain application: batches of images → overlays, clinician reports, DICOM, tables.

:class:`ExplainRun` collects images, explains them in batches with an :class:`~medclass.explain.Explainer`
and writes every output; :class:`Settings` holds the command's options. ``medclass explain`` parses its
options and calls this, as ``medclass train`` and ``medclass score`` call their stage's runner; the report
stage is handed plain data (maps, scores, paths), never a model.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medclass import __version__
from medclass.explain.gating import judge, refused_row
from medclass.explain.naming import image_ids, relative_source
from medclass.names import PROB_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    method: str = "gradcam"
    layer: str = "Mixed_7c"
    target: int | None = None
    dicom: bool = False
    sr: bool = False
    include_phi: bool = False
    opacity: float = 0.4
    top_percent: float | None = 10.0
    colormap: str = "jet"
    pdf: bool = True
    faithfulness: str | None = "road-morf"
    sanity_check: bool = False
    slice_policy: str = "middle"
    batch_size: int = 8
    regions: bool = False  # ranked regions (box + outline) of each map: medclass.explain.regions
    region_threshold: float = 0.5
    max_regions: int = 3
    seg: bool = False  # with regions and dicom: a DICOM SEG of the thresholded map
    raise_internal: bool = False  # --traceback: an unexpected exception stops the run with its traceback
    gate: str = "flag"  # the input gate (medclass.gate): flag | refuse | off


@dataclass
class _Study:
    report_id: str
    patient: dict[str, str]
    sections: list[Any] = field(default_factory=list)
    series_uid: str = ""
    region_series: dict[str, str] = field(default_factory=dict)
    sr_series_uid: str = ""


def _description(meta: Any) -> str:
    parts = [meta.modality, meta.view_position, meta.body_part.lower() if meta.body_part else ""]
    text = " ".join(p for p in parts if p) or meta.format.upper()
    return text + (f", frame {meta.index + 1} of {meta.n_frames}" if meta.n_frames > 1 else "")


class ExplainRun:
    """Collects images, explains them in batches, and writes every output of ``medclass explain``."""

    def __init__(
        self,
        ckpt: Any,
        explainer: Any,
        settings: Settings,
        out: Path,
        metrics_doc: Any = None,
        inputs: list[Path] | None = None,
    ) -> None:
        from medclass.explain import Overlay, layer_grid
        from medclass.preprocess import Preprocessor
        from medclass.report.clinician import ModelCard, merge_evaluation, operating_points_from_meta

        self.ckpt, self.explainer, self.s, self.out = ckpt, explainer, settings, Path(out)
        meta = ckpt.meta
        self.classes = ckpt.classes or [str(i) for i in range(int(meta.get("num_classes", 0)))]
        self.inputs = list(inputs or [])
        self.taken: set[str] = set()
        self.positive_class = meta.get("positive_class")
        self.window = meta.get("window", "auto")
        self.preprocessor = Preprocessor.from_meta(meta)
        spec = self.preprocessor.spec
        self.size = spec.size
        self.grid = layer_grid(ckpt.model, settings.layer, spec.size)
        self.overlay = Overlay(settings.colormap, settings.opacity, settings.top_percent)
        self.finder = None
        if settings.regions:
            from medclass.explain.regions import RegionFinder

            self.finder = RegionFinder(settings.region_threshold, settings.max_regions)
        self.scale = (
            "raw" if explainer.predictor.calibration is None else "calibrated"
        )  # thresholds must match
        self.operating_points = operating_points_from_meta(
            merge_evaluation(meta, metrics_doc), scale=self.scale
        )
        manifest = meta.get("manifest") or meta.get("manifest_name") or "manifest"
        sha = meta.get("manifest_sha256")
        self.card = ModelCard(
            model_sha256=str(meta.get("sha256", "")),
            training_data=f"{Path(str(manifest)).name} (sha256 {sha})" if sha else "",
            task=ckpt.task,
            input_size=spec.size,
            software=f"medclass {__version__}",
            positive_class=str(self.positive_class or ""),
        )
        if meta.get("intended_use"):
            self.card = replace(self.card, intended_use=str(meta["intended_use"]))
        from medclass.gate import Gate

        self.gate = Gate.from_meta(meta, settings.gate)
        self.pending: list[tuple[Any, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []  # images the input gate refused (--gate refuse): no outputs
        self.errors: list[dict[str, str]] = []
        self.studies: dict[str, _Study] = {}
        self.generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.out.mkdir(parents=True, exist_ok=True)

    # -- input side ---------------------------------------------------------------------------------
    def fail(self, where: str, exc: BaseException, stage: str = "") -> None:
        """Record ``exc`` as the error of the image (or report) ``where`` and go on; see :func:`_contain`."""
        from medclass.errors import MedclassError, error_kind, short_message
        from medclass.phi import pseudonym

        if self.s.raise_internal and not isinstance(exc, MedclassError):
            raise exc
        kind = error_kind(exc)
        # the message without the path: ``where`` names the file, and leaves only with --include-phi
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {short_message(exc)}"
        entry = {"where": where, "source_id": pseudonym(where, prefix="F"), "kind": kind, "message": message}
        self.errors.append(entry | ({"stage": stage} if stage else {}))
        log.warning("%s failed%s: %s: %s", pseudonym(where, prefix="F"), f" ({stage})" if stage else "",
                    kind, message)  # fmt: skip

    def add(self, image: Any) -> None:
        """Preprocess ``image`` and queue it; a failure becomes its error (the run goes on)."""
        try:
            prepared = self.preprocessor(image)
        except Exception as exc:
            self.fail(_where(image.meta), exc, "preprocess")
            return
        self.pending.append((image, prepared))
        if len(self.pending) >= self.s.batch_size:
            self._flush()

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        if batch:
            self._explain(batch)

    def _explain(self, batch: list[tuple[Any, Any]]) -> None:
        """Saliency (and faithfulness) for ``batch``; when that fails, each image alone, so that only the
        image that cannot be explained fails."""
        import numpy as np

        x = np.stack([p.array for _, p in batch])  # N×3×S×S
        verdicts = judge(self.gate, self.explainer, [image.meta for image, _ in batch], x)
        if any(self.gate.refuses(v) for v in verdicts):
            keep = [k for k, v in enumerate(verdicts) if not self.gate.refuses(v)]
            for k, v in enumerate(verdicts):
                if self.gate.refuses(v):
                    self._refuse(batch[k][0], v)
            batch, verdicts, x = [batch[k] for k in keep], [verdicts[k] for k in keep], x[keep]
            if not batch:
                return
        targets = None if self.s.target is None else [self.s.target] * len(batch)
        try:
            sal = self.explainer.explain(x, targets)
            faith: Any = [None] * len(batch)
            if self.s.faithfulness:
                from medclass.explain import faithfulness

                faith = faithfulness(
                    self.ckpt.model, x, sal.maps, sal.targets, metric=self.s.faithfulness, task=self.ckpt.task
                )
        except Exception as exc:
            if len(batch) > 1:
                log.info("saliency failed for a batch of %d (%s); explaining its images one by one", len(batch),
                         type(exc).__name__)  # fmt: skip
                for one in batch:
                    self._explain([one])
            else:
                self.fail(_where(batch[0][0].meta), exc, "saliency")
            return
        if self.s.sanity_check and self.card.randomisation_check is None:
            from medclass.explain import randomisation_check

            try:
                rho = randomisation_check(self.ckpt.model, x, method=self.s.method, layer=self.s.layer)
                self.card = replace(self.card, randomisation_check=rho)
            except Exception as exc:  # a property of the model card, not of an image: logged, run goes on
                log.warning("randomisation check failed: %s: %s", type(exc).__name__, exc)
        for k, (image, prepared) in enumerate(batch):
            written: list[Path] = []
            try:
                self._one(
                    image, prepared, sal.maps[k], sal.targets[k], sal.probabilities[k], faith[k], written,
                    verdicts[k],
                )  # fmt: skip
            except Exception as exc:  # overlay, figure or DICOM write: this image fails, its files go
                for path in written:
                    path.unlink(missing_ok=True)
                self.fail(_where(image.meta), exc, "outputs")

    def _refuse(self, image: Any, verdict: Any) -> None:
        """Record an image the input gate refused (identifiers and verdict, no outputs)."""
        self.refused.append(refused_row(image.meta, verdict, self.taken, self.inputs))
        log.info("%s refused by the input gate: %s", self.refused[-1]["image_id"], verdict.reason)

    def _one(self, image: Any, prepared: Any, smap: Any, target: int, probs: Any, faith: Any,
             written: list[Path], verdict: Any = None) -> None:  # fmt: skip
        """Every output of one explained image; files are listed in ``written`` as they are written, and
        the row and report section are kept only when all of them were."""
        import numpy as np

        from medclass.explain import overlay_figure_png, to_original
        from medclass.explain.overlay import png_bytes
        from medclass.explain.regions import report_section
        from medclass.fileio import atomic_write_bytes
        from medclass.phi import pseudonym
        from medclass.preprocess import display_image
        from medclass.report.clinician import ImageSection

        meta = image.meta
        image_id, study_id = image_ids(meta, self.taken)
        saliency = np.nan_to_num(to_original(smap, prepared.geometry), nan=0.0)  # H×W on the original grid
        display = display_image(image, self.window)
        rgb = self.overlay(display, saliency)
        figure = overlay_figure_png(rgb, colormap=self.s.colormap, top_percent=self.s.top_percent)
        overlay_path = self.out / f"{image_id}_overlay.png"
        atomic_write_bytes(overlay_path, figure, private=self.s.include_phi)
        written.append(overlay_path)
        study = self.studies.get(study_id) or _Study(study_id, self._patient_fields(meta))
        row: dict[str, Any] = {
            "image_id": image_id,
            "source": relative_source(meta.source, self.inputs),
            "frame": meta.index,
            "study_id": study_id,
            "patient": pseudonym(meta.patient_id) or "",
            "explained_class": self.classes[target],
            **{f"{PROB_PREFIX}{c}": round(float(p), 6) for c, p in zip(self.classes, probs, strict=True)},
            "faithfulness_metric": self.s.faithfulness or "",
            "faithfulness": None if faith is None else round(float(faith), 6),
            "overlay_png": overlay_path.name,
            "report_html": f"{study_id}_report.html",
            "report_pdf": f"{study_id}_report.pdf" if self.s.pdf else "",
            "dicom": "",
            "sr": "",
        }
        if self.gate.active and verdict is not None:
            row |= verdict.columns()
        if self.s.include_phi:
            row |= {"sop_uid": meta.sop_uid, "study_uid": meta.study_uid}
        if self.s.dicom and meta.format != "dicom":  # said per image; not an error
            row["dicom_note"] = f"no DICOM output: the source is {meta.format.upper()}, not DICOM"
            log.info("%s: %s", image_id, row["dicom_note"])
        elif self.s.dicom:
            row |= self._dicom(rgb, meta, probs, target, image_id, study, written)
        regions = self._regions(row, saliency, meta, image_id, study, self.classes[target], written)
        from medclass.explain import FAITHFULNESS_METRICS

        meaning = FAITHFULNESS_METRICS[self.s.faithfulness].meaning if self.s.faithfulness else ""
        study.sections.append(
            ImageSection(
                image_id=image_id,
                description=_description(meta),
                original_png=png_bytes(display),
                overlay_png=figure,
                classes=tuple(self.classes),
                probabilities=tuple(float(p) for p in probs),
                explained_class=self.classes[target],
                faithfulness=None if faith is None else float(faith),
                faithfulness_metric=self.s.faithfulness or "",
                faithfulness_meaning=meaning,
                gate_reason=verdict.reason if verdict is not None and verdict.in_scope is False else "",
                **({} if regions is None else report_section(display, regions)),
            )
        )
        self.studies[study_id] = study
        self.rows.append(row)
        log.info("explained %s: %s %.3f", image_id, self.classes[target], float(probs[target]))

    def _dicom(
        self, rgb: Any, meta: Any, probs: Any, target: int, image_id: str, study: _Study, written: list[Path]
    ) -> dict[str, str]:
        """The Secondary Capture (and, with --sr, the SR) of one image from a DICOM source."""
        from pydicom.uid import generate_uid

        from medclass.explain.dicom_out import read_source_header, scores_sr, secondary_capture, write_dataset

        src = read_source_header(meta)
        study.series_uid = study.series_uid or generate_uid()
        sc = secondary_capture(rgb, meta, method=self.s.method, include_phi=self.s.include_phi, source=src,
                               instance_number=len(study.sections) + 1, series_uid=study.series_uid)  # fmt: skip
        out = {"dicom": write_dataset(sc, self.out / f"{image_id}_saliency.dcm").name}
        written.append(self.out / out["dicom"])
        if self.s.sr:
            study.sr_series_uid = study.sr_series_uid or generate_uid()
            sr = scores_sr(meta, self.classes, [float(p) for p in probs], explained_class=self.classes[target],
                           method=self.s.method, include_phi=self.s.include_phi, source=src, overlay=sc,
                           series_uid=study.sr_series_uid, instance_number=len(study.sections) + 1)  # fmt: skip
            out["sr"] = write_dataset(sr, self.out / f"{image_id}_scores_sr.dcm").name
            written.append(self.out / out["sr"])
        return out

    def _regions(self, row: dict[str, Any], saliency: Any, meta: Any, image_id: str, study: _Study,
                 explained: str, files: list[Path]) -> Any:  # fmt: skip
        """Regions of the map into ``row`` (and, with --dicom, an SR and optional SEG); None when off."""
        if self.finder is None:
            return None
        from medclass.explain.dicom_regions import write_region_dicoms
        from medclass.explain.regions import csv_fields, regions_mask

        regions = self.finder(saliency)
        row |= csv_fields(regions, self.s.max_regions) | {"regions_sr": "", "regions_seg": ""}
        row["regions"] = [r.to_dict() for r in regions]
        if self.s.dicom and meta.format == "dicom" and regions:
            mask = regions_mask(saliency, self.s.region_threshold) if self.s.seg else None
            written = write_region_dicoms(meta, regions, mask, self.out / image_id, method=self.s.method,
                                          explained_class=explained, threshold=self.s.region_threshold,
                                          include_phi=self.s.include_phi, series=study.region_series,
                                          instance_number=len(study.sections) + 1)  # fmt: skip
            files.extend(written.values())
            row["regions_sr"] = written["sr"].name
            row["regions_seg"] = written["seg"].name if "seg" in written else ""
        return regions

    def _patient_fields(self, meta: Any) -> dict[str, str]:
        from medclass.phi import pseudonym

        fields = {"Patient (pseudonym)": pseudonym(meta.patient_id) or "not recorded"}
        if self.s.include_phi:
            fields |= {
                "Patient name": meta.phi.get("PatientName", ""),
                "Patient ID": meta.patient_id,
                "Birth date": meta.phi.get("PatientBirthDate", ""),
                "Accession number": meta.phi.get("AccessionNumber", ""),
                "Study UID": meta.study_uid,
                "Source": meta.source,
            }
        return fields

    # -- output side --------------------------------------------------------------------------------
    def finish(self) -> None:
        """Explain what is still pending, then write each study's report, the tables and the index."""
        from medclass.explain.written import write_reports, write_tables
        from medclass.report.clinician import ClinicianReport

        self._flush()
        reports = [
            ClinicianReport(
                report_id=study.report_id,
                patient=study.patient,
                images=study.sections,
                method=self.s.method,
                layer=self.s.layer,
                grid=self.grid,
                operating_points=self.operating_points,
                model=self.card,
                generated=self.generated,
                top_percent=self.s.top_percent,
                colormap=self.s.colormap,
                region_threshold=self.s.region_threshold if self.s.regions else None,
            )
            for study in self.studies.values()
        ]
        for report_id, exc in write_reports(reports, self.out, pdf=self.s.pdf, private=self.s.include_phi):
            self.fail(f"{report_id}_report", exc, "report")  # its images keep their other outputs
            for row in self.rows:
                if row["study_id"] == report_id:
                    row["report_pdf"] = row["report_html"] = ""
        errors = [{k: v for k, v in e.items() if k != "where" or self.s.include_phi} for e in self.errors]
        doc = {
            "method": self.s.method,
            "layer": self.s.layer,
            "grid": list(self.grid),
            "input_size": self.size,
            "positive_class": self.positive_class,
            "model_sha256": self.card.model_sha256,
            "probability_scale": self.scale,  # calibrated (the checkpoint's calibration) or raw
            "randomisation_check_spearman": self.card.randomisation_check,
            "region_threshold": self.s.region_threshold if self.s.regions else None,
            "deidentified": not self.s.include_phi,
            "generated": self.generated,
            "images": self.rows,
            "gate": self.gate.mode if self.gate.active else "none",
            "refused": self.refused,
            "errors": errors,
        }
        write_tables(self.out, doc, private=self.s.include_phi)


def _where(meta: Any) -> str:
    return meta.source + (f" (frame {meta.index})" if meta.n_frames > 1 else "")
