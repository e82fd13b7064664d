"""The ``raddiffusion`` command: one thin sub-command per job (parse, call, print a summary line)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .data.tree import DataError

FAILED = 1
USAGE_ERROR = 2
INTERRUPTED = 130
PREEMPTED = 128  # + the signal's number: 143 after SIGTERM, 138 after SIGUSR1 (checkpoint written; --resume)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``raddiffusion`` console script."""
    from .train.checkpoint import CheckpointError
    from .train.distributed import stop as stop_distributed
    from .train.loop import TrainingError
    from .train.preemption import Preempted
    from .train.runs import RunError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        return args.handler(args, argv) or 0
    except (DataError, ValueError, FileExistsError, FileNotFoundError, RunError, CheckpointError) as exc:
        print(f"raddiffusion {args.command}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except TrainingError as exc:
        print(f"raddiffusion {args.command}: stopped: {exc}", file=sys.stderr)
        return FAILED
    except Preempted as exc:
        if exc.main:  # one line for the job, not one per process
            print(f"raddiffusion {args.command}: {exc}", file=sys.stderr)
        return PREEMPTED + exc.signal_number
    except KeyboardInterrupt:
        print(f"raddiffusion {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return INTERRUPTED
    finally:
        stop_distributed()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raddiffusion",
        description="Study-level MAE / diffusion-MAE pretraining for chest radiographs (MIMIC-CXR, CheXpert, "
        "NIH ChestX-ray14 or any folder of images with a CSV).",
        epilog="Start with `raddiffusion demo`: it builds demo data shaped like MIMIC-CXR and runs the pipeline on it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_synth(commands)
    _add_download(commands)
    _add_preprocess(commands)
    _add_pretrain(commands)
    _add_probe(commands)
    _add_finetune(commands)
    _add_run(commands)
    _add_figures(commands)
    _add_report(commands)
    _add_plot_probes(commands)
    _add_embed(commands)
    _add_predict(commands)
    _add_reconstruct(commands)
    _add_export(commands)
    _add_compare(commands)
    _add_evaluate(commands)
    return parser


def _add_demo(commands) -> None:
    from .demo import DemoSettings

    defaults = DemoSettings()
    cmd = commands.add_parser(
        "demo",
        help="the whole method on built-in demo data, in minutes on a CPU",
        description="Generate MIMIC-shaped demo data, preprocess it, pretrain an xs encoder with both schemes "
        "(vanilla MAE and DiffMAE) with linear probes and figures, fine-tune and test each, and write a report "
        "comparing them (OUT/report.html). Re-running reuses what an earlier run finished.",
    )
    cmd.add_argument("--out", type=Path, default=Path("demo"), help="working directory (default: ./demo)")
    cmd.add_argument("--subjects", type=_positive_int, default=defaults.subjects,
                     help=f"demo subjects (default {defaults.subjects})")
    cmd.add_argument("--epochs", type=_positive_int, default=defaults.epochs,
                     help=f"pretraining epochs per scheme (default {defaults.epochs})")
    cmd.add_argument("--seed", type=int, default=defaults.seed, help="seed of data and training (default 0)")
    cmd.add_argument("--quiet", action="store_true", help="no progress bars")
    cmd.set_defaults(handler=run_demo)


def _add_synth(commands) -> None:
    cmd = commands.add_parser(
        "synth",
        help="write a MIMIC-, CheXpert-, NIH- or hospital-export-shaped tree of procedural chest radiographs",
        description="Write a demo tree laid out exactly like a public dataset: studies of 1-4 views whose appearance "
        "follows realistic CheXpert labels. Layouts: mimic (MIMIC-CXR: files/p1X/p<subject>/s<study>/ and its three "
        "CSVs), chexpert (CheXpert-v1.0-small/ with train.csv, valid.csv and test_labels.csv), nih (NIH ChestX-ray14: "
        "images/, Data_Entry_2017_v2020.csv and the train_val/test lists), dicom-export (a hospital's PACS export: "
        "DICOMDIR, nested DICOM files without extension in mixed transfer syntaxes and body-part spellings, FOR "
        "PROCESSING twins, a resent copy, a CT, a hand, a report and a dose page to skip, a text file; labels.csv "
        "beside it, keyed by AccessionNumber). Deterministic for a seed.",
    )
    cmd.add_argument("out", type=Path, help="directory to create (must not already hold a tree)")
    cmd.add_argument("--subjects", type=_positive_int, default=200, help="number of subjects (default 200)")
    cmd.add_argument("--layout", choices=("mimic", "chexpert", "nih", "dicom-export"), default="mimic",
                     help="which dataset the tree imitates: mimic (MIMIC-CXR), chexpert (CheXpert-v1.0-small), "
                     "nih (NIH ChestX-ray14) or dicom-export (a hospital's DICOM export); the same radiographs in "
                     "each (default mimic)")
    cmd.add_argument("--format", choices=("dicom", "jpg"), default="jpg",
                     help="image files of the mimic layout: jpg (MIMIC-CXR-JPG) or dicom (MIMIC-CXR); the chexpert "
                     "layout always writes JPG, nih PNG (default jpg)")
    cmd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    cmd.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all CPUs)")
    cmd.set_defaults(handler=run_synth)


def _add_download(commands) -> None:
    cmd = commands.add_parser(
        "download",
        help="download a public chest X-ray dataset (NIH ChestX-ray14, Shenzhen, Montgomery), verified and laid out "
        "for preprocess",
        description="Download the files of an openly licensed chest X-ray dataset into ROOT, check each (published "
        "size and SHA-256 where the publisher gives them; otherwise the SHA-256 computed at download is printed and "
        "kept in ROOT/download.json), unpack the archives (each one atomically: all or nothing) and lay ROOT out so "
        "that `raddiffusion preprocess ROOT STORE` reads it with no flag. An interrupted download resumes where it "
        "stopped when the same command runs again. `--list` shows every set with its size, licence and citation, "
        "including those that need a user agreement (CheXpert, MIMIC-CXR, VinDr-CXR, PadChest): for those it names "
        "the page to get them; it never fetches them.",
    )
    cmd.add_argument("name", nargs="?", metavar="NAME", help="the dataset (see --list)")
    cmd.add_argument("root", nargs="?", type=Path, metavar="ROOT", help="folder to download into (created)")
    cmd.add_argument("--list", action="store_true", help="list the datasets and exit")
    cmd.add_argument("--table", type=Path, default=None, metavar="FILE.json",
                     help="a table of datasets of the same shape as the built-in one (e.g. a mirror at your site)")
    cmd.add_argument("--keep-archives", action="store_true",
                     help="keep the downloaded archives in ROOT/.downloads after unpacking (default: removed)")
    cmd.add_argument("--quiet", action="store_true", help="no progress bars")
    cmd.set_defaults(handler=run_download)


def _add_preprocess(commands) -> None:
    from .data.layouts import LAYOUTS

    cmd = commands.add_parser(
        "preprocess",
        help="decode a MIMIC-CXR, CheXpert, NIH ChestX-ray14, DICOM-export or CSV-listed dataset into a uint8 study "
        "store",
        description="Decode every image of a dataset once: crop 10% per side, resize, store uint8 with an index, the "
        "study labels and the dataset's label names. The layout is recognised from what ROOT holds: MIMIC-CXR / "
        "MIMIC-CXR-JPG (mimic-cxr-2.0.0-*.csv), CheXpert (train.csv + valid.csv), NIH ChestX-ray14 "
        "(Data_Entry_2017*.csv), a hospital's DICOM export (a folder of DICOM files, found by content, not name: "
        "chest CR / DX images kept, studies by StudyInstanceUID, patients by PatientID, both as keyed-hash ids); any "
        "other folder of images needs --manifest. Rows and files that cannot be used are skipped and listed in "
        "skipped.csv. An interrupted run resumes when run again with the same arguments.",
    )
    cmd.add_argument("root", type=Path, metavar="ROOT",
                     help="root of the dataset (the folder holding its CSVs, or the DICOM export)")
    cmd.add_argument("store", type=Path, metavar="STORE", help="store directory to write")
    cmd.add_argument("--layout", choices=LAYOUTS, default=None,
                     help="the dataset's layout, when it should not be recognised from ROOT (dicom: a folder of DICOM "
                     "files, whatever their names)")
    cmd.add_argument("--manifest", type=Path, default=None, metavar="FILE.csv",
                     help="a CSV listing the images (columns path, subject, optional study, view, split; every other "
                     "column is a label: 1 / 0 / -1 / blank); implies --layout csv")
    cmd.add_argument("--carve", type=_share, default=None, metavar="SHARE",
                     help="CheXpert: move this share of the train patients into each split the data lacks "
                     "(validate or test), by a hash of the patient")
    _add_export_options(cmd)
    cmd.add_argument("--image-size", type=_positive_int, default=256, help="output side in pixels (default 256)")
    cmd.add_argument("--workers", type=_positive_int, default=None, help="decoding processes (default: all CPUs)")
    cmd.add_argument(
        "--shard", default="1/1", metavar="I/N",
        help="write only shard I of N (1-based; subjects dealt in turn), e.g. one per machine; read back as one store",
    )
    cmd.set_defaults(handler=run_preprocess)


EXPORT_OPTIONS = ("id_key", "id_map", "labels", "split_file", "body_parts")


def _add_export_options(cmd: argparse.ArgumentParser) -> None:
    from .data.dicom_export import DEFAULT_ID_KEY
    from .data.manifest import MANIFEST_TEST_SHARE, MANIFEST_VALIDATE_SHARE

    group = cmd.add_argument_group("DICOM export (layout dicom)")
    group.add_argument("--id-key", metavar="KEY",
                       help="secret key of the keyed hash (HMAC-SHA256) that turns PatientID and StudyInstanceUID into "
                       f"integer ids; keep it to link later exports (default {DEFAULT_ID_KEY!r}, public: anyone can "
                       "recompute ids from PatientIDs they know)")
    group.add_argument("--id-map", type=Path, metavar="FILE.csv",
                       help="write the raw-to-id table (path, image_id, subject_id, study_id, PatientID, "
                       "StudyInstanceUID, AccessionNumber, SOPInstanceUID, reason) here, outside the store, to link "
                       "labels later; it holds identifiers: keep it as safe as the export")
    group.add_argument("--labels", type=Path, metavar="FILE.csv",
                       help="labels CSV keyed by a StudyInstanceUID or AccessionNumber column; every other column is a "
                       "label: 1 / 0 / -1 / blank (default: no labels, the store serves pretraining only)")
    group.add_argument("--split-file", type=Path, metavar="FILE.csv",
                       help="splits CSV: a PatientID or StudyInstanceUID column and a split column (train / validate / "
                       f"test); patients it does not list are split by hash (validate {MANIFEST_VALIDATE_SHARE:g}, "
                       f"test {MANIFEST_TEST_SHARE:g})")
    group.add_argument("--body-part", dest="body_parts", action="append", metavar="WORD",
                       help="a BodyPartExamined value your site uses for the chest, kept besides the usual ones (CHEST, "
                       "THORAX, PORT CHEST, CHEST_PA, LUNG, TORAX, ...; case and separators ignored; see README); "
                       "repeat for several")


MODEL_OPTIONS = ("preset", "scheme", "mask_ratio", "image_size", "decoder", "schedule", "timesteps",
                 "time_embedding", "norm_pix_loss", "grad_checkpoint")
PRETRAIN_OPTIONS = ("epochs", "batch_size", "accumulation", "micro_batch", "lr", "probe_every", "probe_solver",
                    "save_every", "workers", "seed",
                    "precision", "compile", "label_policy", "max_views", "reference_study")
RECIPE_OPTIONS = ("select_on", "head_init", "head_warmup_epochs", "head_lr_scale", "layer_decay", "drop_path", "augment",
                  "crop_scale", "rotation", "intensity", "hflip", "label_fraction", "resamples")
FINETUNE_OPTIONS = ("epochs", "batch_size", "accumulation", "micro_batch", "lr", "patience", "save_every", "workers", "seed",
                    "precision", "compile", "label_policy", "max_views", "reference_study", *RECIPE_OPTIONS)


def _add_model_options(cmd: argparse.ArgumentParser) -> None:
    from .models.presets import DECODERS, PRESETS, SCHEDULES, SCHEMES

    group = cmd.add_argument_group("model (a new run; a resumed run keeps its own)")
    group.add_argument("--encoder-size", "--encoder_size", dest="preset", choices=tuple(PRESETS),
                       help="size preset of SPEC §3 (default xs)")
    group.add_argument("--scheme", choices=SCHEMES, help="pretraining scheme (default vanilla)")
    group.add_argument("--mask-ratio", "--mask_ratio", type=float, help="share of patches masked (default: preset's)")
    group.add_argument("--image-size", "--image_size", type=_positive_int,
                       help="input side in pixels; must match the store (default 256)")
    group.add_argument("--decoder", choices=DECODERS, help="DiffMAE decoder (default cross-self)")
    group.add_argument("--noise-schedule", "--schedule", dest="schedule", choices=SCHEDULES,
                       help="DiffMAE noise schedule (default cosine; seed = the original's)")
    group.add_argument("--timesteps", type=_positive_int, help="diffusion steps T (default: the schedule's)")
    group.add_argument("--time-embedding", action=argparse.BooleanOptionalAction,
                       help="add a timestep embedding in the DiffMAE decoder (default on)")
    group.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction,
                       help="vanilla MAE target normalised per patch (default on)")
    group.add_argument("--grad-checkpoint", action=argparse.BooleanOptionalAction,
                       help="activation checkpointing: recompute activations in the backward pass instead of "
                       "keeping them, about 1/3 more time for far less memory, for 512² / 1024² images; same "
                       "results, weights unchanged, so a resumed run may switch it on or off (default off)")


def _add_training_options(cmd: argparse.ArgumentParser, defaults, finetune: bool = False) -> None:
    from .data.labels import POLICIES
    from .train.loop import PRECISIONS

    group = cmd.add_argument_group("training (defaults: the original recipe)")
    group.add_argument("--epochs", type=_positive_int, help=f"passes over the train split (default {defaults.epochs})")
    group.add_argument("--batch-size", "--batch_size", type=_positive_int,
                       help=f"studies per optimizer step, over all GPUs (default {defaults.batch_size})")
    group.add_argument("--accumulation", "--grad-accum", type=_positive_int,
                       help="micro-batches per step and process, to fit memory (default 1)")
    group.add_argument("--micro-batch", type=_micro_batch, metavar="N|auto",
                       help="studies per micro-batch on each process instead of --accumulation (the global batch "
                       "stays --batch-size); 'auto': the largest whose step fits on the GPU, found by trying when "
                       "the run starts")
    group.add_argument("--lr", type=float, help=f"peak learning rate (default {defaults.lr})")
    if finetune:
        group.add_argument("--patience", type=_positive_int,
                           help=f"epochs without a new highest validation score (kept or not, see --select-on) "
                           f"before stopping (default {defaults.patience})")
    else:
        group.add_argument("--probe-every", "--probe_every", type=int,
                           help=f"linear probe every N epochs, 0 = only at the end (default {defaults.probe_every})")
        _add_probe_solver(group)
    group.add_argument("--save-every", type=_positive_int,
                       help=f"checkpoint every N steps, and at every epoch end (default {defaults.save_every})")
    group.add_argument("--workers", "--num-workers", "--num_workers", dest="workers", type=int,
                       help=f"data-loading processes per GPU/process, at most the CPUs it may use (default {defaults.workers})")
    group.add_argument("--seed", type=int, help="seed of initialisation, data order, masks and noise (default 0)")
    group.add_argument("--precision", choices=PRECISIONS, help="bf16 autocast or fp32 (default fp32)")
    group.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    group.add_argument("--label-policy", choices=POLICIES, help="uncertain labels: ones (default), zeros, ignore")
    group.add_argument("--max-views", type=_positive_int, help="at most N views per study, frontal first")
    group.add_argument("--reference-study", type=int, metavar="ID",
                       help="study drawn in the figures (default: the first validation study with 2+ views)")
    if finetune:
        _add_recipe_options(cmd, defaults)


def _add_recipe_options(cmd: argparse.ArgumentParser, defaults) -> None:
    from .train.finetune import HEAD_INITS
    from .train.selection import SELECTION

    group = cmd.add_argument_group("fine-tuning recipe (defaults chosen by measurement, see BENCHMARKS.md)")
    group.add_argument("--select-on", choices=SELECTION,
                       help=f"the epoch whose weights are kept and tested: auroc-ci: "
                       f"highest validation mean AUROC, but a later epoch replaces the kept one only when the "
                       f"95%% patient-bootstrap interval of its gain lies above 0; auroc: any gain; loss: lowest "
                       f"validation loss (default {defaults.select_on})")
    group.add_argument("--head-init", choices=HEAD_INITS,
                       help=f"probe: the head starts as the linear probe of the initial encoder; random "
                       f"(default {defaults.head_init})")
    group.add_argument("--head-warmup-epochs", type=int, metavar="N",
                       help=f"epochs in which only the head learns (default {defaults.head_warmup_epochs})")
    group.add_argument("--head-lr-scale", type=float, metavar="X",
                       help=f"the head learns at lr times X (default {defaults.head_lr_scale:g})")
    group.add_argument("--layer-decay", type=float, metavar="D",
                       help=f"layer-wise lr decay: block i of d learns at lr·D^(d−i); 1 = off "
                       f"(default {defaults.layer_decay:g})")
    group.add_argument("--drop-path", type=float, metavar="P",
                       help=f"stochastic depth of the last encoder block (default {defaults.drop_path:g})")
    group.add_argument("--augment", action=argparse.BooleanOptionalAction,
                       help="random resized crop, small rotation, brightness / contrast (default on)")
    group.add_argument("--crop-scale", type=float, metavar="S",
                       help=f"smallest area share kept by the random crop (default {defaults.crop_scale:g})")
    group.add_argument("--rotation", type=float, metavar="DEG", help=f"largest rotation (default {defaults.rotation:g})")
    group.add_argument("--intensity", type=float, metavar="X",
                       help=f"largest brightness shift / contrast change (default {defaults.intensity:g})")
    group.add_argument("--hflip", action=argparse.BooleanOptionalAction,
                       help="random horizontal flips (default off: anatomy is lateralised)")
    _add_protocol_options(cmd, finetune=True)


def _add_protocol_options(cmd: argparse.ArgumentParser, finetune: bool = False) -> None:
    """--label-fraction, --seeds and --resamples (the label-efficient protocol and the intervals)."""
    from .results.bootstrap import DEFAULT_RESAMPLES

    group = cmd.add_argument_group("label-efficient protocol and intervals")
    group.add_argument("--label-fraction", type=_fraction, metavar="F",
                       help="use a seeded, patient-level subset holding this share of the labelled train studies, "
                       "e.g. 0.01 or 0.1 (default 1)")
    group.add_argument("--seeds", type=_positive_int, metavar="N",
                       help="repeat with N seeds (subset and initialisation): --seed, --seed+1, ...; "
                       "reports each and mean ± sd" + (" (runs in RUN_DIR/seed-S)" if finetune else ""))
    group.add_argument("--resamples", type=int, metavar="N",
                       help=f"bootstrap resamples of patients for the 95%% intervals, 0 = none "
                       f"(default {DEFAULT_RESAMPLES})")


def _add_run_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--resume", action="store_true", help="continue the interrupted run in --run")
    cmd.add_argument("--device", nargs="+", default=["auto"], metavar="DEVICE",
                     help="auto (a GPU if there is one, else the CPU), cpu, cuda, or GPU numbers: 0,1,2 or "
                     "[0, 1, 2] (several GPUs start one process each through torchrun)")
    cmd.add_argument("--quiet", action="store_true", help="no progress bars")


def _explicit(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The options given on the command line (argparse leaves the others at None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _add_probe_solver(group) -> None:
    from .train.probe import DEFAULT_SOLVER, PROBE_SOLVERS

    group.add_argument("--probe-solver", choices=PROBE_SOLVERS, default=None,
                       help="how the linear probe fits its per-label logistic regressions: torch (all labels at once, "
                       "on the GPU when there is one, else on all CPU cores) or sklearn (one after another on one "
                       f"core: the reference; same objective, AUROC within 0.002) (default {DEFAULT_SOLVER})")


def _add_pretrain(commands) -> None:
    from .train.pretrain import PretrainSettings

    cmd = commands.add_parser(
        "pretrain", help="pretrain an encoder (vanilla MAE or DiffMAE) on one store or several",
        description="Pretrain on the train split of STORE (or of several stores pooled, e.g. MIMIC-CXR + CheXpert + "
        "NIH; their image sizes must agree) into the run directory. A linear probe of the frozen encoder "
        "(train -> validate of the first store, or of --probe-store) runs before training, every --probe-every "
        "epochs and at the end. Checkpoints are written every --save-every steps; --resume continues a killed run "
        "exactly.",
    )
    cmd.add_argument("store", type=Path, nargs="+", metavar="STORE", help="store(s) written by `raddiffusion preprocess`")
    cmd.add_argument("--probe-store", type=Path, default=None, metavar="STORE",
                     help="store whose train -> validate split the probes use (default: the first STORE)")
    cmd.add_argument("--init", type=Path, default=None, metavar="WEIGHTS",
                     help="start from these weights instead of a random initialisation: an MAE or timm checkpoint "
                     "(.pth), a Hugging Face ViTMAE folder (config.json + model.safetensors) or a checkpoint of the "
                     "original implementation. Its encoder must match the model (width, depth, heads, patch size: "
                     "choose --encoder-size to match); any image size works (position tables are recomputed), RGB "
                     "kernels are summed to grey, decoder weights are taken where they fit. Prints what was taken")
    cmd.add_argument("--run", "--run-dir", dest="run", type=Path, required=True, metavar="RUN_DIR",
                     help="run directory to write (spell it --run-dir after `torchrun ... -m raddiffusion`: torchrun "
                     "takes --run for its own --run-path)")
    _add_model_options(cmd)
    _add_training_options(cmd, PretrainSettings())
    _add_run_options(cmd)
    cmd.set_defaults(handler=run_pretrain)


def _add_probe(commands) -> None:
    cmd = commands.add_parser(
        "probe", help="linear probe of a run's frozen encoder",
        description="Study vectors of the frozen encoder for the train split and the evaluated split, one balanced "
        "logistic regression per label; per-label and mean AUROC / AUPRC / F1 at 0.5.",
    )
    cmd.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory (or a .safetensors model)")
    cmd.add_argument("--store", type=Path, required=True, help="store to embed")
    cmd.add_argument("--split", default="validate", choices=("validate", "test"), help="evaluated split (default validate)")
    cmd.add_argument("--label-policy", default="ones", help="uncertain labels: ones, zeros, ignore (default ones)")
    cmd.add_argument("--out", type=Path, help="JSON file to write (default RUN_DIR/probe/<split>.json)")
    cmd.add_argument("--device", nargs="+", default=["auto"], help="auto, cpu, cuda or a GPU number")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the subset and the logistic regressions (default 0)")
    cmd.add_argument("--method", choices=("linear", "knn"), default="linear",
                     help="linear: logistic regression per label; knn: share of positives among the k nearest "
                     "train studies by cosine similarity (default linear)")
    cmd.add_argument("--k", type=_positive_int, default=None, help="neighbours of the kNN probe (default 20)")
    _add_probe_solver(cmd)
    _add_protocol_options(cmd)
    cmd.set_defaults(handler=run_probe)


def _add_finetune(commands) -> None:
    from .train.finetune import FinetuneSettings

    cmd = commands.add_parser(
        "finetune", help="fine-tune an encoder with a linear head on the store's labels, then test",
        description="Fine-tune (BCE with pos_weight 1/sqrt(prevalence), AdamW, cosine with warm-up, the head started "
        "from a linear probe, early stopping and the best checkpoint by validation mean AUROC, see --select-on), then write per-label and mean AUROC / AUPRC / F1 on the "
        "test split to RUN_DIR/test_metrics.json. The head has one output per label of STORE (14 for MIMIC-CXR "
        "and CheXpert, 15 for NIH); --from may name a run pretrained on other stores (transfer). Without --from the "
        "encoder starts from random weights.",
    )
    cmd.add_argument("store", type=Path, metavar="STORE", help="store written by `raddiffusion preprocess`")
    cmd.add_argument("--run", "--run-dir", dest="run", type=Path, required=True, metavar="RUN_DIR",
                     help="run directory to write (spell it --run-dir after `torchrun ... -m raddiffusion`: torchrun "
                     "takes --run for its own --run-path)")
    cmd.add_argument("--from", dest="pretrained", type=Path, metavar="PRETRAIN_RUN",
                     help="pretraining run (or .safetensors model) whose encoder to start from")
    _add_model_options(cmd)
    _add_training_options(cmd, FinetuneSettings(), finetune=True)
    _add_run_options(cmd)
    cmd.set_defaults(handler=run_finetune)


def _add_run(commands) -> None:
    from .train.pretrain import PretrainSettings

    cmd = commands.add_parser(
        "run", help="the original main.py workflow: pretrain (unless done), fine-tune, test",
        description="Pretrain into RUNS/NAME/pretrain unless a finished pretraining is there (an unfinished one "
        "is resumed), then fine-tune from it into a new RUNS/NAME/finetune* directory and test. Accepts the "
        "original spellings: --ref_name, --encoder_size, --num_workers, --device [0, 1, 2].",
    )
    cmd.add_argument("--ref-name", "--ref_name", dest="ref_name", required=True, help="run name")
    cmd.add_argument("--store", type=Path, default=Path("store"), help="store to train on (default ./store)")
    cmd.add_argument("--runs", type=Path, default=Path("runs"), help="where runs live (default ./runs)")
    _add_model_options(cmd)
    _add_training_options(cmd, PretrainSettings())
    cmd.add_argument("--finetune-epochs", type=_positive_int, help="fine-tuning epochs (default 20)")
    _add_run_options(cmd)
    cmd.set_defaults(handler=run_workflow)


def _add_report(commands) -> None:
    cmd = commands.add_parser(
        "report", help="one self-contained HTML report of one or more runs",
        description="Write one HTML file (images embedded, readable offline) with the runs' settings, data, loss "
        "curves, linear-probe results, test metrics, reconstructions, diffusion animation and attention maps, runs "
        "side by side. A RUN is an experiment directory (pretrain/ + finetune*/) or a bare run directory; "
        "missing files are named in the report.",
    )
    cmd.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="experiment or run directories")
    cmd.add_argument("--store", type=Path, help="store for the data summary (default: the one in each run's config)")
    cmd.add_argument("--out", type=Path, metavar="FILE",
                     help="HTML file (default RUN/report.html, or report.html in the runs' common parent)")
    cmd.add_argument("--title", help="report title (default: the runs' names)")
    cmd.add_argument("--evaluation", type=Path, metavar="DIR",
                     help="also show the label-efficient grid written by `raddiffusion evaluate --out DIR`")
    cmd.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace, argv: list[str]) -> None:
    from .visual.report import default_report_path, write_report

    out = write_report(args.runs, args.out or default_report_path(args.runs), store=args.store, title=args.title,
                       evaluation=args.evaluation)
    print(f"report: {out} ({len(args.runs)} run{'s' if len(args.runs) != 1 else ''})")


def _add_plot_probes(commands) -> None:
    cmd = commands.add_parser(
        "plot-probes", help="linear-probe curves and per-label bars of one or more runs",
        description="Write a PNG of the mean AUROC / AUPRC of the linear probe against the epoch, one line per "
        "run, and beside it (NAME_labels.png) the per-label AUROC at each run's last probe epoch.",
    )
    cmd.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="experiment or pretraining run directories")
    cmd.add_argument("--out", type=Path, metavar="FILE",
                     help="curves PNG (default probe_curves.png in the run, or in the runs' common parent)")
    cmd.set_defaults(handler=run_plot_probes)


def run_plot_probes(args: argparse.Namespace, argv: list[str]) -> None:
    from .visual.report import PROBE_CURVES_FILE, common_directory, plot_probes

    curves, bars = plot_probes(args.runs, args.out or common_directory(args.runs) / PROBE_CURVES_FILE)
    print(f"plot-probes: {curves} and {bars} ({len(args.runs)} run{'s' if len(args.runs) != 1 else ''})")


def _add_figures(commands) -> None:
    cmd = commands.add_parser(
        "figures", help="draw a study's reconstruction, diffusion animation and attention maps for any model",
        description="For a run directory or a .safetensors model: original | masked input | reconstruction (pretrained "
        "models), the reverse-diffusion GIF (DiffMAE) and CLS -> patch attention maps (any model) of one study.",
    )
    cmd.add_argument("model", type=Path, metavar="RUN_OR_CHECKPOINT", help="run directory or .safetensors model")
    cmd.add_argument("--store", type=Path, required=True, help="store holding the study")
    cmd.add_argument("--study", type=int, help="study id (default: the first validation study with 2+ views)")
    cmd.add_argument("--out", type=Path, help="output folder (default RUN/figures, or beside the model file)")
    cmd.add_argument("--attention", choices=("rollout", "last"), default="rollout",
                     help="attention rollout over all layers (default) or the last layer only")
    cmd.set_defaults(handler=run_figures)


def _add_embed(commands) -> None:
    from .inference.embed import CHUNK_STUDIES

    cmd = commands.add_parser(
        "embed", help="study vectors of every study of a store, to Parquet or .npz",
        description="The study vector (the shared CLS after the final norm, no masking) of every study of a store, "
        "with subject and study ids, split and number of views, written to a Parquet or .npz file chosen by "
        "the extension. Studies are embedded in chunks of "
        f"{CHUNK_STUDIES} and streamed to the file, so memory stays bounded for stores larger than memory; an "
        "interrupted run resumes from its finished chunks. Read it back with raddiffusion.read_embeddings(FILE).",
    )
    cmd.add_argument("model", type=Path, metavar="RUN_OR_CHECKPOINT",
                     help="pretraining or fine-tuning run directory, or a .safetensors model")
    cmd.add_argument("store", type=Path, metavar="STORE", help="store written by `raddiffusion preprocess`")
    cmd.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file, .parquet or .npz")
    cmd.add_argument("--split", choices=("train", "validate", "test"), help="embed one split only (default: all)")
    cmd.add_argument("--batch-size", type=_positive_int, default=64, help="studies per forward pass (default 64)")
    cmd.add_argument("--device", nargs="+", default=["auto"], help="auto, cpu, cuda or a GPU number")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    cmd.set_defaults(handler=run_embed)


def _add_predict(commands) -> None:
    cmd = commands.add_parser(
        "predict", help="label probabilities of your own DICOM / JPG / PNG studies",
        description="Decode and preprocess the files exactly as `raddiffusion preprocess` does (border crop, resize "
        "to the model's size) and print the fine-tuned model's probability of each of its labels (those of the "
        "store it was fine-tuned on), per "
        "study, as JSON on stdout ({study: {label: probability}}) or CSV. All files are one study, or with "
        "--study-from-folder each folder is one. Files that cannot be read are named on stderr; the other "
        "studies are still predicted (exit code 1 if a study had no readable file).",
    )
    cmd.add_argument("model", type=Path, metavar="FINETUNED_RUN", help="fine-tuning run directory or its .safetensors")
    cmd.add_argument("files", type=Path, nargs="+", metavar="FILE",
                     help="DICOM, JPG or PNG files (a folder stands for the image files under it)")
    cmd.add_argument("--study-from-folder", action="store_true",
                     help="one study per folder of files (default: all files are one study)")
    cmd.add_argument("--csv", action="store_true", help="CSV (study, views, one column per label) instead of JSON")
    cmd.add_argument("--device", nargs="+", default=["auto"], help="auto, cpu, cuda or a GPU number")
    cmd.set_defaults(handler=run_predict)


def _add_reconstruct(commands) -> None:
    from .inference.reconstruct import ANIMATION, FIGURE, SUMMARY, VIEW_FILES
    from .visual.study import DDIM_STEPS, MASK_SEED, NOISE_SEED

    cmd = commands.add_parser(
        "reconstruct", help="mask your own study's files and reconstruct them with a pretrained model",
        description="The views of one study (DICOM, JPG or PNG, preprocessed as `raddiffusion preprocess` does) are "
        "masked and reconstructed; the model reads only the visible patches. Writes OUT/" + FIGURE + " (original | "
        "masked input | reconstruction), per view a folder with " + ", ".join(VIEW_FILES) + " (lossless 8-bit PNG; "
        "mask white = masked), OUT/" + ANIMATION + " for DiffMAE (reverse diffusion from pure noise) and OUT/"
        + SUMMARY + " (settings, masked-pixel error per view).",
    )
    cmd.add_argument("model", type=Path, metavar="RUN_OR_CHECKPOINT", help="pretraining run directory or .safetensors")
    cmd.add_argument("files", type=Path, nargs="+", metavar="FILE", help="the views of one study")
    cmd.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    cmd.add_argument("--mask-ratio", type=float, help="fraction of patches masked (default: the model's own)")
    cmd.add_argument("--mask-seed", type=int, default=MASK_SEED, help=f"seed of the mask (default {MASK_SEED})")
    cmd.add_argument("--seed", type=int, default=NOISE_SEED, help=f"seed of the diffusion noise (default {NOISE_SEED})")
    steps = cmd.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=_positive_int, default=DDIM_STEPS,
                       help=f"DDIM steps of the DiffMAE sampler (default {DDIM_STEPS})")
    steps.add_argument("--ddpm", action="store_true", help="sample with DDPM over all diffusion steps instead")
    cmd.add_argument("--device", nargs="+", default=["auto"], help="auto, cpu, cuda or a GPU number")
    cmd.set_defaults(handler=run_reconstruct)


def _add_export(commands) -> None:
    cmd = commands.add_parser(
        "export", help="write a model's encoder as a Hugging Face ViTMAE folder",
        description="Write the encoder of a pretraining or fine-tuning run (with a vanilla MAE: also its decoder) as a "
        "Hugging Face ViTMAE folder, config.json + model.safetensors, that transformers.ViTMAEModel.from_pretrained "
        "reads. ViTMAE sees each image alone: the study fusion between views does not cross, nor do DiffMAE "
        "decoders, the MAE's patch-statistics head or a classifier's head. A one-view study gives the same tokens "
        "when ViTMAE runs with mask_ratio=0 and noise=torch.arange(number of patches) (its masking shuffles the "
        "patches otherwise).",
    )
    cmd.add_argument("model", type=Path, metavar="RUN_OR_CHECKPOINT",
                     help="pretraining or fine-tuning run directory, or a .safetensors model")
    cmd.add_argument("--format", choices=("hf",), default="hf",
                     help="hf: a Hugging Face ViTMAE folder (the only format so far; default)")
    cmd.add_argument("out", type=Path, metavar="OUT", help="folder to create (it must not exist yet)")
    cmd.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace, argv: list[str]) -> None:
    from .train.checkpoint import load
    from .train.interop import export_hf

    print(export_hf(load(args.model), args.out))


def _add_compare(commands) -> None:
    cmd = commands.add_parser(
        "compare", help="is one model really better than another? paired bootstrap of mean AUROC",
        description="Compare two models scored on the same studies: both mean AUROC / AUPRC with 95 % intervals, "
        "and the difference A − B with its paired bootstrap interval (the same patient resamples for both). "
        "A difference whose interval holds 0 is reported 'within noise'. A and B are fine-tuning runs (their "
        "test_predictions.csv), predictions CSV files, or, with --store, pretraining runs or models that are "
        "linearly probed (train -> --split) first.",
    )
    cmd.add_argument("a", type=Path, metavar="RUN_A", help="fine-tuning run, predictions CSV, or (with --store) any model")
    cmd.add_argument("b", type=Path, metavar="RUN_B", help="the same kinds as RUN_A")
    cmd.add_argument("--store", type=Path, help="probe both models on this store instead of reading their predictions")
    cmd.add_argument("--split", default="test", choices=("validate", "test"), help="split probed (default test)")
    cmd.add_argument("--resamples", type=_positive_int, default=None, help="bootstrap resamples (default 1000)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the resamples (default 0)")
    cmd.add_argument("--out", type=Path, help="also write the comparison as JSON here")
    cmd.add_argument("--device", nargs="+", default=["auto"], help="auto, cpu, cuda or a GPU number")
    cmd.set_defaults(handler=run_compare)


def _add_evaluate(commands) -> None:
    cmd = commands.add_parser(
        "evaluate", help="the label-efficient grid: models × methods × label fractions × seeds, one table",
        description="Evaluate pretraining runs by linear probe (--probe, the default), kNN probe (--knn) and "
        "fine-tuning (--finetune) on seeded patient-level subsets of the train labels (--fractions), each "
        "repeated over --seeds, all scored on --split with 95 % patient-bootstrap intervals. --baselines adds a "
        "randomly initialised encoder (probed) and supervised training from scratch (fine-tuned), so the table "
        "says what pretraining added. Every cell is kept in OUT/cells; re-running skips finished cells and resumes "
        "an interrupted fine-tuning. Writes OUT/evaluate.json and OUT/evaluate.txt (fraction × method table).",
    )
    cmd.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="pretraining runs (or .safetensors models)")
    cmd.add_argument("--store", type=Path, required=True, help="store with labelled train / validate / test studies")
    cmd.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the grid (created; reused)")
    cmd.add_argument("--fractions", type=_fractions, default=(0.01, 0.1, 1.0), metavar="F,F,...",
                     help="label fractions (default 0.01,0.1,1)")
    cmd.add_argument("--seeds", type=_positive_int, default=3, help="seeds per cell (default 3)")
    cmd.add_argument("--probe", action="store_true", help="linear probe (the default when no method is named)")
    cmd.add_argument("--knn", action="store_true", help="k-nearest-neighbour probe")
    cmd.add_argument("--finetune", action="store_true", help="fine-tuning (slow: one training per cell)")
    cmd.add_argument("--baselines", action="store_true", help="add random init (probes) and from scratch (fine-tuning)")
    cmd.add_argument("--k", type=_positive_int, default=None, help="neighbours of the kNN probe (default 20)")
    _add_probe_solver(cmd)
    cmd.add_argument("--split", default="test", choices=("validate", "test"), help="evaluated split (default test)")
    cmd.add_argument("--finetune-epochs", type=_positive_int, help="fine-tuning epochs (default 20)")
    cmd.add_argument("--batch-size", type=_positive_int, help="fine-tuning studies per step (default 64)")
    cmd.add_argument("--workers", type=int, help="data-loading processes of each fine-tuning (default 4)")
    cmd.add_argument("--resamples", type=_positive_int, default=None, help="bootstrap resamples (default 1000)")
    cmd.add_argument("--device", nargs="+", default=["auto"], help="auto, cpu, cuda or a GPU number")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    cmd.set_defaults(handler=run_evaluate)


def _fraction(text: str) -> float:
    from .data.fractions import check_fraction

    try:
        return check_fraction(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a label fraction in (0, 1]") from None


def _micro_batch(text: str) -> int | str:
    from .train.microbatch import AUTO

    if text == AUTO:
        return AUTO
    try:
        return _positive_int(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of studies >= 1 nor {AUTO!r}") from None


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share in (0, 1)")
    return value


def _fractions(text: str) -> tuple[float, ...]:
    return tuple(_fraction(part) for part in text.split(","))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def run_synth(args: argparse.Namespace, argv: list[str]) -> None:
    from .data.preprocess import available_cpus
    from .data.synth import synthesize

    started = time.perf_counter()
    workers = args.workers or available_cpus()
    summary = synthesize(args.out, subjects=args.subjects, fmt=args.format, seed=args.seed, workers=workers,
                         layout=args.layout)
    print(
        f"synth: wrote {summary.images} {summary.image_format} images of {summary.studies} studies "
        f"({summary.labelled_studies} labelled) from {summary.subjects} subjects to {args.out} "
        f"in the {summary.layout} layout in {time.perf_counter() - started:.1f}s"
    )


def run_download(args: argparse.Namespace, argv: list[str]) -> None:
    from .data.public import download, format_catalog, read_catalog

    if args.list:
        print(format_catalog(read_catalog(args.table)))
        return
    if args.name is None or args.root is None:
        raise ValueError("give NAME and ROOT (e.g. `raddiffusion download shenzhen data/shenzhen`), or --list")
    started = time.perf_counter()
    done = download(args.name, args.root, args.table, args.keep_archives, progress=not args.quiet)
    then = f"raddiffusion preprocess {done.root} STORE"
    if done.missing:  # published on the set's page without a direct link
        then = f"put {', '.join(done.missing)} from {done.page} into {done.root}, then {then}"
    print(f"download {done.name}: {done.files} files ({done.fetched} fetched now, {done.bytes / 1e9:.2f} GB in all), "
          f"{done.images:,} images in {done.root} ({time.perf_counter() - started:.0f}s); next: {then}")


def run_preprocess(args: argparse.Namespace, argv: list[str]) -> None:
    from .data.preprocess import parse_shard, preprocess

    summary = preprocess(
        args.root, args.store, image_size=args.image_size, workers=args.workers, shard=parse_shard(args.shard),
        layout=args.layout, manifest=args.manifest, carve=args.carve, export=_export_options(args),
    )
    for note in summary.notes:
        print(f"preprocess: {note}")
    print(summary.line())


def _export_options(args: argparse.Namespace):
    """The DICOM-export options given on the command line, or None when none is."""
    from .data.dicom_export import ExportOptions

    given = _explicit(args, EXPORT_OPTIONS)
    if "body_parts" in given:
        given["body_parts"] = tuple(given["body_parts"])
    return ExportOptions(**given) if given else None


def run_demo(args: argparse.Namespace, argv: list[str]) -> None:
    from .demo import DemoSettings, run_demo

    run_demo(args.out, DemoSettings(subjects=args.subjects, seed=args.seed, epochs=args.epochs), progress=not args.quiet)


def run_figures(args: argparse.Namespace, argv: list[str]) -> None:
    from .data.store import open_store
    from .models import StudyClassifier
    from .train.checkpoint import load
    from .visual.study import FIGURES, attention_map_figure, reconstruction_figures, reference_study

    model = load(args.model)
    batch, study_id = reference_study(open_store(args.store), args.study)
    out = args.out or (args.model / FIGURES if args.model.is_dir() else args.model.parent)
    paths = [] if isinstance(model, StudyClassifier) else reconstruction_figures(
        model, batch, study_id, out, f"study_{study_id}", animation=out / f"animation_study_{study_id}.gif")
    paths.append(attention_map_figure(model, batch, study_id, out / f"attention_study_{study_id}.png", args.attention))
    print(f"figures: study {study_id} ({len(batch['lengths'])} study, {len(batch['images'])} views): "
          + ", ".join(str(p) for p in paths))


def run_embed(args: argparse.Namespace, argv: list[str]) -> None:
    from .data.store import open_store
    from .inference.embed import check_output, embed_store
    from .train.checkpoint import load
    from .train.distributed import single_device

    check_output(args.out)
    store = open_store(args.store)
    device = single_device(_device(args))
    model = load(args.model).to(device)
    summary = embed_store(model, store, args.out, split=args.split, batch_size=args.batch_size, device=device,
                          progress=not args.quiet)
    print(summary.line())


def run_predict(args: argparse.Namespace, argv: list[str]) -> int:
    from .inference.files import read_studies
    from .inference.predict import check_classifier, predict_studies, predictions_csv, predictions_json
    from .train.checkpoint import load
    from .train.distributed import single_device

    device = single_device(_device(args))
    model = check_classifier(load(args.model), args.model).to(device)
    studies = read_studies(args.files, model.config.image_size, by_folder=args.study_from_folder)
    _report_skipped(args.command, studies)
    predictions = predict_studies(model, studies, device)
    if args.csv:
        sys.stdout.write(predictions_csv(predictions))
    else:
        print(predictions_json(predictions))
    unread = [p.study.name for p in predictions if p.probabilities is None]
    for name in unread:
        print(f"raddiffusion predict: error: {name}: no readable image file; not predicted", file=sys.stderr)
    files = sum(len(s.files) for s in studies)
    skipped = sum(len(s.skipped) for s in studies)
    print(f"predict: {len(predictions) - len(unread)} of {len(predictions)} studies predicted from {files} files"
          f"{f', {skipped} unreadable file(s) skipped' if skipped else ''}; {len(model.label_names)} labels: "
          f"{', '.join(model.label_names)}", file=sys.stderr)
    return FAILED if unread else 0


def _report_skipped(command: str, studies: list) -> None:
    """One line on stderr per file that could not be read, with the reason."""
    for study in studies:
        for file, reason in study.skipped:
            print(f"raddiffusion {command}: skipped {file}: {reason}", file=sys.stderr)


def run_reconstruct(args: argparse.Namespace, argv: list[str]) -> None:
    from .inference.files import read_studies
    from .inference.reconstruct import ReconstructionOptions, check_pretrainer, reconstruct_study
    from .train.checkpoint import load
    from .train.distributed import single_device

    device = single_device(_device(args))
    model = check_pretrainer(load(args.model), args.model).to(device)
    (study,) = read_studies(args.files, model.config.image_size)
    _report_skipped(args.command, [study])
    options = ReconstructionOptions(mask_ratio=args.mask_ratio, mask_seed=args.mask_seed, seed=args.seed,
                                    steps=None if args.ddpm else args.steps)
    summary = reconstruct_study(model, study, args.out, options)
    errors = ", ".join(f"{v['masked_mse']:.4f}" for v in summary["views"])
    print(f"reconstruct: {study.views} view(s), mask ratio {summary['mask_ratio']:g}, "
          f"{summary['sampler'] or 'MAE decoder'}; masked-pixel MSE per view {errors}; "
          f"{len(summary['files'])} files in {args.out}")


def _device(args: argparse.Namespace) -> str | list[int]:
    from .train.distributed import parse_device

    return parse_device(",".join(args.device))


def _relaunched(args: argparse.Namespace, argv: list[str]) -> int | None:
    """Several GPUs outside torchrun: run this same command under torchrun, one process per GPU."""
    from .train.distributed import needs_relaunch, relaunch_under_torchrun

    device = _device(args)
    return relaunch_under_torchrun(device, argv) if needs_relaunch(device) else None


def run_pretrain(args: argparse.Namespace, argv: list[str]) -> int | None:
    from .train.pretrain import pretrain

    code = _relaunched(args, argv)
    if code is not None:
        return code
    summary = pretrain(args.store, args.run, model=_explicit(args, MODEL_OPTIONS),
                       train=_explicit(args, PRETRAIN_OPTIONS), resume=args.resume, device=_device(args),
                       progress=not args.quiet, probe_store=args.probe_store, init=args.init)
    if summary["init"]:
        _print_once(summary["init"])
    _print_once(_pretrain_line(args.run, summary))
    return None


def _pretrain_line(run: Path, summary: dict) -> str:
    from .results.metrics import format_metric

    probe = summary["probe"]
    probed = ""
    if probe:
        probed = (f"; probe mean AUROC {format_metric(probe['mean']['auroc'])} after epoch {probe['epoch']} "
                  f"(probes: {summary.get('probe_seconds', 0):.0f}s of {summary['seconds']:.0f}s)")
    return (f"pretrain: {summary['preset']} {summary['scheme']}, {summary['epochs']} epochs ({summary['steps']} steps) "
            f"in {summary['seconds']:.0f}s, last epoch loss {summary['final_epoch_loss']:.4f}{probed}; run in {run}")


def _print_once(line: str) -> None:
    """Print a summary line from the main process only (all processes of a torchrun job run the command)."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(line)


def run_probe(args: argparse.Namespace, argv: list[str]) -> None:
    from .data.store import open_store
    from .results.bootstrap import DEFAULT_RESAMPLES
    from .results.metrics import format_interval, format_metric, format_table
    from .train.checkpoint import load
    from .train.distributed import single_device
    from .train.finetune import pretrained_stores
    from .train.probe import (DEFAULT_K, DEFAULT_SOLVER, ProbeOptions, format_mean_sd, format_seeds,
                              probe_with_predictions, write_probe)

    options = ProbeOptions(method=args.method, label_fraction=args.label_fraction or 1.0,
                           seeds=tuple(range(args.seed, args.seed + (args.seeds or 1))), k=args.k or DEFAULT_K,
                           resamples=DEFAULT_RESAMPLES if args.resamples is None else args.resamples,
                           solver=args.probe_solver or DEFAULT_SOLVER)
    device = single_device(_device(args))
    model = load(args.run_dir).to(device)
    store = open_store(args.store)
    metrics, predictions = probe_with_predictions(model, store, eval_split=args.split,
                                                  label_policy=args.label_policy, device=device, options=options)
    run = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
    trained_on = pretrained_stores(run)
    metrics.update(store=str(args.store), dataset=store.dataset, pretrained_on=trained_on)
    out = args.out or run / "probe" / _probe_name(args, trained_on)
    write_probe(metrics, out, predictions)
    print(format_table(metrics, f"{args.method} probe, train -> {args.split}") + format_seeds(metrics))
    mean = metrics["mean"]
    over = f"; over {len(options.seeds)} seeds {format_mean_sd(metrics['over_seeds']['auroc'])}" if "seeds" in metrics else ""
    print(f"probe: mean AUROC {format_metric(mean['auroc'])} {format_interval(mean.get('auroc_ci95'))} over "
          f"{mean['labels']} labels on {metrics['eval_studies']} {args.split} studies{over}; written to {out}")


def _probe_name(args: argparse.Namespace, trained_on: list[str] | None) -> str:
    """``test.json``; a kNN probe or a label fraction is named in the file (``test-knn-f0.1.json``), and a
    store the run was not pretrained on is named first (``nih-store-test.json``)."""
    parts = [args.split] + (["knn"] if args.method == "knn" else [])
    parts += [f"f{args.label_fraction:g}"] if args.label_fraction not in (None, 1.0) else []
    own = trained_on is None or any(Path(p).resolve() == args.store.resolve() for p in trained_on)
    return "-".join(parts if own else [args.store.resolve().name, *parts]) + ".json"


def run_compare(args: argparse.Namespace, argv: list[str]) -> None:
    from .fileio import write_json
    from .results.bootstrap import DEFAULT_RESAMPLES
    from .results.compare import compare_predictions, format_comparison, signed_interval, verdict

    a, b = (_predictions_of(path, args) for path in (args.a, args.b))
    result = compare_predictions(a, b, args.resamples or DEFAULT_RESAMPLES, args.seed)
    names = [str(args.a), str(args.b)]
    print(format_comparison(result, *names), end="")
    if args.out:
        write_json(args.out, {"a": names[0], "b": names[1], **result})
    difference = result["difference"]
    print(f"compare: A − B mean AUROC {difference['difference']:+.3f} {signed_interval(difference['ci95'])} on "
          f"{result['studies']} studies, {verdict(difference, 'A', 'B')}")


def _predictions_of(path: Path, args: argparse.Namespace):
    """A model's per-study predictions: probed on --store, or read from a fine-tuning run / predictions CSV."""
    from .data.store import open_store
    from .results.predictions import PredictionsError, read_predictions
    from .results.runfiles import TEST_PREDICTIONS
    from .train.checkpoint import load
    from .train.distributed import single_device
    from .train.probe import probe_with_predictions

    if args.store is not None:
        device = single_device(_device(args))
        return probe_with_predictions(load(path).to(device), open_store(args.store), eval_split=args.split,
                                      device=device, progress=False)[1]
    if path.is_dir():
        if not (path / TEST_PREDICTIONS).is_file():
            raise PredictionsError(f"{path}: no {TEST_PREDICTIONS} (not a finished fine-tuning run); "
                                   f"give --store to probe it instead")
        path = path / TEST_PREDICTIONS
    return read_predictions(path)


def run_evaluate(args: argparse.Namespace, argv: list[str]) -> None:
    from .results.bootstrap import DEFAULT_RESAMPLES
    from .results.evaluation import EVALUATE_JSON, format_evaluation
    from .train.evaluate import EvaluateSettings, evaluate
    from .train.probe import DEFAULT_K, DEFAULT_SOLVER

    methods = tuple(m for m in ("probe", "knn", "finetune") if getattr(args, m)) or ("probe",)
    finetune = {k: v for k, v in (("epochs", args.finetune_epochs), ("batch_size", args.batch_size),
                                  ("workers", args.workers)) if v is not None}
    settings = EvaluateSettings(fractions=args.fractions, seeds=args.seeds, methods=methods, baselines=args.baselines,
                                split=args.split, k=args.k or DEFAULT_K, finetune=finetune,
                                resamples=args.resamples or DEFAULT_RESAMPLES,
                                probe_solver=args.probe_solver or DEFAULT_SOLVER)
    started = time.perf_counter()
    evaluation = evaluate(args.runs, args.store, args.out, settings, _device(args), not args.quiet)
    print(format_evaluation(evaluation), end="")
    print(f"evaluate: {len(evaluation['cells'])} cells ({len(evaluation['rows'])} rows) in "
          f"{time.perf_counter() - started:.0f}s; {args.out / EVALUATE_JSON}")


def run_finetune(args: argparse.Namespace, argv: list[str]) -> int | None:
    from .train.finetune import finetune, finetune_seeds

    code = _relaunched(args, argv)
    if code is not None:
        return code
    common = {"pretrained": args.pretrained, "model": _explicit(args, MODEL_OPTIONS),
              "train": _explicit(args, FINETUNE_OPTIONS), "resume": args.resume, "device": _device(args),
              "progress": not args.quiet}
    if args.seeds:
        result = finetune_seeds(args.store, args.run, list(range(args.seed or 0, (args.seed or 0) + args.seeds)),
                                **common)
        _print_once(_seeds_line(args.run, result))
        return None
    summary = finetune(args.store, args.run, **common)
    _print_once(_finetune_line(args.run, summary))
    return None


def _seeds_line(run: Path, result: dict) -> str:
    from .results.metrics import format_interval, format_metric
    from .train.probe import format_mean_sd

    seeds = ", ".join(f"seed {s['seed']} {format_metric(s['mean']['auroc'])} {format_interval(s['mean'].get('auroc_ci95'))}"
                      for s in result["seeds"])
    return (f"finetune: test mean AUROC {seeds}; over {len(result['seeds'])} seeds "
            f"{format_mean_sd(result['over_seeds']['auroc'])}; runs in {run}/seed-*")


SELECTED_BY = {"auroc-ci": "validation mean AUROC (gains beyond noise only)", "auroc": "validation mean AUROC",
               "loss": "validation loss"}


def _finetune_line(run: Path, summary: dict) -> str:
    from .results.metrics import format_interval, format_metric

    test = summary["test"]["mean"]
    chosen = SELECTED_BY.get(summary.get("selected_on"), SELECTED_BY["loss"])
    kept = "epoch 0 (the linear-probe head)" if summary["best_epoch"] == 0 else f"epoch {summary['best_epoch']}"
    return (f"finetune: kept {kept} of {summary['epochs_run']}, chosen by {chosen}, "
            f"validation loss {summary['best_val_loss']:.4f}; test mean AUROC {format_metric(test['auroc'])} "
            f"{format_interval(test.get('auroc_ci95'))}, "
            f"AUPRC {format_metric(test['auprc'])}, F1 {format_metric(test['f1'])}; run in {run}")



def run_workflow(args: argparse.Namespace, argv: list[str]) -> int | None:
    from .train.finetune import finetune
    from .train.pretrain import pretrain
    from .results.runfiles import CONFIG, is_finished

    code = _relaunched(args, argv)
    if code is not None:
        return code
    name = args.runs / args.ref_name
    pretrain_dir = name / "pretrain"
    device, progress = _device(args), not args.quiet
    if is_finished(pretrain_dir):
        _print_once(f"run: pretraining in {pretrain_dir} is finished; skipping it, fine-tuning only")
    else:
        resume = (pretrain_dir / CONFIG).is_file()
        _print_once(f"run: {'resuming' if resume else 'starting'} pretraining in {pretrain_dir}")
        summary = pretrain(args.store, pretrain_dir, model=_explicit(args, MODEL_OPTIONS),
                           train=_explicit(args, PRETRAIN_OPTIONS), resume=resume, device=device, progress=progress)
        _print_once(_pretrain_line(pretrain_dir, summary))
    finetune_dir = _next_finetune_dir(name)
    resume = (finetune_dir / CONFIG).is_file()
    _print_once(f"run: {'resuming' if resume else 'starting'} fine-tuning in {finetune_dir}")
    train = {k: v for k, v in _explicit(args, FINETUNE_OPTIONS).items() if k not in ("epochs", "lr")}
    if args.finetune_epochs:
        train["epochs"] = args.finetune_epochs
    summary = finetune(args.store, finetune_dir, pretrained=pretrain_dir, train=train, resume=resume,
                       device=device, progress=progress)
    _print_once(_finetune_line(finetune_dir, summary))
    return None


def _next_finetune_dir(name: Path) -> Path:
    """The unfinished fine-tuning of this run, else a new ``finetune``, ``finetune-2``, ... directory."""
    from .results.runfiles import is_finished

    number = 1
    while True:
        path = name / ("finetune" if number == 1 else f"finetune-{number}")
        if not is_finished(path):
            return path
        number += 1


if __name__ == "__main__":
    sys.exit(main())
