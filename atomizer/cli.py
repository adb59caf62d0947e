"""Command-line interface: ``atomizer <command> ...`` (also ``python -m atomizer``).

Errors in the user's input (a missing file, an unknown sensor, a mismatched checkpoint) are printed
as one line, ``atomizer: error: ...``, with exit status 2; ``ATOMIZER_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence


def _cmd_sensors(args: argparse.Namespace) -> int:
    from atomizer.bands import catalogue_table, get_sensor

    if args.sidecar:
        import pandas as pd

        s = get_sensor(args.sidecar)

        df = pd.DataFrame([{"sensor": s.name, **b.to_dict()} for b in s.bands]).drop(columns=["source"], errors="ignore")
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
    from atomizer.readers import count_tokens, describe, open_image

    ds = open_image(args.path, sensor=args.sidecar or args.sensor)
    print(f"{args.path}  sensor={ds.attrs.get('sensor')}")
    with _pd_wide():
        print(describe(ds).to_string(index=False))
    print(f"total atom tokens: {count_tokens(ds):,}")
    return 0


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
    from atomizer.training import TrainConfig, train

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
    from atomizer.evaluation import evaluate_checkpoint, save_results

    res = evaluate_checkpoint(args.checkpoint, args.modalities, dataset=args.dataset, split=args.split,
                              data_root=args.data_root, batch_size=args.batch_size, device=args.device)
    table = res["score"].sel(model=res.model.values[0]).to_pandas()
    with _pd_wide():
        print(table.round(2).to_string())
    if args.out:
        save_results(res, args.out, overwrite=args.overwrite)
        print(f"results written to {args.out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from atomizer.inference import predict_image

    probs = predict_image(args.checkpoint, args.input, sensor=args.sidecar or args.sensor,
                          chunk_size=args.chunk_size)
    for name, p in sorted(probs.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{p:7.4f}  {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atomizer", description="Atomizer: any sensor's image as a set of atoms.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("sensors", help="print the band catalogue (or a sidecar) as a table")
    s.add_argument("names", nargs="*", help="sensors to show (default: all)")
    s.add_argument("--sidecar", help="show a user sensor sidecar (.yaml/.json) instead")
    s.set_defaults(func=_cmd_sensors)

    s = sub.add_parser("inspect", help="bands, wavelengths, GSDs, grids and atom count of an input")
    s.add_argument("path", help=".npz patch, GeoTIFF, or folder of per-band GeoTIFFs")
    s.add_argument("--sensor", help="catalogued sensor of a GeoTIFF/folder (default: Sentinel-2 / EuroSAT)")
    s.add_argument("--sidecar", help="YAML/JSON description of the sensor's bands")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("train", help="train a model from a YAML config (see configs/)")
    s.add_argument("config", help="training config YAML (fields of atomizer.training.TrainConfig)")
    s.add_argument("--resume", action="store_true", help="continue the run in the config's out_dir")
    s.add_argument("--out", help="run directory (overrides out_dir)")
    s.add_argument("--init", help="initialise the encoder from this checkpoint (e.g. a pretrained one)")
    s.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config fields")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("evaluate", help="evaluate a checkpoint on each modality of a modality file")
    s.add_argument("checkpoint")
    s.add_argument("--modalities", required=True, help="modality YAML, or a name in data/modalities")
    s.add_argument("--dataset", help="dataset (default: the one the checkpoint was trained on)")
    s.add_argument("--data-root", help="dataset folder (default: embedded data)")
    s.add_argument("--split", default="test")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", help="write results (netCDF + JSON) here")
    s.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("predict", help="class probabilities for any readable image of any sensor")
    s.add_argument("checkpoint")
    s.add_argument("input", help=".npz, GeoTIFF or folder of per-band GeoTIFFs")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--sensor", help="catalogued sensor name")
    g.add_argument("--sidecar", help="YAML/JSON sidecar describing the bands")
    s.add_argument("--top", type=int, default=10, help="print the top-k classes")
    s.add_argument("--chunk-size", type=int, default=262144, help="atoms per cross-attention chunk")
    s.set_defaults(func=_cmd_predict)

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return p


_EXTRA_COMMANDS: list = []


def register(fn):
    """Let other modules add subcommands (``fn(subparsers)``)."""
    _EXTRA_COMMANDS.append(fn)
    return fn


def _load_extras() -> None:
    import importlib

    for mod in ("atomizer.experiments", "atomizer.bench", "atomizer.pretrain", "atomizer.serve"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    _load_extras()
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
