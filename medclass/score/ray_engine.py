"""``medclass score --engine ray``: the local loop's two functions as Ray Data stages on a cluster.

The items still to score are cut, in input order, into blocks of ``batch_size`` items; a block is named by
the hash of its keys (:func:`~medclass.score.writer.block_id`), so the same items make the same block in
every run and every retry. The pipeline is::

    blocks ──► decode_block (Ray tasks, 1 CPU each) ──► ScoreBlock (actor pool: the model) ──► part files
               decode_item() per item, as the local loop    score_batch(), as the local loop; then
                                                            PartSink.write(<out>.parts/part-<block>.jsonl)

Ray is at-least-once: a task whose worker dies is run again, an actor that dies is restarted and its
block retried. The sink makes that exactly once: a block's part is written atomically under its own
name, so a second run of it replaces the first; :meth:`~medclass.score.writer.ScoreOutput.finalize`
(run by the driver afterwards) merges the parts, keeps one row per key and checks that every input has
its row. A killed driver leaves the parts committed so far; ``--resume`` skips their keys.

All nodes must see the inputs, the checkpoint (or ONNX file) and the folder of ``--out`` under the same
paths (a shared file system), as every worker reads and the actors write there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from medclass.errors import ConfigError, EngineError
from medclass.gate import ImageFacts
from medclass.score.decide import DecisionRule
from medclass.score.inputs import WorkItem
from medclass.score.job import ScoreConfig, ScoreJob, build_backend, make_gate
from medclass.score.pipeline import Counts, Decoded, decode_item, decode_stream, score_batch
from medclass.score.writer import PartSink, block_id

log = logging.getLogger(__name__)

#: object store of a Ray instance started for the run (MiB): a block of 32 images at 299 px is 34 MB
LOCAL_OBJECT_STORE_MB = 512
#: memory a decode task declares (MiB): a block's full-resolution images and its arrays. Declaring it
#: also keeps decode a stage of its own: Ray Data would otherwise fuse it into the model actors
DECODE_MEMORY_MB = 512
#: seconds for the model actors to start (placed, checkpoint loaded) before the run fails
ACTOR_START_TIMEOUT_S = 600
#: seconds to wait for a cluster given by --ray-address
CONNECT_TIMEOUT_S = 60


# --- blocks ----------------------------------------------------------------------------------------------
def make_blocks(items: Sequence[WorkItem], size: int) -> list[dict[str, str]]:
    """``items`` in order, ``size`` at a time, as dataset rows ``{"block": name, "items": JSON}``."""
    blocks = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        blocks.append(
            {
                "block": block_id([i.key for i in chunk]),
                "items": json.dumps([dataclasses.asdict(i) for i in chunk]),
            }
        )
    return blocks


def _node() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


# --- stage 1: decode (Ray tasks) --------------------------------------------------------------------------
def decode_block(
    row: dict[str, Any], *, preprocessor: Any, size: int, min_size: int | None, sink: PartSink
) -> dict[str, Any]:
    """Decode and preprocess the items of one block with :func:`~medclass.score.pipeline.decode_item`
    (never raises: a bad input becomes its error). Returns the block with ``arrays`` (K×3×S×S float32, the
    K decoded items in order) and ``decoded`` (JSON: each item's patient/study/series/error).

    An input that kills the process decoding it (a codec crash) would make Ray retry its task forever: a
    marker file beside the parts says that an attempt at this block is under way, and an attempt that
    finds one left behind decodes the block in a child process instead
    (:func:`~medclass.score.pipeline.decode_stream`), where such an input becomes a failed row.
    """
    import torch

    torch.set_num_threads(1)  # a decode task has one CPU
    items = [WorkItem(**d) for d in json.loads(row["items"])]
    marker = sink.folder / f".decoding-{row['block']}"
    if marker.exists():  # an earlier attempt died here: contain the crash this time
        log.warning(
            "block %s: an earlier attempt died while decoding; decoding it in a child process", row["block"]
        )
        decoded = list(decode_stream(items, preprocessor, workers=1, min_size=min_size))
    else:
        sink.folder.mkdir(parents=True, exist_ok=True)
        marker.touch()
        decoded = [decode_item(item, preprocessor, min_size) for item in items]
    marker.unlink(missing_ok=True)
    arrays = [d.array for d in decoded if d.array is not None]
    return {
        "block": row["block"],
        "items": row["items"],
        "decoded": json.dumps(
            [[d.patient, d.study_uid, d.series_uid, d.error, _facts(d.facts)] for d in decoded]
        ),
        "arrays": np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.float32),
        "decode_node": _node(),
        "decode_pid": os.getpid(),
    }


def _facts(facts: ImageFacts | None) -> dict[str, Any] | None:
    return None if facts is None else dataclasses.asdict(facts)


# --- stage 2: the model (an actor pool) ---------------------------------------------------------------
class ScoreBlock:
    """One model replica: scores a decoded block with :func:`~medclass.score.pipeline.score_batch` and
    commits its rows as the block's part. Returns what it did (counts, errors, where it ran)."""

    def __init__(
        self, config: ScoreConfig, meta: dict[str, Any], device: str, threads: int, sink: PartSink
    ) -> None:
        import torch

        from medclass.score.backends import pick_device

        torch.set_num_threads(threads)
        self.rule = DecisionRule.from_meta(meta, calibrated=config.calibrated)
        self.model_sha256 = str(meta.get("sha256", ""))
        self.device = pick_device(device)
        self.backend = build_backend(config, meta, None, self.device, threads)
        self.gate = make_gate(meta, config.gate)
        self.sink = sink

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        arrays = iter(np.asarray(row["arrays"], dtype=np.float32))
        decoded = []
        for d, (patient, study, series, error, facts) in zip(
            json.loads(row["items"]), json.loads(row["decoded"]), strict=True
        ):
            array = None if error else next(arrays)
            gate_facts = None if facts is None else ImageFacts(**facts)
            decoded.append(Decoded(WorkItem(**d), array, patient, study, series, error, gate_facts))
        counts = Counts()
        rows = score_batch(decoded, self.backend, self.rule, self.model_sha256, counts, self.gate)
        self.sink.write(str(row["block"]), rows)
        return {
            "block": row["block"],
            "scored": counts.scored,
            "failed": counts.failed,
            "errors": json.dumps(counts.errors),
            "decode_node": row["decode_node"],
            "decode_pid": int(row["decode_pid"]),
            "model_node": _node(),
            "model_pid": os.getpid(),
            "device": self.device,
        }


# --- the driver -------------------------------------------------------------------------------------------
def connect(address: str | None) -> bool:
    """Join the cluster at ``address``, or start a Ray instance on this machine (its cores, a small object
    store, no dashboard). Returns whether this call started Ray (then the caller shuts it down).
    Raises :class:`EngineError` when Ray is missing or the cluster cannot be reached."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'medclass[ray]'") from None
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(log_to_driver=False, configure_logging=False)
    try:
        if address:
            os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", str(CONNECT_TIMEOUT_S))
            ray.init(address=address, **kwargs)
        else:
            ray.init(
                num_cpus=os.cpu_count() or 1, include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE_MB << 20, **kwargs,
            )  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise EngineError(
            f"cannot start or reach {where} ({' '.join(str(exc).split())[:300]}); check the address "
            "(ray status on the head node) or run without --ray-address"
        ) from exc
    return True


def _actors(config: ScoreConfig, gpus: float) -> tuple[int, float]:
    """How many model actors, and GPUs per actor: as asked, else one per GPU of the cluster, else one."""
    if config.actors is not None and config.actors < 1:
        raise ConfigError(f"--actors must be ≥ 1, got {config.actors}")
    want_gpu = config.device == "cuda" or (config.device == "auto" and gpus >= 1)
    if config.device == "cuda" and gpus < 1:
        raise ConfigError("--device cuda asked for but the Ray cluster has no GPU; use --device auto or cpu")
    if want_gpu:
        return config.actors or int(gpus), 1.0
    return config.actors or 1, 0.0


def _results(job: ScoreJob, dataset: Any) -> Iterator[dict[str, Any]]:
    for row in dataset.iter_rows():
        if job.progress is not None:
            job.progress(int(row["scored"]) + int(row["failed"]))
        yield row


def run_on_ray(job: ScoreJob) -> tuple[Counts, dict[str, Any]]:
    """Score ``job.todo`` on Ray (see the module's docstring). Returns this run's counts and settings,
    among them how many blocks each node decoded and scored (``decoded_by_node``, ``scored_by_node``,
    short node ids). Raises :class:`EngineError` when the cluster fails the run (rows committed so far stay
    for ``--resume``)."""
    config = job.config
    started = connect(config.ray_address)
    try:
        import ray
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.verbose_stats_logs = False
        # start when every model replica is up (a pool that cannot be placed fails instead of waiting
        # forever, and the work is spread over all the actors, not only the first one ready)
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        gpus = float(ray.cluster_resources().get("GPU", 0))
        n_actors, gpus_per_actor = _actors(config, gpus)
        node_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // max(1, len(ray.nodes())))
        threads = int(config.threads or node_cpus)
        device = "cuda" if gpus_per_actor else "cpu"
        blocks = make_blocks(job.todo, config.batch_size)
        dataset = (
            ray.data.from_items(blocks, override_num_blocks=len(blocks))
            .map(
                decode_block,  # type: ignore[arg-type]  # Ray passes fn_kwargs
                fn_kwargs=dict(
                    preprocessor=job.preprocessor, size=int(job.meta["input"]["size"]), min_size=job.min_size(),
                    sink=job.output.sink(),
                ), num_cpus=1,
                memory=DECODE_MEMORY_MB << 20,
            )
            .map(
                ScoreBlock,  # type: ignore[arg-type]  # a class: Ray builds one per actor
                fn_constructor_kwargs=dict(
                    config=config, meta=job.meta, device=device, threads=threads, sink=job.output.sink()
                ), compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=1, num_gpus=gpus_per_actor,
            )
        )  # fmt: skip
        log.info(
            "ray engine: %d block(s) of ≤ %d on %d node(s), %d model actor(s) on %s, %d thread(s) each",
            len(blocks), config.batch_size, len(ray.nodes()), n_actors, device, threads,
        )  # fmt: skip
        counts = Counts()
        decoded_by: Counter[str] = Counter()
        scored_by: Counter[str] = Counter()
        decode_pids: set[int] = set()
        model_pids: set[int] = set()
        try:
            for row in _results(job, dataset):
                counts.scored += int(row["scored"])
                counts.failed += int(row["failed"])
                counts.errors.extend(json.loads(row["errors"])[: max(0, 5 - len(counts.errors))])
                decoded_by[str(row["decode_node"])[:8]] += 1
                scored_by[str(row["model_node"])[:8]] += 1
                decode_pids.add(int(row["decode_pid"]))
                model_pids.add(int(row["model_pid"]))
        except ray.exceptions.RayError as exc:
            raise EngineError(
                f"the Ray run failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); the rows "
                "committed so far are kept: run the same command again with --resume"
            ) from exc
        settings = dict(
            actors=n_actors, device=device, threads=threads, ray_address=config.ray_address or "local",
            decoded_by_node=dict(decoded_by), scored_by_node=dict(scored_by),
            decode_pids=sorted(decode_pids), model_pids=sorted(model_pids),
        )  # fmt: skip
        return counts, settings
    finally:
        if started:
            import ray

            ray.shutdown()
