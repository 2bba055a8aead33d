"""Unpacking repository archives safely: plain synchronous code, run in a worker thread.

A downloaded ``NAME.tar`` (or ``.tar.gz``) goes through :func:`extract_images` member by member:
tarfile's ``data`` filter first (no absolute paths, no ``..`` escapes, no devices), then our own
rules on top (only regular files and folders, only image files, budgets on member count, member
size, total size and name length). Files are copied into a fresh folder beside the repositories, so
the caller can rename it into place in one step once everything is in; any refusal raises
:class:`ArchiveRejected` and the caller removes that folder.
"""

from __future__ import annotations

import lzma
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from server.errors import ArchiveRejected
from server.names import is_image_name

_COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ArchiveBudget:
    """Limits one archive must stay within."""

    max_members: int
    max_member_bytes: int
    max_total_bytes: int
    max_name_length: int


@dataclass(frozen=True, slots=True)
class ExtractionReport:
    """What came out of an archive."""

    root: Path
    images: int
    skipped: int


def extract_images(archive: Path, destination: Path, budget: ArchiveBudget) -> ExtractionReport:
    """Copy the images of ``archive`` into the new folder ``destination``; refuse unsafe archives.

    The returned ``root`` is ``destination`` itself, or its only sub-folder when the archive holds
    one top folder (``demo/frame-1.jpg``): both layouts give the same repository.
    """
    destination.mkdir(parents=True)
    images = skipped = members = total = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                members += 1
                if members > budget.max_members:
                    raise ArchiveRejected(
                        f"archive has more than {budget.max_members} members (the budget)"
                    )
                if len(member.name) > budget.max_name_length:
                    raise ArchiveRejected(
                        f"archive member name longer than {budget.max_name_length} characters"
                    )
                safe = _filtered(member, destination)
                if safe.isdir():
                    (destination / safe.name).mkdir(parents=True, exist_ok=True)
                    continue
                if not is_image_name(safe.name):
                    skipped += 1
                    continue
                if safe.size > budget.max_member_bytes:
                    raise ArchiveRejected(
                        f"archive member {member.name!r} is {safe.size} bytes, over the "
                        f"{budget.max_member_bytes}-byte budget for one image"
                    )
                total += safe.size
                if total > budget.max_total_bytes:
                    raise ArchiveRejected(
                        f"archive images exceed the {budget.max_total_bytes}-byte budget in total"
                    )
                _copy_member(tar, safe, destination / safe.name)
                images += 1
    # zlib and lzma raise their own errors on a corrupt .tar.gz or .tar.xz stream (found by
    # make fuzz); none of them is an OSError.
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise ArchiveRejected(f"archive truncated or corrupt: {exc}") from None
    return ExtractionReport(root=_single_top_folder(destination), images=images, skipped=skipped)


def _filtered(member: tarfile.TarInfo, destination: Path) -> tarfile.TarInfo:
    """Apply tarfile's ``data`` filter, then allow only regular files and folders."""
    # A NUL in a name (a PAX record may hold one) makes the filter's realpath() raise ValueError.
    if "\x00" in member.name or "\x00" in member.linkname:
        raise ArchiveRejected(f"archive member {member.name!r} has a NUL byte in its name")
    # The data filter strips a leading "/" and lets the member through; we refuse it instead.
    if member.name.startswith("/"):
        raise ArchiveRejected(f"archive member {member.name!r} has an absolute path")
    try:
        safe = tarfile.data_filter(member, str(destination))
    except tarfile.AbsolutePathError:
        raise ArchiveRejected(f"archive member {member.name!r} has an absolute path") from None
    except tarfile.OutsideDestinationError:
        raise ArchiveRejected(
            f"archive member {member.name!r} escapes the repository folder"
        ) from None
    except tarfile.SpecialFileError:
        raise ArchiveRejected(
            f"archive member {member.name!r} is a device or other special file, refused"
        ) from None
    except tarfile.FilterError as exc:
        raise ArchiveRejected(f"archive member {member.name!r} refused: {exc}") from None
    if safe.issym():
        raise ArchiveRejected(f"archive member {member.name!r} is a symlink, refused")
    if safe.islnk():
        raise ArchiveRejected(f"archive member {member.name!r} is a hard link, refused")
    if not (safe.isreg() or safe.isdir()):
        raise ArchiveRejected(
            f"archive member {member.name!r} is not a regular file or folder, refused"
        )
    return safe


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    if source is None:  # only for links and special files, refused above
        raise ArchiveRejected(f"archive member {member.name!r} has no data")
    target.parent.mkdir(parents=True, exist_ok=True)
    with source, target.open("wb") as out:
        shutil.copyfileobj(source, out, _COPY_CHUNK)


def _single_top_folder(destination: Path) -> Path:
    entries = list(destination.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return destination
