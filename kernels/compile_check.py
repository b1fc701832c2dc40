"""Compile the Conv-BN-ReLU kernel for real GPU targets without a GPU: every config and dtype.

``triton.compile`` with a ``GPUTarget`` runs the whole pipeline (Triton IR, PTX,
ptxas to a cubin) on the host, so CI without a GPU still learns whether each
tile config builds for Ampere (sm_80) and Hopper (sm_90) and whether its
shared memory fits the architecture's per-block limit.

    python -m kernels.compile_check [--arch 80 90] [--dtype fp16 bf16 fp32]

prints one line per (arch, dtype, config) and exits non-zero if any fails.
Needs TRITON_INTERPRET unset: the interpreter replaces the compiler.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from .conv_bn_relu import _conv_kernel, interpreting
from .tuning import CONFIGS, TileConfig

# Largest dynamic shared memory one block may opt into, bytes (CUDA programming guide,
# "Technical Specifications per Compute Capability").
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
POINTER_TYPES = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}


@dataclass(frozen=True)
class Compiled:
    """One compile: target, dtype, config, and what the compiler reports (bytes, counts)."""

    arch: int
    dtype: str
    config: TileConfig
    shared_bytes: int
    num_warps: int
    cubin_bytes: int

    @property
    def fits(self) -> bool:
        return self.shared_bytes <= SHARED_LIMIT[self.arch]


def compile_config(arch: int, dtype: str, cfg: TileConfig, kh: int = 3, kw: int = 3) -> Compiled:
    """Compile the kernel for ``sm_<arch>`` with pointers of ``dtype``, ReLU and bias, one config."""
    if interpreting():
        raise RuntimeError("TRITON_INTERPRET is set: the interpreter replaces the compiler")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    import kernels.conv_bn_relu as cbr

    cbr._import_triton()  # the kernel body resolves ``tl`` from the module at compile time
    fn = JITFunction(_conv_kernel)
    consts = {
        "KH": kh,
        "KW": kw,
        "ACT": 1,
        "HAS_BIAS": True,
        "INPUT_PRECISION": "ieee",
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_K": cfg.block_k,
    }
    sig = {name: "i32" for name in fn.arg_names}
    sig.update({p: POINTER_TYPES[dtype] for p in ("x_ptr", "w_ptr", "b_ptr", "y_ptr")})
    sig.update({k: "constexpr" for k in consts})
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
    )
    md = kernel.metadata
    return Compiled(arch, dtype, cfg, int(md.shared), int(md.num_warps), len(kernel.asm["cubin"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", type=int, default=[80, 90], choices=sorted(SHARED_LIMIT))
    p.add_argument("--dtype", nargs="+", default=list(POINTER_TYPES), choices=list(POINTER_TYPES))
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    args = p.parse_args(argv)
    failed = 0
    for arch in args.arch:
        for dtype in args.dtype:
            for cfg in CONFIGS:
                try:
                    c = compile_config(arch, dtype, cfg)
                except Exception as e:  # report every failure, not only the first
                    failed += 1
                    print(f"FAIL sm_{arch} {dtype} {cfg}: {type(e).__name__}: {e}", flush=True)
                    continue
                failed += not c.fits
                if args.json:
                    print(json.dumps({**asdict(c), "fits": c.fits}), flush=True)
                else:
                    print(
                        f"{'ok  ' if c.fits else 'FAIL'} sm_{arch} {dtype} {cfg}: "
                        f"shared {c.shared_bytes} B of {SHARED_LIMIT[arch]}",
                        flush=True,
                    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
