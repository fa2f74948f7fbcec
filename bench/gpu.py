"""Benchmark: the GPU path, proven on a lent device (issue 13, item 6).

One run records, each figure beside the device's limit:

- that the CUDA execution provider is the one in use, read back from the
  sessions the daemon's own code opens (``model_runtime.classifier``);
- InceptionV3 at 299x299 (random weights, exported as the trainer exports):
  a batch-size sweep, plain ``session.run`` against I/O binding
  (``model_runtime.device_binding``), in fp32 and in fp16;
- fp16 against fp32: top-class agreement and mean absolute difference of the
  probabilities on the phantom-trained small models and their phantoms;
- the phantom-trained small CNNs through ``Classifier``, by batch size;
- the stride-1 occlusion map of InceptionV3 (78,400 forward passes) through
  ``model_runtime.occlusion``, in seconds, with the time spent on the host;
- the same InceptionV3 on the machine's CPUs, for scale.

It needs only numpy, onnx, onnxruntime(-gpu) and pillow, so it runs on the
device image with nothing but the carried onnxruntime-gpu wheel
(``bench/gpu.sh``). On a CPU it runs too, for checking (``--device cpu``):
what does not fit in ``--budget-seconds`` is skipped and said so.

Run: python3 bench/gpu.py --payload DIR [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import onnx
import onnxruntime as ort
from timing import images_per_second

from model_runtime.classifier import CUDA, Classifier, create_session
from model_runtime.device_binding import DeviceBinding
from model_runtime.occlusion import grid_positions, occlusion_map
from phantoms.images import labels_for, render

# NVIDIA H200 SXM datasheet, dense (no sparsity) tensor-core peaks, TFLOP/s.
# ONNX Runtime's CUDA provider runs fp32 convolutions on TF32 tensor cores
# (its use_tf32 option is on by default), so fp32 is set against TF32.
H200_PEAK_TFLOPS = {"fp32": 494.7, "fp16": 989.4}
# What a bf16 8192^3 matrix product reached on this kind of machine
# (device KINDS.md, 2026-10-28): the practical ceiling.
H200_MEASURED_MATMUL_TFLOPS = 790.0
# Host to device: PCIe Gen5 x16, one direction, GB/s.
PCIE_GEN5_X16_GBPS = 64.0

SIZE = 299
CLASSES = 4
BOX = 20
Predict = Callable[[np.ndarray], np.ndarray]


class Report:
    """Prints each figure as it comes and keeps them all for gpu.json."""

    def __init__(self, out: Path | None, deadline: float) -> None:
        self.out = out
        self.deadline = deadline
        self.figures: dict[str, Any] = {}
        self.lines: list[str] = []

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def record(self, key: str, value: Any) -> None:
        self.figures[key] = value
        self.save()

    def save(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu.json").write_text(json.dumps(self.figures, indent=2, default=str))
        (self.out / "gpu.txt").write_text("\n".join(self.lines) + "\n")

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def multiply_adds(path: Path) -> int:
    """Multiply-adds of one image through the graph's Conv, MatMul and Gemm nodes."""
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
        for info in [*inferred.graph.value_info, *inferred.graph.output]
    }
    weights = {tensor.name: list(tensor.dims) for tensor in model.graph.initializer}
    total = 0
    for node in inferred.graph.node:
        out = shapes.get(node.output[0])
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        if not out or not weight:
            continue
        if node.op_type == "Conv":  # weight (out, in / group, kh, kw)
            total += math.prod(out) * math.prod(weight[1:])
        elif node.op_type in ("MatMul", "Gemm"):  # reduction over the shared axis
            shared = weight[0] if node.op_type == "MatMul" else min(weight)
            total += math.prod(out) * shared
    return total


def to_fp16(source: Path, target: Path) -> Path:
    """An fp16 copy with float32 input and output, so callers are unchanged."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return target


def plain(session: ort.InferenceSession) -> Predict:
    name = session.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: batch})[0])

    return predict


def bound(session: ort.InferenceSession, provider: str, classes: int) -> Predict:
    return DeviceBinding(session, classes, device="cuda" if provider == CUDA else "cpu").run


def tflops(rate: float, macs: int) -> float:
    return rate * 2 * macs / 1e12


def environment(report: Report, device: str) -> None:
    if device != "cpu" and hasattr(ort, "preload_dlls"):
        # CUDA 13 and cuDNN 9 from the nvidia-* wheels beside this Python
        # (onnxruntime-gpu's own loader; bench/gpu.sh also sets LD_LIBRARY_PATH).
        ort.preload_dlls()
    report.say(f"python {platform.python_version()}, {os.cpu_count()} CPUs")
    report.say(
        f"onnxruntime {ort.__version__}, available: {', '.join(ort.get_available_providers())}"
    )
    report.record("onnxruntime", ort.__version__)
    report.record("available_providers", ort.get_available_providers())
    try:
        smi = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        smi = f"nvidia-smi unavailable: {exc}"
    report.say(f"device: {smi}")
    report.record("nvidia_smi", smi)


def sweep(
    report: Report,
    title: str,
    predictors: dict[str, Predict],
    batches: list[int],
    shape: tuple[int, ...],
    macs: int,
    precision: str,
    seconds: float,
) -> dict[str, dict[int, float]]:
    """Images/s per batch size for each predictor, with TFLOP/s against the peak."""
    peak = H200_PEAK_TFLOPS[precision]
    report.say(f"\n{title}")
    report.say(
        f"{'batch':>6}"
        + "".join(f"{name + ' img/s':>20}{'TFLOP/s':>9}{'% peak':>8}" for name in predictors)
    )
    rates: dict[str, dict[int, float]] = {name: {} for name in predictors}
    rng = np.random.default_rng(0)
    for size in batches:
        if report.left() < 20:
            report.say(f"{size:>6}  (skipped: {report.left():.0f} s of budget left)")
            continue
        batch = rng.random((size, *shape), dtype=np.float32)
        cells = ""
        for name, predict in predictors.items():
            rate = images_per_second(predict, batch, seconds, warm_ups=2)
            rates[name][size] = rate
            cells += f"{rate:>20.1f}{tflops(rate, macs):>9.1f}{tflops(rate, macs) / peak:>8.1%}"
        report.say(f"{size:>6}{cells}")
    return rates


def inception(
    report: Report, payload: Path, device: str, batches: list[int], seconds: float
) -> dict[str, Any]:
    fp32_path = payload / "inception_v3.onnx"
    macs = multiply_adds(fp32_path)
    report.record("inception_v3_multiply_adds", macs)
    report.say(f"\nInceptionV3 {SIZE}x{SIZE}: {macs / 1e9:.2f} G multiply-adds per image")
    fp32, provider = create_session(fp32_path, device)
    report.say(f"fp32 session providers: {fp32.get_providers()} (in use: {provider})")
    report.record("inception_fp32_providers", fp32.get_providers())
    report.record("cuda_active", provider == CUDA)
    shape = (SIZE, SIZE, 3)
    rates32 = sweep(
        report,
        f"InceptionV3 fp32 on {provider}: plain run vs I/O binding",
        {"plain": plain(fp32), "bound": bound(fp32, provider, CLASSES)},
        batches,
        shape,
        macs,
        "fp32",
        seconds,
    )
    report.record("inception_fp32_images_per_second", rates32)
    input_bytes = SIZE * SIZE * 3 * 4
    for size, rate in rates32["plain"].items():
        report.say(
            f"  batch {size}: plain run moves {rate * input_bytes / 1e9:.1f} GB/s to the device "
            f"({rate * input_bytes / 1e9 / PCIE_GEN5_X16_GBPS:.0%} of PCIe Gen5 x16)"
        )
    sessions: dict[str, Predict] = {"fp32": bound(fp32, provider, CLASSES)}
    sweeps = {"fp32": rates32["bound"]}
    if report.left() > 60:
        fp16_path = to_fp16(fp32_path, payload / "inception_v3_fp16.onnx")
        fp16, provider16 = create_session(fp16_path, device)
        report.say(f"fp16 session providers: {fp16.get_providers()}")
        rates16 = sweep(
            report,
            f"InceptionV3 fp16 on {provider16}: I/O binding",
            {"bound fp16": bound(fp16, provider16, CLASSES)},
            batches,
            shape,
            macs,
            "fp16",
            seconds,
        )
        report.record("inception_fp16_images_per_second", rates16)
        sessions["fp16"] = bound(fp16, provider16, CLASSES)
        sweeps["fp16"] = rates16["bound fp16"]
        images = np.random.default_rng(1).random((64, *shape), dtype=np.float32)
        a, b = sessions["fp32"](images), sessions["fp16"](images)
        difference = float(np.abs(a - b).mean())
        report.say(
            f"  fp16 vs fp32 on 64 random images: mean |dp| {difference:.2e} (random weights)"
        )
        report.record("inception_fp16_mean_abs_difference", difference)
    return {"macs": macs, "provider": provider, "predictors": sessions, "sweeps": sweeps}


def occlusion(report: Report, model: dict[str, Any], occlusion_batch: int) -> None:
    """The paper's stride-1 map, when the measured stride-20 rate says it fits."""
    image = np.random.default_rng(2).random((SIZE, SIZE, 3), dtype=np.float32)
    stride1 = len(grid_positions(SIZE, BOX, 1)) ** 2 + 1
    report.say(f"\nOcclusion, 20x20 box, InceptionV3 {SIZE}x{SIZE}, batches of {occlusion_batch}")
    header = f"{'precision':<10}{'mode':<10}{'passes':>8}{'seconds':>9}"
    report.say(header + f"{'passes/s':>10}{'host share':>12}")
    results: dict[str, Any] = {}
    for precision, predict in model["predictors"].items():
        inference = 0.0

        def timed(batch: np.ndarray, predict: Predict = predict) -> np.ndarray:
            nonlocal inference
            started = time.perf_counter()
            try:
                return predict(batch)
            finally:
                inference += time.perf_counter() - started

        predict(np.repeat(image[None], occlusion_batch, axis=0))  # warm-up of this shape
        for mode, stride in (("grid", 20), ("fast", 1), ("grid", 1)):
            passes = (
                stride1 // 20 if mode == "fast" else len(grid_positions(SIZE, BOX, stride)) ** 2
            )
            # The sweep's rate at this batch size: the stride-20 map is too short
            # to say (its remainder batch is a new shape, with its own search
            # for convolution algorithms).
            rate = model["sweeps"][precision].get(occlusion_batch)
            if rate and passes / rate > report.left() - 10:
                report.say(
                    f"{precision:<10}{mode + ' ' + str(stride):<10}{passes:>8}"
                    f"{passes / rate:>9.1f}  (extrapolated: over the budget left)"
                )
                continue
            inference = 0.0
            result = occlusion_map(
                timed, image, mode=mode, stride=stride, batch_size=occlusion_batch
            )
            row = {
                "passes": result.forward_passes,
                "seconds": result.seconds,
                "passes_per_second": result.forward_passes / result.seconds,
                "host_share": 1 - inference / result.seconds,
            }
            results[f"{precision} {mode} {stride}"] = row
            label = f"{mode} {stride}"
            report.say(
                f"{precision:<10}{label:<10}{row['passes']:>8}{row['seconds']:>9.1f}"
                f"{row['passes_per_second']:>10.0f}{row['host_share']:>12.0%}"
            )
            report.record("occlusion", results)


def small_models(
    report: Report, payload: Path, device: str, batches: list[int], seconds: float
) -> None:
    """The phantom-trained packages through the daemon's Classifier, and fp16 parity."""
    for modality in ("oct", "cxr"):
        if report.left() < 30:
            report.say(f"\nsmall CNN {modality}: skipped, budget spent")
            continue
        package = payload / "models" / modality
        classifier = Classifier(package, device=device)
        spec = classifier.manifest.input
        shape = (spec.height, spec.width, spec.channels)
        macs = multiply_adds(package / "model.onnx")
        predictors: dict[str, Predict] = {"Classifier": classifier.predict}
        rates = sweep(
            report,
            f"small CNN {modality} {spec.height}x{spec.width} on {classifier.provider} "
            f"(binding: {classifier.binding is not None}), {macs / 1e6:.1f} M multiply-adds",
            predictors,
            batches,
            shape,
            macs,
            "fp32",
            seconds,
        )
        report.record(f"small_{modality}_images_per_second", rates)
        fp16_session, provider16 = create_session(
            to_fp16(package / "model.onnx", payload / f"{modality}_fp16.onnx"), device
        )
        rng = np.random.default_rng(3)
        phantoms = [
            classifier.prepare(render(modality, label, rng).image)
            for label in labels_for(modality)
            for _ in range(25)
        ]
        batch = np.stack(phantoms)
        p32 = classifier.predict(batch)
        p16 = plain(fp16_session)(batch)
        agreement = float((p32.argmax(1) == p16.argmax(1)).mean())
        difference = float(np.abs(p32 - p16).mean())
        report.say(
            f"  fp16 vs fp32 on {len(batch)} phantoms ({provider16}): top class agrees "
            f"{agreement:.1%}, mean |dp| {difference:.2e}"
        )
        report.record(
            f"small_{modality}_fp16_parity",
            {"agreement": agreement, "mean_abs_difference": difference},
        )


# CUDA provider options worth knowing the price of (ONNX Runtime's CUDA EP
# documentation): NHWC kernels suit tensor cores; a larger cuDNN workspace
# allows faster algorithms; a CUDA graph replays a whole run in one launch
# (it needs I/O binding at fixed addresses, which DeviceBinding keeps).
PROVIDER_VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "prefer_nhwc": {"prefer_nhwc": "1"},
    "max workspace": {"cudnn_conv_use_max_workspace": "1"},
    "nhwc+workspace": {"prefer_nhwc": "1", "cudnn_conv_use_max_workspace": "1"},
    "nhwc+graph": {"prefer_nhwc": "1", "enable_cuda_graph": "1"},
}


def provider_options(report: Report, payload: Path, batch_size: int, seconds: float) -> None:
    """InceptionV3 images/s at one batch size under each CUDA provider variant."""
    report.say(f"\nInceptionV3 CUDA provider options, batch {batch_size}, I/O binding (img/s)")
    batch = np.random.default_rng(5).random((batch_size, SIZE, SIZE, 3), dtype=np.float32)
    figures: dict[str, dict[str, float | str]] = {}
    for precision in ("fp32", "fp16"):
        name = "inception_v3.onnx" if precision == "fp32" else "inception_v3_fp16.onnx"
        for variant, options in PROVIDER_VARIANTS.items():
            if report.left() < 25:
                report.say(f"  {precision} {variant}: skipped, budget spent")
                continue
            try:
                session = ort.InferenceSession(
                    str(payload / name), providers=[(CUDA, options), "CPUExecutionProvider"]
                )
                rate: float | str = images_per_second(
                    bound(session, session.get_providers()[0], CLASSES), batch, seconds, warm_ups=2
                )
                line = f"{rate:.1f}"
            except Exception as exc:  # a variant this build refuses is a finding
                rate = line = f"failed: {str(exc).splitlines()[0][:120]}"
            figures.setdefault(precision, {})[variant] = rate
            report.say(f"  {precision:<5}{variant:<16}{line}")
            report.record("inception_provider_options", figures)


def cpu_reference(report: Report, payload: Path, macs: int, seconds: float) -> None:
    if report.left() < 40:
        report.say("\nCPU reference: skipped, budget spent")
        return
    session, provider = create_session(payload / "inception_v3.onnx", "cpu")
    batch = np.random.default_rng(4).random((32, SIZE, SIZE, 3), dtype=np.float32)
    rate = images_per_second(plain(session), batch, seconds, warm_ups=2)
    report.say(
        f"\nInceptionV3 fp32 on this machine's {os.cpu_count()} CPUs ({provider}), batch 32: "
        f"{rate:.1f} img/s ({tflops(rate, macs):.2f} TFLOP/s)"
    )
    report.record("inception_cpu_images_per_second_batch32", rate)


def batches(text: str) -> list[int]:
    return [int(size) for size in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload", type=Path, required=True, help="inception_v3.onnx, models/")
    parser.add_argument("--device", default="cuda", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, help="where gpu.json and gpu.txt go")
    parser.add_argument("--batches", default="1,8,32,64,128,256,512")
    parser.add_argument("--small-batches", default="1,64,256,1024")
    parser.add_argument("--occlusion-batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=1.5, help="timing per figure")
    parser.add_argument("--budget-seconds", type=float, default=330)
    parser.add_argument(
        "--sections", default="small,occlusion,cpu", help="beside the InceptionV3 sweeps"
    )
    args = parser.parse_args()
    report = Report(args.out, time.perf_counter() + args.budget_seconds)
    sections = set(args.sections.split(","))
    environment(report, args.device)
    model = inception(report, args.payload, args.device, batches(args.batches), args.seconds)
    if "small" in sections:
        small = batches(args.small_batches)
        small_models(report, args.payload, args.device, small, args.seconds)
    if "occlusion" in sections:
        occlusion(report, model, args.occlusion_batch)
    if "options" in sections:
        provider_options(report, args.payload, args.occlusion_batch, args.seconds)
    if "cpu" in sections:
        cpu_reference(report, args.payload, model["macs"], args.seconds)
    report.say(
        f"\nLimits used: H200 dense peaks {H200_PEAK_TFLOPS} TFLOP/s (fp32 set against TF32); "
        f"a bf16 matrix product reached {H200_MEASURED_MATMUL_TFLOPS:.0f} on this kind of machine."
    )
    report.save()


if __name__ == "__main__":
    main()
