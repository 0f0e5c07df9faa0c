"""JPEG decoding on the scoring device (nvJPEG on a GPU), with the host's Pillow path as the fallback.

On an H200 host decoding bounds a GPU worker: 16 Pillow threads decode and preprocess about 1,000 ImageNet
photos/s, nvJPEG through torchvision about 4,900, while ResNet-50 scores 12,000 (bench/gpu.py; issue 8).
torchvision is optional: without it, or for any image the device decoder declines or fails on, the host path
decodes and, where the image is bad, names the reason. nvJPEG matches libjpeg bit for bit on 4:4:4 JPEGs only:
it upsamples 4:2:0 chroma differently, so a calibration records which decoder scored its reference. torchvision
0.29 deprecates its image decoders in favour of TorchCodec; this module is the one place to change when
TorchCodec's GPU JPEG decoder is the way to go.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Literal, get_args

import torch

from scoring.errors import DecoderUnavailableError
from scoring.images import TORCH_INTERPOLATIONS, Preprocessing
from scoring.jpeg import read_jpeg_header

Decoder = Literal["host", "device"]
DECODERS: tuple[Decoder, ...] = get_args(Decoder)

_LOG = logging.getLogger(__name__)
# Most pixels, padding included, resampled in one go: the run is held as uint8, then float32, beside its decoded
# frames (16 MP is about 200 MB in float32), so 12 MP photos go one at a time and 32 ImageNet photos together.
DEVICE_RESAMPLE_PIXELS = 16_000_000
_JPEG_END = b"\xff\xd9"
# Start-of-frame codings nvJPEG decodes: baseline, extended and progressive Huffman.
_DEVICE_CODINGS = (0, 1, 2)


class DeviceJpegDecoder:
    """Decodes batches of JPEGs with ``torchvision.io.decode_jpeg`` on one device, then preprocesses there."""

    def __init__(self, preprocessing: Preprocessing, device: torch.device) -> None:
        """
        Args:
            preprocessing: the model's; its interpolation must be one torch resamples with antialiasing.
            device: where to decode: a CUDA device uses nvJPEG, the CPU libjpeg-turbo.

        Raises:
            DecoderUnavailableError: torchvision does not load, or the preprocessing's interpolation has no
                torch equivalent.
        """
        try:
            from torchvision import io as vision_io
        except ImportError as error:  # torchvision raises RuntimeError too when built for another torch
            raise DecoderUnavailableError(
                "decoder='device' decodes JPEGs with torchvision; install the torchvision built for this torch "
                f"({torch.__version__}), or use decoder='host'"
            ) from error
        except RuntimeError as error:
            raise DecoderUnavailableError(
                f"torchvision does not load beside torch {torch.__version__} ({error}); install the matching "
                "build, or use decoder='host'"
            ) from error
        if preprocessing.interpolation not in TORCH_INTERPOLATIONS:
            raise DecoderUnavailableError(
                f"decoder='device' resamples with {TORCH_INTERPOLATIONS}, not {preprocessing.interpolation!r}; "
                "use decoder='host' for this model"
            )
        self._vision_io = vision_io
        self._preprocessing = preprocessing
        self.device = device
        # Batched matrix products save kernel launches on a GPU; on a CPU they cost more than they save (0.10 s
        # against 0.01 s one at a time for 14 photos of a few hundred pixels a side).
        self._resample_together = device.type == "cuda"
        self._streams = threading.local()

    def accepts(self, data: bytes) -> bool:
        """Whether ``data`` is a JPEG the device can decode as the host would, within the preprocessing's limits.

        Reads the header's markers only (a few microseconds); everything else goes to the host path, which also
        gives bad images their rejection reason.
        """
        # Without its end-of-image marker a JPEG is truncated: libjpeg pads it with grey where Pillow rejects it.
        if not data.endswith(_JPEG_END) or len(data) > self._preprocessing.max_bytes:
            return False
        header = read_jpeg_header(data)
        if header is None:
            return False
        width, height = header.width, header.height
        # nvJPEG decodes baseline and progressive Huffman-coded 8-bit JPEGs; not lossless or arithmetic coding.
        supported = header.precision == 8 and header.coding in _DEVICE_CODINGS
        # One grey component, or three YCbCr ones: CMYK and YCCK JPEGs take the host path, and so do RGB-coded
        # ones, whose handling by nvJPEG is untested. A grey JPEG whose one component is sampled 2x2 (Pillow
        # writes these at subsampling=2) came out of nvJPEG wrong on an H200: skimage's camera photo changed
        # class (872 to 716).
        colours = header.ycbcr or (len(header.components) == 1 and header.components[0][1:] == (1, 1))
        within_limits = width * height <= self._preprocessing.max_pixels and self._preprocessing.fits(width, height)
        return (
            supported
            and colours
            # nvJPEG ignores EXIF and XMP orientation (torchvision applies EXIF's on the CPU only): a phone photo
            # stored sideways would be scored sideways.
            and header.upright
            # The host reads an MPO's first picture; which one nvJPEG would read is untested.
            and not header.multi_picture
            # nvJPEG decodes a scan naming a component its frame lacks, which libjpeg rejects (seen on an H200).
            and header.scan_matches_frame
            and within_limits
        )

    def decode(self, images: Sequence[bytes]) -> list[torch.Tensor | None]:
        """Decode and preprocess on the device the images it :meth:`accepts`.

        Safe to call from several threads: on a GPU each thread works on a stream of its own and waits for it,
        so what it returns is complete; a caller reading it on another stream must ``record_stream`` it there.

        Returns:
            Per input, a float32 (3, crop, crop) tensor on the device, or None for an image it declines or fails
            on (decoding, or out of memory); the host path takes those.
        """
        outputs: list[torch.Tensor | None] = [None] * len(images)
        accepted = [index for index, data in enumerate(images) if self.accepts(data)]
        if not accepted:
            return outputs
        with self._thread_stream():
            encoded = [torch.frombuffer(bytearray(images[index]), dtype=torch.uint8) for index in accepted]
            try:
                decoded: list[torch.Tensor | None] = list(self._decode(encoded))
            except RuntimeError as error:
                # One bad image fails a batched call; decode one at a time to find it and keep the others.
                _LOG.warning(
                    "device JPEG decoding failed on a batch of %d (%s); retrying one at a time", len(encoded), error
                )
                decoded = [self._decode_one(data) for data in encoded]
            for index, tensor in zip(accepted, self._preprocess(decoded), strict=True):
                outputs[index] = tensor
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        return outputs

    def _thread_stream(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        if getattr(self._streams, "stream", None) is None:
            self._streams.stream = torch.cuda.Stream(self.device)
        return torch.cuda.stream(self._streams.stream)

    def _decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        return self._vision_io.decode_jpeg(encoded, mode=self._vision_io.ImageReadMode.RGB, device=self.device)

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return self._decode([data])[0]
        except RuntimeError as error:
            _LOG.warning("device JPEG decoding failed (%s); the host decodes this image", error)
            return None

    def _preprocess(self, decoded: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """On a GPU frames are resampled together, whatever their sizes, in runs within the pixel budget."""
        outputs: list[torch.Tensor | None] = [None] * len(decoded)
        present = [position for position, pixels in enumerate(decoded) if pixels is not None]
        together = self._resample_together
        runs = _padded_runs(present, decoded, DEVICE_RESAMPLE_PIXELS) if together else ([p] for p in present)
        for positions in runs:
            frames = [decoded[position] for position in positions]
            try:
                if together:
                    batch = self._preprocessing.frames_to_tensor(frames)
                else:
                    batch = self._preprocessing.pixels_to_tensor(frames[0])[None]
            except RuntimeError as error:  # CUDA out of memory is a RuntimeError: the host has more room
                _LOG.warning(
                    "preprocessing %d images on the device failed (%s); the host decodes them", len(positions), error
                )
                continue
            for position, tensor in zip(positions, batch.unbind(), strict=True):
                outputs[position] = tensor
        return outputs


def _padded_runs(positions: list[int], decoded: Sequence[torch.Tensor | None], budget: int) -> Iterator[list[int]]:
    """``positions`` in runs whose frames, padded to the run's tallest and widest, hold at most ``budget`` pixels
    together (a frame past the budget alone). Sorted by size first, so padding stays small."""
    run: list[int] = []
    tallest = widest = 0
    for position in sorted(positions, key=lambda position: tuple(decoded[position].shape[-2:])):
        height, width = decoded[position].shape[-2:]
        if run and (len(run) + 1) * max(tallest, height) * max(widest, width) > budget:
            yield run
            run, tallest, widest = [], 0, 0
        run.append(position)
        tallest, widest = max(tallest, height), max(widest, width)
    if run:
        yield run
