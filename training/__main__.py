"""Command line: `python -m training train fashion-cnn`, `list`, `ensure`, `import FILE.onnx --name NAME`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from training.config import TrainConfig
from training.tasks import TASKS

log = logging.getLogger("training")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, so the dataclass stays the one place for training options.

    Flags not given stay out of the namespace (SUPPRESS): the task's own defaults fill them.
    """
    for f in dataclasses.fields(TrainConfig):
        if f.name == "task":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        elif f.name == "model":
            parser.add_argument(
                flag,
                type=json.loads,
                default=argparse.SUPPRESS,
                help="net config overrides as JSON, e.g. '{\"dropout\": 0.2}'",
            )
        else:
            kind = float if f.name == "max_minutes" else type(default) if default is not None else str
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=f"default: {default}")


def config_from_args(task: str, args: argparse.Namespace) -> TrainConfig:
    """TrainConfig defaults, then the task's own defaults, then the flags given."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"task"}
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return TrainConfig(task=task, **{**TASKS[task].train_defaults, **given})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train, evaluate, export and register one or more tasks")
    train.add_argument("tasks", nargs="+", choices=sorted(TASKS))
    add_config_flags(train)
    ensure = commands.add_parser("ensure", help="train every default task that has no model in the store")
    add_config_flags(ensure)
    listing = commands.add_parser("list", help="list registered models with their key test metric")
    listing.add_argument(
        "--digests", action="store_true", help="print each model's tag=digest instead, for MODELROAD_MODEL_DIGESTS"
    )
    imported = commands.add_parser(
        "import", help="check a user's ONNX model and register it (served by the OIP routes)"
    )
    imported.add_argument("file", type=Path, help="the .onnx file (external data files beside it, if any)")
    imported.add_argument("--name", required=True, help="its name in the store and the inference protocol")
    imported.add_argument("--labels", type=Path, help="a text file of class names, one per line, by class id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for chatty in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)

    # Imported late: `--help` should not pay for torch and bentoml.
    from training.pipeline import run
    from training.register import list_registered

    if args.command == "import":
        from training.import_model import ImportRefused, import_model

        try:
            tag = import_model(args.file, args.name, args.labels)
        except ImportRefused as exc:
            log.error("not imported: %s", exc)
            return 2
        log.info("registered %s; serve it with MODELROAD_MODELS=%s", tag, tag)
        return 0

    if args.command == "list":
        rows = list_registered()
        if args.digests:
            print("\n".join(f"{r['tag']}={r['digest']}" for r in rows))
            return 0
        print(f"{'tag':40} {'family':12} {'metric':9} {'value':>8} {'parity':>8}  baselines")
        for r in rows:
            value = f"{r['value']:.4f}" if isinstance(r["value"], float) else "-"
            parity = f"{r['parity_max_abs_diff']:.1e}" if r["parity_max_abs_diff"] is not None else "-"
            baselines = ", ".join(f"{name} {v:.4f}" for name, v in r["baselines"].items() if isinstance(v, float))
            print(f"{r['tag']:40} {r['family']:12} {r['metric']:9} {value:>8} {parity:>8}  {baselines}")
        return 0

    if args.command == "ensure":
        stored = {r["tag"].split(":")[0] for r in list_registered()}
        tasks = [name for name in TASKS if name not in stored]
        if not tasks:
            log.info("every default model is in the store: %s", ", ".join(sorted(TASKS)))
    else:
        tasks = args.tasks
    for name in tasks:
        run(config_from_args(name, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
