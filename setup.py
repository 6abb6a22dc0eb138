"""Build of l1ext's C++ (and, where torch has CUDA, CUDA) extension `l1ext._C`.

Environment switches:
  L1EXT_CUDA=1 / 0    force the CUDA sources on or off (default: on when the installed torch
                      has CUDA and nvcc is found)
  L1EXT_CPU_ISA=0     build only the portable CPU kernels (no AVX2 / AVX-512 copies)
  MAX_JOBS            parallel compile jobs (torch's ninja build, and the CPU kernel objects)
  TORCH_CUDA_ARCH_LIST  GPU architectures of the CUDA build, as torch's extension builder reads
                      it (default: the visible GPUs'; with none visible, those the installed
                      torch was built for)

The CPU kernels (csrc/cpu/loss_kernels.cpp) are compiled once per x86-64 instruction set with its
own -m flags, as ATen does; the extension picks the widest one the CPU supports at run time. Each
instruction set's copy is four objects, one per element type, compiled in parallel.
"""
import concurrent.futures
import glob
import os
import platform
import subprocess

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
KERNELS = os.path.join("csrc", "cpu", "loss_kernels.cpp")
# Element types of the kernel objects (L1EXT_KERNEL_ELEM, kernel_table.h's Elem: 0 half,
# 1 bfloat16, 2 float, 3 double), longest compile first.
KERNEL_ELEMS = [2, 3, 1, 0]


def cxx_standard():
    """The C++ standard of every source that includes torch's headers (the host compiler's and
    nvcc's): C++20 from torch 2.13 on, whose extension builder defaults to it and whose 2.14
    headers refuse anything older ("C++20 or later compatible compiler is required to use ATen");
    C++17 for the torch releases before. scripts/cuda_compile_check.sh asks for it here."""
    import torch

    release = torch.__version__.split("+")[0].split(".")
    return "c++20" if (int(release[0]), int(release[1])) >= (2, 13) else "c++17"


CXX_STD = cxx_standard()
CXX_FLAGS = ["-O3", f"-std={CXX_STD}", "-ffp-contract=off", "-fno-trapping-math"]
ISA_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}


def _env_flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.lower() not in ("0", "false", "no", "off")


def _with_cuda():
    forced = _env_flag("L1EXT_CUDA")
    if forced is not None:
        return forced
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _isas():
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if not x86 or _env_flag("L1EXT_CPU_ISA") is False:
        return ["DEFAULT"]
    return ["DEFAULT", "AVX2", "AVX512"]


class BuildExt(cpp_extension.BuildExtension):
    """torch's BuildExtension, plus the CPU kernel objects, one per instruction set and element
    type."""

    def build_extensions(self):
        # The CPU kernel objects compile beside the extension's own sources: the link waits for
        # them, nothing else does.
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=_jobs())
        pending = []
        for ext in self.extensions:
            objects = self._kernel_objects()
            pending += [pool.submit(subprocess.run, cmd) for _, cmd in objects]
            ext.extra_objects = list(ext.extra_objects or []) + [obj for obj, _ in objects]
        link = self.compiler.link

        def link_after_kernels(*args, **kwargs):
            failed = [f.result().args for f in pending if f.result().returncode != 0]
            if failed:
                raise RuntimeError(f"compiling the CPU kernels failed: {' '.join(failed[0])}")
            return link(*args, **kwargs)

        self.compiler.link = link_after_kernels
        try:
            super().build_extensions()
        finally:
            pool.shutdown(wait=True)

    def _kernel_objects(self):
        """(object, command) of one compile of loss_kernels.cpp per instruction set and element
        type (the float and double objects first: they take longest, about 47 s each for AVX-512
        on one core of a 2-core AMD EPYC VM, against 124 s for one object of all four types)."""
        import torch

        cxx = os.environ.get("CXX", "c++")
        includes = [CSRC] + cpp_extension.include_paths()
        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        out_dir = os.path.join(self.build_temp, "isa")
        os.makedirs(out_dir, exist_ok=True)
        objects = []
        for elem in KERNEL_ELEMS:
            for isa in reversed(_isas()):
                obj = os.path.join(out_dir, f"loss_kernels_{isa.lower()}_{elem}.o")
                cmd = [cxx, "-c", os.path.join(ROOT, KERNELS), "-o", obj, "-fPIC", "-fopenmp",
                       f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-DCPU_CAPABILITY={isa}",
                       f"-DCPU_CAPABILITY_{isa}", f"-DL1EXT_KERNEL_ELEM={elem}", *CXX_FLAGS,
                       *ISA_FLAGS[isa]]
                cmd += [f"-I{d}" for d in includes]
                print(" ".join(cmd), flush=True)
                objects.append((obj, cmd))
        return objects


def _jobs():
    try:
        return max(1, int(os.environ.get("MAX_JOBS", "")))
    except ValueError:
        return os.cpu_count() or 1


def _libstdcxx_link_args():
    # libstdc++ linked as a shared library, the very one torch runs with, even where the compiler
    # adds -static-libstdc++ or ships only libstdc++.a (the g++ 13 toolchain of one H100 image
    # does both: `-lstdc++` still gave a private copy). That copy inside _C.so shares torch's
    # locale data but not its facet ids, and streaming a number (every error message that prints
    # a size) then crashes or prints nothing. The library is named by the path this process
    # loaded it from, so it comes before the driver's own libraries and no archive is searched.
    if platform.system() != "Linux":
        return []
    import torch  # noqa: F401  (loads libstdc++ into this process)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    except OSError:
        paths = set()
    return sorted(paths)[:1] or ["-lstdc++"]


def _default_cuda_archs():
    # torch's extension builder compiles for the visible GPUs when TORCH_CUDA_ARCH_LIST is unset,
    # and with none visible (a container image built without a GPU, a CPU-only build machine) it
    # fails with an IndexError. Build then for every architecture the installed torch was built
    # for (sm_75 to sm_120 for torch 2.14's CUDA 13 wheel), with PTX of the newest for later GPUs.
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return
    import torch

    if torch.cuda.device_count() > 0:
        return
    archs = [a[3:] for a in torch.cuda.get_arch_list() if a.startswith("sm_") and a[3:].isdigit()]
    if archs:
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a[:-1]}.{a[-1]}" for a in archs) + "+PTX"
        print(f"l1ext: no GPU visible, building for TORCH_CUDA_ARCH_LIST="
              f"{os.environ['TORCH_CUDA_ARCH_LIST']} (the installed torch's architectures)",
              flush=True)


def extension():
    isas = _isas()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*/*.cpp"))
    sources = [s for s in sources if os.path.normpath(s) != os.path.normpath(KERNELS)]
    macros = [(f"L1EXT_HAVE_{isa}", "1") for isa in isas if isa != "DEFAULT"]
    kwargs = dict(
        name="l1ext._C",
        include_dirs=[CSRC],
        define_macros=macros,
        extra_link_args=["-fopenmp"] + _libstdcxx_link_args(),
    )
    if _with_cuda():
        _default_cuda_archs()
        sources += sorted(glob.glob("csrc/*/*.cu"))
        macros.append(("L1EXT_WITH_CUDA", "1"))
        return cpp_extension.CUDAExtension(
            sources=sources,
            extra_compile_args={
                "cxx": CXX_FLAGS,
                "nvcc": ["-O3", f"-std={CXX_STD}", "--expt-relaxed-constexpr", "-diag-suppress",
                         "3306"],
            },
            **kwargs,
        )
    return cpp_extension.CppExtension(sources=sources, extra_compile_args={"cxx": CXX_FLAGS}, **kwargs)


# Run by pip's build backend and by `python setup.py ...` as __main__; imported, it only defines
# (scripts/cuda_compile_check.sh reads CXX_STD).
if __name__ == "__main__":
    setup(
        ext_modules=[extension()],
        cmdclass={"build_ext": BuildExt},
    )
