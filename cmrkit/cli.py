"""The ``cmrkit`` command line: ``run``, ``route``, ``compare``, ``strategies`` and ``plugins``.

Exit codes: 0 success, 1 a failure during the work, 2 invalid arguments or configuration,
130 interrupted (what finished is written first).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cmrkit import __version__

logger = logging.getLogger("cmrkit")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Invalid command-line input; the message states what to change."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmrkit`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    package_logger = logging.getLogger("cmrkit")
    previous_level = package_logger.level
    console = _configure_console_logging(args.verbose)
    try:
        return int(args.handler(args))
    except UsageError as error:
        print(f"cmrkit: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("cmrkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # the CLI boundary: report every failure as one clear line
        if _is_usage_error(error):
            print(f"cmrkit: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        logger.debug("failure", exc_info=True)
        print(f"cmrkit: error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        # Leave the logging setup as it was, so that calling main() in-process (tests,
        # notebooks) does not change what other code logs.
        package_logger.removeHandler(console)
        package_logger.setLevel(previous_level)


def _is_usage_error(error: Exception) -> bool:
    from cmrkit.checkpoint import CheckpointError
    from cmrkit.config import ConfigError
    from cmrkit.data.source import DataNotFoundError
    from cmrkit.pm import UnknownNameError

    return isinstance(error, ConfigError | UnknownNameError | CheckpointError | DataNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="cmrkit", description="Continual model routing over a growing model hub."
    )
    parser.add_argument("--version", action="version", version=f"cmrkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="Train a strategy over the CMRBench stream and evaluate.")
    run.add_argument("--strategy", help="Strategy name (see `cmrkit strategies`); default naive.")
    run.add_argument("--plugins", help="Comma-separated training plugins, applied in this order.")
    run.add_argument("--config", type=Path, help="YAML file merged over the defaults.")
    run.add_argument("--data-dir", help="Local CMRBench copy (default $CMRKIT_DATA_DIR, else download).")
    run.add_argument("--output", type=Path, help="Output folder (default runs/<strategy>-<time>).")
    run.add_argument("--seed", type=int, help="Random seed.")
    run.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    run.add_argument("--print-config", action="store_true", help="Print the resolved config and exit.")
    run.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="Config overrides, e.g. train.epochs=3."
    )
    run.set_defaults(handler=command_run)

    route = commands.add_parser("route", help="Route prompts with a trained router checkpoint.")
    route.add_argument("--checkpoint", type=Path, required=True, help="Checkpoint folder from `cmrkit run`.")
    route.add_argument("prompts", nargs="*", metavar="PROMPT", help="Prompts to route.")
    route.add_argument(
        "--input", help="File of JSON Lines with a 'prompt' field, or plain text lines; - reads stdin."
    )
    route.add_argument("--top-k", type=int, default=5, help="Models per prompt (default 5).")
    route.add_argument("--output", type=Path, help="Write JSON Lines here instead of stdout.")
    route.set_defaults(handler=command_route)

    compare = commands.add_parser(
        "compare",
        help="Run several strategies over the same stream and seeds, and tabulate them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run every entry once per seed on the same CMRBench stream and write comparison.md,\n"
            "comparison.csv (mean and sample standard deviation over seeds), d_acc_over_stream.png\n"
            "and runs/<label>/seed-<seed>/metrics.json. A failing run is listed with its error.\n\n"
            "Entry syntax: [LABEL:]STRATEGY[+PLUGIN...][@KEY=VALUE[;KEY=VALUE...]]\n"
            "  naive+ewc                                 naive with the ewc plugin\n"
            "  naive+replay@plugins.replay.ratio=0.2     an override for this entry only\n"
            "  replay-20:naive+replay@plugins.replay.ratio=0.2   the same, labelled replay-20\n"
            "Overrides after '@' apply after the shared KEY=VALUE overrides; they may not set\n"
            "run.strategy, run.plugins or run.seed. Commas inside brackets stay in the value."
        ),
    )
    compare.add_argument(
        "--strategies", required=True, metavar="LIST",
        help="Comma-separated entries, e.g. naive,naive+ewc,naive+replay@plugins.replay.ratio=0.2.",
    )
    compare.add_argument(
        "--seeds", default="0", help="Comma-separated seeds; each entry runs once per seed (default 0)."
    )
    compare.add_argument("--config", type=Path, help="YAML file merged over the defaults for every run.")
    compare.add_argument("--data-dir", help="Local CMRBench copy (default $CMRKIT_DATA_DIR, else download).")
    compare.add_argument("--output", type=Path, help="Output folder (default runs/compare-<time>).")
    compare.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    compare.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="Config overrides for every entry, e.g. train.epochs=3.",
    )
    compare.set_defaults(handler=command_compare)

    strategies = commands.add_parser("strategies", help="List the installed strategies.")
    strategies.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    strategies.set_defaults(handler=command_strategies)

    plugins = commands.add_parser("plugins", help="List the installed plugins and what they provide.")
    plugins.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    plugins.set_defaults(handler=command_plugins)
    return parser


# -- run ------------------------------------------------------------------------------------


def resolve_run_config(args: argparse.Namespace, manager: Any) -> DictConfig:
    """Merge defaults, ``--config``, dotlist overrides, then the explicit flags (highest)."""
    from cmrkit.config import build_config

    flags: list[str] = []
    if args.strategy:
        flags.append(f"run.strategy={args.strategy}")
    if args.plugins is not None:
        names = [name.strip() for name in args.plugins.split(",") if name.strip()]
        flags.append(f"run.plugins=[{','.join(names)}]")
    if args.data_dir:
        flags.append(f"data.dir={json.dumps(str(args.data_dir))}")
    if args.output:
        flags.append(f"run.output={json.dumps(str(args.output))}")
    if args.seed is not None:
        flags.append(f"run.seed={args.seed}")
    if args.no_progress:
        flags.append("run.progress=false")
    return build_config(
        file=args.config,
        overrides=[*args.overrides, *flags],
        strategy_classes={name: info.config_class for name, info in manager.strategies().items()},
        plugin_classes={name: info.config_class for name, info in manager.training_plugins().items()},
    )


def command_run(args: argparse.Namespace) -> int:
    """Train and evaluate one strategy; write metrics, plots, the log and a checkpoint."""
    from cmrkit.pm import load_plugin_manager
    from cmrkit.runner import run_experiment, validate_config

    manager = load_plugin_manager()
    config = resolve_run_config(args, manager)
    manager.strategy(str(config.run.strategy))
    try:
        manager.check_training_plugins([str(name) for name in config.run.plugins])
    except ValueError as error:
        raise UsageError(str(error)) from error
    validate_config(config)
    if args.print_config:
        print(OmegaConf.to_yaml(config), end="")
        return 0

    output_dir = _output_dir(config)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output {output_dir} is a file; pass a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        logger.warning("output folder %s is not empty; files of an earlier run may remain", output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config.run.output = str(output_dir)
    log_handler = _attach_file_log(output_dir / "run.log")
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True), encoding="utf-8")
    logger.info("cmrkit %s: strategy %s, plugins [%s], output %s", __version__, config.run.strategy,
                ", ".join(config.run.plugins), output_dir)

    written: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        result = run_experiment(
            config, manager=manager, output_dir=output_dir,
            on_round_end=lambda partial: _write_round(output_dir, config, partial, written),
        )
    except KeyboardInterrupt:
        partial = written.get("result")
        if partial is None:
            logger.warning("interrupted before the first experience finished; no metrics to keep")
        else:
            # The router is mid-experience, so its weights match none of the saved metrics rows:
            # keep the metrics of the finished experiences and write no checkpoint.
            logger.warning("interrupted; metrics of the finished experiences kept in %s, no checkpoint "
                           "written", output_dir)
            _write_outputs(output_dir, config, partial, complete=False)
        raise
    finally:
        logging.getLogger("cmrkit").removeHandler(log_handler)
        log_handler.close()

    _write_outputs(output_dir, config, result, complete=True)
    summary = result.summary
    print(
        f"M-Acc {summary['m_acc']:.1f}  F-Acc {summary['f_acc']:.1f}  D-Acc {summary['d_acc']:.1f}  "
        f"D-Acc@3 {summary.get('d_acc_top3', float('nan')):.1f}  D-forgetting {summary['d_forgetting']:.1f}  "
        f"train {summary['train_seconds']:.0f}s  total {time.perf_counter() - started:.0f}s"
    )
    print(f"outputs: {output_dir}")
    return 0


def _output_dir(config: DictConfig) -> Path:
    if config.run.output:
        return Path(str(config.run.output))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.run.strategy}-{stamp}"


def _write_round(output_dir: Path, config: DictConfig, result: Any, written: dict[str, Any]) -> None:
    from cmrkit.reporting import metrics_document, write_metrics

    written["result"] = result
    document = metrics_document(
        result, strategy=str(config.run.strategy), plugins=list(config.run.plugins),
        variant=str(config.data.variant),
    )
    write_metrics(output_dir, document)


def _write_outputs(output_dir: Path, config: DictConfig, result: Any, *, complete: bool) -> None:
    from cmrkit.checkpoint import save_checkpoint
    from cmrkit.reporting import (
        metrics_document,
        summary_markdown,
        write_heatmaps,
        write_matrix_csv,
        write_metrics,
    )

    result.complete = complete and result.complete
    document = metrics_document(
        result, strategy=str(config.run.strategy), plugins=list(config.run.plugins),
        variant=str(config.data.variant),
    )
    write_metrics(output_dir, document)
    write_matrix_csv(output_dir, result)
    title = f"{config.run.strategy} + {'+'.join(config.run.plugins) or 'no plugins'}"
    write_heatmaps(output_dir, result, title)
    (output_dir / "summary.md").write_text(summary_markdown(document), encoding="utf-8")

    if not complete:
        return
    router = getattr(result.strategy, "model", None)
    extras = result.context.state.get("checkpoint_extras", {})
    writer = result.context.state.get("checkpoint_writer")
    if writer is not None:  # strategies without a neural router (retrieval) save themselves
        writer(output_dir / "checkpoint", config)
    elif router is not None:
        save_checkpoint(output_dir / "checkpoint", router, result.context.registry, config,
                        extras=extras, complete=result.complete)


def _attach_file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("cmrkit").addHandler(handler)
    return handler


class _ConsoleHandler(logging.StreamHandler):
    """Stream handler that writes to whatever ``sys.stderr`` is at the time of each message.

    Looking the stream up per message keeps the handler valid when ``main`` runs several times
    in one process under different stderr captures (tests, notebooks).
    """

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_console_logging(verbose: bool) -> logging.Handler:
    root = logging.getLogger("cmrkit")
    root.setLevel(logging.DEBUG)
    console = _ConsoleHandler()
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    return console


# -- route ----------------------------------------------------------------------------------


def command_route(args: argparse.Namespace) -> int:
    """Route prompts from the command line or a file; print one JSON line per prompt."""
    from cmrkit.checkpoint import load_checkpoint
    from cmrkit.route import parse_prompt_lines, read_prompts, route_prompts

    if args.top_k < 1:
        raise UsageError(f"invalid --top-k {args.top_k}: it must be at least 1")
    prompts = [prompt for prompt in args.prompts if prompt.strip()]
    try:
        if args.input == "-":
            prompts += list(parse_prompt_lines(sys.stdin, source="<stdin>"))
        elif args.input:
            path = Path(args.input)
            if not path.is_file():
                raise UsageError(f"input file not found: {path}")
            prompts += read_prompts(path)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if not prompts:
        raise UsageError("no prompts: pass PROMPT arguments or --input FILE")

    if args.output is not None and not args.output.parent.is_dir():
        raise UsageError(f"--output {args.output}: folder {args.output.parent} not found")
    router, registry, _ = load_checkpoint(args.checkpoint)
    answers = route_prompts(router, registry, prompts, top_k=args.top_k)
    lines = "".join(json.dumps(answer, ensure_ascii=False) + "\n" for answer in answers)
    if args.output:
        args.output.write_text(lines, encoding="utf-8")
        logger.info("wrote %d routed prompts to %s", len(answers), args.output)
    else:
        sys.stdout.write(lines)
    return 0


# -- compare --------------------------------------------------------------------------------


def command_compare(args: argparse.Namespace) -> int:
    """Run several entries over the same stream and seeds; write the tables and the plot.

    The outputs are rewritten after every run, so an interrupted comparison keeps what finished.
    Returns 1 when any run failed (the tables list it with its error), else 0.
    """
    from cmrkit.compare import (
        comparison_markdown,
        parse_entries,
        parse_seeds,
        run_comparison,
        write_comparison,
    )
    from cmrkit.pm import load_plugin_manager

    try:
        entries = parse_entries(args.strategies)
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        raise UsageError(str(error)) from error
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.dir={json.dumps(str(args.data_dir))}")
    if args.no_progress:
        overrides.append("run.progress=false")

    output_dir = args.output or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    output_dir.mkdir(parents=True, exist_ok=True)
    log_handler = _attach_file_log(output_dir / "compare.log")
    logger.info("cmrkit %s: comparing %s over seeds %s, output %s", __version__,
                ", ".join(entry.label for entry in entries), seeds, output_dir)
    try:
        comparison = run_comparison(
            entries, seeds=seeds, output_dir=output_dir, config_file=args.config, overrides=overrides,
            manager=load_plugin_manager(), on_run_end=lambda partial: write_comparison(partial, output_dir),
        )
    finally:
        logging.getLogger("cmrkit").removeHandler(log_handler)
        log_handler.close()

    write_comparison(comparison, output_dir)
    print(comparison_markdown(comparison), end="")
    print(f"outputs: {output_dir}")
    failed = comparison.failed_runs()
    if failed:
        print(f"cmrkit: {len(failed)} of {len(comparison.runs)} runs failed; see the error column",
              file=sys.stderr)
    return EXIT_FAILURE if failed else 0


# -- listings -------------------------------------------------------------------------------


def command_strategies(args: argparse.Namespace) -> int:
    """List every installed strategy with the plugin and distribution that provide it."""
    from cmrkit.config import option_help
    from cmrkit.pm import STRATEGY, load_plugin_manager

    manager = load_plugin_manager()
    rows = []
    for name, info in manager.strategies().items():
        record = manager.provider(STRATEGY, name)
        options = option_help(info.config_class, prefix=f"strategies.{name}.") if info.config_class else []
        rows.append({
            "name": name, "description": info.description, "trainable": info.trainable,
            "plugin": record.name, "distribution": record.distribution, "version": record.version,
            "options": [key for key, _, _ in options],
        })
    _print_rows(rows, ["name", "distribution", "version", "plugin", "description"], args.json)
    return 0


def command_plugins(args: argparse.Namespace) -> int:
    """List every registered plugin: what it provides, its distribution and version, its hooks."""
    from cmrkit.pm import load_plugin_manager

    manager = load_plugin_manager()
    rows = [
        {
            "name": record.name, "provides": record.provides, "distribution": record.distribution,
            "version": record.version, "module": record.module, "hooks": record.hooks,
        }
        for record in manager.plugin_records()
    ]
    _print_rows(rows, ["name", "distribution", "version", "provides", "hooks"], args.json)
    return 0


def _print_rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    """Print ``rows`` as JSON (every key, dataclasses as objects) or as a table of ``columns``."""
    if as_json:
        print(json.dumps(rows, indent=2, default=_json_value))
        return
    cells = [[_cell(row[column]) for column in columns] for row in rows]
    widths = [max([len(column), *(len(cell[i]) for cell in cells)]) for i, column in enumerate(columns)]
    header = [column.upper() for column in columns]
    for cell in [header, *cells]:
        print("  ".join(value.ljust(width) for value, width in zip(cell, widths, strict=True)).rstrip())


def _json_value(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _cell(value: Any) -> str:
    return ", ".join(str(item) for item in value) if isinstance(value, list) else str(value)


if __name__ == "__main__":
    sys.exit(main())
