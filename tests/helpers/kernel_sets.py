"""The CPU kernel sets a merge must give the same bits under (tests/models/test_merge.py and
benchmarks/bench_merge.py), chosen by environment variables each subprocess starts with."""

DTYPES = ("float32", "float16", "bfloat16")
KERNEL_VARIABLES = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS")
# Kernel sets: this CPU's own, an older CPU's (SSE4.2 BLAS), AVX2 everywhere, torch's scalar
# kernels (no SIMD), and one thread.
KERNEL_SETS = {
    "default": {},
    "sse4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "no_simd": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default"},
    "one_thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
}
