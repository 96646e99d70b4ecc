//go:build amd64 && gc && !purego

#include "textflag.h"

// Poly1305 over 64-octet groups, four 16-octet blocks in parallel.
//
// The accumulator is kept as four lanes of five 26-bit limbs, one lane per
// block position within a group (lane order after loading: blocks 0, 2, 1,
// 3 of the group). Each group does A = A*r^4 + group; the last multiplies
// each lane by its own power (r^4, r^2, r^3, r) instead and sums the lanes.
// That equals the serial Horner evaluation over the same blocks.

DATA polyMask26<>+0(SB)/8, $0x3ffffff
GLOBL polyMask26<>(SB), RODATA|NOPTR, $8

DATA polyPad<>+0(SB)/8, $0x1000000
GLOBL polyPad<>(SB), RODATA|NOPTR, $8

// Powers table (DX): the limbs R0..R4 and S1..S4 (= 5*R1..5*R4), one
// 4-lane vector each, of r^4 (broadcast) and of the per-lane final powers.
#define PR(k) (32*k)(DX)
#define PS(k) (160+32*(k-1))(DX)
#define FR(k) (288+32*k)(DX)
#define FS(k) (448+32*(k-1))(DX)

// D (Y5..Y9) = A (Y0..Y4) * R, before carries.
#define MUL(R, S) \
	VPMULUDQ R(0), Y0, Y5;  \
	VPMULUDQ R(1), Y0, Y6;  \
	VPMULUDQ R(2), Y0, Y7;  \
	VPMULUDQ R(3), Y0, Y8;  \
	VPMULUDQ R(4), Y0, Y9;  \
	VPMULUDQ S(4), Y1, Y10; \
	VPADDQ Y10, Y5, Y5;     \
	VPMULUDQ R(0), Y1, Y11; \
	VPADDQ Y11, Y6, Y6;     \
	VPMULUDQ R(1), Y1, Y12; \
	VPADDQ Y12, Y7, Y7;     \
	VPMULUDQ R(2), Y1, Y10; \
	VPADDQ Y10, Y8, Y8;     \
	VPMULUDQ R(3), Y1, Y11; \
	VPADDQ Y11, Y9, Y9;     \
	VPMULUDQ S(3), Y2, Y12; \
	VPADDQ Y12, Y5, Y5;     \
	VPMULUDQ S(4), Y2, Y10; \
	VPADDQ Y10, Y6, Y6;     \
	VPMULUDQ R(0), Y2, Y11; \
	VPADDQ Y11, Y7, Y7;     \
	VPMULUDQ R(1), Y2, Y12; \
	VPADDQ Y12, Y8, Y8;     \
	VPMULUDQ R(2), Y2, Y10; \
	VPADDQ Y10, Y9, Y9;     \
	VPMULUDQ S(2), Y3, Y11; \
	VPADDQ Y11, Y5, Y5;     \
	VPMULUDQ S(3), Y3, Y12; \
	VPADDQ Y12, Y6, Y6;     \
	VPMULUDQ S(4), Y3, Y10; \
	VPADDQ Y10, Y7, Y7;     \
	VPMULUDQ R(0), Y3, Y11; \
	VPADDQ Y11, Y8, Y8;     \
	VPMULUDQ R(1), Y3, Y12; \
	VPADDQ Y12, Y9, Y9;     \
	VPMULUDQ S(1), Y4, Y10; \
	VPADDQ Y10, Y5, Y5;     \
	VPMULUDQ S(2), Y4, Y11; \
	VPADDQ Y11, Y6, Y6;     \
	VPMULUDQ S(3), Y4, Y12; \
	VPADDQ Y12, Y7, Y7;     \
	VPMULUDQ S(4), Y4, Y10; \
	VPADDQ Y10, Y8, Y8;     \
	VPMULUDQ R(0), Y4, Y11; \
	VPADDQ Y11, Y9, Y9

// Bring D's limbs back to about 26 bits (d1 and d4 may exceed 2^26 by a
// little), folding the part above 2^130 back in times 5.
#define CARRY \
	VPSRLQ $26, Y8, Y10;  \
	VPAND Y13, Y8, Y8;    \
	VPADDQ Y10, Y9, Y9;   \
	VPSRLQ $26, Y5, Y11;  \
	VPAND Y13, Y5, Y5;    \
	VPADDQ Y11, Y6, Y6;   \
	VPSRLQ $26, Y9, Y10;  \
	VPAND Y13, Y9, Y9;    \
	VPSLLQ $2, Y10, Y12;  \
	VPADDQ Y12, Y10, Y10; \
	VPADDQ Y10, Y5, Y5;   \
	VPSRLQ $26, Y6, Y11;  \
	VPAND Y13, Y6, Y6;    \
	VPADDQ Y11, Y7, Y7;   \
	VPSRLQ $26, Y5, Y10;  \
	VPAND Y13, Y5, Y5;    \
	VPADDQ Y10, Y6, Y6;   \
	VPSRLQ $26, Y7, Y11;  \
	VPAND Y13, Y7, Y7;    \
	VPADDQ Y11, Y8, Y8;   \
	VPSRLQ $26, Y8, Y10;  \
	VPAND Y13, Y8, Y8;    \
	VPADDQ Y10, Y9, Y9

// Split the 64-octet group at SI into limbs in Y0..Y4, with the 2^128 pad
// bit of each block.
#define LOAD \
	VMOVDQU 0(SI), Y10;          \
	VMOVDQU 32(SI), Y11;         \
	VPUNPCKHQDQ Y11, Y10, Y12;   \
	VPUNPCKLQDQ Y11, Y10, Y10;   \
	VPAND Y13, Y10, Y0;          \
	VPSRLQ $26, Y10, Y1;         \
	VPAND Y13, Y1, Y1;           \
	VPSRLQ $52, Y10, Y2;         \
	VPSLLQ $12, Y12, Y11;        \
	VPOR Y11, Y2, Y2;            \
	VPAND Y13, Y2, Y2;           \
	VPSRLQ $14, Y12, Y3;         \
	VPAND Y13, Y3, Y3;           \
	VPSRLQ $40, Y12, Y4;         \
	VPOR Y14, Y4, Y4

// Sum the four lanes of limb register Y into 8*k(AX).
#define HSUM(Y, X, k) \
	VEXTRACTI128 $1, Y, X10; \
	VPADDQ X10, X, X10;      \
	VPSHUFD $0x4e, X10, X11; \
	VPADDQ X11, X10, X10;    \
	VMOVQ X10, (8*k)(AX)

// func polyBlocksAVX2(h *[5]uint64, msg *byte, n int, pw *polyPowers)
TEXT ·polyBlocksAVX2(SB), NOSPLIT, $0-32
	MOVQ h+0(FP), AX
	MOVQ msg+8(FP), SI
	MOVQ n+16(FP), CX
	MOVQ pw+24(FP), DX

	VPBROADCASTQ polyMask26<>(SB), Y13
	VPBROADCASTQ polyPad<>(SB), Y14

	// A = first group, plus h in the lane of its first block.
	LOAD
	VMOVQ 0(AX), X15
	VPADDQ Y15, Y0, Y0
	VMOVQ 8(AX), X15
	VPADDQ Y15, Y1, Y1
	VMOVQ 16(AX), X15
	VPADDQ Y15, Y2, Y2
	VMOVQ 24(AX), X15
	VPADDQ Y15, Y3, Y3
	VMOVQ 32(AX), X15
	VPADDQ Y15, Y4, Y4

	DECQ CX
	JZ   last

loop:
	MUL(PR, PS)
	CARRY
	ADDQ $64, SI
	LOAD
	VPADDQ Y5, Y0, Y0
	VPADDQ Y6, Y1, Y1
	VPADDQ Y7, Y2, Y2
	VPADDQ Y8, Y3, Y3
	VPADDQ Y9, Y4, Y4
	DECQ CX
	JNZ  loop

last:
	MUL(FR, FS)
	CARRY
	HSUM(Y5, X5, 0)
	HSUM(Y6, X6, 1)
	HSUM(Y7, X7, 2)
	HSUM(Y8, X8, 3)
	HSUM(Y9, X9, 4)

	VZEROUPPER
	RET

// ---------------------------------------------------------------------------
// AVX-512F: the same with eight lanes (128-octet groups, lane order after
// loading: blocks 0, 4, 1, 5, 2, 6, 3, 7) and r^8 in Z16..Z24.

// Powers table (DX): R0..R4, S1..S4 of r^8, then of the final powers, one
// 8-lane vector each.
#define QFR(k) (576+64*k)(DX)
#define QFS(k) (896+64*(k-1))(DX)
#define ZMUL(R0, R1, R2, R3, R4, S1, S2, S3, S4) \
	VPMULUDQ R0, Z0, Z5;  \
	VPMULUDQ R1, Z0, Z6;  \
	VPMULUDQ R2, Z0, Z7;  \
	VPMULUDQ R3, Z0, Z8;  \
	VPMULUDQ R4, Z0, Z9;  \
	VPMULUDQ S4, Z1, Z10; \
	VPADDQ Z10, Z5, Z5;     \
	VPMULUDQ R0, Z1, Z11; \
	VPADDQ Z11, Z6, Z6;     \
	VPMULUDQ R1, Z1, Z12; \
	VPADDQ Z12, Z7, Z7;     \
	VPMULUDQ R2, Z1, Z10; \
	VPADDQ Z10, Z8, Z8;     \
	VPMULUDQ R3, Z1, Z11; \
	VPADDQ Z11, Z9, Z9;     \
	VPMULUDQ S3, Z2, Z12; \
	VPADDQ Z12, Z5, Z5;     \
	VPMULUDQ S4, Z2, Z10; \
	VPADDQ Z10, Z6, Z6;     \
	VPMULUDQ R0, Z2, Z11; \
	VPADDQ Z11, Z7, Z7;     \
	VPMULUDQ R1, Z2, Z12; \
	VPADDQ Z12, Z8, Z8;     \
	VPMULUDQ R2, Z2, Z10; \
	VPADDQ Z10, Z9, Z9;     \
	VPMULUDQ S2, Z3, Z11; \
	VPADDQ Z11, Z5, Z5;     \
	VPMULUDQ S3, Z3, Z12; \
	VPADDQ Z12, Z6, Z6;     \
	VPMULUDQ S4, Z3, Z10; \
	VPADDQ Z10, Z7, Z7;     \
	VPMULUDQ R0, Z3, Z11; \
	VPADDQ Z11, Z8, Z8;     \
	VPMULUDQ R1, Z3, Z12; \
	VPADDQ Z12, Z9, Z9;     \
	VPMULUDQ S1, Z4, Z10; \
	VPADDQ Z10, Z5, Z5;     \
	VPMULUDQ S2, Z4, Z11; \
	VPADDQ Z11, Z6, Z6;     \
	VPMULUDQ S3, Z4, Z12; \
	VPADDQ Z12, Z7, Z7;     \
	VPMULUDQ S4, Z4, Z10; \
	VPADDQ Z10, Z8, Z8;     \
	VPMULUDQ R0, Z4, Z11; \
	VPADDQ Z11, Z9, Z9

#define ZCARRY \
	VPSRLQ $26, Z8, Z10;  \
	VPANDQ Z13, Z8, Z8;   \
	VPADDQ Z10, Z9, Z9;   \
	VPSRLQ $26, Z5, Z11;  \
	VPANDQ Z13, Z5, Z5;   \
	VPADDQ Z11, Z6, Z6;   \
	VPSRLQ $26, Z9, Z10;  \
	VPANDQ Z13, Z9, Z9;   \
	VPSLLQ $2, Z10, Z12;  \
	VPADDQ Z12, Z10, Z10; \
	VPADDQ Z10, Z5, Z5;   \
	VPSRLQ $26, Z6, Z11;  \
	VPANDQ Z13, Z6, Z6;   \
	VPADDQ Z11, Z7, Z7;   \
	VPSRLQ $26, Z5, Z10;  \
	VPANDQ Z13, Z5, Z5;   \
	VPADDQ Z10, Z6, Z6;   \
	VPSRLQ $26, Z7, Z11;  \
	VPANDQ Z13, Z7, Z7;   \
	VPADDQ Z11, Z8, Z8;   \
	VPSRLQ $26, Z8, Z10;  \
	VPANDQ Z13, Z8, Z8;   \
	VPADDQ Z10, Z9, Z9

#define ZLOAD \
	VMOVDQU64 0(SI), Z10;        \
	VMOVDQU64 64(SI), Z11;       \
	VPUNPCKHQDQ Z11, Z10, Z12;   \
	VPUNPCKLQDQ Z11, Z10, Z10;   \
	VPANDQ Z13, Z10, Z0;         \
	VPSRLQ $26, Z10, Z1;         \
	VPANDQ Z13, Z1, Z1;          \
	VPSRLQ $52, Z10, Z2;         \
	VPSLLQ $12, Z12, Z11;        \
	VPORQ Z11, Z2, Z2;           \
	VPANDQ Z13, Z2, Z2;          \
	VPSRLQ $14, Z12, Z3;         \
	VPANDQ Z13, Z3, Z3;          \
	VPSRLQ $40, Z12, Z4;         \
	VPORQ Z14, Z4, Z4

#define ZHSUM(Z, Y, X, k) \
	VEXTRACTI64X4 $1, Z, Y10; \
	VPADDQ Y10, Y, Y10;       \
	VEXTRACTI128 $1, Y10, X11; \
	VPADDQ X11, X10, X10;     \
	VPSHUFD $0x4e, X10, X11;  \
	VPADDQ X11, X10, X10;     \
	VMOVQ X10, (8*k)(AX)

// func polyBlocksAVX512(h *[5]uint64, msg *byte, n int, pw *polyPowers8)
TEXT ·polyBlocksAVX512(SB), NOSPLIT, $0-32
	MOVQ h+0(FP), AX
	MOVQ msg+8(FP), SI
	MOVQ n+16(FP), CX
	MOVQ pw+24(FP), DX

	VPBROADCASTQ polyMask26<>(SB), Z13
	VPBROADCASTQ polyPad<>(SB), Z14
	VMOVDQU64 0(DX), Z16
	VMOVDQU64 64(DX), Z17
	VMOVDQU64 128(DX), Z18
	VMOVDQU64 192(DX), Z19
	VMOVDQU64 256(DX), Z20
	VMOVDQU64 320(DX), Z21
	VMOVDQU64 384(DX), Z22
	VMOVDQU64 448(DX), Z23
	VMOVDQU64 512(DX), Z24

	ZLOAD
	VMOVQ 0(AX), X15
	VPADDQ Z15, Z0, Z0
	VMOVQ 8(AX), X15
	VPADDQ Z15, Z1, Z1
	VMOVQ 16(AX), X15
	VPADDQ Z15, Z2, Z2
	VMOVQ 24(AX), X15
	VPADDQ Z15, Z3, Z3
	VMOVQ 32(AX), X15
	VPADDQ Z15, Z4, Z4

	DECQ CX
	JZ   zlast

zloop:
	ZMUL(Z16, Z17, Z18, Z19, Z20, Z21, Z22, Z23, Z24)
	ZCARRY
	ADDQ $128, SI
	ZLOAD
	VPADDQ Z5, Z0, Z0
	VPADDQ Z6, Z1, Z1
	VPADDQ Z7, Z2, Z2
	VPADDQ Z8, Z3, Z3
	VPADDQ Z9, Z4, Z4
	DECQ CX
	JNZ  zloop

zlast:
	ZMUL(QFR(0), QFR(1), QFR(2), QFR(3), QFR(4), QFS(1), QFS(2), QFS(3), QFS(4))
	ZCARRY
	ZHSUM(Z5, Y5, X5, 0)
	ZHSUM(Z6, Y6, X6, 1)
	ZHSUM(Z7, Y7, X7, 2)
	ZHSUM(Z8, Y8, X8, 3)
	ZHSUM(Z9, Y9, X9, 4)

	VZEROUPPER
	RET
