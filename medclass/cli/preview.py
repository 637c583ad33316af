"""``medclass preview PATH... --out DIR``: the windowed original beside exactly what the model will see."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from medclass.cli import ExitCode
from medclass.errors import MedclassError
from medclass.names import ARCHITECTURE

log = logging.getLogger(__name__)

HELP = "write PNGs of each image beside the model's input (window, fit) to check preprocessing"
DESCRIPTION = """\
For every image found in PATH (files or folders, walked recursively; DICOM slices of one series are
grouped and a slice policy picks which to show) write one PNG to --out: on the left the original as a
viewer shows it (windowed, MONOCHROME1 inverted, full resolution), on the right exactly what the model
receives (the normalised input de-normalised back to 0..1). The title gives the window (source,
centre/width, function) and the geometry (original size, fit, scale, padding or crop).

PNG names say which input they came from: the file's path relative to the folder given (folders joined
by "__", extension dropped) and the frame index, e.g. case17__CT.1.2.3_f000.png for case17/CT.1.2.3.dcm
under a folder argument; OUT/previews.csv lists each PNG with its source path and frame. Patient IDs
are shown only as pseudonyms.

Windows: auto (VOI LUT, else header window, else percentiles), header, header:N, voi-lut, percentile,
percentile:LOW,HIGH, minmax, the CT presets lung, mediastinum, abdomen, bone, brain, or "C/W" numbers.
Fits: letterbox (keeps aspect ratio; bars reveal it to the model), crop (centre square), stretch.

Exit status: 0 all written, 3 some inputs failed, 1 none written.

Examples:
  medclass preview scan.dcm --out previews/
  medclass preview ct_series/ --out previews/ --window lung --slice-policy middle
  medclass preview kermany/images --out previews/ --fit crop --window percentile:1,99
"""

_STRIP = re.compile(r"\.(dcm|dicom|dic|ima|nii\.gz|nii|png|jpe?g|npz)$", re.IGNORECASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the PNGs")
    parser.add_argument("--window", default="auto", help="window policy, preset or 'C/W' numbers")
    parser.add_argument("--fit", default="letterbox", help="letterbox, crop or stretch")
    parser.add_argument(
        "--slice-policy",
        default="middle",
        help="which frames/slices of multi-frame files and volumes: middle, all, index:N, max-foreground",
    )
    parser.add_argument("--model", default=ARCHITECTURE, help="timm model whose input spec to use")
    parser.add_argument("--size", type=int, default=None, help="input size (default: the model's, 299)")


def relative_source(source: str | Path, inputs: list[Path]) -> str:
    """``source`` relative to the folder argument it was found under (POSIX), else its file name."""
    path = Path(source)
    for folder in inputs:
        if folder.is_dir():
            try:
                return path.relative_to(folder).as_posix()
            except ValueError:
                continue
    return path.name


def png_name(source: str, index: int, taken: set[str]) -> str:
    """``<relative path, folders joined by __, without extension>_f<index>.png``, made unique within
    ``taken`` (which it updates)."""
    stem = "__".join(_STRIP.sub("", part) for part in Path(source).parts if part not in ("/", "")) or "image"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)
    name, n = f"{stem}_f{index:03d}.png", 2
    while name in taken:
        name, n = f"{stem}_f{index:03d}-{n}.png", n + 1
    taken.add(name)
    return name


def _title(image: Any, prepared: Any, name: str) -> str:
    from medclass.phi import pseudonym
    from medclass.preprocess import window_name

    g = prepared.geometry
    h, w = g.original_hw
    if g.fit == "letterbox":
        how = f"padding top/left {g.content[0]}/{g.content[1]}"
    elif g.fit == "crop":
        how = f"crop rows {g.crop[0]}:{g.crop[0] + g.crop[2]} cols {g.crop[1]}:{g.crop[1] + g.crop[3]}"
    else:
        how = "aspect ratio not kept"
    patient = pseudonym(image.meta.patient_id)
    who = " · ".join(x for x in (image.meta.modality, image.meta.photometric, patient) if x)
    return (
        f"{name}  ({who})\nwindow: {window_name(prepared.window)}\n"
        f"{h}×{w} → {g.fit} {g.size}×{g.size}, scale {g.scale[0]:.4g}×{g.scale[1]:.4g}, {how}"
    )


def render(image: Any, preprocessor: Any, path: Path, name: str) -> None:
    """Write the side-by-side PNG of one image to ``path`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from medclass.fileio import atomic_write

    display, _ = preprocessor.windowing(image)  # H×W(×3), 0..1
    prepared = preprocessor(image)
    model_view = preprocessor.model_view(prepared)  # S×S(×3), 0..1
    fig = Figure(figsize=(10, 5.6), dpi=100)
    left, right = fig.subplots(1, 2)
    for ax, array, label in (
        (left, display, "original (windowed)"),
        (right, model_view, f"model input ({prepared.geometry.size}×{prepared.geometry.size})"),
    ):
        ax.imshow(array, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(_title(image, prepared, name), fontsize=9)
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png")


def run(args: argparse.Namespace) -> ExitCode:
    from medclass.errors import describe
    from medclass.ingest import Failed, discover, get_slice_policy, load_each
    from medclass.preprocess import Preprocessor, input_spec

    preprocessor = Preprocessor(input_spec(args.model, args.size), window=args.window, fit=args.fit)
    slice_policy = get_slice_policy(args.slice_policy)  # unknown names fail before any work
    sources = discover(args.paths)
    if not sources:
        print(f"medclass preview: no images found under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return ExitCode.ERROR
    args.out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    written, failed = 0, 0
    index: list[dict[str, Any]] = []
    for source in sources:
        for item in load_each(source, slice_policy=slice_policy):  # a corrupt slice fails alone
            if isinstance(item, Failed):
                where, exc = item.path, item.error
            else:
                rel = relative_source(item.meta.source or source.path, list(args.paths))
                name = png_name(rel, item.meta.index, taken)
                try:
                    render(item, preprocessor, args.out / name, name)
                except Exception as exc_:  # preprocess/render failure: this image's error, the run goes on
                    if args.traceback and not isinstance(exc_, MedclassError):
                        raise
                    where, exc = item.meta.source or source.path, exc_
                else:
                    index.append({"png": name, "source": rel, "frame": item.meta.index})
                    written += 1
                    log.debug("%s: wrote %s", source, name)
                    continue
            failed += 1
            if args.traceback and not isinstance(exc, MedclassError):
                raise exc
            message = describe(exc)
            print(f"FAILED {message if where in message else f'{where}: {message}'}", file=sys.stderr)
            log.warning("%s failed: %s", where, message)
    if index:
        from medclass.fileio import write_csv

        write_csv(args.out / "previews.csv", index, ["png", "source", "frame"])
    print(
        f"wrote {written} PNG(s) to {args.out}; {failed} image(s) of {len(sources)} input(s) failed",
        file=sys.stderr if failed else sys.stdout,
    )
    if not failed:
        return ExitCode.OK
    return ExitCode.ERROR if written == 0 else ExitCode.PARTIAL
