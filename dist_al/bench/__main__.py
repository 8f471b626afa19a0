"""`python -m dist_al.bench <benchmark> [options]`; `<benchmark> --help` for its options."""

from __future__ import annotations

import sys

BENCHMARKS = {
    "core": "the numeric core on one device: BADGE and BAIT against bandwidth bound and dense reference",
    "distributed": "the Ray layer: coordination per centre, embedding-pass throughput, a full select, training's read",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m dist_al.bench {" + ",".join(BENCHMARKS) + "} [options]\n")
        for name, what in BENCHMARKS.items():
            print(f"  {name:12s} {what}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "core":
        from dist_al.bench.core import main as run

        return run(rest)
    if name == "distributed":
        from dist_al.bench.distributed import main as run

        return run(rest)
    print(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
