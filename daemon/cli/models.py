"""``triage phantoms``, ``train``, ``evaluate``, ``quantize``, ``demo``: making and checking models.

The training stack is imported only inside these commands (the ``train``
extra); the daemon itself never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from daemon.cli.process import configure_logging, quiet_onnxruntime, quiet_tensorflow
from domain.errors import TriageError


def cmd_phantoms(args: argparse.Namespace) -> int:
    from phantoms.files import write_dicom_studies, write_jpeg_dataset

    configure_logging("INFO")
    writer = write_jpeg_dataset if args.format == "jpeg" else write_dicom_studies
    root = writer(args.modality, Path(args.out), args.count, seed=args.seed)
    print(root)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    quiet_tensorflow()
    try:
        from trainer.train import TrainOptions, train
    except ImportError as exc:
        raise TriageError(
            f"Training needs the train extra (pip install 'dicom-triage[train]'): {exc}"
        ) from exc
    configure_logging("INFO")
    options = TrainOptions(
        modality=args.modality,
        data=Path(args.data),
        out=Path(args.out),
        task=args.task,
        backbone=args.backbone,
        base_weights=args.base_weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        holdout_fraction=args.holdout_fraction,
        limit_per_class=args.limit_per_class,
        seed=args.seed,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
    )
    print(train(options).package)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    quiet_tensorflow()
    try:
        from trainer.evaluate import evaluate_package
    except ImportError as exc:
        raise TriageError(f"Evaluation needs the train extra: {exc}") from exc
    configure_logging("INFO")
    quiet_onnxruntime()
    metrics = evaluate_package(
        Path(args.model),
        Path(args.data),
        split=args.split,
        out_dir=Path(args.out) if args.out else None,
    )
    summary = {
        k: metrics[k]["value"] for k in ("accuracy", "sensitivity", "specificity", "weighted_error")
    }
    print(json.dumps(summary, indent=1))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    try:
        from model_runtime.package import load_package
        from model_runtime.preprocess import load_grey_file
        from trainer.datasets import discover
        from trainer.quantize import quantize_package
    except ImportError as exc:
        raise TriageError(f"Quantisation needs the train extra: {exc}") from exc
    configure_logging("INFO")
    quiet_onnxruntime()
    manifest, _model = load_package(Path(args.model))
    samples = discover(Path(args.data), manifest.modality.value, manifest.task)
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"][: args.held_out]
    # An even spread of the training split, so that every class calibrates.
    step = max(1, len(train) // args.calibration)
    calibration = train[::step][: args.calibration]
    # ONNX Runtime's quantiser prints its calibration ranges; stdout is for
    # the result.
    with contextlib.redirect_stdout(sys.stderr):
        written, parity = quantize_package(
            Path(args.model),
            Path(args.out),
            [load_grey_file(str(s.path)) for s in calibration],
            [load_grey_file(str(s.path)) for s in test],
            min_agreement=args.min_agreement,
        )
    print(
        json.dumps(
            {
                "package": args.out,
                "version": written.version,
                "agreement": parity.agreement,
                "mean_abs_difference": parity.mean_abs_difference,
                "held_out_images": parity.images,
            },
            indent=1,
        )
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    quiet_tensorflow()
    from phantoms.demo import run_demo

    configure_logging("INFO")
    return run_demo(Path(args.state_dir), count=args.count, config=args.config)
