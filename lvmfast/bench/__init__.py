"""Microbenchmarks behind `lvmfast bench` (shapes and baselines: shared/BENCHMARKS.md).

Each op family has a module here with `cases(device, quick)`; the harness (`harness.py`) times
every candidate in one process and reports medians, 20th/80th percentiles, speed-up ratios and
memory. It ships inside the package so that the command works from any install.
"""
# `--ops` name -> module of lvmfast.bench holding its cases
FAMILIES = {"log_mog": "mixture", "householder_flow": "householder",
            "bjorck_orthonormalize": "orthogonal", "sylvester_flow": "sylvester",
            "diffusion": "diffusion", "end_to_end": "end_to_end"}
