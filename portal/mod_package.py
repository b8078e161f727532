"""The voyager mod as the zip that operators download (``/mod/voyager.zip``) and ContentDB takes.

Built from ``luanti_mod/voyager`` as it is in this checkout, with the mod in one top-level
``voyager/`` folder (what Luanti and ContentDB expect), and kept until a file in it changes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from django.conf import settings

MOD_DIR = Path(settings.BASE_DIR) / "luanti_mod" / "voyager"
_cache: tuple[tuple, bytes] | None = None


def _files() -> list[Path]:
    return sorted(p for p in MOD_DIR.rglob("*") if p.is_file() and not p.name.startswith("."))


def mod_zip() -> bytes:
    """The zip's bytes (the same bytes for the same files: fixed timestamps)."""
    global _cache
    files = _files()
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    if _cache is not None and _cache[0] == stamp:
        return _cache[1]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(f"voyager/{path.relative_to(MOD_DIR).as_posix()}", date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    _cache = (stamp, buffer.getvalue())
    return _cache[1]
