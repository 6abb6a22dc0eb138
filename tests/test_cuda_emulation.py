"""The CUDA kernels and launchers of csrc/cuda, run on the CPU by a host emulation of the CUDA
features they use (tests/cuda_emulation/cuda_runtime.h): blocks in any order, threads as fibers
meeting at barriers and warp shuffles. Not a substitute for the GPU suite (tests/test_cuda.py):
it checks the kernels' logic (16-byte pack paths with their scalar heads and tails, grid-stride
loops, block and last-block-done sums, the gradients a forward keeps, the in-place backward paths)
where no GPU is present. Every buffer sits just before an inaccessible page, the bytes around it
poisoned (NaN for floating types), so a read outside it shows in the result or faults, and a write
outside it is found afterwards.

Built with the host C++ compiler against the CUDA toolkit's headers (cuda_fp16.h, cuda_bf16.h);
skipped where either is missing."""
import ctypes
import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF
from torch._prims_common import is_non_overlapping_and_dense_or_false as is_non_overlapping_and_dense

import l1ext.functional as LF

from conftest import assert_close

ROOT = Path(__file__).resolve().parent.parent
EMULATION = Path(__file__).resolve().parent / "cuda_emulation"
KERNEL_HEADERS = ["launch.h", "launch.cuh", "loss_kernels.cuh", "strided.h", "weighted_kernels.cuh"]

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
# (name, LossKind, parameter)
KINDS = [("l1", 0, 0.0), ("smooth_l1", 1, 1.0), ("smooth_l1_beta_0.3", 1, 0.3),
         ("huber", 2, 1.0), ("huber_delta_2.5", 2, 2.5), ("quantile_0.3", 3, 0.3)]
KIND_IDS = [k[0] for k in KINDS]
# Sizes around a 16-byte pack (2 to 8 elements), a warp, a block, the single-block reduction limit
# (2^15) and several blocks.
SIZES = [1, 3, 7, 9, 33, 257, 4099, 32768, 32769, 100_003]
# Block and thread orders: in order, reversed, two seeded shuffles. A fixed-order sum gives the
# same bits under each.
SCHEDULES = [0, -1, 1, 2]


def _cuda_include():
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
    for root in filter(None, roots):
        inc = Path(root) / "include"
        if (inc / "cuda_fp16.h").exists() and (inc / "cuda_runtime_api.h").exists():
            return inc
    return None


def _rewrite_launches(text):
    # kernel<<<grid, block, smem, stream>>>(args) -> kernel | Config(grid, ...) | args(args)
    return re.sub(r"<<<(.*?)>>>\s*\(", r" | ::l1ext_emu::Config(\1) | ::l1ext_emu::args(", text,
                  flags=re.S)


# The same half / bfloat16 switches as the CUDA build; no FMA contraction, so the host arithmetic
# rounds once per operation.
CXXFLAGS = ["-std=c++17", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-Wno-unknown-pragmas",
            "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]


@functools.lru_cache(maxsize=None)
def _build():
    """Path of the harness library, built once per content of its sources (under build/)."""
    include = _cuda_include()
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if include is None or cxx is None:
        return None, "needs a C++ compiler and the CUDA toolkit's headers"
    sources = [EMULATION / "cuda_runtime.h", EMULATION / "harness.cpp", ROOT / "csrc/loss_math.h",
               ROOT / "csrc/loss_kind.h", ROOT / "csrc/weighted.h"]
    sources += [ROOT / "csrc/cuda" / h for h in KERNEL_HEADERS]
    key = b"".join(p.read_bytes() for p in sources)
    key += " ".join([cxx, str(include), *CXXFLAGS]).encode()
    cache = Path(os.environ.get("L1EXT_EMULATION_DIR", ROOT / "build" / "cuda_emulation"))
    out = cache / hashlib.sha256(key).hexdigest()[:16]
    lib = out / "harness.so"
    if lib.exists():
        return str(lib), None
    cache.mkdir(parents=True, exist_ok=True)
    # One build at a time (pytest-xdist workers share the cache): the others wait, then find it.
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not lib.exists():
            for old in cache.iterdir():  # libraries of earlier sources
                if old.is_dir() and old != out:
                    shutil.rmtree(old, ignore_errors=True)
            (out / "cuda").mkdir(parents=True, exist_ok=True)
            for h in KERNEL_HEADERS:
                (out / "cuda" / h).write_text(_rewrite_launches((ROOT / "csrc/cuda" / h).read_text()))
            (out / "harness.cpp").write_text(_rewrite_launches((EMULATION / "harness.cpp").read_text()))
            cmd = [cxx, *CXXFLAGS, f"-I{EMULATION}", f"-I{out}", f"-I{ROOT / 'csrc'}", f"-I{include}",
                   str(out / "harness.cpp"), "-o", str(out / "partial.so")]
            run = subprocess.run(cmd, capture_output=True, text=True)
            assert run.returncode == 0, run.stderr[-4000:]
            os.replace(out / "partial.so", lib)
    return str(lib), None


class EmulationError(RuntimeError):
    pass


class Kernels:
    """The harness's C entry points; every call raises EmulationError on a non-zero cudaError_t."""

    _P, _I, _L, _D = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double
    # The trailing geometry arguments of the launches that read operands through strides
    # (harness.cpp, L1EXT_EMU_GEOMETRY_ARGS); a call without geometry= passes DENSE.
    GEOMETRY = [_I, _P, _P, _P, _P, _I, _I]
    DENSE = (-1, None, None, None, None, 0, 0)
    SIGNATURES = {
        "emu_forward_reduce": [_I, _I, _D, _P, _P, _L, _D, _P, _P, _P, _P, _P, _I, *GEOMETRY],
        "emu_forward_pointwise": [_I, _I, _D, _P, _P, _L, _P, _P, _P, _P, *GEOMETRY],
        "emu_backward": [_I, _I, _D, _P, _P, _P, _I, _D, _L, _P, _P, _I, *GEOMETRY],
        "emu_divider_mismatches": [ctypes.c_uint32],
        "emu_backward_from_sign": [_I, _P, _P, _I, _D, _L, _P, _P],
        "emu_l1_backward_from_kept": [_I, _P, _I, _P, _D, _L, _P, _P, _I],
        "emu_weighted_forward": [_I, _I, _P, _P, _P, _I, _P, _I, _D, _L, _L, _I, _D, _I, _D, _P,
                                 _P, _P, _P, _P],
        "emu_weighted_backward": [_I, _I, _P, _P, _P, _I, _P, _I, _D, _L, _L, _I, _D, _I, _D, _P,
                                  _P, _P, _P, _P, _I],
        "emu_self_test": [_I],
    }

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        for name, args in self.SIGNATURES.items():
            getattr(self.lib, name).argtypes = args
            getattr(self.lib, name).restype = ctypes.c_int
        self.lib.emu_message.restype = ctypes.c_char_p
        self.lib.emu_map.restype = ctypes.c_void_p
        self.lib.emu_map.argtypes = [ctypes.c_size_t]
        self.lib.emu_unmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        for name in ("emu_reduce_workspace_bytes", "emu_weighted_workspace_bytes"):
            getattr(self.lib, name).restype = ctypes.c_size_t
            getattr(self.lib, name).argtypes = [ctypes.c_int, ctypes.c_int64]
        self.lib.emu_schedule.argtypes = [ctypes.c_int]

    def schedule(self, s):
        self.lib.emu_schedule(s)

    def __getattr__(self, name):
        fn = getattr(self.lib, "emu_" + name)
        with_geometry = self.SIGNATURES["emu_" + name][-len(self.GEOMETRY):] == self.GEOMETRY

        def call(*args, geometry=None):
            self.lib.emu_clear_message()
            if with_geometry:
                args += geometry.args if geometry is not None else self.DENSE
            err = fn(*[a.ptr if isinstance(a, (Buffer, StridedOperand)) else a for a in args])
            if err != 0:
                raise EmulationError(f"{name}: cudaError {err}: {self.lib.emu_message().decode()}")
        return call


@pytest.fixture(scope="module")
def emu():
    path, why = _build()
    if path is None:
        pytest.skip(why)
    return Kernels(path)


class Buffer:
    """numel elements of dtype, `offset` elements past a 16-byte boundary, ending as close to an
    inaccessible page as that allows; every other byte of its pages holds `poison` (0xFF: NaN in
    every floating type)."""

    def __init__(self, emu, numel, dtype, offset=0, data=None, poison=0xFF):
        self.emu, self.dtype, self.poison = emu, dtype, poison
        item = torch.empty(0, dtype=dtype).element_size()
        nbytes = numel * item
        page = os.sysconf("SC_PAGE_SIZE")
        self.mapped = (nbytes + 64 + page - 1) // page * page
        self.base = emu.lib.emu_map(self.mapped)
        assert self.base, "mmap failed"
        region = (ctypes.c_uint8 * self.mapped).from_address(self.base)
        self.region = torch.frombuffer(region, dtype=torch.uint8)
        self.region.fill_(poison)
        start = self.mapped - nbytes
        start -= (start - offset * item) % 16
        self.start, self.nbytes = start, nbytes
        self.ptr = self.base + start
        self.t = self.region[start:start + nbytes].view(dtype)
        if data is not None:
            self.t.copy_(data)

    def check_untouched(self):
        outside = torch.cat([self.region[:self.start], self.region[self.start + self.nbytes:]])
        assert bool((outside == self.poison).all()), "a write outside the buffer"

    def value(self):
        return self.t.clone()

    def __del__(self):
        self.emu.lib.emu_unmap(self.base, self.mapped)


def _workspace(emu, nbytes):
    """A reduction's workspace as the glue hands it over: its ticket (the first 4 of 16 header
    bytes) zero, the partial sums poisoned."""
    ws = Buffer(emu, nbytes, torch.uint8, poison=0x5A)
    ws.t[:16] = 0
    return ws


def _ticket_reset(ws):
    """Every launch leaves the ticket zero, for the next launch on the stream (no memset)."""
    assert ws.nbytes == 0 or bool((ws.t[:4] == 0).all()), "the ticket was left non-zero"


def _untouched(*buffers):
    """No launch wrote outside these buffers (None: a buffer not passed)."""
    for b in buffers:
        if b is not None:
            b.check_untouched()


# ---- oracles (float64) ---------------------------------------------------------------------

def _elementwise(kind, param, x, y):
    """Loss and its gradient w.r.t. x per element, in float64: torch's built-ins, and l1ext's CPU
    quantile loss (checked against its formula in test_weighted.py)."""
    xd = x.double().requires_grad_()
    yd = y.double()
    if kind == 0 or (kind == 1 and param == 0):
        v = TF.l1_loss(xd, yd, reduction="none")
    elif kind == 1:
        v = TF.smooth_l1_loss(xd, yd, reduction="none", beta=param)
    elif kind == 2:
        v = TF.huber_loss(xd, yd, reduction="none", delta=param)
    else:
        v = LF.quantile_loss(xd, yd, param, reduction="none")
    (g,) = torch.autograd.grad(v.sum(), xd)
    return v.detach(), g


def _operands(n, dtype, seed, special=False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g) * 2).to(dtype)
    y = (torch.randn(n, generator=g) * 2).to(dtype)
    y[::11] = x[::11]  # zero residuals: sgn 0
    if special and n >= 16:
        x[1], x[2], y[3], y[4] = float("inf"), float("-inf"), float("nan"), float("inf")
        x[5], y[5] = 1.0, 0.0  # residual exactly 1 = beta = delta
        x[6], y[6] = -2.5, 0.0  # residual -2.5 = -delta
        x[7], y[7], x[8], y[8] = 0.0, -0.0, -0.0, 0.0  # zero residuals of either sign
    return x, y


def _close(actual, expected, where):
    """assert_close (conftest's tolerances), naming the case that failed."""
    try:
        assert_close(actual, expected)
    except AssertionError as e:
        raise AssertionError(f"{where}: {e}") from None


# ---- forward -----------------------------------------------------------------------------------

def _forward_reduce(emu, kind, param, dtype, x, y, divisor, offsets=(0, 0), sign=False,
                    grads=(False, False), grad_offset=None, unroll=0):
    # grad_offset: where the gradients sit (default: at x's offset, so a pack of x is a pack of
    # them; elsewhere they are stored one element at a time). unroll: the launcher's packs in
    # flight per thread (0: the library's)
    n = x.numel()
    grad_offset = offsets[0] if grad_offset is None else grad_offset
    bx = Buffer(emu, n, dtype, offsets[0], x)
    by = Buffer(emu, n, dtype, offsets[1], y)
    out = Buffer(emu, 1, dtype)
    bs = Buffer(emu, n, torch.int8, offsets[0], poison=0x7F) if sign else None
    bgi = Buffer(emu, n, dtype, grad_offset) if grads[0] else None
    bgt = Buffer(emu, n, dtype, grad_offset) if grads[1] else None
    ws = _workspace(emu, emu.lib.emu_reduce_workspace_bytes(DTYPE_CODE[dtype], n))
    emu.forward_reduce(DTYPE_CODE[dtype], kind, param, bx, by, n, divisor, out, bs, bgi, bgt, ws,
                       unroll)
    _untouched(bx, by, out, bs, bgi, bgt, ws)
    _ticket_reset(ws)
    assert _same_bits(bx.t, x) and _same_bits(by.t, y), "an input was modified"
    return [b.value() if b is not None else None for b in (out, bs, bgi, bgt)]


def _target_of(kind, gi, x, y, param=None):
    """The target's gradient the kernels write beside the input's gi: -gi, but for Smooth L1 and
    Huber at operands of the same bits, where torch's (its backward with the operands swapped,
    grad(y - x)) has the input's residual, +0: gi itself (loss_math.h, target_grad). param: the
    parameter per element, where Smooth L1's beta of 0 is L1."""
    if kind not in (1, 2):
        return -gi
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    same = x.reshape(-1).view(bits) == y.reshape(-1).view(bits)
    if param is not None and kind == 1:
        same &= param.reshape(-1) != 0
    return torch.where(same.view(gi.shape), gi, -gi)


def _same_bits(a, b):
    """Bit for bit, zeros' signs included; NaNs match NaNs (their sign and payload carry
    nothing)."""
    if a is None or b is None:
        return a is None and b is None
    if a.dtype == torch.int8:
        return torch.equal(a, b)
    nan = a.isnan()
    if not torch.equal(nan, b.isnan()):
        return False
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.view(bits)[~nan], b.view(bits)[~nan])


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_reduce_against_torch(emu, dtype, kind):
    _, k, param = kind
    pack = 16 // torch.empty(0, dtype=dtype).element_size()
    for n in SIZES:
        x, y = _operands(n, dtype, seed=n)
        value, grad = _elementwise(k, param, x, y)
        for offsets in [(0, 0), (1, 1), (pack - 1, pack - 1), (0, 1)]:
            for divisor in (float(n), 1.0):
                if n < 32769 and offsets != (0, 0) and divisor == 1.0:
                    continue
                want = (value.sum() / divisor).to(dtype).reshape(1)
                # L1 keeps either its int8 sign or its gradients (the launcher takes one or the
                # other)
                sign = k == 0 and offsets == (1, 1)
                grads = (not sign, offsets == (0, 0))
                grad_offset = offsets[0] + 1 if offsets == (pack - 1, pack - 1) else None
                out, s, gi, gt = _forward_reduce(emu, k, param, dtype, x, y, divisor, offsets,
                                                 sign, grads, grad_offset)
                where = f"n={n} offsets={offsets} divisor={divisor}"
                _close(out, want, where)
                if sign:
                    want_sign = torch.sgn(x.double() - y.double()).nan_to_num(0)
                    assert torch.equal(s, want_sign.to(torch.int8)), where
                # The gradient for an incoming gradient of one, in T.
                if gi is not None:
                    _close(gi, (grad / divisor).to(dtype), where)
                if gt is not None and gi is not None:
                    assert _same_bits(gt, _target_of(k, gi, x, y)), where


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_reduce_same_bits_in_any_block_and_thread_order(emu, dtype):
    for k, param in [(0, 0.0), (1, 1.0), (3, 0.3)]:
        for n in [4099, 32769, 100_003]:
            x, y = _operands(n, dtype, seed=7 + n)
            results = []
            for s in SCHEDULES:
                emu.schedule(s)
                try:
                    results.append(_forward_reduce(emu, k, param, dtype, x, y, float(n), (1, 1),
                                                   sign=k == 0, grads=(k != 0, k != 0)))
                finally:
                    emu.schedule(0)
            for r in results[1:]:
                assert all(_same_bits(a, b) for a, b in zip(results[0], r)), (k, n)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_reduce_same_bits_at_any_unroll(emu, dtype):
    # Loads of 2 or 4 packs ahead change when a thread's packs are read, not the order they are
    # summed in. Sizes: one block; several blocks whose threads own a number of packs that is
    # not a multiple of 2 or 4 (the remainder loop), at aligned and unaligned offsets.
    for k, param, sign in [(0, 0.0, True), (0, 0.0, False), (1, 0.5, False), (2, 1.5, False)]:
        for n in [4099, 100_003, 3 * (1 << 16) + 7]:
            x, y = _operands(n, dtype, seed=11 + n, special=True)
            for offsets in [(0, 0), (1, 1)]:
                grads = (False, False) if sign else (True, offsets == (0, 0))
                results = [_forward_reduce(emu, k, param, dtype, x, y, float(n), offsets, sign,
                                           grads, unroll=u) for u in (1, 2, 4)]
                for r in results[1:]:
                    assert all(_same_bits(a, b) for a, b in zip(results[0], r)), (k, n, offsets)


def test_forward_reduce_at_the_block_cap(emu):
    # 4096 blocks at most (kMaxReduceBlocks): 17 * 2^20 float32 elements is beyond it.
    n = 17 * (1 << 20) + 3
    x, y = _operands(n, torch.float32, seed=3)
    out, *_ = _forward_reduce(emu, 1, 1.0, torch.float32, x, y, float(n), (1, 1))
    assert_close(out, TF.smooth_l1_loss(x.double(), y.double()).float().reshape(1))


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_pointwise_against_torch(emu, dtype, kind):
    _, k, param = kind
    pack = 16 // torch.empty(0, dtype=dtype).element_size()
    for n in [0, 1, 7, 9, 33, 4099, 100_003]:
        x, y = _operands(n, dtype, seed=n, special=True)
        value, _ = _elementwise(k, param, x, y)
        for offsets in [(0, 0, 0), (1, 1, 1), (pack - 1, pack - 1, pack - 1), (0, 0, 1)]:
            bx = Buffer(emu, n, dtype, offsets[0], x)
            by = Buffer(emu, n, dtype, offsets[1], y)
            out = Buffer(emu, n, dtype, offsets[2])
            bs = Buffer(emu, n, torch.int8, 0, poison=0x7F) if k == 0 else None
            emu.forward_pointwise(DTYPE_CODE[dtype], k, param, bx, by, n, out, bs, None, None)
            _untouched(bx, by, out, bs)
            _close(out.t, value.to(dtype), (n, offsets))
            if bs is not None:
                want = torch.sgn(x.double() - y.double()).nan_to_num(0).to(torch.int8)
                assert torch.equal(bs.t, want), (n, offsets)


def test_forwards_refuse_what_no_caller_asks(emu):
    # Only L1 saves int8 signs: the other losses' forwards have no sign variant and refuse one
    # (cudaErrorInvalidValue) without writing anything; so do both forwards for an unknown kind.
    n = 4099
    x, y = _operands(n, torch.float32, seed=5)
    for k, param in [(1, 1.0), (2, 1.0), (3, 0.25)]:
        with pytest.raises(EmulationError, match="cudaError 1:"):
            _forward_reduce(emu, k, param, torch.float32, x, y, float(n), sign=True)
        bs = Buffer(emu, n, torch.int8, 0, poison=0x7F)
        out = Buffer(emu, n, torch.float32, 0)
        with pytest.raises(EmulationError, match="cudaError 1:"):
            emu.forward_pointwise(DTYPE_CODE[torch.float32], k, param, Buffer(emu, n, torch.float32,
                                  0, x), Buffer(emu, n, torch.float32, 0, y), n, out, bs, None,
                                  None)
        assert torch.all(bs.t == 0x7F)
    with pytest.raises(EmulationError, match="cudaError 1:"):
        _forward_reduce(emu, 4, 1.0, torch.float32, x, y, float(n))


# ---- backward ----------------------------------------------------------------------------------

# Incoming gradients of a reduced loss: one (the kept gradients stand), powers of two (scaled in
# place), others (rewritten), and the special values.
GRAD_OUTPUTS = [1.0, 2.0, 0.5, -1.0, 2.0 ** -20, 3.0, 0.1, 0.0, -0.0, float("inf"), float("nan")]


def _backward(emu, dtype, k, param, x, y, go, per_element, divisor, offsets, want, kept=None):
    """The backward from x and y into fresh buffers (want: which of gi, gt), and with kept (the
    forward's gradients for an incoming gradient of one) rewritten in place (unless_one)."""
    n = x.numel()
    bx = Buffer(emu, n, dtype, offsets[0], x)
    by = Buffer(emu, n, dtype, offsets[1], y)
    # go None: a null pointer, an incoming gradient of one (the glue's 'none' forward with
    # gradients)
    bgo = None if go is None else Buffer(emu, n if per_element else 1, dtype, offsets[0], go)
    outs = [Buffer(emu, n, dtype, offsets[0], None if kept is None else kept[i]) if want[i]
            else None for i in range(2)]
    emu.backward(DTYPE_CODE[dtype], k, param, bx, by, bgo, int(per_element), divisor, n,
                 outs[0], outs[1], int(kept is not None))
    _untouched(bx, by, bgo, *outs)
    return [b.value() if b is not None else None for b in outs]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_against_torch(emu, dtype, kind):
    _, k, param = kind
    for n in [0, 1, 9, 33, 4099, 100_003]:
        x, y = _operands(n, dtype, seed=n + 1, special=True)
        _, grad = _elementwise(k, param, x, y)
        for offsets in [(0, 0), (1, 1), (0, 1)]:
            go = torch.randn(n).to(dtype)
            gi, gt = _backward(emu, dtype, k, param, x, y, go, True, 1.0, offsets, (True, True))
            want = grad * go.double()
            _close(gi, want.to(dtype), (n, offsets))
            assert _same_bits(gt, _target_of(k, gi, x, y))
            gi, _ = _backward(emu, dtype, k, param, x, y, None, False, 1.0, offsets, (True, False))
            _close(gi, grad.to(dtype), (n, offsets, "go null"))
            for g0 in (2.0, -0.75):
                gi, _ = _backward(emu, dtype, k, param, x, y, torch.tensor([g0]).to(dtype), False,
                                  float(max(n, 1)), offsets, (True, False))
                _close(gi, (grad * (g0 / max(n, 1))).to(dtype), (n, offsets, g0))


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kept_gradients_rewritten_in_place_have_the_bits_of_a_recomputation(emu, dtype, kind):
    # The forward's gradients for an incoming gradient of one, then backward_kernel's unless_one
    # path (return at once for one, scale in place for a power of two, else recompute) against a
    # backward into fresh buffers with the same incoming gradient.
    _, k, param = kind
    for n in [9, 4099, 32769]:
        for divisor in (float(n), 1.0):
            x, y = _operands(n, dtype, seed=n + 2)
            _, _, gi1, gt1 = _forward_reduce(emu, k, param, dtype, x, y, divisor, (1, 1),
                                             grads=(True, True))
            ones = torch.ones(1, dtype=dtype)
            fresh = _backward(emu, dtype, k, param, x, y, ones, False, divisor, (1, 1),
                              (True, True))
            assert _same_bits(fresh[0], gi1) and _same_bits(fresh[1], gt1), (n, divisor)
            for g0 in GRAD_OUTPUTS:
                go = torch.tensor([g0]).to(dtype)
                for want in [(True, True), (True, False), (False, True)]:
                    kept = [gi1, gt1]
                    fresh = _backward(emu, dtype, k, param, x, y, go, False, divisor, (1, 1), want)
                    inplace = _backward(emu, dtype, k, param, x, y, go, False, divisor, (1, 1),
                                        want, kept=kept)
                    for a, b in zip(fresh, inplace):
                        assert _same_bits(a, b), (n, divisor, g0, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_l1_backward_from_sign_and_from_kept(emu, dtype):
    # backward_from_sign (the int8 design) has the bits of the recomputation from x and y;
    # l1_backward_from_kept (the kept-gradient design) has the bits of backward_from_sign, in
    # place and into new buffers, from the input's or the target's kept gradient.
    for n in [1, 9, 33, 4099, 100_003]:
        x, y = _operands(n, dtype, seed=n + 3)
        for divisor in (float(n), 1.0):
            _, s, _, _ = _forward_reduce(emu, 0, 0.0, dtype, x, y, divisor, (0, 0), sign=True)
            _, _, gi1, gt1 = _forward_reduce(emu, 0, 0.0, dtype, x, y, divisor, (0, 0),
                                             grads=(True, True))
            for g0 in GRAD_OUTPUTS:
                go = torch.tensor([g0]).to(dtype)
                recomputed = _backward(emu, dtype, 0, 0.0, x, y, go, False, divisor, (0, 0),
                                       (True, True))
                bs = Buffer(emu, n, torch.int8, 0, s)
                bgo = Buffer(emu, 1, dtype, 0, go)
                from_sign = [Buffer(emu, n, dtype) for _ in range(2)]
                emu.backward_from_sign(DTYPE_CODE[dtype], bs, bgo, 0, divisor, n, *from_sign)
                for a, b in zip(recomputed, from_sign):
                    b.check_untouched()
                    assert _same_bits(a, b.t), (n, divisor, g0)
                for negated, kept in ((0, gi1), (1, gt1)):
                    for in_place in (0, 1):
                        bk = Buffer(emu, n, dtype, 0, kept)
                        if in_place:  # the kept buffers themselves
                            other = Buffer(emu, n, dtype, 0, (gt1, gi1)[negated])
                            outs = (bk, other) if not negated else (other, bk)
                        else:  # at another alignment than kept: element at a time
                            outs = (Buffer(emu, n, dtype, 1), Buffer(emu, n, dtype, 1))
                        emu.l1_backward_from_kept(DTYPE_CODE[dtype], bk, negated, bgo, divisor, n,
                                                  outs[0], outs[1], in_place)
                        for a, b in zip(recomputed, outs):
                            b.check_untouched()
                            assert _same_bits(a, b.t), (n, divisor, g0, negated, in_place)
                        if not in_place:
                            assert _same_bits(bk.t, kept), "the kept gradient was changed"


def test_float16_mean_l1_kept_gradient_keeps_its_signs_exactly_where_the_glue_says(emu):
    # glue.h l1_signs_survive: a float16 'mean' L1 keeps its gradient (sgn(d) / n rounded
    # to float, then to half) only while 1 / n does not round to zero; 2^25 - 1 is the first n
    # where it does (a tie at 2^-25, rounded to even).
    for n in [(1 << 25) - 2, (1 << 25) - 1]:
        survives = bool(torch.tensor(1.0 / n, dtype=torch.float32).half() != 0)
        x = torch.ones(n, dtype=torch.float16)
        y = torch.zeros(n, dtype=torch.float16)
        y[n // 2:] = 2.0
        _, _, gi, _ = _forward_reduce(emu, 0, 0.0, torch.float16, x, y, float(n),
                                      grads=(True, False))
        assert survives == (n == (1 << 25) - 2)
        assert bool((gi[: n // 2] > 0).all()) == survives
        assert bool((gi[n // 2:] < 0).all()) == survives
        if not survives:
            assert bool((gi == 0).all())


@pytest.mark.skipif(os.environ.get("L1EXT_EMULATION_LARGE") != "1",
                    reason="10 GB and 2 minutes: L1EXT_EMULATION_LARGE=1 runs it")
def test_more_than_2_31_elements(emu):
    # 64-bit indices: a float16 L1 'mean' over 2^31 + 37 elements (4096 blocks), with its int8
    # signs, filled and checked in chunks.
    n, chunk = (1 << 31) + 37, 1 << 26
    bx, by = Buffer(emu, n, torch.float16, 1), Buffer(emu, n, torch.float16, 1)
    gen = torch.Generator().manual_seed(0)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        bx.t[i:i + m].copy_(torch.randn(m, generator=gen))
        by.t[i:i + m].copy_(torch.randn(m, generator=gen))
    out = Buffer(emu, 1, torch.float16)
    sign = Buffer(emu, n, torch.int8, 1, poison=0x7F)
    ws = _workspace(emu, emu.lib.emu_reduce_workspace_bytes(DTYPE_CODE[torch.float16], n))
    emu.forward_reduce(DTYPE_CODE[torch.float16], 0, 0.0, bx, by, n, float(n), out, sign, None,
                       None, ws, 0)
    _untouched(bx, by, out, sign, ws)
    _ticket_reset(ws)
    total = 0.0
    for i in range(0, n, chunk):
        d = bx.t[i:i + chunk].double() - by.t[i:i + chunk].double()
        total += float(d.abs().sum())
        assert torch.equal(sign.t[i:i + chunk], torch.sgn(d).to(torch.int8)), i
    _close(out.t, torch.tensor([total / n]).half(), n)


# ---- weighted ----------------------------------------------------------------------------------

# weighted::Broadcast
ABSENT, FULL, ROW, COL, SCALAR = 0, 1, 2, 3, 4
EPS32 = torch.finfo(torch.float32).eps


# Per-element parameters (beta, delta, tau) drawn from a few values: beta 0 is L1 per element.
PARAM_VALUES = {1: [0.0, 0.25, 1.0, 2.5], 2: [0.25, 1.0, 2.5], 3: [0.1, 0.5, 0.9]}


def _aux_values(mode, rows, inner, gen, dtype, choices=None):
    shape = {ABSENT: (0,), FULL: (rows * inner,), ROW: (rows,), COL: (inner,), SCALAR: (1,)}[mode]
    if choices is None:
        return (torch.rand(shape, generator=gen) * 2).to(dtype)
    pick = torch.randint(len(choices), shape, generator=gen)
    return torch.tensor(choices)[pick].to(dtype)


def _aux_expand(v, mode, rows, inner):
    if mode == ABSENT:
        return None
    if mode == FULL:
        return v.reshape(rows, inner)
    if mode == ROW:
        return v.reshape(rows, 1).expand(rows, inner)
    if mode == COL:
        return v.reshape(1, inner).expand(rows, inner)
    return v.reshape(1, 1).expand(rows, inner)


def _weighted_oracle(k, param, x, y, w, p):
    """Elementwise weighted loss, its gradient w.r.t. x, and the unweighted loss, in float64
    (_elementwise per distinct parameter value)."""
    if p is None:
        v, g = _elementwise(k, param, x, y)
    else:
        v = torch.empty(x.shape, dtype=torch.float64)
        g = torch.empty(x.shape, dtype=torch.float64)
        for pv in p.unique().tolist():
            at = p == pv
            v[at], g[at] = _elementwise(k, pv, x[at], y[at])
    wd = torch.ones_like(v) if w is None else w.double()
    return wd * v, wd * g, v


@pytest.mark.parametrize("kind", [KINDS[0], KINDS[2], KINDS[4], KINDS[5]], ids=lambda k: k[0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weighted_against_oracle(emu, dtype, kind):
    _, k, param = kind
    gen = torch.Generator().manual_seed(11)
    # (rows of 7 and of 40,000: a grid stride that is no multiple of the row, longer or shorter)
    for rows, inner in [(0, 4), (1, 4), (37, 4), (9000, 4), (100, 1), (3, 7), (5003, 7), (2, 40_000)]:
        n = rows * inner
        x, y = _operands(n, dtype, seed=rows)
        for w_mode, p_mode in [(ABSENT, ABSENT), (FULL, ABSENT), (ROW, COL), (COL, FULL),
                               (SCALAR, ROW)]:
            if k == 0 and p_mode != ABSENT:
                continue
            w = _aux_values(w_mode, rows, inner, gen, dtype)
            p = _aux_values(p_mode, rows, inner, gen, dtype, PARAM_VALUES.get(k))
            we, pe = _aux_expand(w, w_mode, rows, inner), _aux_expand(p, p_mode, rows, inner)
            lw, gw, raw = _weighted_oracle(k, param, x.reshape(rows, inner), y.reshape(rows, inner),
                                           we, pe)
            for reduction, avg in [(0, 0), (1, 0), (2, 0), (1, 1), (1, 2), (1, 3)]:
                bx, by = Buffer(emu, n, dtype, 1, x), Buffer(emu, n, dtype, 1, y)
                bw = Buffer(emu, w.numel(), dtype, 0, w)
                bp = Buffer(emu, p.numel(), dtype, 0, p)
                avg_value = 7.5
                avg_dtype = torch.float32 if avg == 2 else torch.float64
                avg_t = torch.tensor([avg_value], dtype=avg_dtype)
                bavg = Buffer(emu, 1, avg_t.dtype, 0, avg_t)
                loss_weight = 0.5
                out = Buffer(emu, n if reduction == 0 else 1, dtype, 1)
                grads = [Buffer(emu, n, dtype, 1) if reduction else None for _ in range(2)]
                ws = _workspace(emu, 0 if reduction == 0 else emu.lib.emu_weighted_workspace_bytes(
                    DTYPE_CODE[dtype], n))
                args = (DTYPE_CODE[dtype], k, bx, by, bw if w_mode else None, w_mode,
                        bp if p_mode else None, p_mode, param, inner, n, reduction, loss_weight,
                        avg, avg_value, bavg)
                emu.weighted_forward(*args, out, *grads, ws)
                _untouched(bx, by, bw, bp, out, *grads, ws)
                _ticket_reset(ws)
                # weighted::Reduce::divisor: avg_factor + eps in avg_factor's own precision
                if reduction != 1:
                    divisor = 1.0
                elif avg == 0:
                    divisor = float(n)
                elif avg == 2:
                    divisor = float(avg_t + torch.tensor(EPS32, dtype=torch.float32))
                else:
                    divisor = avg_value + EPS32
                scale = loss_weight / divisor if divisor else float("inf")  # n = 0, 'mean'
                where = (rows, inner, w_mode, p_mode, reduction, avg)
                if reduction == 0:
                    _close(out.t, (lw.flatten() * loss_weight).to(dtype), where)
                else:
                    if n:
                        _close(out.t, (lw.sum() * scale).to(dtype).reshape(1), where)
                    _close(grads[0].t, (gw.flatten() * scale).to(dtype), where)
                    want_t = _target_of(k, grads[0].t, x, y, pe if p_mode else None)
                    assert _same_bits(grads[1].t, want_t), where
                # Backward: a per-element or scalar incoming gradient; gradients of x, y, weight.
                go = torch.randn(n if reduction == 0 else 1, generator=gen).to(dtype)
                bgo = Buffer(emu, go.numel(), dtype, 1, go)
                outs = [Buffer(emu, n, dtype, 1), Buffer(emu, n, dtype, 1),
                        Buffer(emu, n, dtype, 1) if w_mode == FULL else None]
                emu.weighted_backward(*args, bgo, *outs, 0)
                _untouched(bgo, *outs)
                s = go.double() * (loss_weight if reduction == 0 else scale)
                s = s if reduction == 0 else s.expand(n)
                _close(outs[0].t, (gw.flatten() * s).to(dtype), where)
                want_t = _target_of(k, outs[0].t, x, y, pe if p_mode else None)
                assert _same_bits(outs[1].t, want_t), where
                if outs[2] is not None:
                    _close(outs[2].t, (raw.flatten() * s).to(dtype), where)


CHECK_PARAM = 8  # p_mode + 8: weighted::Aux::check_param
# (kind, valid values, invalid ones, the message): torch's rules for beta, delta and tau.
PARAM_RULES = [
    (1, [0.0, 0.5, 2.0], [-0.25, -1e-3, float("nan")], "does not support negative values for beta"),
    (2, [0.1, 0.5, 2.0], [0.0, -0.5, float("nan")], "does not support non-positive values for delta"),
    (3, [0.1, 0.5, 0.9], [0.0, 1.0, -0.25, 1.5, float("nan")], "every tau must be in (0, 1)"),
]


@pytest.mark.parametrize("rule", PARAM_RULES, ids=["beta", "delta", "tau"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weighted_kernels_check_device_params(emu, dtype, rule):
    # A device beta, delta or tau is checked by the kernels that read it (Aux::check_param):
    # valid values give the bits of an unchecked call; an invalid one (NaN too) is a device-side
    # assertion (cudaErrorAssert, 710) in the forward and in the backward. Unchecked (a host
    # tensor, checked on the host), the kernels compute with it.
    kind, good, bads, expected = rule
    rows, inner = 300, 3
    n = rows * inner
    x, y = _operands(n, dtype, seed=3)
    valid = torch.tensor(good, dtype=dtype)
    for bad in bads:
        for reduction in (0, 1):
            results = []
            for param, p_mode in ((valid, COL), (valid, COL + CHECK_PARAM),
                                (torch.tensor([good[0], bad, good[2]], dtype=dtype), COL + CHECK_PARAM),
                                (torch.tensor([good[0], bad, good[2]], dtype=dtype), COL)):
                bx, by, bp = Buffer(emu, n, dtype, 1, x), Buffer(emu, n, dtype, 1, y), Buffer(emu, 3, dtype, 0, param)
                out = Buffer(emu, n if reduction == 0 else 1, dtype, 1)
                ws = _workspace(emu, 0 if reduction == 0 else emu.lib.emu_weighted_workspace_bytes(
                    DTYPE_CODE[dtype], n))
                args = (DTYPE_CODE[dtype], kind, bx, by, None, ABSENT, bp, p_mode, 0.0, inner, n,
                        reduction, 1.0, 0, 0.0, None)
                go = Buffer(emu, n if reduction == 0 else 1, dtype, 1, torch.ones(n if reduction == 0 else 1, dtype=dtype))
                gi = Buffer(emu, n, dtype, 1)
                outcome = []
                for call in (lambda: emu.weighted_forward(*args, out, None, None, ws),
                             lambda: emu.weighted_backward(*args, go, gi, None, None, 0)):
                    try:
                        call()
                        outcome.append("ok")
                    except EmulationError as e:
                        outcome.append(str(e))
                results.append((outcome, out.value(), gi.value()))
            (plain, o0, g0), (checked, o1, g1), (refused, _, _), (unchecked, _, _) = results
            assert plain == checked == unchecked == ["ok", "ok"], (bad, reduction, checked, unchecked)
            assert _same_bits(o0, o1) and _same_bits(g0, g1)
            for message in refused:
                assert "cudaError 710" in message and expected in message, message


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weighted_kept_gradients_rewritten_in_place(emu, dtype):
    gen = torch.Generator().manual_seed(5)
    rows, inner = 9000, 4
    n = rows * inner
    x, y = _operands(n, dtype, seed=9)
    w = _aux_values(ROW, rows, inner, gen, dtype)
    for k, param in [(1, 1.0), (2, 2.5), (0, 0.0)]:
        bx, by = Buffer(emu, n, dtype, 0, x), Buffer(emu, n, dtype, 0, y)
        bw = Buffer(emu, rows, dtype, 0, w)
        args = (DTYPE_CODE[dtype], k, bx, by, bw, ROW, None, ABSENT, param, inner, n, 1, 2.0, 0,
                0.0, None)
        out = Buffer(emu, 1, dtype)
        kept = [Buffer(emu, n, dtype) for _ in range(2)]
        ws = _workspace(emu, emu.lib.emu_weighted_workspace_bytes(DTYPE_CODE[dtype], n))
        emu.weighted_forward(*args, out, *kept, ws)
        _ticket_reset(ws)
        kept = [b.value() for b in kept]
        for g0 in GRAD_OUTPUTS:
            bgo = Buffer(emu, 1, dtype, 0, torch.tensor([g0]).to(dtype))
            fresh = [Buffer(emu, n, dtype) for _ in range(2)]
            emu.weighted_backward(*args, bgo, *fresh, None, 0)
            inplace = [Buffer(emu, n, dtype, 0, kept[i]) for i in range(2)]
            emu.weighted_backward(*args, bgo, *inplace, None, 1)
            for a, b in zip(fresh, inplace):
                assert _same_bits(a.t, b.t), (k, g0)
            if g0 == 1.0:
                assert _same_bits(fresh[0].t, kept[0]), "the forward's gradient is the backward's"


# ---- operands read where they lie (csrc/cuda/strided.h, StridedOperands) -------------------------

class Geometry:
    """The geometry argument of a launch over x and y read through their strides, for outputs in
    the dense layout `out`, as the CUDA glue builds it (losses_cuda.cu, reach): as_is, which of
    x and y are in that layout (glue.h used_as_is); index64, the 64-bit index path."""

    def __init__(self, sizes, out, x_strides, y_strides, as_is, index64=False):
        self.keep = [(ctypes.c_int64 * max(len(v), 1))(*v) for v in (sizes, out, x_strides, y_strides)]
        self.args = (len(sizes), *[ctypes.addressof(a) for a in self.keep],
                     int(as_is[0]) | 2 * int(as_is[1]), int(index64))


class StridedOperand:
    """A view's storage in emulated memory (Buffer: its first element `offset` elements past a
    16-byte boundary, poison and a guard page around it), and the view's data pointer."""

    def __init__(self, emu, view, offset=0):
        span = 1 + view.storage_offset() + sum((n - 1) * st for n, st in zip(view.shape, view.stride()))
        storage = torch.as_strided(view, (span,), (1,), 0)
        self.buffer = Buffer(emu, span, view.dtype, offset, storage)
        self.ptr = self.buffer.ptr + view.storage_offset() * view.element_size()


def _in_layout(t, out):
    """t's elements in the memory order of a dense tensor of strides `out`: what kernel_layout's
    copy into that layout holds, as one flat tensor."""
    order = sorted(range(t.dim()), key=lambda d: -out[d])
    return t.permute(order).contiguous().reshape(-1)


def _strided_cases(dtype, big=False):
    """(name, x, y, offsets of their storages) as the glue reads them in place: one operand is no
    dense tensor (glue.h read_in_place)."""
    g = torch.Generator().manual_seed(17)

    def r(*shape):
        return (torch.randn(*shape, generator=g) * 2).to(dtype)

    if big:  # more than one block (kSingleBlockMax is 2^15 elements)
        return [("row_broadcast_big", r(300, 130), r(1, 130).expand(300, 130), (0, 0))]
    x = r(40, 70)
    y = x.clone()
    y[::3] = r(14, 70)  # zero residuals elsewhere
    cl = r(2, 3, 5, 7).contiguous(memory_format=torch.channels_last)
    return [
        ("row_broadcast", x, r(1, 70).expand(40, 70), (0, 0)),
        ("column_broadcast", x, r(40, 1).expand(40, 70), (0, 3)),
        ("input_broadcast", r(1, 70).expand(40, 70), y, (0, 0)),
        ("both_sliced", r(40, 140)[:, ::2], r(40, 140)[:, 1::2], (0, 0)),
        ("transposed_input_broadcast_target", r(70, 40).t(), r(40, 1).expand(40, 70), (0, 0)),
        ("misaligned_input", x, r(1, 70).expand(40, 70), (1, 0)),
        ("channels_last_against_slice", cl, r(2, 6, 5, 7)[:, ::2], (0, 1)),
        ("sliced_input_contiguous_target", r(40, 71)[:, 1:], y, (0, 1)),
    ]


def _geometry(x, y, index64=False):
    dense = is_non_overlapping_and_dense(x)
    out = x.stride() if dense else torch.empty(x.shape).stride()
    as_is = (dense, (y.stride() == x.stride() or (x.is_contiguous() and y.is_contiguous())) if dense
             else y.is_contiguous())
    return Geometry(x.shape, out, x.stride(), y.stride(), as_is, index64), out, as_is


def _strided_and_copied(emu, dtype, k, param, x, y, offsets, index64=False):
    """Launches over x and y read through strides and over their copies in kernel layout (the
    contiguous launches, at the copies' alignment: an operand used as it is at its own, a copy at
    0), result by result: (what, strided, copied)."""
    n = x.numel()
    geometry, out, as_is = _geometry(x, y, index64)
    sx, sy = StridedOperand(emu, x, offsets[0]), StridedOperand(emu, y, offsets[1])
    cx = Buffer(emu, n, dtype, offsets[0] if as_is[0] else 0, _in_layout(x, out))
    cy = Buffer(emu, n, dtype, offsets[1] if as_is[1] else 0, _in_layout(y, out))
    d = DTYPE_CODE[dtype]
    results = []

    def both(what, call, outputs):
        made = []
        for operands, geo in (((sx, sy), geometry), ((cx, cy), None)):
            bufs = [Buffer(emu, size, t, 0, None if init is None else init, poison=0x7F if t == torch.int8 else 0xFF)
                    for size, t, init in outputs]
            call(*operands, bufs, geo)
            _untouched(sx.buffer, sy.buffer, cx, cy, *bufs)
            made.append([b.value() for b in bufs])
        for i, (a, b) in enumerate(zip(*made)):
            results.append(((what, i), a, b))
        return made[1]

    ws_bytes = emu.lib.emu_reduce_workspace_bytes(d, n)

    def reduce(sign, grads):
        def call(bx, by, bufs, geo):
            ws = _workspace(emu, ws_bytes)
            it = iter(bufs[1:])
            bs = next(it) if sign else None
            bgi, bgt = (next(it), next(it)) if grads else (None, None)
            emu.forward_reduce(d, k, param, bx, by, n, float(n), bufs[0], bs, bgi, bgt, ws, 0,
                               geometry=geo)
            _ticket_reset(ws)
        outputs = [(1, dtype, None)] + ([(n, torch.int8, None)] if sign else []) + \
            ([(n, dtype, None)] * 2 if grads else [])
        return both(("reduce", sign, grads), call, outputs)

    reduce(False, False)
    if k == 0:
        reduce(True, False)
    _, gi1, gt1 = reduce(False, True)

    def pointwise(bx, by, bufs, geo):
        bs = bufs[1] if k == 0 else None
        emu.forward_pointwise(d, k, param, bx, by, n, bufs[0], bs, None, None, geometry=geo)
    both("pointwise", pointwise, [(n, dtype, None)] + ([(n, torch.int8, None)] if k == 0 else []))

    def pointwise_grads(bx, by, bufs, geo):
        emu.forward_pointwise(d, k, param, bx, by, n, bufs[0], None, bufs[1], bufs[2], geometry=geo)
    both("pointwise with gradients", pointwise_grads, [(n, dtype, None)] * 3)

    go = Buffer(emu, n, dtype, 0, (torch.randn(n, generator=torch.Generator().manual_seed(n)) * 3).to(dtype))
    for per_element, g0 in ((True, None), (False, 0.7), (False, -2.0)):
        src = go if per_element else Buffer(emu, 1, dtype, 0, torch.tensor([g0]).to(dtype))

        def backward(bx, by, bufs, geo, src=src, per_element=per_element):
            emu.backward(d, k, param, bx, by, src, int(per_element), 1.0 if per_element else float(n),
                         n, bufs[0], bufs[1], 0, geometry=geo)
        both(("backward", per_element, g0), backward, [(n, dtype, None)] * 2)
    for g0 in (1.0, 2.0, 0.3):  # into the kept gradients (unless_one)
        src = Buffer(emu, 1, dtype, 0, torch.tensor([g0]).to(dtype))

        def into_kept(bx, by, bufs, geo, src=src):
            emu.backward(d, k, param, bx, by, src, 0, float(n), n, bufs[0], bufs[1], 1, geometry=geo)
        both(("into kept", g0), into_kept, [(n, dtype, gi1), (n, dtype, gt1)])
    return results


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_operands_give_the_bits_of_their_copies(emu, dtype, kind):
    """Every launch over operands read where they lie (a broadcast row or column, slices, an
    expanded input, a transposed or channels-last input against a broadcast or sliced target, a
    misaligned input) writes the bits the contiguous launch writes over their copies in kernel
    layout: the loss and its sum (the same order: a copy counts at offset 0), L1's sign, the
    gradients of the forwards and the backwards, the kept gradients rewritten in place; nothing
    is read or written outside the operands' storage."""
    _, k, param = kind
    for name, x, y, offsets in _strided_cases(dtype):
        for what, a, b in _strided_and_copied(emu, dtype, k, param, x, y, offsets):
            assert _same_bits(a, b), (name, what)


@pytest.mark.parametrize("index64", [False, True], ids=["index32", "index64"])
def test_strided_operands_over_several_blocks(emu, index64):
    """Several blocks (a sum over their partials) and the 64-bit index path (taken from 2^31
    elements on; forced here) give the bits of the copies too."""
    for dtype, (_, k, param) in [(torch.float32, KINDS[2]), (torch.bfloat16, KINDS[0])]:
        for name, x, y, offsets in _strided_cases(dtype, big=True):
            for what, a, b in _strided_and_copied(emu, dtype, k, param, x, y, offsets, index64):
                assert _same_bits(a, b), (name, what, dtype)


def test_strided_geometry_merges_and_refuses(emu):
    """Dimensions both operands step across as one merge (a 7-d broadcast of one row is two
    dimensions), and a geometry of more than kMaxStridedDims dimensions is refused (the glue then
    copies)."""
    n = 2 ** 7
    x = torch.randn(n)
    mergeable = torch.randn(1, 2).expand(2, 2, 2, 2, 2, 2, 2)  # one broadcast dim, then a row
    flat = x.view(2, 2, 2, 2, 2, 2, 2)
    out = Buffer(emu, n, torch.float32)
    bx = Buffer(emu, n, torch.float32, 0, x)
    by = StridedOperand(emu, mergeable)
    geo, _, _ = _geometry(flat, mergeable)
    emu.forward_pointwise(2, 1, 1.0, bx, by, n, out, None, None, None, geometry=geo)
    want = TF.smooth_l1_loss(flat, mergeable, reduction="none").reshape(-1)
    assert torch.equal(out.t, want)
    # Every dimension a slice of another step: seven dimensions that do not merge.
    big = torch.randn(3 ** 7)
    unmergeable = big.as_strided((2,) * 7, tuple(3 ** i for i in reversed(range(7))))
    by = StridedOperand(emu, unmergeable)
    geo, _, _ = _geometry(flat, unmergeable)
    with pytest.raises(EmulationError, match="cudaError 1:"):
        emu.forward_pointwise(2, 1, 1.0, bx, by, n, out, None, None, None, geometry=geo)


@pytest.mark.parametrize("d", [1, 2, 3, 5, 7, 40, 70, 130, 255, 641, 65537, 2 ** 20 + 7,
                               2 ** 30 - 1, 2 ** 30 + 3, 2 ** 31 - 1])
def test_divider32_divides_every_index_below_two_to_the_31(emu, d):
    emu.divider_mismatches(d)  # raises on a non-zero count


# ---- the emulator itself -----------------------------------------------------------------------

@pytest.mark.parametrize("case, message", [
    (1, "shuffle reached by 16 of 32 lanes"),
    (2, "__syncthreads reached by"),
    (3, "access of a guard page"),
])
def test_emulator_reports_what_a_gpu_would_not_forgive(emu, case, message):
    emu.self_test(0)  # a correct block sum runs
    with pytest.raises(EmulationError, match=message):
        emu.self_test(case)
