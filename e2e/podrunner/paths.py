"""Translating in-container paths (volumeMount mountPaths) to the pod's local directories.

Pods share one filesystem here, so /etc/sentiment of one pod cannot differ from another's. Each
volume is materialised under the pod's own directory and any env value or argument that *starts
with* a mountPath (or is `--flag=<mountPath>...` / `KEY=<mountPath>...`) is rewritten to the
local path. The longest matching mountPath wins, as with nested mounts. Paths inside files, and
paths a program builds itself, are not rewritten: such programs can read PODRUNNER_MOUNTS.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MountTable:
    """mountPath (absolute, normalised) -> local directory or file."""

    mounts: Mapping[str, str]

    @classmethod
    def of(cls, mounts: Mapping[str, str]) -> MountTable:
        return cls({posixpath.normpath(path): local for path, local in mounts.items()})

    def _ordered(self) -> list[tuple[str, str]]:
        return sorted(self.mounts.items(), key=lambda item: len(item[0]), reverse=True)

    def translate_path(self, value: str) -> str:
        """`value` with a leading mountPath replaced by its local path; unchanged when none matches."""
        for mount_path, local in self._ordered():
            if value == mount_path:
                return local
            prefix = mount_path if mount_path.endswith("/") else mount_path + "/"
            if value.startswith(prefix):
                return local.rstrip("/") + "/" + value[len(prefix) :]
        return value

    def translate(self, value: str) -> str:
        """translate_path on the whole value, or on the part after the first `=` (flags, KEY=VALUE)."""
        translated = self.translate_path(value)
        if translated != value:
            return translated
        head, sep, tail = value.partition("=")
        if sep and tail.startswith("/"):
            return head + sep + self.translate_path(tail)
        return value

    def translate_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {key: self.translate(value) for key, value in env.items()}

    def translate_args(self, argv: list[str]) -> list[str]:
        return [self.translate(arg) for arg in argv]
