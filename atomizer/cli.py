"""Command-line interface: ``atomizer <command> ...`` (also ``python -m atomizer``).

Every subcommand is defined here; the library never imports this module. Errors in the user's input (a
missing file, an unknown sensor, a config value of the wrong type, a mismatched checkpoint) are printed
as one line, ``atomizer: error: ...``, with exit status 2; ``ATOMIZER_DEBUG=1`` shows the traceback.
Python warnings raised while a command runs print as one line too, ``atomizer: warning: ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence


@contextlib.contextmanager
def _atom_limit(limit: int | None) -> Iterator[None]:
    """``--max-atoms``: the input atom limit (``ATOMIZER_MAX_ATOMS``, :mod:`atomizer.core.limits`) for the
    command's duration."""
    if limit is None:
        yield
        return
    if limit < 1:
        raise ValueError(f"--max-atoms must be positive, got {limit}")
    old = os.environ.get("ATOMIZER_MAX_ATOMS")
    os.environ["ATOMIZER_MAX_ATOMS"] = str(limit)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ATOMIZER_MAX_ATOMS", None)
        else:
            os.environ["ATOMIZER_MAX_ATOMS"] = old


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one line, without the source line Python prints by default."""
    text = " ".join(str(message).split())
    return f"atomizer: warning: {text}\n"


def _cmd_sensors(args: argparse.Namespace) -> int:
    from atomizer.data.bands import catalogue_table, get_sensor

    if args.sidecar:
        import pandas as pd

        s = get_sensor(args.sidecar)

        df = pd.DataFrame([{"sensor": s.name, **b.to_dict()} for b in s.bands]).drop(
            columns=["source"], errors="ignore"
        )
    else:
        df = catalogue_table(args.names or None).drop(columns=["source"])
    with _pd_wide():
        print(df.to_string(index=False))
    return 0


class _pd_wide:
    def __enter__(self):
        import pandas as pd

        self._ctx = pd.option_context("display.max_rows", None, "display.width", 200)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def _cmd_inspect(args: argparse.Namespace) -> int:
    with _atom_limit(args.max_atoms):
        return _inspect(args)


def _inspect(args: argparse.Namespace) -> int:
    from atomizer.core.limits import check_atoms
    from atomizer.data.readers import count_tokens, describe, open_image

    ds = open_image(
        args.path, sensor=args.sidecar or args.sensor, band_names=args.bands, lazy=True
    )  # headers; pixels only if needed
    check_atoms(count_tokens(ds), what=str(args.path))
    print(f"{args.path}  sensor={ds.attrs.get('sensor')}")
    for key in ("product_level", "radiometry", "processing_baseline", "metadata_file", "qa_mask", "stac_item"):
        if ds.attrs.get(key) not in (None, ""):
            print(f"{key}: {ds.attrs[key]}")
    with _pd_wide():
        print(describe(ds).to_string(index=False))
    print(f"total atom tokens: {count_tokens(ds):,}")
    import warnings

    from atomizer.atoms.encodings import DEFAULT_ANCHORS, warn_uncovered
    from atomizer.atoms.tokens import band_table_of

    names, table = band_table_of(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for msg in warn_uncovered(table, DEFAULT_ANCHORS, names):
            print(f"warning: {msg} (default anchors)")
    return 0


BANDS_HELP = "channel order of a multi-band file that names none of its bands, e.g. B01,B02,B03 (comma-separated)"


def _band_list(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give band names separated by commas, e.g. B02,B03,B04")
    return names


def _parse_sets(pairs: Sequence[str]) -> dict:
    import yaml

    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ValueError(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from atomizer.engine.training import TrainConfig, train

    over = _parse_sets(args.set)
    if args.out:
        over["out_dir"] = args.out
    if args.init:
        over["init"] = args.init
    cfg = TrainConfig.from_yaml(args.config, **over)
    summary = train(cfg, resume=args.resume)
    if summary["rank"] == 0:
        print(json.dumps(summary, indent=2))
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # every rank reports, so replicas can be compared
        print(f"rank {summary['rank']} weights_fingerprint {summary['weights_fingerprint']!r}", flush=True)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from atomizer.core.runtime import ensure_process_group
    from atomizer.engine.evaluation import evaluate_checkpoint, save_results

    rank, _ = ensure_process_group()  # under torchrun every rank scores a shard (gathered predictions)
    res = evaluate_checkpoint(
        args.checkpoint,
        args.modalities,
        dataset=args.dataset,
        split=args.split,
        data_root=args.data_root,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.workers,
    )
    if rank != 0:
        return 0
    table = res["score"].sel(model=res.model.values[0]).to_pandas()
    with _pd_wide():
        print(table.round(2).to_string())
    if args.out:
        save_results(res, args.out, overwrite=args.overwrite)
        print(f"results written to {args.out}")
    return 0


def _cmd_map(args: argparse.Namespace) -> int:
    from atomizer.engine.mapping import predict_map

    with _atom_limit(args.max_atoms):
        summary = predict_map(
            args.checkpoint,
            args.scene,
            args.out,
            window_m=args.window_m,
            stride_m=args.stride_m,
            batch_size=args.batch_size,
            device=args.device,
            sensor=args.sidecar or args.sensor,
            band_names=args.bands,
            gsd_m=args.gsd,
            resume=not args.restart,
            progress=not args.quiet,
        )
    h, w = summary["shape"]
    print(
        f"map written to {summary['out']}: {w} x {h} px at {summary['gsd_m']:g} m, {len(summary['classes'])} class "
        f"bands + argmax; {summary['windows']} windows of {summary['window_m']:g} m every {summary['stride_m']:g} m "
        f"({summary['windows_skipped']} without valid data), {summary['seconds']:.1f} s, "
        f"{summary['windows_per_s']:.1f} windows/s"
    )
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from atomizer.data.lmdb_store import LMDB_DIR, prepare_bigearthnet, verify_lmdb

    out = Path(args.out)
    if not args.verify_only:
        s = prepare_bigearthnet(
            args.root, out, workers=args.workers, metadata=args.metadata, progress=not args.quiet, limit=args.limit
        )
        print(
            f"{s['database']}: {s['written']} patches written, {s['skipped']} already there, "
            f"{len(s['duplicates'])} duplicate name(s) not written, {s['total']} in total; "
            f"{s['seconds']:.1f} s ({s['patches_per_s']:.1f} patches/s with {args.workers} worker(s))"
        )
        if s["duplicates"]:
            print(
                f"warning: {len(s['duplicates'])} patch folder(s) share a name with another (the first, in sorted "
                f"order, was written), e.g. {s['duplicates'][:3]}"
            )
        if args.metadata:
            for f in (
                Path(args.metadata),
                Path(args.metadata).parent / "metadata_for_patches_with_snow_cloud_or_shadow.parquet",
            ):
                if f.is_file() and not (out / f.name).exists():
                    shutil.copy2(f, out / f.name)
            if s["missing"]:
                print(f"warning: {len(s['missing'])} metadata patches are not in the database, e.g. {s['missing'][:3]}")
    if args.verify or args.verify_only:
        v = verify_lmdb(out / LMDB_DIR, root=args.root)
        for line in v["errors"][:20]:
            print(f"error: {line}")
        print(f"verified {v['checked']} patches: {len(v['errors'])} error(s)")
        return 1 if v["errors"] else 0
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atomizer.results.report import write_report

    out = write_report(
        args.store, args.out, reference=args.reference, n_resamples=args.resamples, figures_dir=args.figures
    )
    print(f"report written to {out} ({Path(out).stat().st_size / 1024:.0f} KiB, self-contained)")
    if args.figures:
        print(f"figures (PNG, SVG) in {args.figures}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from atomizer.engine.inference import predict_image

    notes: list[str] = []
    with _atom_limit(args.max_atoms):
        probs = predict_image(
            args.checkpoint,
            args.input,
            sensor=args.sidecar or args.sensor,
            chunk_size=args.chunk_size,
            notes=notes,
            band_names=args.bands,
        )
    for line in notes:
        print(f"note: {line}")
    for name, p in sorted(probs.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{p:7.4f}  {name}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from atomizer.engine.pretraining import PretrainConfig, pretrain

    over = _parse_sets(args.set)
    if args.out:
        over["out_dir"] = args.out
    summary = pretrain(PretrainConfig.from_yaml(args.config, **over), resume=args.resume)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from atomizer.engine.adaptation import AdaptConfig, adapt

    cfg = AdaptConfig.from_yaml(args.config)
    spec = cfg.to_dict()
    over = _parse_sets(args.set)
    if args.out:
        over["out_dir"] = args.out
    if args.base:
        over["base"] = args.base
    for key, value in over.items():  # pretrain.steps=5 sets one option of a stage
        *path, last = key.split(".")
        node = spec
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"--set {key}: {part!r} is not a group of options (pretrain, train, adapters)")
            node = node[part]
        node[last] = value
    summary = adapt(AdaptConfig.from_dict(spec), resume=args.resume)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_experiment_run(args: argparse.Namespace) -> int:
    from atomizer.experiments import ExperimentSpec, run_experiment

    spec = ExperimentSpec.from_yaml(args.spec)
    if args.workers:
        spec.workers = args.workers
    summary = run_experiment(spec, only=args.only, force=args.force)
    print(
        f"{len(summary['done'])} done, {len(summary['skipped'])} skipped, {len(summary['failed'])} failed; "
        f"results store: {spec.output_dir}"
    )
    return 1 if summary["failed"] else 0


def _cmd_experiment_list(args: argparse.Namespace) -> int:
    from atomizer.experiments import ExperimentSpec, run_states

    for rid, state in run_states(ExperimentSpec.from_yaml(args.spec)):
        print(f"{state:8s} {rid}")
    return 0


def _cmd_dataset_check(args: argparse.Namespace) -> int:
    from atomizer.data.manifest import check_manifest
    from atomizer.data.union import is_union, union_parts

    union = is_union(args.manifest)  # a union (a.csv+b.csv): every part checked, one summary each
    summaries = [
        check_manifest(p, data_root=args.data_root, folds=args.folds, write_folds=not args.no_folds, seed=args.seed)
        for p in (union_parts(args.manifest) if union else [args.manifest])
    ]
    if args.json:
        from dataclasses import asdict

        docs = [asdict(s) for s in summaries]
        print(json.dumps(docs if union else docs[0], indent=2))
    else:
        print("\n\n".join("\n".join(s.lines()) for s in summaries))
    return 0


def _cmd_dataset_blocks(args: argparse.Namespace) -> int:
    from atomizer.data.blocks import write_blocks

    out = write_blocks(args.manifest, args.out, n=args.n, data_root=args.data_root)
    print(f"{out}: every image cut into {args.n} x {args.n} blocks; fold k tests one block of every image")
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from atomizer.results import stats
    from atomizer.results.store import collect_predictions

    preds = collect_predictions(args.store)
    if preds is None:
        raise FileNotFoundError(f"no run with per-image predictions under {' '.join(args.store)}")
    summary = stats.summarize(preds, args.metric, n_resamples=args.resamples)
    print(
        f"{args.metric} (%), mean over seeds [95 % bootstrap CI]; {len(preds.seed)} seed(s) "
        f"{list(map(int, preds.seed.values))}, {preds.attrs['folds']} fold(s), {preds.sizes['image']} test images"
    )
    with _pd_wide():
        print(stats.mean_ci_table(summary).to_string())
        print("seeds per model:", summary.groupby("model")["seeds"].max().to_dict())
    diffs = None
    if args.reference and len(preds.model) > 1:
        diffs = stats.paired_differences(preds, args.reference, metric=args.metric, n_resamples=args.resamples)
        table, words = stats.verdict(diffs)
        print(f"\n{args.reference} minus each model (points; * Holm-corrected permutation p < 0.05, CI excludes 0)")
        with _pd_wide():
            print(table.to_string())
            print(
                diffs[["other", "modality", "difference", "ci_low", "ci_high", "p_value", "p_holm"]]
                .round(4)
                .to_string(index=False)
            )
        print("\nVerdict:", words)
    if args.csv:
        from pathlib import Path

        from atomizer.core.storage import atomic_write_text

        out = Path(args.csv)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / f"summary_{args.metric}.csv", summary.to_csv(index=False))
        if diffs is not None:
            atomic_write_text(out / f"differences_{args.metric}.csv", diffs.to_csv(index=False))
        print(f"tables written to {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import time

    import torch

    from atomizer import bench
    from atomizer.core.storage import atomic_write_json

    if args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA device is available")
    if args.peak_tflops:
        os.environ["ATOMIZER_PEAK_TFLOPS"] = str(args.peak_tflops)  # read by the per-case subprocesses
    if args.emit_json:  # inside the per-case subprocess
        (case,) = args.case
        print(
            json.dumps(
                bench.run_case(
                    case, args.device, args.quick, args.batch, args.reps, args.precision, memory=args.memory_run
                )
            )
        )
        return 0
    records = bench.run_all(args.device, args.quick, args.case, args.batch, args.precision)
    print(bench.format_table(records))
    if args.json:
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
        atomic_write_json(args.json, {"meta": meta, "records": records})
    return 1 if any("error" in r for r in records) else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from atomizer.dashboard.app import serve

    if args.max_map_windows is not None and args.max_map_windows < 1:
        raise ValueError(f"--max-map-windows must be positive, got {args.max_map_windows}")
    serve(
        port=args.port,
        results_root=args.results,
        checkpoint=args.checkpoint,
        show=args.show,
        warm=args.warm,
        threads=args.threads,
        roots=list(args.root or []),
        map_cache=args.map_cache,
        max_map_windows=args.max_map_windows,
        address=args.address,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atomizer", description="Atomizer: any sensor's image as a set of atoms.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("sensors", help="print the band catalogue (or a sidecar) as a table")
    s.add_argument("names", nargs="*", help="sensors to show (default: all)")
    s.add_argument("--sidecar", help="show a user sensor sidecar (.yaml/.json) instead")
    s.set_defaults(func=_cmd_sensors)

    s = sub.add_parser("inspect", help="bands, wavelengths, GSDs, grids and atom count of an input")
    s.add_argument(
        "path",
        help=".npz patch, GeoTIFF, folder of per-band GeoTIFFs, Sentinel-2 .SAFE, Landsat C2 folder (MTL), STAC item.json",
    )
    s.add_argument("--sensor", help="catalogued sensor of a GeoTIFF/folder (default: Sentinel-2 / EuroSAT)")
    s.add_argument("--sidecar", help="YAML/JSON description of the sensor's bands")
    s.add_argument("--bands", type=_band_list, help=BANDS_HELP)
    s.add_argument(
        "--max-atoms",
        type=int,
        help="refuse an input of more atoms than this, before reading it (default: ATOMIZER_MAX_ATOMS, else 2^31-1)",
    )
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("train", help="train a model from a YAML config (see configs/)")
    s.add_argument("config", help="training config YAML (fields of atomizer.engine.training.TrainConfig)")
    s.add_argument("--resume", action="store_true", help="continue the run in the config's out_dir")
    s.add_argument("--out", help="run directory (overrides out_dir)")
    s.add_argument("--init", help="initialise the encoder from this checkpoint (e.g. a pretrained one)")
    s.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config fields (repeatable)")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("evaluate", help="evaluate a checkpoint on each modality of a modality file")
    s.add_argument("checkpoint")
    s.add_argument("--modalities", required=True, help="modality YAML, or a name of a shipped modality set")
    s.add_argument("--dataset", help="dataset (default: the one the checkpoint was trained on)")
    s.add_argument("--data-root", help="dataset folder (default: embedded data)")
    s.add_argument("--split", default="test")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--device", default="auto")
    s.add_argument("--workers", type=int, default=0, help="loader processes (0: read in this one)")
    s.add_argument("--out", help="write results (netCDF + JSON) here")
    s.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("predict", help="class probabilities for any readable image of any sensor")
    s.add_argument("checkpoint")
    s.add_argument("input", help=".npz, GeoTIFF or folder of per-band GeoTIFFs")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--sensor", help="catalogued sensor name")
    g.add_argument("--sidecar", help="YAML/JSON sidecar describing the bands")
    s.add_argument("--bands", type=_band_list, help=BANDS_HELP)
    s.add_argument("--top", type=int, default=10, help="print the top-k classes")
    s.add_argument("--chunk-size", type=int, default=262144, help="atoms per cross-attention chunk")
    s.add_argument(
        "--max-atoms",
        type=int,
        help="refuse an input of more atoms than this, before reading it (default: ATOMIZER_MAX_ATOMS, else 2^31-1)",
    )
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser(
        "map",
        help="land-cover map of a whole scene: a georeferenced GeoTIFF of class probabilities + argmax",
        description="Slide the classifier over the scene in windows of the ground extent it was trained on, "
        "each tokenized at native resolution, and write one probability band per class plus the argmax "
        "(CRS and transform of the scene; tiled, compressed, overviews). An interrupted run resumes.",
    )
    s.add_argument("checkpoint")
    s.add_argument("scene", help="any readable input: .SAFE, Landsat C2 folder, STAC item, band folder, GeoTIFF")
    s.add_argument("--out", required=True, help="output GeoTIFF")
    s.add_argument("--window-m", type=float, help="window side in metres (default: the training extent)")
    s.add_argument("--stride-m", type=float, help="distance between windows in metres (default: the window)")
    s.add_argument(
        "--gsd",
        type=float,
        help="output GSD in metres (default: the scene's finest); a segmentation checkpoint answers every pixel",
    )
    s.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    s.add_argument("--device", default="cpu")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--sensor", help="catalogued sensor name")
    g.add_argument("--sidecar", help="YAML/JSON sidecar describing the bands")
    s.add_argument("--bands", type=_band_list, help=BANDS_HELP)
    s.add_argument("--restart", action="store_true", help="discard an interrupted run's progress")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument(
        "--max-atoms",
        type=int,
        help="refuse an input of more atoms than this, before reading it (default: ATOMIZER_MAX_ATOMS, else 2^31-1)",
    )
    s.set_defaults(func=_cmd_map)

    s = sub.add_parser(
        "prepare",
        help="convert the official BigEarthNet GeoTIFF folders (v1/v2) into the community LMDB form",
        description="Read every patch folder below ROOT (in worker processes), encode it as rico-hdl does "
        "(safetensors of the native bands, keyed by patch name) and write OUT/BigEarthNet-V2-LMDB. A rerun "
        "after a kill skips the committed patches.",
    )
    s.add_argument("dataset", choices=["bigearthnet"])
    s.add_argument("root", help="official layout, e.g. BigEarthNet-S2/ (v2: <tile>/<patch>/, v1: <patch>/)")
    s.add_argument("--out", required=True, help="output root (gets BigEarthNet-V2-LMDB/ and the metadata)")
    s.add_argument("--metadata", help="official metadata.parquet: copied beside the database, counts checked")
    s.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="reader processes")
    s.add_argument("--limit", type=int, help="first N patch folders only")
    s.add_argument("--verify", action="store_true", help="then re-read every patch against its source")
    s.add_argument("--verify-only", action="store_true", help="only verify an existing database")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser(
        "pretrain",
        help="masked pretraining (Atomizer atoms, or S2MAE cubes) of the encoder on unlabelled images",
        description="Hide most atoms of unlabelled images and reconstruct them from the visible ones "
        "(model: s2mae: S2MAE's masked spatial-spectral cubes; source_epochs: progressive, source by source). "
        "CONFIG is a YAML of atomizer.engine.pretraining.PretrainConfig fields; the "
        "result (<out_dir>/checkpoints/last.pt) initialises `atomizer train --init`.",
    )
    s.add_argument("config", help="pretraining config YAML (fields of atomizer.engine.pretraining.PretrainConfig)")
    s.add_argument("--resume", action="store_true", help="continue the run in the config's out_dir")
    s.add_argument("--out", help="run directory (overrides out_dir)")
    s.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config fields (repeatable)")
    s.set_defaults(func=_cmd_pretrain)

    s = sub.add_parser(
        "adapt",
        help="SpectralX-style two-stage adaptation of a frozen Atomizer to new spectral data",
        description="Stage 1: masked reconstruction on the new data with only the adapters trainable; stage 2: "
        "the task with the stage-2 adapters and the head (the base stays frozen). CONFIG is a YAML of "
        "atomizer.engine.adaptation.AdaptConfig fields (base, adapters, stage2_kinds, freeze_stage1, pretrain, "
        "train, out_dir); the result is <out_dir>/stage2 (best.pt, adapters.pt).",
    )
    s.add_argument("config", help="adaptation config YAML (fields of atomizer.engine.adaptation.AdaptConfig)")
    s.add_argument("--base", help="the frozen base Atomizer checkpoint (overrides base)")
    s.add_argument("--resume", action="store_true", help="resume the interrupted stage in the config's out_dir")
    s.add_argument("--out", help="adaptation directory (overrides out_dir)")
    s.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="override config fields, a stage's with a dot: pretrain.steps=50 train.epochs=2 (repeatable)",
    )
    s.set_defaults(func=_cmd_adapt)

    s = sub.add_parser("experiment", help="run a grid of papermill notebook runs (see experiments/)")
    e = s.add_subparsers(dest="experiment_command", required=True, metavar="ACTION")
    r = e.add_parser("run", help="execute the runs of an experiment spec, skipping finished ones")
    r.add_argument("spec", help="experiment YAML")
    r.add_argument("--only", nargs="*", help="run ids to run (default: all)")
    r.add_argument("--force", action="store_true", help="re-run finished runs")
    r.add_argument("--workers", type=int, help="override the spec's local worker count")
    r.set_defaults(func=_cmd_experiment_run)
    ls = e.add_parser("list", help="list the runs of an experiment spec and their state")
    ls.add_argument("spec")
    ls.set_defaults(func=_cmd_experiment_list)

    s = sub.add_parser("dataset", help="your own data: check a manifest (one row per labelled image)")
    d = s.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    c = d.add_parser(
        "check",
        help="read every row of a manifest, print a summary, refuse a broken row in one line; write folds if none",
    )
    c.add_argument(
        "manifest",
        help="CSV, Parquet, GeoJSON/GeoParquet or STAC ItemCollection (see README: Your own data); a union "
        "a.csv+b.csv checks each part",
    )
    c.add_argument("--data-root", help="a second folder the manifest's paths may point into (default: its own only)")
    c.add_argument("--folds", type=int, default=5, help="folds to write when the manifest has none (default 5)")
    c.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    c.add_argument("--no-folds", action="store_true", help="check only; write no folds file")
    c.add_argument("--json", action="store_true", help="the summary as JSON")
    c.set_defaults(func=_cmd_dataset_check)
    b = d.add_parser(
        "blocks",
        help="cut a segmentation manifest's images into n x n spatial blocks (a new manifest, folds rotating over "
        "each image's blocks: spatial block cross-validation for a few large tiles)",
    )
    b.add_argument("manifest", help="a segmentation manifest (a mask column) of GeoTIFFs")
    b.add_argument("out", help="an empty folder for the blocks, their manifest.csv and card")
    b.add_argument("--n", type=int, default=2, help="blocks per side (default 2: 4 blocks, 4 folds)")
    b.add_argument("--data-root", help="a second folder the manifest's paths may point into (default: its own only)")
    b.set_defaults(func=_cmd_dataset_blocks)

    from atomizer.bench import CASES

    s = sub.add_parser("bench", help="benchmark the token pipeline and the encoder (see docs/benchmarks.md)")
    s.add_argument("--quick", action="store_true", help="small batches and repetitions (under a minute on CPU)")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--json", help="write one JSON record per case here")
    s.add_argument("--case", choices=CASES, action="append", help="run only these cases")
    s.add_argument("--batch", type=int, help="batch of the train-step cases")
    s.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="autocast of the train-step cases, the same for the reference (auto: bf16 on CUDA, fp32 on CPU)",
    )
    s.add_argument(
        "--peak-tflops",
        type=float,
        help="the GPU's dense bf16 peak in TFLOP/s (default: looked up from the device name)",
    )
    s.add_argument("--memory-run", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--reps", type=int, help=argparse.SUPPRESS)
    s.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("results", help="statistics of a results store: mean, 95 %% CI, paired differences, verdict")
    s.add_argument(
        "store", nargs="+", help="results store (folder of runs with predictions.nc); several are read as one"
    )
    s.add_argument("--metric", default="macro_map", choices=["macro_map", "top1", "miou"])
    s.add_argument("--reference", default="atomizer", help="model compared with every other (paired)")
    s.add_argument("--resamples", type=int, default=2000, help="bootstrap and permutation resamples")
    s.add_argument("--csv", help="write the summary and differences as CSV into this folder")
    s.set_defaults(func=_cmd_results)

    s = sub.add_parser("report", help="one self-contained HTML file of a results store (tables, CIs, figures, configs)")
    s.add_argument("store", help="results store (folder of runs with predictions.nc)")
    s.add_argument("--out", required=True, help="the HTML file to write")
    s.add_argument("--reference", default="atomizer", help="model compared with every other (paired)")
    s.add_argument("--resamples", type=int, default=2000, help="bootstrap and permutation resamples")
    s.add_argument("--figures", help="also write every figure as PNG and SVG into this folder")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("serve", help="serve the dashboard (spectral, positional, attention, results)")
    s.add_argument("--port", type=int, default=5006, help="local port (default 5006)")
    s.add_argument("--results", default="runs", help="results store to show (default: runs)")
    s.add_argument("--checkpoint", help="Atomizer checkpoint for the attention maps")
    s.add_argument(
        "--show", action=argparse.BooleanOptionalAction, default=True, help="open a browser tab (default: --show)"
    )
    s.add_argument(
        "--warm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="render every tab once before serving, so the first visitor waits no longer than the next (default)",
    )
    s.add_argument(
        "--threads",
        type=int,
        default=4,
        help="callbacks of the sessions run in this many threads (0: on the event loop)",
    )
    s.add_argument(
        "--address",
        default="localhost",
        help="interface to listen on (default: localhost; the dashboard has no authentication: share it "
        "through an authenticating proxy, never on an open interface)",
    )
    s.add_argument(
        "--root",
        action="append",
        metavar="DIR",
        help="another folder the dashboard may read (repeatable); it reads nothing outside the results store, "
        "its checkpoints, the embedded data and these",
    )
    s.add_argument("--map-cache", metavar="DIR", help="folder of the Maps tab's cached maps (size-bounded)")
    s.add_argument(
        "--max-map-windows", type=int, metavar="N", help="most windows one map may ask for (default: the dashboard's)"
    )
    s.set_defaults(func=_cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("atomizer: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, TypeError, RuntimeError, OSError) as e:
        if os.environ.get("ATOMIZER_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"atomizer: error: {msg}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = previous


if __name__ == "__main__":
    sys.exit(main())
