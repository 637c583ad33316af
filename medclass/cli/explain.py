"""``medclass explain``: saliency overlays, clinician reports (HTML + PDF) and optional DICOM outputs."""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELP = "saliency maps and clinician reports (HTML, PDF, DICOM Secondary Capture) for images"
DESCRIPTION = """\
Explain a checkpoint's predictions on images with a Grad-CAM-family method (pytorch-grad-cam). PATHs are
files or folders (walked recursively; DICOM, NIfTI, PNG/JPEG). For each image OUT gets an overlay PNG
(with colour bar and the top-k%% region outlined) and, with --dicom and a DICOM source, a Secondary
Capture in a new series of the source study; for each study a self-contained HTML report and a PDF;
plus OUT/explanations.json, OUT/explanations.csv and OUT/index.html.

De-identified by default: reports, file names, tables and logs carry a pseudonym of the patient ID, never
the name, ID, birth date or accession number; --include-phi opts in. DICOM outputs keep the study's
StudyInstanceUID (so a PACS files them beside the original) and reference the source image's UIDs.

Not for diagnostic use: saliency shows what changed the model's output, not where disease is.

examples:
  medclass explain --checkpoint runs/r1/best scans/case1.dcm --out reports/r1/saliency
  medclass explain --checkpoint runs/r1/best scans/ --out sal --method gradcam++ --layer Mixed_6e --dicom
  medclass explain --checkpoint runs/r1/best scans/ --out sal --metrics reports/r1/metrics.json
"""

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint stem (or .json/.safetensors)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--method", default="gradcam", help="saliency method (gradcam, gradcam++, hirescam, ...)"
    )
    parser.add_argument(
        "--layer", default="Mixed_7c", help="target layer (Mixed_7c, Mixed_6e, Mixed_5d, ...)"
    )
    parser.add_argument("--target", help="class to explain, by name or index (default: the predicted class)")
    parser.add_argument("--dicom", action="store_true", help="also write DICOM Secondary Capture overlays")
    parser.add_argument(
        "--sr", action="store_true", help="with --dicom: also a Comprehensive SR of the scores"
    )
    parser.add_argument(
        "--include-phi", action="store_true", help="put patient name/ID/birth date/accession in outputs"
    )
    parser.add_argument("--opacity", type=float, default=0.4, help="weight of the colour layer (0..1)")
    parser.add_argument(
        "--top-percent", type=float, default=10.0, help="outline the top N%% of the map (0: none)"
    )
    parser.add_argument("--colormap", default="jet", help="jet, turbo, viridis, inferno, magma, plasma")
    parser.add_argument("--no-pdf", action="store_true", help="skip the PDF reports")
    parser.add_argument(
        "--faithfulness",
        default="road-morf",
        help="per-image faithfulness metric (road-morf, cam-mult, ...; none)",
    )
    parser.add_argument(
        "--sanity-check",
        action="store_true",
        help="model-randomisation check (Adebayo 2018) on the first batch",
    )
    parser.add_argument("--metrics", type=Path, help="metrics.json of `medclass evaluate` (operating points)")
    parser.add_argument("--slice-policy", default="middle", help="which slices of a volume to explain")
    parser.add_argument("--batch-size", type=int, default=8, help="images per saliency batch")


def run(args: argparse.Namespace) -> int:
    import json

    from medclass import checkpoint, ingest
    from medclass.cli import ExitCode
    from medclass.errors import ConfigError, MedclassError
    from medclass.explain import CAM_METHODS, FAITHFULNESS_METRICS, TARGET_LAYERS, Explainer
    from medclass.explain.cam import look_up

    look_up(CAM_METHODS, args.method, "saliency method")
    look_up(TARGET_LAYERS, args.layer, "target layer")
    if args.faithfulness != "none":
        look_up(FAITHFULNESS_METRICS, args.faithfulness, "faithfulness metric")
    ckpt = checkpoint.load(args.checkpoint)
    classes = ckpt.classes or [str(i) for i in range(int(ckpt.meta.get("num_classes", 0)))]
    target = None
    if args.target is not None:
        if args.target in classes:
            target = classes.index(args.target)
        elif args.target.isdigit() and int(args.target) < len(classes):
            target = int(args.target)
        else:
            raise ConfigError(f"unknown --target {args.target!r}; classes: {', '.join(classes)}")
    metrics_doc = None
    if args.metrics is not None:
        try:
            metrics_doc = json.loads(args.metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read metrics ({exc})", args.metrics) from exc
    settings = Settings(
        method=args.method,
        layer=args.layer,
        target=target,
        dicom=args.dicom,
        sr=args.sr and args.dicom,
        include_phi=args.include_phi,
        opacity=args.opacity,
        top_percent=args.top_percent or None,
        colormap=args.colormap,
        pdf=not args.no_pdf,
        faithfulness=None if args.faithfulness == "none" else args.faithfulness,
        sanity_check=args.sanity_check,
        slice_policy=args.slice_policy,
        batch_size=args.batch_size,
    )
    explainer = Explainer(
        ckpt.model, method=args.method, layer=args.layer, batch_size=args.batch_size, task=ckpt.task
    )
    job = ExplainRun(ckpt, explainer, settings, args.out, metrics_doc)
    sources = ingest.discover(args.paths)
    for source in sources:
        try:
            images = ingest.load(source, slice_policy=args.slice_policy)
        except MedclassError as exc:
            job.fail(source.path, exc)
            continue
        for image in images:
            job.add(image)
    job.finish()
    n_ok, n_err = len(job.rows), len(job.errors)
    for err in job.errors:
        print(f"failed: {err['where']}: {err['kind']}: {err['message']}")
    print(
        f"explained {n_ok} image(s) in {len(job.studies)} report(s), {n_err} failed "
        f"({args.method} at {args.layer}) → {args.out}"
    )
    if n_err and not n_ok:
        return ExitCode.ERROR
    return ExitCode.PARTIAL if n_err else ExitCode.OK


# --- the run: batches of images → overlays, DICOM, reports, tables --------------------------------
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


@dataclass
class _Study:
    report_id: str
    patient: dict[str, str]
    sections: list[Any] = field(default_factory=list)
    series_uid: str = ""


def _image_ids(meta: Any) -> tuple[str, str]:
    """(image id, study id): pseudonyms, safe for file names and de-identified outputs."""
    from medclass.phi import pseudonym

    image_key = meta.sop_uid or f"{meta.source}#{meta.index}"
    if meta.n_frames > 1 and meta.sop_uid:
        image_key = f"{meta.sop_uid}#{meta.index}"
    study_key = meta.study_uid or meta.source
    return pseudonym(image_key, prefix="I"), pseudonym(study_key, prefix="S")


def _description(meta: Any) -> str:
    parts = [meta.modality, meta.view_position, meta.body_part.lower() if meta.body_part else ""]
    text = " ".join(p for p in parts if p) or meta.format.upper()
    return text + (f", frame {meta.index + 1} of {meta.n_frames}" if meta.n_frames > 1 else "")


class ExplainRun:
    """Collects images, explains them in batches, and writes every output of ``medclass explain``."""

    def __init__(
        self, ckpt: Any, explainer: Any, settings: Settings, out: Path, metrics_doc: Any = None
    ) -> None:
        from medclass.explain import Overlay, layer_grid
        from medclass.preprocess import Preprocessor
        from medclass.report.clinician import ModelCard, merge_evaluation, operating_points_from_meta

        self.ckpt, self.explainer, self.s, self.out = ckpt, explainer, settings, Path(out)
        meta = ckpt.meta
        self.classes = ckpt.classes or [str(i) for i in range(int(meta.get("num_classes", 0)))]
        self.window = meta.get("window", "auto")
        self.preprocessor = Preprocessor.from_meta(meta)
        spec = self.preprocessor.spec
        self.size = spec.size
        self.grid = layer_grid(ckpt.model, settings.layer, spec.size)
        self.overlay = Overlay(settings.colormap, settings.opacity, settings.top_percent)
        self.operating_points = operating_points_from_meta(merge_evaluation(meta, metrics_doc))
        manifest = meta.get("manifest") or meta.get("manifest_name") or "manifest"
        sha = meta.get("manifest_sha256")
        self.card = ModelCard(
            model_sha256=str(meta.get("sha256", "")),
            training_data=f"{Path(str(manifest)).name} (sha256 {sha})" if sha else "",
            task=ckpt.task,
            input_size=spec.size,
            software=_software(),
        )
        if meta.get("intended_use"):
            self.card = _replace(self.card, intended_use=str(meta["intended_use"]))
        self.pending: list[tuple[Any, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self.studies: dict[str, _Study] = {}
        self.generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.out.mkdir(parents=True, exist_ok=True)

    # -- input side ---------------------------------------------------------------------------------
    def fail(self, where: str, exc: Exception) -> None:
        from medclass.phi import pseudonym

        kind = getattr(exc, "kind", type(exc).__name__)
        message = getattr(exc, "message", str(exc))
        self.errors.append(
            {"where": where, "source_id": pseudonym(where, prefix="F"), "kind": kind, "message": message}
        )
        log.warning("%s failed: %s: %s", pseudonym(where, prefix="F"), kind, message)

    def add(self, image: Any) -> None:
        from medclass.errors import MedclassError

        try:
            prepared = self.preprocessor(image)
        except MedclassError as exc:
            self.fail(_where(image.meta), exc)
            return
        self.pending.append((image, prepared))
        if len(self.pending) >= self.s.batch_size:
            self._flush()

    def _flush(self) -> None:
        import numpy as np

        from medclass.errors import MedclassError

        batch, self.pending = self.pending, []
        if not batch:
            return
        x = np.stack([p.array for _, p in batch])  # N×3×S×S
        targets = None if self.s.target is None else [self.s.target] * len(batch)
        sal = self.explainer.explain(x, targets)
        faith: Any = [None] * len(batch)
        if self.s.faithfulness:
            from medclass.explain import faithfulness

            faith = faithfulness(
                self.ckpt.model, x, sal.maps, sal.targets, metric=self.s.faithfulness, task=self.ckpt.task
            )
        if self.s.sanity_check and self.card.randomisation_check is None:
            from medclass.explain import randomisation_check

            rho = randomisation_check(self.ckpt.model, x, method=self.s.method, layer=self.s.layer)
            self.card = _replace(self.card, randomisation_check=rho)
        for k, (image, prepared) in enumerate(batch):
            try:
                self._one(image, prepared, sal.maps[k], sal.targets[k], sal.probabilities[k], faith[k])
            except MedclassError as exc:
                self.fail(_where(image.meta), exc)

    def _one(self, image: Any, prepared: Any, smap: Any, target: int, probs: Any, faith: Any) -> None:
        import numpy as np

        from medclass.explain import overlay_figure_png, to_original
        from medclass.explain.overlay import png_bytes
        from medclass.fileio import atomic_write_bytes
        from medclass.phi import pseudonym
        from medclass.preprocess import display_image
        from medclass.report.clinician import ImageSection

        meta = image.meta
        image_id, study_id = _image_ids(meta)
        saliency = np.nan_to_num(to_original(smap, prepared.geometry), nan=0.0)  # H×W on the original grid
        display = display_image(image, self.window)
        rgb = self.overlay(display, saliency)
        figure = overlay_figure_png(rgb, colormap=self.s.colormap, top_percent=self.s.top_percent)
        overlay_path = self.out / f"{image_id}_overlay.png"
        atomic_write_bytes(overlay_path, figure)
        study = self.studies.get(study_id)
        if study is None:
            study = self.studies[study_id] = _Study(study_id, self._patient_fields(meta))
        row: dict[str, Any] = {
            "image_id": image_id,
            "study_id": study_id,
            "patient": pseudonym(meta.patient_id) or "",
            "explained_class": self.classes[target],
            **{f"prob:{c}": round(float(p), 6) for c, p in zip(self.classes, probs, strict=True)},
            "faithfulness_metric": self.s.faithfulness or "",
            "faithfulness": None if faith is None else round(float(faith), 6),
            "overlay_png": overlay_path.name,
            "report_html": f"{study_id}_report.html",
            "report_pdf": f"{study_id}_report.pdf" if self.s.pdf else "",
            "dicom": "",
            "sr": "",
        }
        if self.s.include_phi:
            row |= {"source": meta.source, "sop_uid": meta.sop_uid, "study_uid": meta.study_uid}
        if self.s.dicom:
            row["dicom"] = self._dicom(rgb, meta, image_id, study)
        if self.s.sr and meta.format == "dicom":
            from medclass.explain.dicom_out import scores_sr, write_dataset

            ds = scores_sr(meta, self.classes, [float(p) for p in probs], explained_class=self.classes[target],
                           method=self.s.method, include_phi=self.s.include_phi)  # fmt: skip
            row["sr"] = write_dataset(ds, self.out / f"{image_id}_scores_sr.dcm").name
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
            )
        )
        self.rows.append(row)
        log.info("explained %s: %s %.3f", image_id, self.classes[target], float(probs[target]))

    def _dicom(self, rgb: Any, meta: Any, image_id: str, study: _Study) -> str:
        from pydicom.uid import generate_uid

        from medclass.explain.dicom_out import secondary_capture, write_dataset

        if meta.format != "dicom":
            log.info("%s: not a DICOM source; no Secondary Capture written", image_id)
            return ""
        study.series_uid = study.series_uid or generate_uid()
        ds = secondary_capture(
            rgb,
            meta,
            method=self.s.method,
            include_phi=self.s.include_phi,
            instance_number=len(study.sections) + 1,
            series_uid=study.series_uid,
        )
        return write_dataset(ds, self.out / f"{image_id}_saliency.dcm").name

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
        import json

        from medclass.fileio import atomic_write_text, write_csv
        from medclass.report.clinician import ClinicianReport, render_html, render_index
        from medclass.report.clinician_pdf import write_pdf

        self._flush()
        for study in self.studies.values():
            report = ClinicianReport(
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
            )
            atomic_write_text(self.out / f"{study.report_id}_report.html", render_html(report))
            if self.s.pdf:
                write_pdf(report, self.out / f"{study.report_id}_report.pdf")
        errors = [{k: v for k, v in e.items() if k != "where" or self.s.include_phi} for e in self.errors]
        doc = {
            "method": self.s.method,
            "layer": self.s.layer,
            "grid": list(self.grid),
            "input_size": self.size,
            "model_sha256": self.card.model_sha256,
            "randomisation_check_spearman": self.card.randomisation_check,
            "deidentified": not self.s.include_phi,
            "generated": self.generated,
            "images": self.rows,
            "errors": errors,
        }
        atomic_write_text(
            self.out / "explanations.json",
            json.dumps(doc, indent=2, allow_nan=False, default=_nan_none) + "\n",
        )
        fields = list(dict.fromkeys(k for r in self.rows for k in r)) or ["image_id"]
        write_csv(self.out / "explanations.csv", self.rows, fields)
        atomic_write_text(
            self.out / "index.html", render_index(self.rows, errors, self.s.method, self.s.layer)
        )


def _nan_none(value: Any) -> Any:
    return None


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def _software() -> str:
    from medclass import __version__

    return f"medclass {__version__}"


def _where(meta: Any) -> str:
    return meta.source + (f" (frame {meta.index})" if meta.n_frames > 1 else "")
