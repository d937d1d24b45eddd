"""Triton kernels (CUDA; the CPU only under TRITON_INTERPRET=1), one module per op family.

Each module registers its kernels for the `<op>_triton` schemas of lvmfast._C; it is imported
by lvmfast._backend.register_op only when Triton is usable.
"""
