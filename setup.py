"""Builds the CPU Lion kernel, ``lion_kernels._cpu_lion``, when lionkit is installed.

The project's metadata lives in pyproject.toml; this file only declares the C extension, which
setuptools cannot describe there with a compile-time probe. Why at install time, and what happens
without a compiler: docs/kernels.md.

* ``optional=True``: without a working C compiler the build warns and the install still succeeds;
  ``lion_kernels.cpu_lion.unavailable_reason()`` then names the cause, and ``lion_torch`` uses its
  foreach path (with a one-time warning).
* One binary for every x86-64 CPU: the C source asks GCC for AVX-512F, AVX2 and baseline copies of
  its loops (``target_clones``), chosen once per process by the dynamic loader; never ``-march=native``,
  which would tie a wheel to the CPU that built it.
* ``-ffp-contract=off``, no ``-ffast-math``: the results equal ``lion_core.reference`` bit for bit.
* ``-pthread``: the kernel's helper threads; OpenMP when the compiler has it (probed below), used
  where there are no POSIX threads (otherwise the kernel runs on one thread there).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = "kernels/csrc/cpu_lion.c"
UNIX_FLAGS = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-fast-math"]


class BuildExt(build_ext):
    """Adds the compiler flags the compiler accepts: OpenMP only where it links."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "unix":
            openmp = ["-fopenmp"] if self._links(["-fopenmp"]) else []
            if not openmp:
                print("lionkit: the C compiler has no OpenMP; the CPU kernel will run on one thread")
            for extension in self.extensions:
                # -pthread: the kernel's helper threads (older glibc keeps pthreads in a library).
                extension.extra_compile_args = [*UNIX_FLAGS, "-pthread", *openmp]
                extension.extra_link_args = ["-pthread", *openmp]
        elif self.compiler.compiler_type == "msvc":
            for extension in self.extensions:
                extension.extra_compile_args = ["/O2", "/fp:precise", "/openmp"]
        super().build_extensions()
        for extension in self.extensions:
            self._record_checksum(self.get_ext_fullpath(extension.name))

    def copy_extensions_to_source(self) -> None:
        """Editable installs and ``--inplace`` builds copy the binary into kernels/: its checksum too."""
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for extension in self.extensions:
            package, _, _ = extension.name.rpartition(".")
            filename = os.path.basename(self.get_ext_filename(extension.name))
            self._record_checksum(os.path.join(build_py.get_package_dir(package), filename))

    @staticmethod
    def _record_checksum(path: str) -> None:
        """Writes the binary's SHA-256 next to it: the launcher verifies it before loading, since a
        truncated shared library crashes the loader (SIGBUS) instead of failing to load."""
        if not os.path.exists(path):  # an optional extension that did not build
            return
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        recorded = os.path.join(os.path.dirname(path), "_cpu_lion.sha256")
        with open(recorded, "w", encoding="ascii") as handle:
            handle.write(f"{digest}  {os.path.basename(path)}\n")

    def _links(self, flags: list[str]) -> bool:
        """Whether a small OpenMP program compiles and links with ``flags``."""
        with tempfile.TemporaryDirectory() as directory:
            source = os.path.join(directory, "probe.c")
            with open(source, "w", encoding="utf-8") as handle:
                handle.write("int main(void) {\n#pragma omp parallel\n{}\nreturn 0;\n}\n")
            try:
                objects = self.compiler.compile([source], output_dir=directory, extra_postargs=flags)
                self.compiler.link_executable(
                    objects, "probe", output_dir=directory, extra_postargs=flags
                )
            except Exception:  # noqa: BLE001 - any failure means "no OpenMP here"
                return False
        return True


setup(
    ext_modules=[Extension("lion_kernels._cpu_lion", [SOURCE], optional=True)],
    cmdclass={"build_ext": BuildExt},
)
