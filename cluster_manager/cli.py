"""``storyreel-watcher`` (``python -m cluster_manager``): watch, submit, status."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from cluster_manager.config import ConfigError, load_config

log = logging.getLogger("cluster_manager")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return args.command_function(config, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storyreel-watcher",
        description="Render submitted stories into published videos, one Snakemake run each.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "the watcher settings (default: built-in defaults, a local inbox)"

    watch = commands.add_parser("watch", help="run the watcher until SIGTERM or SIGINT")
    watch.add_argument("--config", type=Path, metavar="WATCHER_YAML", help=config_help)
    watch.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    watch.set_defaults(command_function=_watch)

    submit = commands.add_parser("submit", help="validate a story file and queue it")
    submit.add_argument("story", type=Path, metavar="STORY_JSON")
    submit.add_argument(
        "--again",
        action="store_true",
        help="render the story again from its first step, even if it is published unchanged",
    )
    submit.add_argument("--config", type=Path, metavar="WATCHER_YAML", help=config_help)
    submit.set_defaults(command_function=_submit)

    status = commands.add_parser("status", help="print a story's status record")
    status.add_argument("story_id", metavar="STORY_ID")
    status.add_argument("--config", type=Path, metavar="WATCHER_YAML", help=config_help)
    status.set_defaults(command_function=_status)
    setup = commands.add_parser(
        "pubsub-setup",
        help="create the Pub/Sub topics and subscriptions the settings name, where missing",
    )
    setup.add_argument("--config", type=Path, metavar="WATCHER_YAML", required=True)
    setup.set_defaults(command_function=_pubsub_setup)
    return parser


def _watch(config, args) -> int:
    from cluster_manager.logs import setup_logging
    from cluster_manager.watcher import Watcher

    setup_logging(getattr(logging, args.log_level.upper()))
    try:
        watcher = Watcher(config)
    except Exception:
        log.exception("cannot start the watcher")
        return 1

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if watcher.stop.is_set():
            log.warning("%s again: stopping the running stories now", name)
            watcher.abort.set()
        else:
            log.info("%s: taking no more stories; draining", name)
            watcher.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return watcher.run()


def _submit(config, args) -> int:
    from cluster_manager.submit import AlreadyRendering, submit_story
    from storyreel.storage import StorageError
    from storyreel.story import StoryError

    path: Path = args.story
    try:
        data = path.read_bytes()
    except OSError as err:
        print(f"error: cannot read story file {path}: {err.strerror}", file=sys.stderr)
        return 1
    try:
        story_id = submit_story(
            config, data, base_dir=path.resolve().parent, label=str(path), force=args.again
        )
    except (StoryError, StorageError, AlreadyRendering) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    again = " to render again" if args.again else ""
    print(f"queued story '{story_id}'{again} ({config.source.kind})")
    return 0


def _status(config, args) -> int:
    from cluster_manager.status import read_status
    from storyreel.story import StoryError, check_story_id

    try:
        story_id = check_story_id(args.story_id)
    except StoryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    record = read_status(config, story_id)
    if record is None:
        print(f"error: story '{story_id}' has no status record", file=sys.stderr)
        return 1
    print(json.dumps(record, ensure_ascii=False, indent=1))
    return 0


def _pubsub_setup(config, args) -> int:
    if config.source.kind != "pubsub":
        print(f"error: {args.config}: source.kind is not pubsub", file=sys.stderr)
        return 2
    from cluster_manager.pubsub import PubSubError, setup_pubsub

    try:
        created = setup_pubsub(config)
    except PubSubError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name in created:
        print(f"created {name}")
    if not created:
        print("nothing to create: everything exists")
    return 0
