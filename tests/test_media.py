"""The media layer of live ingest: frame checks, clip encoding and the built-in analyses.

Frames are real JPEG, PNG and WebP files made with Pillow (``common.Images``); every clip encode_clip writes is decoded
again with PyAV and, where Debian's ffmpeg is installed, with the ffmpeg CLI.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image

from common import Images
from server.errors import ClipUnreadable, FrameRejected
from server.media.analysis import analyse_clip
from server.media.clips import Codec, encode_clip
from server.media.frames import FrameInfo, frame_info, inspect_frame

SIZE = (160, 120)
FPS = 15.0
CODECS: tuple[Codec, ...] = ("h264", "mjpeg")
MAX_BYTES = 1 << 20
MAX_PIXELS = 1 << 20
SQUARE = 20
FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")
needs_ffmpeg = pytest.mark.skipif(
    FFMPEG is None or FFPROBE is None, reason="the ffmpeg CLI (Debian package ffmpeg) is missing"
)


def frame(index: int = 0, size: tuple[int, int] = SIZE, image_format: str = "JPEG") -> bytes:
    """Frame ``index`` of a clip where the square moves 5 pixels per frame."""
    return square_at(10 + 5 * index, size, image_format)


def square_at(
    x: int, size: tuple[int, int] = SIZE, image_format: str = "JPEG", **options: Any
) -> bytes:
    """A picture of the square with its left edge at ``x``, as a file in ``image_format``."""
    return Images.save(Images.square(x, size, side=SQUARE), image_format, **options)


def jpeg_frames(count: int, size: tuple[int, int] = SIZE) -> list[bytes]:
    """``count`` JPEG frames of the moving square."""
    return [frame(index, size) for index in range(count)]


def decode(data: bytes) -> tuple[str, list[Any]]:
    """The codec name and all frames PyAV decodes from an MP4 file."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, list(container.decode(stream))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to claim another size."""
    data = bytearray(frame())
    sof = data.index(b"\xff\xc0")
    # SOF0: marker, length (2), precision (1), height (2), width (2).
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    """An extended (VP8X) WebP header that claims ``width`` x ``height`` pixels and holds none."""
    body = (
        b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )
    vp8x = b"VP8X" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


# --- inspect_frame ---------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_inspect_frame_reads_format_and_size(image_format: str) -> None:
    data = frame(size=(161, 121), image_format=image_format)
    assert inspect_frame(data, MAX_BYTES, MAX_PIXELS) == FrameInfo(image_format, 161, 121)


@pytest.mark.parametrize("data", [b"", b"hello, this is not an image", b"\x00" * 64])
def test_inspect_frame_rejects_non_images(data: bytes) -> None:
    with pytest.raises(FrameRejected, match="not an image"):
        inspect_frame(data, MAX_BYTES, MAX_PIXELS)


@pytest.mark.parametrize("image_format", ["GIF", "BMP", "TIFF"])
def test_inspect_frame_rejects_other_formats(image_format: str) -> None:
    data = frame(image_format=image_format)
    with pytest.raises(
        FrameRejected, match=rf"unsupported format {image_format}, allowed JPEG, PNG, WebP"
    ):
        inspect_frame(data, MAX_BYTES, MAX_PIXELS)


def test_inspect_frame_rejects_broken_headers() -> None:
    data = frame(image_format="PNG")
    with pytest.raises(FrameRejected, match="not a valid PNG image"):
        inspect_frame(data[:30], MAX_BYTES, MAX_PIXELS)


def test_inspect_frame_checks_bytes_first() -> None:
    data = b"\xff\xd8\xff" + b"\x00" * 2000
    with pytest.raises(FrameRejected, match="frame is 2003 bytes, over max_bytes 2000"):
        inspect_frame(data, 2000, MAX_PIXELS)


def test_inspect_frame_rejects_too_many_pixels() -> None:
    data = frame()
    with pytest.raises(FrameRejected, match="160x120 = 19200 pixels, over max_pixels 19199"):
        inspect_frame(data, MAX_BYTES, 19_199)
    assert inspect_frame(data, MAX_BYTES, 19_200).width == 160


@pytest.mark.parametrize(
    ("data", "claim"),
    [
        (png_claiming(100_000, 100_000), "100000x100000 = 10000000000 pixels"),
        (jpeg_claiming(65_000, 65_000), "65000x65000 = 4225000000 pixels"),
        # Far past Pillow's own limit; its DecompressionBombWarning would fail this test run.
        (png_claiming(20_000, 10_000), "20000x10000 = 200000000 pixels"),
    ],
)
def test_inspect_frame_rejects_bomb_headers(data: bytes, claim: str) -> None:
    with pytest.raises(FrameRejected, match=f"{claim}, over max_pixels"):
        inspect_frame(data, MAX_BYTES, MAX_PIXELS)


def test_inspect_frame_rejects_huge_webp_before_libwebp_allocates() -> None:
    with pytest.raises(FrameRejected, match="too large"):
        inspect_frame(webp_claiming(16_383, 16_383), MAX_BYTES, MAX_PIXELS)


# --- encode_clip -----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_clip_decodes_to_every_frame(codec: Codec) -> None:
    clip = encode_clip(jpeg_frames(12), FPS, codec)
    assert (clip.frames, clip.width, clip.height, clip.codec) == (12, *SIZE, codec)
    assert clip.duration == pytest.approx(12 / FPS)
    name, frames = decode(clip.data)
    assert name == codec
    assert [(f.width, f.height) for f in frames] == [SIZE] * 12
    # Frame i shows at i / fps from 0, h264's B-frame delay included.
    assert [float(f.time) for f in frames] == pytest.approx([i / FPS for i in range(12)])


def test_h264_clip_has_one_keyframe() -> None:
    # Decoded JPEGs come marked as I pictures; passed on, libx264 would make every frame a keyframe.
    clip = encode_clip(jpeg_frames(12), FPS, "h264")
    with av.open(io.BytesIO(clip.data), "r") as container:
        keyframes = [packet.is_keyframe for packet in container.demux(video=0) if packet.size]
    assert keyframes == [True] + [False] * 11


@pytest.mark.parametrize("codec", CODECS)
def test_frames_of_other_sizes_are_scaled(codec: Codec) -> None:
    frames = [frame(0), frame(1, (320, 240)), frame(2, (80, 60)), frame(3, (90, 200)), frame(4)]
    clip = encode_clip(frames, FPS, codec)
    _name, decoded = decode(clip.data)
    assert [(f.width, f.height) for f in decoded] == [SIZE] * 5


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_png_and_webp_frames(codec: Codec, image_format: str) -> None:
    frames = [frame(index, image_format=image_format) for index in range(4)]
    clip = encode_clip(frames, FPS, codec)
    _name, decoded = decode(clip.data)
    assert [(f.width, f.height) for f in decoded] == [SIZE] * 4
    # The square is still where it was drawn: the pixels came through, not just the count.
    last = decoded[-1].to_image()
    x = 10 + 5 * 3 + SQUARE // 2
    assert min(last.getpixel((x, SIZE[1] // 3 + SQUARE // 2))) > 200


def test_mjpeg_muxes_jpeg_bytes_as_they_are() -> None:
    frames = jpeg_frames(8)
    clip = encode_clip(frames, FPS, "mjpeg")
    with av.open(io.BytesIO(clip.data), "r") as container:
        packets = [bytes(packet) for packet in container.demux(video=0) if packet.size]
    assert packets == frames


def test_mjpeg_rewrites_only_frames_that_need_it() -> None:
    frames = [frame(0), frame(1, (320, 240)), frame(2, image_format="PNG"), frame(3)]
    clip = encode_clip(frames, FPS, "mjpeg")
    with av.open(io.BytesIO(clip.data), "r") as container:
        packets = [bytes(packet) for packet in container.demux(video=0) if packet.size]
    assert packets[0] == frames[0]
    assert packets[3] == frames[3]
    for rewritten, original in zip(packets[1:3], frames[1:3], strict=True):
        assert rewritten != original
        with Image.open(io.BytesIO(rewritten)) as image:
            assert (image.format, image.size) == ("JPEG", SIZE)


def test_odd_sizes_round_down_to_even_for_h264_only() -> None:
    frames = jpeg_frames(3, (161, 121))
    h264 = encode_clip(frames, FPS, "h264")
    mjpeg = encode_clip(frames, FPS, "mjpeg")
    assert (h264.width, h264.height) == (160, 120)
    assert (mjpeg.width, mjpeg.height) == (161, 121)
    assert [(f.width, f.height) for f in decode(h264.data)[1]] == [(160, 120)] * 3
    assert [(f.width, f.height) for f in decode(mjpeg.data)[1]] == [(161, 121)] * 3


def test_fractional_fps_keeps_exact_duration() -> None:
    clip = encode_clip(jpeg_frames(30), 30000 / 1001, "h264")
    assert analyse_clip(clip.data, ["summary"])["summary"]["duration"] == pytest.approx(
        30 * 1001 / 30000
    )


@pytest.mark.parametrize(
    ("frames", "fps", "codec", "message"),
    [
        ([], FPS, "h264", "at least one frame"),
        ([b"x"], 0.0, "h264", "fps must be positive"),
        ([b"x"], FPS, "vp9", "unknown codec"),
    ],
)
def test_encode_clip_refuses_bad_arguments(
    frames: list[bytes], fps: float, codec: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_clip(frames, fps, codec)


def test_encode_clip_rejects_a_frame_that_is_not_an_image() -> None:
    with pytest.raises(FrameRejected, match="not an image"):
        encode_clip([frame(0), b"nope"], FPS, "mjpeg")


def ffprobe(path: Path) -> dict[str, Any]:
    """The first video stream as ffprobe sees it after counting frames by decoding them."""
    assert FFPROBE is not None
    done = subprocess.run(
        [
            *(FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v:0", "-of", "json"),
            *("-show_entries", "stream=codec_name,width,height,nb_read_frames", str(path)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    stream: dict[str, Any] = json.loads(done.stdout)["streams"][0]
    return stream


@needs_ffmpeg
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(jpeg_frames(12), id="jpeg"),
        pytest.param(
            [
                frame(0),
                frame(1, (320, 240)),
                frame(2, image_format="PNG"),
                frame(3, image_format="WEBP"),
            ],
            id="mixed",
        ),
    ],
)
def test_ffmpeg_cli_decodes_the_clip(codec: Codec, frames: Sequence[bytes], tmp_path: Path) -> None:
    assert FFMPEG is not None
    path = tmp_path / f"clip-{codec}.mp4"
    path.write_bytes(encode_clip(frames, FPS, codec).data)
    done = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    stream = ffprobe(path)
    assert (stream["codec_name"], stream["width"], stream["height"]) == (codec, *SIZE)
    assert int(stream["nb_read_frames"]) == len(frames)


# --- the built-in analyses -------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_summarize_clip(codec: Codec) -> None:
    clip = encode_clip(jpeg_frames(9, (96, 64)), 12.0, codec)
    assert analyse_clip(clip.data, ["summary"])["summary"] == {
        "frames": 9,
        "duration": pytest.approx(0.75),
        "width": 96,
        "height": 64,
        "codec": codec,
    }


@pytest.mark.parametrize("codec", CODECS)
def test_still_clip_has_no_motion(codec: Codec) -> None:
    still = frame()
    report = analyse_clip(encode_clip([still] * 10, FPS, codec).data, ["motion"])["motion"]
    assert report["frames"] == 10
    assert report["energy"][0] == 0.0
    assert max(report["energy"]) < report["threshold"]
    assert report["ranges"] == []


@pytest.mark.parametrize("codec", CODECS)
def test_moving_square_gives_one_motion_range(codec: Codec) -> None:
    # Still for 4 frames, moving 6 pixels a frame for 8, still again for 4.
    positions = [10] * 4 + [10 + 6 * step for step in range(1, 9)] + [58] * 4
    frames = [square_at(x) for x in positions]
    report = analyse_clip(encode_clip(frames, FPS, codec).data, ["motion"])["motion"]
    assert report["frames"] == 16
    assert report["ranges"] == [[4, 11]]
    clip = encode_clip(frames, FPS, codec).data
    assert analyse_clip(clip, ["motion"], motion_threshold=100.0)["motion"]["ranges"] == []


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a video at all" * 20, id="text"),
        pytest.param(frame(), id="jpeg-image"),
        pytest.param(encode_clip(jpeg_frames(4), FPS, "h264").data[:200], id="truncated"),
    ],
)
def test_analyses_refuse_what_is_not_a_video(data: bytes) -> None:
    for kind in ("summary", "motion"):
        with pytest.raises(ClipUnreadable, match=r"not a decodable MP4 video|no video") as caught:
            analyse_clip(data, [kind])
        assert caught.value.status == 422


def test_analysis_refuses_frames_over_max_pixels_before_decoding() -> None:
    clip = encode_clip(jpeg_frames(3), 10, "mjpeg").data
    assert analyse_clip(clip, ["summary"], max_pixels=SIZE[0] * SIZE[1])["summary"]["frames"] == 3
    with pytest.raises(ClipUnreadable, match="pixels, over"):
        analyse_clip(clip, ["summary"], max_pixels=SIZE[0] * SIZE[1] - 1)
    with pytest.raises(ClipUnreadable, match="pixels, over"):
        analyse_clip(clip, ["motion"], max_pixels=100)


@pytest.mark.parametrize(
    "options",
    [{}, {"progressive": True}, {"exif": b"Exif\x00\x00" + b"\x00" * 2000}, {"quality": 5}],
    ids=["baseline", "progressive", "exif", "low-quality"],
)
def test_jpeg_fast_path_reads_the_size_pillow_reads(options: dict[str, Any]) -> None:
    data = square_at(10, (123, 77), "JPEG", **options)
    with Image.open(io.BytesIO(data)) as image:
        assert frame_info(data) == FrameInfo("JPEG", *image.size)


def test_png_fast_path_needs_a_whole_ihdr() -> None:
    data = frame(size=(31, 17), image_format="PNG")
    assert frame_info(data) == FrameInfo("PNG", 31, 17)
    broken = data[:29] + b"\x00\x00\x00\x00" + data[33:]  # IHDR with a wrong CRC
    with pytest.raises(FrameRejected):
        frame_info(broken)
