"""Command line: python -m cl_explain.train --all (make models) or --reevaluate."""

from __future__ import annotations

import argparse

from .config import DEFAULT_CONFIGS
from .manifest import build_all, reevaluate_all


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cl_explain.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--all", action="store_true", help="train every objective (what `make models` runs)")
    parser.add_argument(
        "--objective",
        action="append",
        choices=tuple(DEFAULT_CONFIGS),
        help="train this model (an objective, or vit; repeatable)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: data/models of the checkout)")
    parser.add_argument(
        "--reevaluate",
        action="store_true",
        help="recompute the manifest's quality numbers from the committed checkpoints (no training)",
    )
    args = parser.parse_args(argv)
    if args.reevaluate:
        reevaluate_all(args.out, log=lambda message: print(message, flush=True))
        return
    objectives = tuple(DEFAULT_CONFIGS) if args.all else tuple(args.objective or ())
    if not objectives:
        parser.error("give --all or at least one --objective")
    build_all(objectives, args.out, log=lambda message: print(message, flush=True))


if __name__ == "__main__":
    main()
