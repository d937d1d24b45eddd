"""A model of the Björck CUDA kernels' shared-memory loads (kernels/orthogonal.cu, 64 x 32 float,
128 threads): for each warp instruction of the products, the wavefronts it needs (the most
distinct 4-byte words any one bank serves; one word to many lanes is a broadcast), with the
buffers' rows plain, swizzled (LVMFAST_BJORCK_SWIZZLE: chunk_xor) or padded (LVMFAST_BJORCK_PAD=4:
rows M + 4 apart, the Gram products' K split over blocks of 4 rows, an update tile's rows D / 4
apart). The tile placement copies QuadTile and split_bits_for; a change there must be made here
too.

    python benchmarks/kernels/bjorck_banks.py

Per block and step it prints the products' warp FMA instructions over 4 (an SM issues 4 a cycle)
against their wavefronts (an SM's shared memory serves one a cycle): the larger bounds the step.
"""
from __future__ import annotations


def chunk_xor(r: int) -> int:
    return ((r & 1) << 2) | ((r >> 2) & 3)


LAYOUTS = ("plain", "swizzled", "padded")
PAD = 4


def at(r: int, c: int, M: int, layout: str) -> int:
    if layout == "padded":
        return r * (M + PAD) + c
    return r * M + ((c ^ (chunk_xor(r) << 2)) if layout == "swizzled" else c)


def k_row(s: int, splits: int, it: int, layout: str) -> int:
    """Row of X that split s reads at its it-th step of a Gram product (gemm_tn_quads)."""
    if layout == "padded":  # blocks of 4 rows: 4 s .. 4 s + 3, then 4 (s + splits) ...
        return 4 * (s + splits * (it // 4)) + it % 4
    return s + splits * it


def tile_row(t: int, i: int, D: int, layout: str) -> int:
    """Row i of an update tile in tile row t (gemm_nn_quads)."""
    return t + i * (D // 4) if layout == "padded" else 4 * t + i


def split_bits_for(tiles: int, threads: int) -> int:
    bits = 0
    while bits < 2 and (tiles << (bits + 1)) <= threads:
        bits += 1
    return bits


def quad_tile(w: int, cols: int, split_bits: int, upper: bool) -> tuple[int, int]:
    block, block_row, half = (w >> 2) >> split_bits, 0, cols >> 1
    if upper:
        while block >= half - block_row:
            block -= half - block_row
            block_row += 1
        block_col = block_row + block
    else:
        block_row, block_col = block // half, block % half
    return 2 * block_row + ((w >> 1) & 1), 2 * block_col + (w & 1)


def wavefronts(words: list[int]) -> int:
    banks: dict[int, set[int]] = {}
    for word in set(words):
        banks.setdefault(word % 32, set()).add(word)
    return max(len(v) for v in banks.values())


def gemm_tn(D: int, M: int, layout: str, upper: bool, threads: int = 128) -> tuple[int, int]:
    """(warp FMA instructions, wavefronts) of C = X^T Y (the Gram product when upper)."""
    tiles = (M // 4) ** 2
    split_bits = split_bits_for(tiles, threads)
    splits, side = 1 << split_bits, M // 8
    items = (4 * (side * (side + 1) // 2) if upper else tiles) << split_bits
    fma = waves = 0
    for warp in range(threads // 32):
        lanes = [w for w in range(32 * warp, 32 * warp + 32) if w < items]
        if not lanes:
            continue
        for it in range(D // splits):
            fma += 16
            for operand in (0, 1):  # X quads at the tile's rows, Y quads at its columns
                words = []
                for w in lanes:
                    row, col = quad_tile(w, M // 4, split_bits, upper)
                    d = k_row((w >> 2) & (splits - 1), splits, it, layout)  # the lane's K split
                    base = at(d, 4 * (col if operand else row), M, layout)
                    words += [base + e for e in range(4)]
                waves += wavefronts(words)
    return fma, waves


def gemm_nn(D: int, M: int, layout: str, threads: int = 128) -> tuple[int, int]:
    """(warp FMA instructions, wavefronts) of one pass C = alpha X Y + beta Z, Y = A (M x M,
    plain), with its epilogue's Z loads and C stores."""
    tiles = (D // 4) * (M // 4)
    fma = waves = 0
    for warp in range(threads // 32):
        lanes = [w for w in range(32 * warp, 32 * warp + 32) if w < tiles]
        place = [quad_tile(w, M // 4, 0, False) for w in lanes]
        for k in range(0, M, 2):
            fma += 32
            for kk in (k, k + 1):
                waves += wavefronts([kk * M + 4 * col + e for _, col in place for e in range(4)])
            for i in range(4):
                waves += wavefronts([at(tile_row(row, i, D, layout), k, M, layout) + e
                                     for row, _ in place for e in (0, 1)])
        for i in range(4):
            waves += 2 * wavefronts([at(tile_row(row, i, D, layout), 4 * col, M, layout) + e
                                     for row, col in place for e in range(4)])
    return fma, waves


def main() -> int:
    D, M = 64, 32
    for layout in LAYOUTS:
        gram, update = gemm_tn(D, M, layout, True), gemm_nn(D, M, layout)
        s_q_g = gemm_tn(D, M, layout, False)
        fma_cycles, waves = (gram[0] + update[0]) / 4, gram[1] + update[1]
        print(f"{layout:8s}  forward step: Gram {gram[1]} wavefronts, "
              f"update {update[1]}; FMA {fma_cycles:.0f} SM cycles against {waves} wavefronts | "
              f"backward step: S = Q^T G {s_q_g[1]} wavefronts, each of G A and Q (S + S^T) "
              f"{update[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
