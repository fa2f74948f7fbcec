"""ONNX Runtime I/O binding: input and output buffers that live on the device.

With plain ``session.run`` ONNX Runtime allocates a device input and output
for every call and copies both ways. Occlusion sends hundreds of batches of
the same shape in a row, so here each thread keeps its own pair of device
buffers per batch shape, copies the batch into the input buffer in place,
and reads only the class probabilities back. Buffers are per thread because
the pipeline and the occlusion workers share one classifier.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import onnxruntime as ort

# Batch shapes kept per thread: occlusion uses a full batch and a remainder,
# the pipeline one batch per study; beyond this the oldest buffers go.
SHAPES_KEPT = 4


class _Buffers:
    def __init__(
        self,
        session: ort.InferenceSession,
        input_name: str,
        output_name: str,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        device: str,
        device_id: int,
    ) -> None:
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(
            input_shape, np.float32, device, device_id
        )
        self.output = ort.OrtValue.ortvalue_from_shape_and_type(
            output_shape, np.float32, device, device_id
        )
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(input_name, self.input)
        self.binding.bind_ortvalue_output(output_name, self.output)


class DeviceBinding:
    """Runs one single-input, single-output session through I/O binding."""

    def __init__(
        self, session: ort.InferenceSession, classes: int, device: str, device_id: int = 0
    ) -> None:
        self.session = session
        self.classes = classes
        self.device = device
        self.device_id = device_id
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self._local = threading.local()

    def _buffers_for(self, shape: tuple[int, ...]) -> _Buffers:
        cache: OrderedDict[tuple[int, ...], _Buffers] | None = getattr(self._local, "buffers", None)
        if cache is None:
            cache = self._local.buffers = OrderedDict()
        buffers = cache.get(shape)
        if buffers is None:
            buffers = _Buffers(
                self.session,
                self.input_name,
                self.output_name,
                shape,
                (shape[0], self.classes),
                self.device,
                self.device_id,
            )
            cache[shape] = buffers
            while len(cache) > SHAPES_KEPT:
                cache.popitem(last=False)
        else:
            cache.move_to_end(shape)
        return buffers

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for an NHWC float32 batch."""
        contiguous = np.ascontiguousarray(batch, dtype=np.float32)
        buffers = self._buffers_for(tuple(contiguous.shape))
        buffers.input.update_inplace(contiguous)
        self.session.run_with_iobinding(buffers.binding)
        return np.array(buffers.output.numpy(), dtype=np.float32, copy=True)
