"""``keras-astro``: the command line. Thin: parses arguments and calls :mod:`keras_astro.studies`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from keras_astro.safety import ModelFileError

log = logging.getLogger("keras_astro")


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _shares(text: str) -> dict[str, float]:
    out = {}
    for item in _csv_list(text):
        name, _, value = item.partition("=")
        try:
            out[name.strip().upper()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected CLASS=fraction, got {item!r}") from None
    return out


def _add_common(p: argparse.ArgumentParser, *, out_required: bool = True, out_help: str = "output folder") -> None:
    p.add_argument("--out", type=Path, required=out_required, help=out_help)
    p.add_argument("--quick", action="store_true", help="short schedule on small data (minutes on 2 CPU cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-astro",
        description="Keras 3 rebuilds of four astronomy deep-learning studies. Each subcommand has --help.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("reproduce", help="run every study on its embedded data and write report.md", description="Run the studies end to end on embedded data; writes DIR/report.md (paper beside ours), DIR/<study>/metrics.json, figures and exported models.")
    p.add_argument("--out", type=Path, default=Path("keras_astro_run"), help="output folder (default: ./keras_astro_run)")
    p.add_argument("--quick", action="store_true", help="all studies together in under 10 minutes on 2 CPU cores")
    p.add_argument("--studies", type=_csv_list, default=None, help="comma-separated subset, e.g. agn (default: all available)")

    p = sub.add_parser("info", help="show devices, the distribution strategy and versions", description="Print the devices TensorFlow sees, the strategy keras-astro would use and library versions. Under a multi-worker TF_CONFIG (or Slurm) it describes this worker's place in the cluster without joining it.")

    agn = sub.add_parser("agn", help="Chen et al. 2021: AGN recognition from 44-band photometry", description="AGN vs star-forming galaxy from 44-band NEPW photometry (Chen et al. 2021).")
    asub = agn.add_subparsers(dest="agn_command", metavar="ACTION", required=True)

    p = asub.add_parser("cv", help="10-fold cross-validation of preset A, B or C (Table 1)", description="Stratified 10-fold CV; writes DIR/metrics.json (agn_completeness, sfg_completeness, accuracy, roc_auc, folds), figures, and the first fold's SavedModel.")
    p.add_argument("--preset", choices=["A", "B", "C"], default="B", help="hyper-parameters of Table 1 (default B)")
    _add_common(p)
    p.add_argument("--data", type=Path, default=None, help="labelled NEPW catalogue (FITS/CSV; default: embedded simulation)")
    p.add_argument("--folds", type=int, default=None, help="number of folds (default 10)")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs per fold (default 3000; quick 60)")
    p.add_argument("--missing", choices=["zero", "band_median", "neighbour_median"], default=None, help="missing-band filling (Sec 2.2; default zero)")
    p.add_argument("--batch-size", type=int, default=None, help="per-replica batch (default: the whole training fold)")
    p.add_argument("--seed", type=int, default=None, help="seed of folds, initialisation and shuffling")
    p.add_argument("--warmup", type=int, default=None, help="epochs before the Eq. 3 rule applies (default 0, as in the paper)")
    p.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    p.add_argument("--backup-dir", type=Path, default=None, help="training backup; a restarted run resumes from it (default: OUT/backup, deleted on success)")
    p.add_argument("--backup-every", type=int, default=50, help="epochs between training backups (default 50)")

    p = asub.add_parser("ablate", help="band-group removal experiment (Sec 4.3, Fig. 12)", description="Cross-validate with each wavelength group (FIR, MIR, NIR, optical, UV) removed.")
    p.add_argument("--preset", choices=["A", "B", "C"], default="B")
    _add_common(p)
    p.add_argument("--data", type=Path, default=None, help="labelled NEPW catalogue (default: embedded simulation)")
    p.add_argument("--groups", type=_csv_list, default=None, help="subset of FIR,MIR,NIR,optical,UV")
    p.add_argument("--folds", type=int, default=None, help="number of folds (default 10)")
    p.add_argument("--backup-dir", type=Path, default=None, help="training backup; a restarted run resumes from it (default: OUT/backup, deleted on success)")
    p.add_argument("--backup-every", type=int, default=50, help="epochs between training backups (default 50)")

    p = asub.add_parser("predict", help="classify a catalogue with several models and vote (Sec 4.1)", description="Run each model's SavedModel on CATALOG; writes FILE with each model's P(AGN), the vote, and FILE.summary.json.")
    p.add_argument("catalog", type=Path, help="NEPW catalogue (FITS/CSV)")
    p.add_argument("--models", type=Path, nargs="+", required=True, help="run folders of `agn cv` (or SavedModel folders)")
    p.add_argument("--out", type=Path, required=True, help="output catalogue (.csv or .fits)")
    p.add_argument("--threshold", type=float, default=0.5, help="P(AGN) above which a model votes AGN")

    p = asub.add_parser("simulate", help="write the embedded simulated catalogues", description="Write the simulated labelled (1,870) and unlabelled (65,548) NEPW catalogues as FITS files.")
    _add_common(p)
    p.add_argument("--seed", type=int, default=0)

    p = asub.add_parser("fetch", help="download the NEPW band-merged catalogue from VizieR", description="Fetch Kim et al. 2021 (J/MNRAS/500/4078) with astroquery and write it in keras_astro's layout (needs a network).")
    p.add_argument("--out", type=Path, required=True, help="output catalogue (.fits or .csv)")
    p.add_argument("--row-limit", type=int, default=-1, help="at most this many rows (-1: all)")

    spectra = sub.add_parser("spectra", help="SDSS spectra: simulate, query, download, preprocess", description="The spectral data layer shared by FNet and the thesis models: SDSS queries and downloads, the embedded spectrum simulator, preprocessing onto the FNet or thesis grid.")
    ssub = spectra.add_subparsers(dest="spectra_command", metavar="ACTION", required=True)
    p = ssub.add_parser("simulate", help="write simulated SDSS-like spectra as an HDF5 store", description="Simulate quasars, galaxies and stars on the SDSS lattice and write the HDF5 store (and optionally one spec-PLATE-MJD-FIBER.fits per object). Same seed, same bytes.")
    p.add_argument("--n", type=int, required=True, help="number of spectra")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", type=Path, required=True, help="output store (.h5)")
    p.add_argument("--fits-dir", type=Path, default=None, help="also write per-object SDSS spec FITS files here")
    p.add_argument("--shares", type=_shares, default=None, help="class shares, e.g. GALAXY=0.56,QSO=0.34,STAR=0.10 (default: the thesis's)")
    p = ssub.add_parser("query", help="run the thesis's SDSS SQL query (needs a network)", description="SpecObjAll JOIN SpecPhotoAll, zWarning = 0 (thesis Sec 4.1), through astroquery; writes a CSV of targets for `spectra download`.")
    p.add_argument("--kind", choices=["ALL", "QSO", "STAR", "GALAXY"], default="ALL", help="object class to query (default ALL)")
    p.add_argument("--top", type=int, default=None, help="at most this many rows per query")
    p.add_argument("--balance", action="store_true", help="separate QSO/STAR/GALAXY queries subsampled to the class shares")
    p.add_argument("--emission-lines", action="store_true", help="also fetch emissionLinesPort fluxes")
    p.add_argument("--data-release", type=int, default=17, help="SDSS data release (default 17)")
    p.add_argument("--show-sql", action="store_true", help="print the SQL and exit without a network")
    p.add_argument("--out", type=Path, required=False, help="output CSV")
    p = ssub.add_parser("download", help="download spectra by plate-MJD-fiber (needs a network)", description="Download spec-PLATE-MJD-FIBER.fits for every target in parallel, with retries; resumable (re-runs skip what is stored); failures go to OUT_DIR/failures.csv.")
    p.add_argument("targets", type=Path, help="CSV from `spectra query` (plate, mjd, fiberID, specObjID, ...)")
    p.add_argument("--out-dir", type=Path, required=True, help="folder of FITS files")
    p.add_argument("--store", type=Path, default=None, help="also append the spectra to this sharded HDF5 store (a folder)")
    p.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    p.add_argument("--retries", type=int, default=4, help="retries per spectrum with exponential back-off (default 4)")
    p.add_argument("--data-release", type=int, default=17, help="SDSS data release (default 17)")
    p.add_argument("--sas-url", default=None, help="Science Archive Server root (default https://data.sdss.org/sas; e.g. a mirror)")
    p.add_argument("--shard-size", type=int, default=256, help="spectra per store shard file (default 256)")
    p = ssub.add_parser("preprocess", help="resample a store onto the FNet or thesis grid", description="Resample every spectrum onto a log-lambda grid (masked pixels interpolated and flagged), measure the 14 thesis equivalent widths, optionally smooth and FNet-normalise; streams IN to OUT.")
    p.add_argument("input", type=Path, help="input store (.h5 file or shard folder)")
    p.add_argument("--grid", choices=["fnet", "thesis", "sdss"], default="fnet", help="target grid (default fnet: 4,618 px over 360-1032.5 nm)")
    p.add_argument("--out", type=Path, required=True, help="output store (.h5)")
    p.add_argument("--normalise", choices=["fnet", "none"], default=None, help="fnet: zero mean then unit norm (default: fnet for the fnet grid, none otherwise)")
    p.add_argument("--smooth", type=float, default=None, help="Gaussian smoothing sigma in pixels (thesis Table 6 uses 4)")
    p.add_argument("--no-ew", action="store_true", help="skip the equivalent widths")
    p.add_argument("--chunk-rows", type=int, default=1024, help="spectra per chunk (memory bound)")
    p = ssub.add_parser("tune", help="keras-tuner search of the thesis's CNN (Sec 6.3, Tables 4-5)", description="RandomSearch (or Hyperband / Bayesian) over the thesis's CNN space on val_accuracy; resumes from DIR/tuner_logs; writes DIR/trials.csv and trials.md (trial, val accuracy, every hyperparameter), best_hparams.json, then retrains the best point (metrics.json, figures, savedmodel/).")
    _add_common(p)
    p.add_argument("--data", type=Path, default=None, help="spectrum store (.h5; raw or thesis grid). Default: embedded simulation")
    p.add_argument("--task", choices=["main", "galaxy", "star"], default="main", help="classes to predict (default main: GALAXY/QSO/STAR)")
    p.add_argument("--algorithm", choices=["random", "hyperband", "bayesian"], default="random", help="search algorithm (default random, the thesis's)")
    p.add_argument("--trials", type=int, default=None, help="max trials (default 40; quick 2)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 12; quick 2)")
    p.add_argument("--retrain-epochs", type=int, default=None, help="epochs for the best point (default 60; 0: no retraining)")
    p.add_argument("--directory", type=Path, default=None, help="keras-tuner directory (default DIR/tuner_logs)")
    p.add_argument("--overwrite", action="store_true", help="start the search afresh instead of resuming")
    p.add_argument("--seed", type=int, default=0)
    p = ssub.add_parser("train", help="train the thesis's CNN, mixed-input network or autoencoder", description="Train on the main classes, galaxy subclasses or star groups; writes DIR/metrics.json (accuracy, per-class recall), confusion.csv, figures and DIR/savedmodel (raw inputs).")
    _add_common(p)
    p.add_argument("--model", choices=["cnn", "mixed", "autoencoder"], default="cnn", help="network (default cnn)")
    p.add_argument("--task", choices=["main", "galaxy", "star"], default="main", help="classes (default main)")
    p.add_argument("--data", type=Path, default=None, help="spectrum store (.h5; raw or thesis grid). Default: embedded simulation")
    p.add_argument("--drop-null", action="store_true", help="galaxy task without the NULL subclass")
    p.add_argument("--smooth", type=float, default=0.0, help="Gaussian smoothing sigma in pixels (Table 6 uses 4)")
    p.add_argument("--no-ew", action="store_true", help="mixed input without the 14 equivalent widths")
    p.add_argument("--hparams", type=Path, default=None, help="CNN point: best_hparams.json from `spectra tune`")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per-replica batch (default 32)")
    p.add_argument("--n", type=int, default=None, help="simulated spectra (embedded data only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-export", action="store_true", help="skip model.keras and savedmodel/")
    p.add_argument("--backup-dir", type=Path, default=None, help="training backup; a restarted run resumes from it (default: OUT/backup, deleted on success)")
    p.add_argument("--backup-every", type=int, default=None, help="training steps between backups, besides every epoch end (default: epoch ends only)")
    p = ssub.add_parser("predict", help="classify a store with a model from `spectra train`", description="Run DIR/savedmodel on every spectrum of FILE (resampled onto the thesis grid if needed); prints a summary, or writes a CSV with --out.")
    p.add_argument("input", type=Path, help="spectrum store (.h5)")
    p.add_argument("--model", type=Path, required=True, help="run folder of `spectra train` / `spectra tune` (or its savedmodel/)")
    p.add_argument("--out", type=Path, default=None, help="CSV to write (one row per spectrum)")

    rgzp = sub.add_parser("rgz", help="Radio Galaxy Zoo data for CLARAN: build F/D1-D4, show a subject, fetch cutouts", description="The CLARAN data layer (Wu et al. 2019, Sec 3): the shipped RGZ DR1 catalogue, simulated or real FIRST/WISE cutouts, and the F, D1, D2, D3, D4 fusions.")
    rsub = rgzp.add_subparsers(dest="rgz_command", metavar="ACTION", required=True)
    p = rsub.add_parser("build", help="write a CLARAN data set (PNG + JSON annotations + split lists)", description="Fuse radio and IR cutouts into data set F, D1, D2, D3 or D4; writes DIR/images/*.png, DIR/annotations/*.json, DIR/train.txt, DIR/test.txt, DIR/dataset.json.")
    p.add_argument("--dataset", choices=["F", "D1", "D2", "D3", "D4"], default="D4", help="fusion method (Sec 3.4; default D4)")
    _add_common(p)
    p.add_argument("--images", type=Path, default=None, help="folder of real <subject>_radio.fits / _ir.fits cutouts (default: simulated)")
    p.add_argument("--seed", type=int, default=0, help="simulator and subset seed")
    p.add_argument("--d4-fill", choices=["train", "code"], default="train", help="D4 fill: training-set channel mean (paper) or the code's constant")
    p = rsub.add_parser("show", help="draw a subject: radio, fused image with boxes, IR with contours (Fig. 1)", description="Draw SUBJECT like Fig. 1 of Wu et al.: radio, the fused image with its RGZ boxes, and the IR image with 5-sigma radio contours.")
    p.add_argument("subject", help="FIRST name, e.g. FIRSTJ000007.0+081644")
    p.add_argument("--dataset", choices=["F", "D1", "D2", "D3", "D4"], default="D4")
    p.add_argument("--images", type=Path, default=None, help="folder of real cutouts (default: simulated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="PNG to write (default: <subject>.png)")
    p = rsub.add_parser("fetch", help="download FIRST and WISE cutouts from SkyView (needs a network)", description="Fetch the 3-arcmin FIRST 1.4 GHz and WISE 3.4 um cutouts of each subject with astroquery's SkyView; resumable.")
    p.add_argument("--out", type=Path, required=True, help="folder for <subject>_radio.fits / _ir.fits")
    p.add_argument("--quick", action="store_true", help="only the stratified quick subset")
    p.add_argument("--subjects", type=_csv_list, default=None, help="comma-separated FIRST names (default: all)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skyview-url", default=None, help="SkyView query-form URL (default: astroquery's; e.g. a mirror)")

    fnet = sub.add_parser("fnet", help="FNet: quasar redshifts from 4,618-pixel spectra (1-D ResNet)", description="FNet (Rastegar Nia et al.): the 24-layer 1-D ResNet with kernels 500/200/15 for quasar redshifts, trained on DR12Q-like spectra and tested on DR16Q-new and QuasarNET-failure spectra.")
    fsub = fnet.add_subparsers(dest="fnet_command", metavar="ACTION", required=True)
    p = fsub.add_parser("train", help="train and evaluate FNet (+ QuasarNET-style baseline)", description="Train FNet; writes DIR/metrics.json (dv_acc_6000/12000/30000 per test set), figures, model.keras and DIR/savedmodel (raw flux -> z).")
    _add_common(p)
    p.add_argument("--data", type=Path, default=None, help="spectrum store (.h5; raw or FNet grid). Default: embedded simulation")
    p.add_argument("--n", type=int, default=None, help="simulated quasars (default 600 quick, 20,000 full)")
    p.add_argument("--preset", choices=["paper", "paper_caption", "code", "narrow", "tiny"], default=None, help="network/training preset (default: paper; narrow with --quick)")
    p.add_argument("--conv", choices=["auto", "fft", "direct"], default="auto", help="long-kernel convolution implementation (default auto: FFT for k >= 64)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per-replica batch (default 128; quick 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="skip the QuasarNET-style baseline")
    p.add_argument("--no-export", action="store_true", help="skip the SavedModel export (model.keras is still written)")
    p.add_argument("--backup-dir", type=Path, default=None, help="training backup; a restarted run resumes from it (default: OUT/backup, deleted on success)")
    p.add_argument("--backup-every", type=int, default=500, help="training steps between backups, besides every epoch end (default 500)")
    p = fsub.add_parser("mask", help="the line-masking test (2.8 <= z <= 3, lines masked; Fig. 7)", description="Train and test FNet on quasars with 2.8 <= z <= 3 with OVI, Lya, NV, SiIV+OIV, CIV, CIII and CII masked.")
    _add_common(p)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--preset", choices=["paper", "paper_caption", "code", "narrow", "tiny"], default=None, help="network preset (default: paper; narrow with --quick)")
    p.add_argument("--conv", choices=["auto", "fft", "direct"], default="auto")
    p.add_argument("--backup-dir", type=Path, default=None, help="training backup; a restarted run resumes from it (default: OUT/backup, deleted on success)")
    p.add_argument("--backup-every", type=int, default=500, help="training steps between backups, besides every epoch end (default 500)")
    p = fsub.add_parser("predict", help="redshifts from an exported FNet for a store or spec-*.fits files", description="Run DIR/savedmodel on spectra; prints or writes specObjID and z.")
    p.add_argument("inputs", type=Path, nargs="+", help="store (.h5) or spec-*.fits files")
    p.add_argument("--model", type=Path, required=True, help="SavedModel folder (fnet train's DIR/savedmodel)")
    p.add_argument("--out", type=Path, default=None, help="CSV to write (default: print JSON)")
    claran = sub.add_parser("claran", help="CLARAN: Faster R-CNN radio-source detection and morphology (Wu et al. 2019)", description="CLARAN (Wu et al. 2019): Faster R-CNN with VGG-16, RPN and ST-RoI pooling that finds radio sources in fused FIRST + WISE images and classifies their morphology (1C_1P ... 3C_3P).")
    csub = claran.add_subparsers(dest="claran_command", metavar="ACTION", required=True)
    p = csub.add_parser("train", help="train on D1, D3 or D4 (or F/D2) and evaluate on the test split", description="Train CLARAN (momentum SGD 0.9, lr 1e-3 x 0.1 every 50,000 steps, flips, seed 3); resumes from DIR/backup (or --backup-dir); writes DIR/model.keras, DIR/savedmodel, DIR/history.csv, DIR/logs (TensorBoard), DIR/figures/losses.png and DIR/metrics.json (AP per class, mAP).")
    _add_common(p)
    p.add_argument("--dataset", choices=["F", "D1", "D2", "D3", "D4"], default="D4", help="image fusion (Sec 3.4; default D4)")
    p.add_argument("--data", type=Path, default=None, help="data set folder from `keras-astro rgz build` (default: embedded simulation)")
    p.add_argument("--preset", choices=["paper", "small"], default=None, help="network preset (default: paper; small with --quick)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 80,000; quick 1,000)")
    p.add_argument("--vgg-weights", type=Path, default=None, help="local Keras VGG-16 weights file (ImageNet); none can be downloaded here")
    p.add_argument("--xla", action="store_true", help="compile the training step with XLA")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation after training")
    p.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    p.add_argument("--backup-dir", type=Path, default=None, help="training backup; a restarted run resumes from it (default: OUT/backup, deleted on success)")
    p.add_argument("--backup-every", type=int, default=None, help="training steps between backups, besides every epoch end (default: epoch ends only)")
    p = csub.add_parser("evaluate", help="AP per class (Eq. 12), mAP, Tables 6-8, PR curves", description="Evaluate a trained model on the test split; writes OUT/metrics.json (ap per class, map, components_only, multi_source, box_size, user_filter) and OUT/pr_curves.png.")
    p.add_argument("--model", type=Path, required=True, help="folder written by `claran train`")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="data set folder (default: the one the model was trained on)")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p = csub.add_parser("detect", help="find and classify radio sources in images or RGZ subjects (Fig. 1)", description="Run a trained model on PNG/JPEG fused images or RGZ subject names (e.g. FIRSTJ011349.3+062140); prints boxes, classes and probabilities and draws them into --out.")
    p.add_argument("inputs", nargs="+", help="PNG/JPEG images or RGZ subject names")
    p.add_argument("--model", type=Path, required=True, help="folder written by `claran train`")
    p.add_argument("--out", type=Path, default=None, help="folder for the annotated images")
    p.add_argument("--dataset", choices=["F", "D1", "D2", "D3", "D4"], default="D4", help="fusion for subject names (default D4)")
    p.add_argument("--user-filter", action="store_true", help="Sec 6.1.1: drop P < 0.8 unless nothing reaches 0.8; one source per field")
    p = csub.add_parser("summary", help="the layer table of Table 4 and the paper-style parameter count", description="Print Table 4 for the chosen preset and count parameters as the paper does (conv kernels without biases + FC layers with biases: 136,777,443).")
    p.add_argument("--preset", choices=["paper", "small"], default="paper")
    return parser


def _claran(args) -> int:
    strategy = None
    if args.claran_command == "train":
        from keras_astro.distribute import get_strategy

        strategy = get_strategy()  # before any other TensorFlow op (docs/scaling.md)
    from keras_astro.studies import claran

    progress = not args.no_progress
    if args.claran_command == "train":
        m = claran.train(args.out, dataset=args.dataset, quick=args.quick, data_dir=args.data, preset=args.preset, steps=args.steps, vgg_weights=args.vgg_weights, jit_compile=args.xla, evaluate_after=not args.no_eval, export=not args.no_export, progress=progress, strategy=strategy, backup_dir=args.backup_dir, backup_every=args.backup_every)
        _print({"map": m.get("map"), "ap": m.get("ap"), "out": str(args.out)})
    elif args.claran_command == "evaluate":
        m = claran.evaluate(args.model, out=args.out, data_dir=args.data, split=args.split, progress=progress)
        _print({"map": m["map"], "ap": m["ap"], "out": str(args.out)})
    elif args.claran_command == "detect":
        _print(claran.detect(args.inputs, model_dir=args.model, out=args.out, dataset=args.dataset, user_filter=args.user_filter))
    elif args.claran_command == "summary":
        sys.stdout.write(claran.summary(args.preset) + "\n")
    return 0


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbose < 2 else "0")


def _print(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _train_strategy(args):
    """The distribution strategy of a training command, created before any other TensorFlow op
    (MultiWorkerMirroredStrategy requires it; docs/scaling.md)."""
    from keras_astro.distribute import get_strategy

    if args.backup_every < 1:
        raise ValueError(f"--backup-every must be at least 1, got {args.backup_every}")
    return get_strategy()


def _agn(args) -> int:
    strategy = _train_strategy(args) if args.agn_command in ("cv", "ablate") else None
    from keras_astro.studies import agn

    progress = not args.no_progress
    if args.agn_command == "cv":
        overrides = {k: v for k, v in {"max_epochs": args.epochs, "missing_strategy": args.missing, "batch_size": args.batch_size, "seed": args.seed, "start_from_epoch": args.warmup}.items() if v is not None}
        m = agn.run_cv(args.preset, out=args.out, quick=args.quick, data=args.data, n_folds=args.folds, overrides=overrides, export=not args.no_export, progress=progress, strategy=strategy, backup_dir=args.backup_dir, backup_every=args.backup_every)
        _print({k: m[k] for k in agn.METRICS} | {"folds": len(m["folds"]), "out": str(args.out)})
    elif args.agn_command == "ablate":
        m = agn.run_ablation(args.preset, out=args.out, quick=args.quick, data=args.data, groups=args.groups, n_folds=args.folds, progress=progress, strategy=strategy, backup_dir=args.backup_dir, backup_every=args.backup_every)
        _print({g: round(v["roc_auc"], 4) for g, v in m["groups"].items()})
    elif args.agn_command == "predict":
        s = agn.predict_catalogue(args.catalog, args.models, out=args.out, threshold=args.threshold)
        _print({k: s[k] for k in ("n_objects", "per_model", "vote_split", "agreement")})
    elif args.agn_command == "simulate":
        from keras_astro.simulate.photometry import ensure_embedded_catalogues

        _print({k: str(v) for k, v in ensure_embedded_catalogues(args.out, quick=args.quick, seed=args.seed).items()})
    elif args.agn_command == "fetch":
        from keras_astro.io.vizier import NEPWVizierClient, save

        table = NEPWVizierClient().fetch(row_limit=args.row_limit)
        save(table, args.out)
        _print({"rows": len(table), "out": str(args.out)})
    return 0


def _spectra(args) -> int:
    progress = not args.no_progress
    cmd = args.spectra_command
    if cmd == "simulate":
        from keras_astro.simulate.spectra import write_simulated_store

        if args.n < 1:
            raise ValueError(f"--n must be at least 1, got {args.n}")
        path = write_simulated_store(args.out, args.n, seed=args.seed, class_shares=args.shares, fits_dir=args.fits_dir, progress=progress)
        _print({"out": str(path), "n": args.n, "seed": args.seed, "fits_dir": str(args.fits_dir) if args.fits_dir else None})
    elif cmd == "query":
        from keras_astro.io import sdss

        if args.show_sql:
            sys.stdout.write(sdss.build_query(args.kind, top=args.top, emission_lines=args.emission_lines) + "\n")
            return 0
        if args.out is None:
            raise ValueError("--out is required (or use --show-sql)")
        table = sdss.SDSSClient(data_release=args.data_release).query(args.kind, top=args.top, balance=args.balance, emission_lines=args.emission_lines)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.write(args.out, format="ascii.csv", overwrite=True)
        _print({"rows": len(table), "out": str(args.out)})
    elif cmd == "download":
        from keras_astro.io import sdss

        if not args.targets.is_file():
            raise FileNotFoundError(f"{args.targets}: no such targets file")
        targets = sdss.read_targets(args.targets)
        rep = sdss.SDSSClient(data_release=args.data_release, sas_base_url=args.sas_url).download_spectra(targets, args.out_dir, store=args.store, workers=args.workers, retries=args.retries, batch_size=args.shard_size, progress=progress)
        _print({k: getattr(rep, k) for k in ("n_requested", "n_downloaded", "n_skipped", "n_failed")} | {"out_dir": str(args.out_dir)})
        return 0 if rep.n_failed == 0 else 1
    elif cmd == "preprocess":
        from keras_astro.preprocess.spectra import preprocess_store

        normalise = args.normalise or ("fnet" if args.grid == "fnet" else None)
        res = preprocess_store(args.input, args.out, grid=args.grid, normalise=None if normalise == "none" else normalise, smooth_sigma=args.smooth, with_equivalent_widths=not args.no_ew, chunk_rows=args.chunk_rows, progress=progress)
        _print({"out": res["output"], "grid": res["grid"], "kept": res["n_kept"], "skipped": len(res["skipped"])})
    elif cmd in ("tune", "train", "predict"):
        return _thesis(args, progress)
    return 0


def _thesis(args, progress: bool) -> int:
    cmd = args.spectra_command
    strategy = None
    if cmd == "train":
        from keras_astro.distribute import get_strategy

        strategy = get_strategy()  # before any other TensorFlow op (docs/scaling.md)
    from keras_astro.studies import spectra as thesis

    if cmd == "tune":
        m = thesis.tune(args.out, quick=args.quick, data=args.data, task=args.task, algorithm=args.algorithm, max_trials=args.trials, epochs=args.epochs, retrain_epochs=args.retrain_epochs, directory=args.directory, overwrite=args.overwrite, seed=args.seed, progress=progress)
        _print({k: m.get(k) for k in ("n_trials", "n_new_trials", "best_trial", "best_val_accuracy", "accuracy")} | {"trials": str(args.out / "trials.csv")})
    elif cmd == "train":
        m = thesis.train(args.out, model=args.model, task=args.task, quick=args.quick, data=args.data, drop_null=args.drop_null, smooth_sigma=args.smooth, with_equivalent_widths=not args.no_ew, hparams=args.hparams, epochs=args.epochs, batch_size=args.batch_size, n=args.n, seed=args.seed, export=not args.no_export, progress=progress, strategy=strategy, backup_dir=args.backup_dir, backup_every=args.backup_every)
        keys = ("reconstruction_mse",) if args.model == "autoencoder" else ("accuracy", "recall")
        _print({k: m.get(k) for k in keys} | {"out": str(args.out)})
    elif cmd == "predict":
        res = thesis.predict(args.model, args.input, out=args.out)
        summary = {k: res[k] for k in ("model", "task", "n", "accuracy", "out") if k in res}
        if "predicted" in res:
            summary["predicted_counts"] = {c: res["predicted"].count(c) for c in res["classes"]}
        else:
            summary["mean_mse"] = float(res["mse"].mean())
        _print(summary)
    return 0


def _rgz(args) -> int:
    from keras_astro.studies import rgz_data

    progress = not args.no_progress
    if args.rgz_command == "build":
        res = rgz_data.build_dataset(args.dataset, args.out, quick=args.quick, images=args.images, seed=args.seed, d4_fill=args.d4_fill, progress=progress)
        _print({k: res[k] for k in ("dataset", "n_train", "n_test", "image_source")} | {"skipped": len(res["skipped"]), "out": str(args.out)})
    elif args.rgz_command == "show":
        out = args.out or Path(f"{args.subject}.png")
        rgz_data.show_subject(args.subject, dataset=args.dataset, images=args.images, seed=args.seed, out=out)
        _print({"figure": str(out)})
    elif args.rgz_command == "fetch":
        from keras_astro.io import rgz
        from keras_astro.io.skyview import SkyViewClient

        cat = rgz.load_catalogue()
        subjects = [cat[n] for n in args.subjects] if args.subjects else rgz_data.select_subjects(cat, quick=args.quick)
        _print(SkyViewClient(url=args.skyview_url).fetch(subjects, args.out, workers=args.workers, progress=progress))
    return 0


def _fnet(args) -> int:
    strategy = _train_strategy(args) if args.fnet_command in ("train", "mask") else None
    from keras_astro.studies import fnet

    progress = not args.no_progress
    if args.fnet_command == "train":
        m = fnet.train_fnet(args.out, quick=args.quick, data=args.data, n=args.n, preset=args.preset, conv_impl=args.conv, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, baseline=not args.no_baseline, export=not args.no_export, progress=progress, strategy=strategy, backup_dir=args.backup_dir, backup_every=args.backup_every)
        _print({"test": m["fnet"].get("test"), "qn_fail": m["fnet"].get("qn_fail"), "out": str(args.out)})
    elif args.fnet_command == "mask":
        _print(fnet.line_mask_experiment(args.out, quick=args.quick, data=args.data, n=args.n, preset=args.preset, conv_impl=args.conv, epochs=args.epochs, progress=progress, strategy=strategy, backup_dir=args.backup_dir, backup_every=args.backup_every))
    elif args.fnet_command == "predict":
        res = fnet.predict(args.model, args.inputs)
        if args.out:
            import pandas as pd

            pd.DataFrame(res).to_csv(args.out, index=False)
            _print({"n": len(res["z"]), "out": str(args.out)})
        else:
            _print(res)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command == "reproduce":
            from keras_astro.studies.reproduce import reproduce

            res = reproduce(args.out, quick=args.quick, studies=args.studies, progress=not args.no_progress)
            _print({"report": str(args.out / "report.md"), "studies": res})
        elif args.command == "info":
            import tensorflow as tf

            from keras_astro.distribute import planned_strategy
            from keras_astro.studies.common import versions

            strategy = planned_strategy()  # describes a multi-worker cluster without joining it
            _print({"devices": [d.name for d in tf.config.list_logical_devices()], "strategy": strategy, "versions": versions()})
        elif args.command == "agn":
            return _agn(args)
        elif args.command == "spectra":
            return _spectra(args)
        elif args.command == "rgz":
            return _rgz(args)
        elif args.command == "fnet":
            return _fnet(args)
        elif args.command == "claran":
            return _claran(args)
    except ModelFileError as exc:
        log.debug("refused model", exc_info=True)
        sys.stderr.write(f"keras-astro: refused model: {exc}\n")
        return 2
    except (FileNotFoundError, ValueError, KeyError, ConnectionError, RuntimeError, OSError) as exc:
        log.debug("error", exc_info=True)
        sys.stderr.write(f"keras-astro: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
