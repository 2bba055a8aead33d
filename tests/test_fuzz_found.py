"""What fuzzing found (issue 14, ``make fuzz``), each failing input written out in code.

Every test states what the code promises for one input that broke it: a domain error
(ArchiveRejected, SettingsError, VideoRejected) where an unexpected exception came out. Tests
marked "by review" were not hit by the fuzzer within its run but are the same kind of bug, found while
reading its findings.
"""

from __future__ import annotations

import gzip
import io
import lzma
import random
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from common import Images, write_video
from server.errors import ArchiveRejected, VideoRejected
from server.media.probe import inspect_video
from server.settings import SettingsError, load_settings, settings_from_mapping
from server.store.archives import ArchiveBudget, extract_images

if TYPE_CHECKING:
    from apps import Framehub, SettingsFactory
    from fakes import TarSource

BUDGET = ArchiveBudget(
    max_members=100, max_member_bytes=1 << 20, max_total_bytes=1 << 24, max_name_length=255
)
# The gzip member header (RFC 1952) with no flags, then a deflate block of the reserved type 3.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
BAD_DEFLATE = b"\xff" * 16
# Bytes of the plain tar that decompress cleanly before the corruption: past what opening the
# archive reads, so it is met while a member is copied.
CLEAN_PREFIX = 64 << 10
XZ_FOOTER = 12
CRC64 = 8


def plain_tar(members: list[tuple[str, bytes]], tar_format: int = tarfile.GNU_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tar_format) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def corrupt_midway(compression: str) -> bytes:
    """A ``.tar.gz`` or ``.tar.xz`` of one image whose compressed data turns bad past the start.

    gzip: two concatenated members (RFC 1952 allows it), the first the archive's first 64 KiB,
    the second a deflate block of the reserved type. xz: one stream whose block check (the CRC64
    just before the index) is wrong. Both are met while the member is copied.
    """
    frame = random.Random(0).randbytes(100_000)  # incompressible: the stream outlasts the open
    plain = plain_tar([("frame-1.jpg", frame)])
    if compression == "gz":
        return gzip.compress(plain[:CLEAN_PREFIX]) + GZIP_HEADER + BAD_DEFLATE
    stream = bytearray(lzma.compress(plain, check=lzma.CHECK_CRC64))
    # The stream footer: CRC32, backward size (the index's, in 4-byte units, less one), flags.
    index = len(stream) - XZ_FOOTER - (int.from_bytes(stream[-8:-4], "little") + 1) * 4
    stream[index - CRC64] ^= 0xFF
    return bytes(stream)


def extract(tmp_path: Path, archive: bytes) -> None:
    path = tmp_path / "archive"
    path.write_bytes(archive)
    extract_images(path, tmp_path / "tree", BUDGET)


# ---- archives (fuzz/archives.py) ------------------------------------------------------------


def test_member_name_with_nul_is_refused(tmp_path: Path) -> None:
    # Found by the fuzzer: a PAX "path" record keeps the NUL that a ustar name field would end at.
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("frame.jpg")
        info.pax_headers = {"path": "frame\x00.jpg"}
        info.size = 3
        archive.addfile(info, io.BytesIO(b"jpg"))

    with pytest.raises(ArchiveRejected, match="frame"):
        extract(tmp_path, out.getvalue())


@pytest.mark.parametrize(
    "compression",
    [
        # Found by the fuzzer: zlib.error from gzip while the member is copied.
        pytest.param("gz"),
        # Found by the hypothesis engine: lzma.LZMAError for a .tar.xz, not an OSError either.
        pytest.param("xz"),
    ],
)
def test_archive_corrupt_midway_is_refused(tmp_path: Path, compression: str) -> None:
    with pytest.raises(ArchiveRejected, match="truncated or corrupt"):
        extract(tmp_path, corrupt_midway(compression))


async def test_corrupt_download_fails_the_repository(
    framehub: Framehub, make_settings: SettingsFactory, tar_source: TarSource
) -> None:
    tar_source.archives["cam.tar.gz"] = corrupt_midway("gz")
    settings = make_settings(repositories={"source_url": tar_source.url})
    client = await framehub.client(settings)

    await framehub.failed(client, settings, "cam", "truncated or corrupt", seconds=3.0)


# ---- settings (fuzz/settings.py) ------------------------------------------------------------


def test_settings_file_not_utf8_is_refused(tmp_path: Path) -> None:
    # Found by the fuzzer (its smallest input was b"\xd8"): here, a file saved as Latin-1.
    path = tmp_path / "settings.toml"
    path.write_bytes(b"# caf\xe9\n[server]\nport = 7466\n")

    with pytest.raises(SettingsError, match=r"settings\.toml"):
        load_settings(path)


BAD_URLS = {
    # Found by the fuzzer: urlsplit raises ValueError for a bracket that does not make an
    # [IPv6] host, or for one that does not hold an address.
    "processors.a.url": {"processors": {"a": {"url": "https://analysis.example]com/v1"}}},
    "webhooks.hook.url": {"webhooks": {"hook": {"url": "http://ho[[oks.example.com/.in"}}},
    "repositories.source_url": {"repositories": {"source_url": "http://[0]/"}},
    # By review: the origins take the same check.
    "server.cors_allowed_origins": {"server": {"cors_allowed_origins": ["http://["]}},
}


@pytest.mark.parametrize(("key", "tables"), BAD_URLS.items(), ids=BAD_URLS.keys())
def test_url_with_a_bad_host_is_refused(tmp_path: Path, key: str, tables: dict[str, Any]) -> None:
    with pytest.raises(SettingsError, match=re.escape(key)):
        settings_from_mapping(tables, tmp_path)


def test_url_variable_with_a_bad_host_is_refused(tmp_path: Path) -> None:
    # Found by the fuzzer, as it was.
    path = tmp_path / "settings.toml"
    path.write_text("")
    variable = "FRAMEHUB_PROCESSORS__extra__URL"

    with pytest.raises(SettingsError, match=variable):
        load_settings(path, {variable: "http://127.0.0.1:= []"})


NUL_PATHS = {
    "secret_key_file": {"server": {"secret_key_file": "secret\x00.key"}},
    "api_token_file": {"server": {"api_token_file": "token\x00.txt"}},
    "credential": {"webhooks": {"h": {"url": "http://h/", "headers": {"A": "credential:a\x00"}}}},
}


@pytest.mark.parametrize("tables", NUL_PATHS.values(), ids=NUL_PATHS.keys())
def test_secret_path_with_nul_is_refused(tmp_path: Path, tables: dict[str, Any]) -> None:
    # TOML writes the NUL as "\u0000".
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    with pytest.raises(SettingsError):
        settings_from_mapping(tables, tmp_path, environ=environ)


@pytest.mark.parametrize("template", ["rec-{camera.x}", "rec-{camera[x]}"])
def test_recording_template_with_field_access_is_refused(tmp_path: Path, template: str) -> None:
    with pytest.raises(SettingsError, match=r"recording\.repository"):
        settings_from_mapping({"recording": {"repository": template}}, tmp_path)


NESTED = "[" * 2000 + "]" * 2000


@pytest.mark.parametrize("where", ["file", "variable"])
def test_deeply_nested_value_is_refused(tmp_path: Path, where: str) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(f"[server]\npublic = {NESTED}\n" if where == "file" else "")
    environ = {"FRAMEHUB_SERVER_PUBLIC": NESTED} if where == "variable" else {}

    with pytest.raises(SettingsError):
        load_settings(path, environ)


def test_infinite_probe_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"batch\.probe_timeout"):
        settings_from_mapping({"batch": {"probe_timeout": float("inf")}}, tmp_path)


# ---- the upload probe (fuzz/multipart.py, fuzz/probe.py) ------------------------------------


def test_video_of_an_unknown_codec_is_refused(tmp_path: Path) -> None:
    # Found by the fuzzer (one byte inserted into the sample table): here, the sample entry's
    # four-character code replaced by one no codec has.
    pictures = (Images.picture(index, (64, 48)) for index in range(4))
    video = write_video(tmp_path / "clip.mp4", pictures, size=(64, 48), fps=10).read_bytes()
    entry = video.index(b"avc1", video.index(b"stsd"))
    path = tmp_path / "unknown.mp4"
    path.write_bytes(video[:entry] + b"zzzz" + video[entry + 4 :])

    with pytest.raises(VideoRejected):
        inspect_video(path, max_pixels=1 << 20, max_duration=60.0)
