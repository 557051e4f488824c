"""Command line: `python -m training train fashion-cnn`, `ensure`, `serve`, `tune`, `report`, `list`,
`import FILE.onnx`, `finetune --from fashion-cnn --data DIR --name NAME`, `drift LOG_DIR`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from contracts.progress import PROGRESS_FOLDER
from training.config import TrainConfig
from training.tasks import TASKS
from training.tasks.transfer import Schedule

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
            kind = type(default) if default is not None else str
            parser.add_argument(
                flag,
                type=kind,
                choices=f.metadata.get("choices"),
                default=argparse.SUPPRESS,
                help=f"default: {default}",
            )


def config_from_args(
    task: str, args: argparse.Namespace, tuned: dict | None = None, defaults: dict | None = None
) -> TrainConfig:
    """TrainConfig defaults, then the task's own defaults (`defaults` for a task not in TASKS), then tuned
    parameters, then the flags given."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"task"}
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    defaults = TASKS[task].train_defaults if defaults is None else defaults
    cfg = TrainConfig(task=task, **defaults).with_params(tuned or {})
    model = {**cfg.model, **given.pop("model", {})}  # a net flag overrides one tuned net field, not all
    return dataclasses.replace(cfg, **given, model=model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train, evaluate, export and register one or more tasks")
    train.add_argument("tasks", nargs="+", choices=sorted(TASKS))
    train.add_argument(
        "--params-from",
        type=Path,
        metavar="STUDY",
        help="train with the best trial's parameters of an Optuna study (artifacts/tune/TASK.db)",
    )
    add_config_flags(train)
    tune = commands.add_parser("tune", help="search a task's hyperparameters with Optuna (study in OUT_DIR/tune/)")
    tune.add_argument("task", choices=sorted(TASKS))
    tune.add_argument("--trials", type=int, default=20, help="trials to add to the study (default: 20)")
    tune.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    add_config_flags(tune)
    report = commands.add_parser("report", help="the results tables (Markdown) of the models in the store")
    report.add_argument("--all-versions", action="store_true", help="every stored version, not only the latest")
    ensure = commands.add_parser("ensure", help="train every default task that has no model in the store")
    ensure.add_argument(
        "--lanes",
        type=int,
        default=2,
        help="tasks trained side by side, each in its own process with cores/lanes threads (default: 2)",
    )
    add_config_flags(ensure)
    serve = commands.add_parser(
        "serve", help="serve every family, training first the default models the store lacks (each joins when ready)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--lanes", type=int, default=2, help="tasks trained side by side (default: 2)")
    add_config_flags(serve)
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
    imported.add_argument(
        "--examples",
        type=Path,
        help="an .npz of example inputs (one array per graph input, by name): a graph whose outputs are made tensors "
        "(a ZipMap removed) is proven to answer as before on them (default: seeded inputs of its input types)",
    )
    finetune = commands.add_parser(
        "finetune",
        help="a new classifier for PATH's classes on a stored classifier's body (transfer learning)",
        description="--data: for an image classifier, a folder with a subfolder of images per class; for a text "
        "classifier, such a folder of .txt files (one text a file) or a CSV with text and label columns.",
    )
    finetune.add_argument(
        "--from", dest="parent", required=True, metavar="MODEL[:VERSION]", help="a stored classifier: fashion-cnn"
    )
    finetune.add_argument("--name", required=True, help="the new model's name in the store")
    finetune.add_argument(
        "--unfreeze-after",
        type=int,
        metavar="EPOCHS",
        help="after EPOCHS epochs of the head alone, train the body's last block too, at a tenth of the rate "
        "(default: the body stays frozen)",
    )
    finetune.add_argument(
        "--thaw-blocks",
        type=int,
        default=1,
        metavar="K",
        help="with --unfreeze-after: how many of the body's last blocks train then (default: 1)",
    )
    finetune.add_argument(
        "--freeze-norms",
        action="store_true",
        help="keep the body's norm layers as the parent's too (default: they train with the head)",
    )
    add_config_flags(finetune)  # --data PATH, --epochs, --lr, --seed, ...
    drift = commands.add_parser(
        "drift", help="compare the inputs in payload logs with the training data (Markdown + PNG report)"
    )
    drift.add_argument("log_dir", type=Path, help="the MODELROAD_PAYLOAD_LOG folder")
    drift.add_argument("--out", type=Path, help="where report.md and the PNGs go (default: LOG_DIR/drift-report)")
    return parser


# Each command imports what it needs itself: `--help` should not pay for torch and bentoml.


def train_command(args: argparse.Namespace, argv: list[str]) -> int:
    from training.pipeline import loaded, run

    runs = []
    for name in args.tasks:
        tuned, tuning = {}, None
        if args.params_from:
            from training.tune import best_params

            tuned, tuning = best_params(args.params_from, name)
            log.info("%s: parameters of study %s: %s", name, args.params_from, tuned)
        runs.append((config_from_args(name, args, tuned), tuning))
    # With progress records on (`python -m training serve`), every task's data is loaded first and its record
    # queued with its interface card: a server builds the routes of the models this lane has not started yet.
    ahead, failed = {}, []
    for cfg, _ in runs if os.environ.get(PROGRESS_FOLDER) else []:
        try:
            ahead[cfg.task] = loaded(cfg)
        except Exception:
            log.exception("%s: loading its data failed", cfg.task)
            failed.append(cfg.task)
    for cfg, tuning in runs:
        if cfg.task in failed:
            continue
        try:
            run(cfg, tuning, ahead.get(cfg.task))
        except Exception:  # the tasks after it still train; the exit status says one failed
            log.exception("%s: training failed", cfg.task)
            failed.append(cfg.task)
    return 1 if failed else 0


def import_command(args: argparse.Namespace, argv: list[str]) -> int:
    from training.import_model import ImportRefused, import_model

    try:
        tag = import_model(args.file, args.name, args.labels, args.examples)
    except ImportRefused as exc:
        log.error("not imported: %s", exc)
        return 2
    log.info("registered %s; serve it with MODELROAD_MODELS=%s", tag, tag)
    return 0


def schedule_from_args(args: argparse.Namespace) -> Schedule:
    return Schedule(args.unfreeze_after, args.thaw_blocks, train_norms=not args.freeze_norms)


def finetune_command(args: argparse.Namespace, argv: list[str]) -> int:
    from training.pipeline import loaded, run
    from training.tasks.transfer import DataRefused, Parent, TransferRefused, fine_tuning, name_problem

    # Everything is checked and the data read before training starts: a refused run writes nothing to the store.
    try:
        if min(args.unfreeze_after or 0, args.thaw_blocks) < 0:
            raise TransferRefused("--unfreeze-after and --thaw-blocks count epochs and blocks: 0 or more")
        parent = Parent.load(args.parent)
        if problem := name_problem(args.name, parent):
            raise TransferRefused(problem)
        task = fine_tuning(args.name, parent, schedule_from_args(args))
        cfg = config_from_args(args.name, args, defaults=task.train_defaults)
        prepared = loaded(cfg, task)
    except (TransferRefused, DataRefused) as exc:
        log.error("not fine-tuned: %s", exc)
        return 2
    stored = run(cfg, prepared=prepared, task=task)
    if stored and "tag" in stored:
        log.info(
            "serve it beside the families with MODELROAD_MODELS=%s: its family's routes answer with it when asked "
            'for {"model": "%s"} (docs/fine-tuning.md)',
            stored["tag"],
            args.name,
        )
    return 0


def drift_command(args: argparse.Namespace, argv: list[str]) -> int:
    from training.drift import drift_report

    out = args.out or args.log_dir / "drift-report"
    drifts = drift_report(args.log_dir, out)
    for d in drifts:
        log.info("%s:%s: %s", d.model, d.version, "drift" if d.drifted else d.problem or "no drift found")
    log.info("report: %s", out / "report.md")
    return 1 if any(d.drifted for d in drifts) else 0


def tune_command(args: argparse.Namespace, argv: list[str]) -> int:
    from training.tune import tune

    tune(config_from_args(args.task, args), args.trials, args.timeout)
    return 0


def report_command(args: argparse.Namespace, argv: list[str]) -> int:
    from training.report import results_tables

    print(results_tables(latest_only=not args.all_versions))
    return 0


def list_command(args: argparse.Namespace, argv: list[str]) -> int:
    from training.register import list_registered

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


def tasks_to_train() -> list[str]:
    """The default tasks with no servable model in the store."""
    from training.register import list_registered

    # A model registered before OOD scores existed cannot be served: its task is trained again (a generator's
    # answers carry no score: any stored version serves).
    rows = list_registered()
    stored = {r["tag"].split(":")[0] for r in rows}
    scored = {r["tag"].split(":")[0] for r in rows if r["ood_threshold"] is not None}
    return [name for name, task in TASKS.items() if name not in (scored if task.scores_ood else stored)]


def lane_flags(argv: list[str], command: str, own: tuple[str, ...]) -> list[str]:
    """The training flags given to `command`, for its lanes: its own options (`own`, with their values) left out."""
    flags = argv[argv.index(command) + 1 :]
    for option in own:
        flags = [flag for flag in flags if not flag.startswith(f"{option}=")]
        if option in flags:
            at = flags.index(option)
            flags = flags[:at] + flags[at + 2 :]
    return flags


def ensure_command(args: argparse.Namespace, argv: list[str]) -> int:
    from training.pipeline import run

    tasks = tasks_to_train()
    if not tasks:
        log.info("every default model is in the store: %s", ", ".join(sorted(TASKS)))
    if args.lanes > 1 and len(tasks) > 1:
        from training.lanes import train_in_lanes

        return train_in_lanes(tasks, args.lanes, lane_flags(argv, "ensure", ("--lanes",)))
    for name in tasks:
        run(config_from_args(name, args))
    return 0


def serve_command(args: argparse.Namespace, argv: list[str]) -> int:
    from training.serve import serve

    flags = lane_flags(argv, "serve", ("--lanes", "--host", "--port"))
    out_dir = Path(getattr(args, "out_dir", TrainConfig.out_dir))
    tasks = tasks_to_train()
    return serve(tasks, args.host, args.port, args.lanes, flags, out_dir, stored=len(tasks) < len(TASKS))


COMMANDS = {
    "train": train_command,
    "ensure": ensure_command,
    "serve": serve_command,
    "tune": tune_command,
    "report": report_command,
    "list": list_command,
    "import": import_command,
    "finetune": finetune_command,
    "drift": drift_command,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # Under torchrun, rank 0 alone speaks (the others would repeat every line).
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for chatty in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return COMMANDS[args.command](args, argv)


if __name__ == "__main__":
    sys.exit(main())
