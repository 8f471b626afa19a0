"""`dist-al`: the command line. It only parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = {
    "demo": "examples:\n  dist-al demo\n  dist-al demo --rows 50000 --budget 200",
    "bench": "examples:\n  dist-al bench core\n  dist-al bench core --quick\n  dist-al bench core --device cuda --scale 10",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dist-al",
        description="Large-pool active learning: pick the batch most worth labeling (BADGE, BAIT, baselines).",
        epilog="Run `dist-al COMMAND --help` for the options and examples of each command.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run every strategy on a synthetic pool and print a comparison table",
        epilog=EXAMPLES["demo"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--rows", type=int, default=20_000, help="pool size (default 20000)")
    demo.add_argument("--budget", type=int, default=100, help="rows to select (default 100)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    bench = sub.add_parser(
        "bench",
        help="benchmarks that print ratios measured in one run",
        epilog=EXAMPLES["bench"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("suite", choices=["core"], help="which benchmark suite")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="options of the suite (see `dist-al bench core --help`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(rows=args.rows, budget=args.budget, seed=args.seed)
        if args.command == "bench":
            from .bench.core import main as bench_core

            return bench_core(args.args)
    except ValueError as err:  # user mistakes: one line, no traceback
        if args.debug:
            raise
        print(f"dist-al: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
