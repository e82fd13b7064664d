"""The ``raddiffusion`` command: one thin sub-command per job (parse, call, print a summary line)."""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from .data.mimic import CHEXPERT_CSV, METADATA_CSV, SPLIT_CSV, DataError, find_csv

USAGE_ERROR = 2
INTERRUPTED = 130
DEMO_SUBJECTS = 240
DEMO_SETTINGS = "demo.json"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``raddiffusion`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (DataError, ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"raddiffusion {args.command}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"raddiffusion {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return INTERRUPTED
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raddiffusion",
        description="Study-level MAE / diffusion-MAE pretraining for chest radiographs (MIMIC-CXR).",
        epilog="Start with `raddiffusion demo`: it builds demo data shaped like MIMIC-CXR and runs the pipeline on it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_synth(commands)
    _add_preprocess(commands)
    return parser


def _add_demo(commands) -> None:
    cmd = commands.add_parser(
        "demo",
        help="run the pipeline on built-in demo data",
        description="Generate MIMIC-shaped demo data, preprocess it into a store and load study batches from it. "
        "Re-running reuses what an earlier run finished.",
    )
    cmd.add_argument("--out", type=Path, default=Path("demo"), help="working directory (default: ./demo)")
    cmd.add_argument("--subjects", type=_positive_int, default=DEMO_SUBJECTS, help=f"demo subjects (default {DEMO_SUBJECTS})")
    cmd.add_argument("--seed", type=int, default=0, help="random seed of the demo data (default 0)")
    cmd.set_defaults(run=run_demo)


def _add_synth(commands) -> None:
    cmd = commands.add_parser(
        "synth",
        help="write a MIMIC-shaped tree of procedural chest radiographs",
        description="Write a demo tree with the exact MIMIC-CXR layout (files/p1X/p<subject>/s<study>/) and its three "
        "CSVs: studies of 1-4 views whose appearance follows realistic CheXpert labels. Deterministic for a seed.",
    )
    cmd.add_argument("out", type=Path, help="directory to create (must not already hold a tree)")
    cmd.add_argument("--subjects", type=_positive_int, default=200, help="number of subjects (default 200)")
    cmd.add_argument("--format", choices=("dicom", "jpg"), default="jpg", help="image files to write (default jpg)")
    cmd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    cmd.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all CPUs)")
    cmd.set_defaults(run=run_synth)


def _add_preprocess(commands) -> None:
    cmd = commands.add_parser(
        "preprocess",
        help="decode a MIMIC-CXR tree into a uint8 study store",
        description="Decode every image of a MIMIC-CXR (DICOM) or MIMIC-CXR-JPG tree once: crop 10%% per side, resize, "
        "store uint8 with an index and the study labels. Unreadable files are skipped and listed in skipped.csv. "
        "An interrupted run resumes when run again with the same arguments.",
    )
    cmd.add_argument("mimic_root", type=Path, metavar="MIMIC_ROOT", help="root of the tree (holds files/ and the CSVs)")
    cmd.add_argument("store", type=Path, metavar="STORE", help="store directory to write")
    cmd.add_argument("--image-size", type=_positive_int, default=256, help="output side in pixels (default 256)")
    cmd.add_argument("--workers", type=_positive_int, default=None, help="decoding processes (default: all CPUs)")
    cmd.add_argument(
        "--shard", default="1/1", metavar="I/N",
        help="write only shard I of N (1-based; subjects dealt in turn), e.g. one per machine; read back as one store",
    )
    cmd.set_defaults(run=run_preprocess)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def run_synth(args: argparse.Namespace) -> None:
    from .data.preprocess import available_cpus
    from .data.synth import synthesize

    started = time.perf_counter()
    workers = args.workers or available_cpus()
    summary = synthesize(args.out, subjects=args.subjects, fmt=args.format, seed=args.seed, workers=workers)
    print(
        f"synth: wrote {summary.images} {args.format} images of {summary.studies} studies "
        f"({summary.labelled_studies} labelled) from {summary.subjects} subjects to {args.out} "
        f"in {time.perf_counter() - started:.1f}s"
    )


def run_preprocess(args: argparse.Namespace) -> None:
    from .data.preprocess import parse_shard, preprocess

    summary = preprocess(
        args.mimic_root, args.store, image_size=args.image_size, workers=args.workers, shard=parse_shard(args.shard)
    )
    print(summary.line())


def run_demo(args: argparse.Namespace) -> None:
    from .data.preprocess import available_cpus, preprocess
    from .data.store import open_store
    from .data.studies import StudyDataset, collate_studies
    from .data.synth import synthesize

    started = time.perf_counter()
    _check_demo_settings(args.out, {"subjects": args.subjects, "seed": args.seed})
    tree = args.out / "mimic"
    if not _tree_complete(tree):
        shutil.rmtree(tree, ignore_errors=True)
        synthesize(tree, subjects=args.subjects, seed=args.seed, workers=available_cpus())
    print(preprocess(tree, args.out / "store").line())
    store = open_store(args.out / "store")
    train = StudyDataset(store, split="train")
    batch = collate_studies([train[i] for i in range(min(len(train), 8))])
    print(f"store: {store.summary()}")
    print(
        f"demo: a batch of {len(batch['lengths'])} train studies holds {batch['images'].shape[0]} images "
        f"{tuple(batch['images'].shape[1:])}; done in {time.perf_counter() - started:.1f}s (data in {args.out})"
    )


def _check_demo_settings(out: Path, settings: dict) -> None:
    """Record the demo's data settings in OUT, or refuse to mix runs made with other settings."""
    from .fileio import read_json, write_json

    path = out / DEMO_SETTINGS
    if path.is_file() and read_json(path) != settings:
        earlier = ", ".join(f"--{k} {v}" for k, v in read_json(path).items())
        raise ValueError(f"{out} holds a demo made with {earlier}; use those or another --out")
    write_json(path, settings)


def _tree_complete(tree: Path) -> bool:
    return all(find_csv(tree, name) is not None for name in (METADATA_CSV, SPLIT_CSV, CHEXPERT_CSV))


if __name__ == "__main__":
    sys.exit(main())
