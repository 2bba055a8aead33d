"""Repository archives: both layouts, skipped members, and every unsafe archive refused whole.

Unsafe archives go through the whole path (a real source on a loopback port, the download, the
extraction) and must leave a failed repository with a useful error and nothing on disk.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from server.names import is_image_name
from server.store.archives import ArchiveBudget, extract_images

if TYPE_CHECKING:
    from apps import Framehub, SettingsFactory
    from common import Images, Member
    from fakes import TarSource

FRAMES = ["frame-1.jpg", "frame-2.jpg", "frame-10.jpg"]
BIG_BUDGET = ArchiveBudget(
    max_members=1000, max_member_bytes=1 << 20, max_total_bytes=1 << 24, max_name_length=255
)


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    """A tar member without data: a folder, link or device."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info


# ---- extraction, without a server -----------------------------------------------------------


def test_is_image_name() -> None:
    assert is_image_name("a.jpg")
    assert is_image_name("b.JPEG")
    assert is_image_name("c.Png")
    assert is_image_name("d.webp")
    assert not is_image_name("e.gif")
    assert not is_image_name("notes.txt")
    assert not is_image_name(".hidden.jpg")
    assert not is_image_name("jpg")


@pytest.mark.parametrize("top", ["", "cam/", "images/"])
def test_extract_layouts(tmp_path: Path, images: Images, top: str) -> None:
    members: list[Member] = [special(top.rstrip("/"), tarfile.DIRTYPE)] if top else []
    members += images.members(top + name for name in FRAMES)
    archive = tmp_path / "cam.tar"
    archive.write_bytes(images.tar(members))

    report = extract_images(archive, tmp_path / "tree", BIG_BUDGET)

    assert report.images == 3
    assert report.skipped == 0
    assert report.root == tmp_path / "tree" / top.rstrip("/")
    assert sorted(path.name for path in report.root.iterdir()) == sorted(FRAMES)


def test_extract_skips_non_images(tmp_path: Path, images: Images) -> None:
    members = [*images.members(["a.jpg"]), ("notes.txt", b"hello"), ("run.sh", b"#!/bin/sh\n")]
    archive = tmp_path / "cam.tar"
    archive.write_bytes(images.tar(members))

    report = extract_images(archive, tmp_path / "tree", BIG_BUDGET)

    assert (report.images, report.skipped) == (1, 2)
    assert [path.name for path in (tmp_path / "tree").rglob("*")] == ["a.jpg"]


# ---- through the server ---------------------------------------------------------------------


def _truncated(images: Images) -> bytes:
    """An archive cut off in the middle of its second image's data."""
    whole = images.tar(images.members(FRAMES))
    second = len(images.for_name(FRAMES[1], 1))
    cut = 512 + len(images.for_name(FRAMES[0], 0))  # first header and data ...
    cut = (cut + 511) // 512 * 512 + 512 + second // 2  # ... padded, second header, half data
    return whole[:cut]


def _bad_archive(kind: str, images: Images) -> tuple[bytes, dict[str, int]]:
    """The archive for ``kind`` and the budgets it breaks (three good frames, then the bad)."""
    good = images.members(FRAMES)
    a_frame = images.for_name("x.jpg")
    if kind == "truncated":
        return _truncated(images), {}
    if kind == "not-a-tar":
        return b"this is not a tar archive" * 40, {}
    if kind == "total-over-budget":
        names = [f"frame-{i}.jpg" for i in range(4)]
        three = sum(len(images.for_name(name, i)) for i, name in enumerate(names[:3]))
        return images.tar(images.members(names)), {"max_total_bytes": three}
    bad: dict[str, list[Member]] = {
        "parent": [*good, ("../escape.jpg", a_frame)],
        "nested-parent": [*good, ("cam/../../escape.jpg", a_frame)],
        "absolute": [*good, ("/tmp/absolute.jpg", a_frame)],
        "symlink": [*good, special("link.jpg", tarfile.SYMTYPE, "frame-1.jpg")],
        "symlink-out": [*good, special("link.jpg", tarfile.SYMTYPE, "/etc/passwd")],
        "hardlink": [*good, special("hard.jpg", tarfile.LNKTYPE, "frame-1.jpg")],
        "device": [*good, special("null.jpg", tarfile.CHRTYPE)],
        "fifo": [*good, special("pipe.jpg", tarfile.FIFOTYPE)],
        "too-many-members": [*images.members(f"frame-{i}.jpg" for i in range(5))],
        "member-over-budget": [*good, ("big.jpg", a_frame.ljust(70_000, b"\0"))],
        "long-name": [*good, ("n" * 60 + ".jpg", a_frame)],
    }
    return images.tar(bad[kind]), {}


BAD_ARCHIVES = {
    "parent": "escapes the repository folder",
    "nested-parent": "escapes the repository folder",
    "absolute": "absolute path",
    "symlink": "symlink",
    "symlink-out": "link",
    "hardlink": "hard link",
    "device": "device",
    "fifo": "special file",
    "too-many-members": "more than 4 members",
    "member-over-budget": "over the 65536-byte budget for one image",
    "total-over-budget": "budget in total",
    "long-name": "longer than 40 characters",
    "truncated": "truncated or corrupt",
    "not-a-tar": "truncated or corrupt",
}


@pytest.mark.parametrize(("kind", "error"), BAD_ARCHIVES.items(), ids=BAD_ARCHIVES.keys())
async def test_unsafe_archive_is_refused_whole(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    tar_source: TarSource,
    kind: str,
    error: str,
) -> None:
    archive, budgets = _bad_archive(kind, images)
    tar_source.archives["cam.tar"] = archive
    budget = {"max_members": 4, "max_member_bytes": 1 << 16, "max_name_length": 40, **budgets}
    settings = make_settings(repositories={"source_url": tar_source.url, **budget})
    client = await framehub.client(settings)

    info = await framehub.settled(client, "cam")

    assert info["status"] == "failed"
    assert error in info["error"]
    assert info["count"] == 0
    assert info["images"] == []
    framehub.assert_nothing_left(settings, "cam")
    async with client.get("/cam/video.jpg") as resp:
        assert resp.status == 200
        assert resp.headers["X-Placeholder"] == "true"
    async with client.get("/") as resp:
        listing: dict[str, Any] = await resp.json()
    assert listing["cam"]["status"] == "failed"
    assert not (settings.repositories_dir.parent / "escape.jpg").exists()


@pytest.mark.parametrize("top", ["", "cam/", "other/"], ids=["root", "named-folder", "any-folder"])
async def test_archive_layouts_serve_the_same_repository(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    tar_source: TarSource,
    top: str,
) -> None:
    members: list[Member] = [special(top.rstrip("/"), tarfile.DIRTYPE)] if top else []
    members += images.members(top + name for name in FRAMES)
    tar_source.archives["cam.tar"] = images.tar(members)
    settings = make_settings(repositories={"source_url": tar_source.url})
    client = await framehub.client(settings)

    info = await framehub.settled(client, "cam")

    assert info == {
        "count": 3,
        "progress": 1.0,
        "status": "available",
        "images": FRAMES,
    }
    folder = settings.repositories_dir / "cam"
    assert sorted(path.name for path in folder.iterdir()) == sorted(FRAMES)
    async with client.get("/cam/frames/2") as resp:
        assert resp.status == 200
        assert resp.headers["X-Frame-Name"] == "frame-10.jpg"
        assert await resp.read() == images.for_name("frame-10.jpg", 2)


async def test_non_image_members_are_skipped(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    tar_source: TarSource,
) -> None:
    members = [
        *images.members(f"cam/{name}" for name in FRAMES),
        ("cam/notes.txt", b"not an image"),
        ("cam/.hidden.jpg", images.encode(7)),
        ("cam/clip.gif", b"GIF89a"),
    ]
    tar_source.archives["cam.tar"] = images.tar(members)
    settings = make_settings(repositories={"source_url": tar_source.url})
    client = await framehub.client(settings)

    info = await framehub.settled(client, "cam")

    assert info["status"] == "available"
    assert info["images"] == FRAMES
    on_disk = sorted(path.name for path in settings.repositories_dir.rglob("*") if path.is_file())
    assert on_disk == sorted(FRAMES)


async def test_gzip_archive_when_tar_is_not_found(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    tar_source: TarSource,
) -> None:
    tar_source.archives["cam.tar.gz"] = images.tar(images.members(FRAMES), gzip=True)
    client = await framehub.client(make_settings(repositories={"source_url": tar_source.url}))

    info = await framehub.settled(client, "cam")

    assert info["status"] == "available"
    assert info["images"] == FRAMES
    assert tar_source.requests == ["cam.tar", "cam.tar.gz"]
    async with client.get("/cam/video.jpg") as resp:
        assert resp.status == 200
        assert resp.content_type == "image/jpeg"
        body = await resp.read()
    assert body == images.for_name("frame-1.jpg", 0)


async def test_downloaded_png_frames_keep_their_type(
    framehub: Framehub,
    make_settings: SettingsFactory,
    images: Images,
    tar_source: TarSource,
) -> None:
    tar_source.archives["cam.tar"] = images.tar(images.members(["a.png", "b.webp"]))
    client = await framehub.client(make_settings(repositories={"source_url": tar_source.url}))

    await framehub.settled(client, "cam")

    for expected, image_format in (("image/png", "PNG"), ("image/webp", "WEBP")):
        async with client.get("/cam/video.jpg") as resp:
            assert resp.content_type == expected
            with Image.open(io.BytesIO(await resp.read())) as image:
                assert image.format == image_format
