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

import torch

from scoring.errors import DecoderUnavailableError
from scoring.images import TORCH_INTERPOLATIONS, Preprocessing
from scoring.jpeg import RGB_IDENTIFIERS, read_jpeg_header
from scoring.properties import NativeImage, native_properties

_LOG = logging.getLogger(__name__)
# Device memory one run of frames resampled together may take: its padded frames as uint8 and float32 (5 bytes a
# value) and both passes' weights as they are built (up to 16 bytes an entry). 320 MB holds 32 ImageNet photos or
# 32 frames of 640x480; a 12 MP photo goes alone.
DEVICE_RESAMPLE_BYTES = 320_000_000
_JPEG_END = b"\xff\xd9"
# Start-of-frame codings nvJPEG decodes: baseline, extended and progressive Huffman.
_DEVICE_CODINGS = (0, 1, 2)


def decodes_on_device(data: bytes, preprocessing: Preprocessing) -> bool:
    """Whether nvJPEG decodes ``data`` as the host's libjpeg would, within the preprocessing's limits.

    Reads the header's markers only (a few microseconds); everything else goes to the host path, which also
    gives bad images their rejection reason.
    """
    # Without its end-of-image marker a JPEG is truncated: libjpeg pads it with grey where Pillow rejects it.
    if not data.endswith(_JPEG_END) or len(data) > preprocessing.max_bytes:
        return False
    header = read_jpeg_header(data)
    if header is None:
        return False
    width, height = header.width, header.height
    # nvJPEG decodes baseline and progressive Huffman-coded 8-bit JPEGs; not lossless or arithmetic coding.
    supported = header.precision == 8 and header.coding in _DEVICE_CODINGS
    # One grey component, or three YCbCr ones: CMYK and YCCK JPEGs take the host path, and so do RGB-coded
    # ones and any whose component ids say R, G, B, whose handling by nvJPEG is untested. A grey JPEG whose one
    # component is sampled 2x2 (Pillow writes these at subsampling=2) came out of nvJPEG wrong on an H200:
    # skimage's camera photo changed class (872 to 716).
    identifiers = tuple(identifier for identifier, _, _ in header.components)
    colour = header.ycbcr and identifiers != RGB_IDENTIFIERS
    grey = len(header.components) == 1 and header.components[0][1:] == (1, 1)
    within_limits = width * height <= preprocessing.max_pixels and preprocessing.fits(width, height)
    return (
        supported
        and (colour or grey)
        # nvJPEG ignores EXIF and XMP orientation (torchvision applies EXIF's on the CPU only): a phone photo
        # stored sideways would be scored sideways.
        and header.upright
        # The host reads an MPO's first picture; which one nvJPEG would read is untested.
        and not header.multi_picture
        # nvJPEG decodes a scan naming a component its frame lacks, which libjpeg rejects (seen on an H200).
        and header.scans_match_frame
        and within_limits
    )


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
        """Whether ``data`` is a JPEG the device can decode as the host would (:func:`decodes_on_device`)."""
        return decodes_on_device(data, self._preprocessing)

    def decode(self, images: Sequence[bytes]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Decode and preprocess on the device the images it :meth:`accepts`, and measure their native properties.

        Safe to call from several threads: on a GPU each thread works on a stream of its own and waits for it,
        so what it returns is complete; a caller reading it on another stream must ``record_stream`` it there.

        Returns:
            Per input, a float32 (3, crop, crop) tensor and its native properties (:mod:`scoring.properties`), on
            the device, or None for an image it declines or fails on (decoding, or out of memory); the host path
            takes those.
        """
        outputs: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(images)
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
            # Measured at the frames' own resolution, before resizing spreads their 8x8 blocks.
            natives = [
                None if frame is None else native_properties(NativeImage.of(frame.permute(1, 2, 0), header))
                for frame, header in zip(decoded, (read_jpeg_header(images[index]) for index in accepted), strict=True)
            ]
            for index, tensor, native in zip(accepted, self._preprocess(decoded), natives, strict=True):
                outputs[index] = None if tensor is None else (tensor, native)
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
        """On a GPU frames are resampled together, whatever their sizes, in runs within the memory budget."""
        outputs: list[torch.Tensor | None] = [None] * len(decoded)
        present = [position for position, pixels in enumerate(decoded) if pixels is not None]
        together = self._resample_together and not _matmul_may_round()
        crop = self._preprocessing.crop
        runs = _padded_runs(present, decoded, crop, DEVICE_RESAMPLE_BYTES) if together else ([p] for p in present)
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


def _matmul_may_round() -> bool:
    """Whether float32 matrix products may run in TF32 or bfloat16, a process-wide torch setting.

    TF32 keeps 10 bits of the resampling weights: 3% of pixels then land a grey level or two from Pillow's, so
    frames are resampled one at a time instead, by interpolate, which the setting does not touch.
    """
    try:
        return torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:  # the legacy and the per-backend TF32 settings both used: torch will not say
        return True


def _padded_runs(
    positions: list[int], decoded: Sequence[torch.Tensor | None], crop: int, budget: int
) -> Iterator[list[int]]:
    """``positions`` in runs whose frames, padded to the run's tallest and widest, take at most ``budget`` bytes
    to resample together (a frame past the budget alone). Sorted by size first, so padding stays small."""
    run: list[int] = []
    tallest = widest = 0
    for position in sorted(positions, key=lambda position: tuple(decoded[position].shape[-2:])):
        height, width = decoded[position].shape[-2:]
        if run and _run_bytes(len(run) + 1, max(tallest, height), max(widest, width), crop) > budget:
            yield run
            run, tallest, widest = [], 0, 0
        run.append(position)
        tallest, widest = max(tallest, height), max(widest, width)
    if run:
        yield run


def _run_bytes(count: int, height: int, width: int, crop: int) -> int:
    """Device memory to resample ``count`` frames padded to ``height`` x ``width`` together (DEVICE_RESAMPLE_BYTES)."""
    return count * (3 * height * width * 5 + 2 * crop * max(height, width) * 16)
