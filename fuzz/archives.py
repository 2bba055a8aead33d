"""Fuzz target: the archive member checks, :func:`server.store.archives.extract_images`.

Each input is a downloaded ``NAME.tar`` (plain or compressed: tarfile's ``r:*``). It is written to
``WORK/sandbox/archive`` and unpacked into the new folder ``WORK/sandbox/tree``, as
``ArchiveDownloader`` does. The extraction either refuses with ArchiveRejected (the caller then
removes the folder) or returns a report counting at least the image files in the folder (a later
member may replace an earlier one of the same name); either way nothing may appear in the sandbox
beside the archive and the folder, and what is in the folder is only folders and image files
within the budget.
"""

from __future__ import annotations

import random
import shutil
import tarfile
from pathlib import Path

from fuzz.engine import Broken, Target
from fuzz.seeds import Member, image, special, tar
from server.errors import ArchiveRejected
from server.names import is_image_name
from server.store.archives import ArchiveBudget, extract_images

BUDGET = ArchiveBudget(
    max_members=32, max_member_bytes=16 << 10, max_total_bytes=64 << 10, max_name_length=200
)


class Archives:
    """Unpacks each input in a sandbox folder and checks what came out."""

    def __init__(self, work: Path) -> None:
        self.sandbox = work / "sandbox"
        shutil.rmtree(self.sandbox, ignore_errors=True)
        self.sandbox.mkdir(parents=True)
        self.archive = self.sandbox / "archive"
        self.tree = self.sandbox / "tree"

    def check(self, data: bytes) -> None:
        """Unpack ``data``; see the module docstring for what must hold."""
        self.archive.write_bytes(data)
        try:
            report = extract_images(self.archive, self.tree, BUDGET)
            _check_tree(self.tree, report.images)
        finally:
            shutil.rmtree(self.tree, ignore_errors=True)
            self._check_sandbox()

    def _check_sandbox(self) -> None:
        extra = [p for p in self.sandbox.iterdir() if p not in (self.archive, self.tree)]
        for path in extra:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        if extra:
            raise Broken(f"extraction wrote outside its folder: {sorted(p.name for p in extra)}")


def _check_tree(tree: Path, images: int) -> None:
    """What :func:`extract_images` left in ``tree`` must be folders and ``images`` image files."""
    files = total = 0
    for path in tree.rglob("*"):
        if path.is_symlink():
            raise Broken(f"a symlink was extracted: {path.relative_to(tree)}")
        if path.is_dir():
            continue
        if not path.is_file() or not is_image_name(path.name):
            raise Broken(f"a non-image member was extracted: {path.relative_to(tree)}")
        size = path.stat().st_size
        if size > BUDGET.max_member_bytes:
            raise Broken(f"a member over the budget was extracted: {size} bytes")
        files += 1
        total += size
    if total > BUDGET.max_total_bytes:
        raise Broken(f"{total} bytes were extracted, over the budget")
    if files > images:
        raise Broken(f"{files} files were extracted, the report says {images}")


def seeds() -> list[bytes]:
    """Archives of each layout and compression taken, and of each kind refused."""
    jpeg, png = image("JPEG"), image("PNG")
    flat = [("frame-1.jpg", jpeg), ("frame-2.png", png), ("frame-10.JPG", jpeg)]
    folder: list[Member] = [
        special("demo", tarfile.DIRTYPE),
        ("demo/frame-1.jpg", jpeg),
        ("demo/README.txt", b"not an image\n"),
        special("demo/sub", tarfile.DIRTYPE),
        ("demo/sub/frame-2.webp", image("WEBP")),
    ]
    # Incompressible members, so that the compressed stream outlasts the reads that open it.
    noise = random.Random(0)
    large = [(f"frame-{i}.jpg", noise.randbytes(6000)) for i in range(4)]
    long_name = [("demo/" + "x" * 150 + ".jpg", jpeg), ("demo/frame-1.png", png)]
    return [
        tar(flat),
        tar(folder),
        tar(folder, "w:gz"),
        tar(flat, "w:bz2"),
        tar(flat, "w:xz"),
        tar(large, "w:gz"),
        tar(large, "w:xz"),
        tar(long_name, tar_format=tarfile.PAX_FORMAT),
        tar(long_name, tar_format=tarfile.GNU_FORMAT),
        tar(flat, tar_format=tarfile.USTAR_FORMAT),
        tar([("../escape.jpg", jpeg)]),
        tar([("/absolute.jpg", jpeg)]),
        tar([special("link.jpg", tarfile.SYMTYPE, "/etc/passwd")]),
        tar([("frame-1.jpg", jpeg), special("hard.jpg", tarfile.LNKTYPE, "frame-1.jpg")]),
        tar([special("device.jpg", tarfile.CHRTYPE)]),
        tar([("big.jpg", bytes(BUDGET.max_member_bytes + 1))]),
    ]


def target(work: Path) -> Target:
    """The archive checks as a fuzz target."""
    return Target(
        check=Archives(work).check,
        seeds=seeds,
        refusals=(ArchiveRejected,),
        max_len=48 << 10,
        slow_seconds=2.0,
    )
