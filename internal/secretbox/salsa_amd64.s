// Copyright 2025 The zp Authors. All rights reserved.

//go:build amd64 && gc && !purego

#include "textflag.h"

// Multi-block Salsa20/20 keystream XOR.
//
// Both functions use the "one word per register" layout: vector register i
// holds state word i of N consecutive blocks, lane j belonging to block
// counter+j. After the 20 rounds the words are transposed back into
// 64-octet blocks, XORed with src and stored to dst. dst and src may be
// identical (each block is read before it is written) but must not overlap
// otherwise.
//
// state points to the 16-word Salsa20 input (constants, key, nonce, and the
// 64-bit block counter in words 8 and 9); it is only read. n is the number
// of whole batches (N*64 octets each) to process, and must be at least 1.

// Lane numbers 0..15.
DATA laneIota<>+0x00(SB)/4, $0
DATA laneIota<>+0x04(SB)/4, $1
DATA laneIota<>+0x08(SB)/4, $2
DATA laneIota<>+0x0c(SB)/4, $3
DATA laneIota<>+0x10(SB)/4, $4
DATA laneIota<>+0x14(SB)/4, $5
DATA laneIota<>+0x18(SB)/4, $6
DATA laneIota<>+0x1c(SB)/4, $7
DATA laneIota<>+0x20(SB)/4, $8
DATA laneIota<>+0x24(SB)/4, $9
DATA laneIota<>+0x28(SB)/4, $10
DATA laneIota<>+0x2c(SB)/4, $11
DATA laneIota<>+0x30(SB)/4, $12
DATA laneIota<>+0x34(SB)/4, $13
DATA laneIota<>+0x38(SB)/4, $14
DATA laneIota<>+0x3c(SB)/4, $15
GLOBL laneIota<>(SB), RODATA|NOPTR, $64

DATA const1<>+0x00(SB)/4, $1
GLOBL const1<>(SB), RODATA|NOPTR, $4

DATA const8<>+0x00(SB)/4, $8
GLOBL const8<>(SB), RODATA|NOPTR, $4

DATA const16<>+0x00(SB)/4, $16
GLOBL const16<>(SB), RODATA|NOPTR, $4

DATA constBias<>+0x00(SB)/4, $0x80000000
GLOBL constBias<>(SB), RODATA|NOPTR, $4

// ---------------------------------------------------------------------------
// AVX-512F: 16 blocks per batch in Z0..Z15, rotations with VPROLD.

// x ^= (a + b) <<< r, t a scratch register.
#define Z_STEP(x, a, b, r, t) \
	VPADDD a, b, t;   \
	VPROLD $r, t, t;  \
	VPXORD t, x, x

#define Z_DOUBLEROUND \
	/* column round */ \
	Z_STEP(Z4, Z0, Z12, 7, Z16);   \
	Z_STEP(Z9, Z5, Z1, 7, Z17);    \
	Z_STEP(Z14, Z10, Z6, 7, Z18);  \
	Z_STEP(Z3, Z15, Z11, 7, Z19);  \
	Z_STEP(Z8, Z4, Z0, 9, Z16);    \
	Z_STEP(Z13, Z9, Z5, 9, Z17);   \
	Z_STEP(Z2, Z14, Z10, 9, Z18);  \
	Z_STEP(Z7, Z3, Z15, 9, Z19);   \
	Z_STEP(Z12, Z8, Z4, 13, Z16);  \
	Z_STEP(Z1, Z13, Z9, 13, Z17);  \
	Z_STEP(Z6, Z2, Z14, 13, Z18);  \
	Z_STEP(Z11, Z7, Z3, 13, Z19);  \
	Z_STEP(Z0, Z12, Z8, 18, Z16);  \
	Z_STEP(Z5, Z1, Z13, 18, Z17);  \
	Z_STEP(Z10, Z6, Z2, 18, Z18);  \
	Z_STEP(Z15, Z11, Z7, 18, Z19); \
	/* row round */ \
	Z_STEP(Z1, Z0, Z3, 7, Z16);    \
	Z_STEP(Z6, Z5, Z4, 7, Z17);    \
	Z_STEP(Z11, Z10, Z9, 7, Z18);  \
	Z_STEP(Z12, Z15, Z14, 7, Z19); \
	Z_STEP(Z2, Z1, Z0, 9, Z16);    \
	Z_STEP(Z7, Z6, Z5, 9, Z17);    \
	Z_STEP(Z8, Z11, Z10, 9, Z18);  \
	Z_STEP(Z13, Z12, Z15, 9, Z19); \
	Z_STEP(Z3, Z2, Z1, 13, Z16);   \
	Z_STEP(Z4, Z7, Z6, 13, Z17);   \
	Z_STEP(Z9, Z8, Z11, 13, Z18);  \
	Z_STEP(Z14, Z13, Z12, 13, Z19); \
	Z_STEP(Z0, Z3, Z2, 18, Z16);   \
	Z_STEP(Z5, Z4, Z7, 18, Z17);   \
	Z_STEP(Z10, Z9, Z8, 18, Z18);  \
	Z_STEP(Z15, Z14, Z13, 18, Z19)

// Transpose dwords inside each 128-bit lane of a0..a3: afterwards lane L of
// a_m holds words (a0, a1, a2, a3) of block 4L+m.
#define Z_TRANSPOSE4(a0, a1, a2, a3) \
	VPUNPCKLDQ a1, a0, Z16;   \
	VPUNPCKHDQ a1, a0, Z17;   \
	VPUNPCKLDQ a3, a2, Z18;   \
	VPUNPCKHDQ a3, a2, Z19;   \
	VPUNPCKLQDQ Z18, Z16, a0; \
	VPUNPCKHQDQ Z18, Z16, a1; \
	VPUNPCKLQDQ Z19, Z17, a2; \
	VPUNPCKHQDQ Z19, Z17, a3

// a, b, c, d hold words 0-3, 4-7, 8-11 and 12-15 of blocks m, 4+m, 8+m and
// 12+m (one per 128-bit lane); write those four blocks.
#define Z_OUTPUT(a, b, c, d, m) \
	VSHUFI32X4 $0x44, b, a, Z16;                     \
	VSHUFI32X4 $0xee, b, a, Z17;                     \
	VSHUFI32X4 $0x44, d, c, Z18;                     \
	VSHUFI32X4 $0xee, d, c, Z19;                     \
	VSHUFI32X4 $0x88, Z18, Z16, Z20;                 \
	VSHUFI32X4 $0xdd, Z18, Z16, Z21;                 \
	VSHUFI32X4 $0x88, Z19, Z17, Z22;                 \
	VSHUFI32X4 $0xdd, Z19, Z17, Z23;                 \
	VPXORD (64*m)(SI), Z20, Z20;                     \
	VPXORD (256+64*m)(SI), Z21, Z21;                 \
	VPXORD (512+64*m)(SI), Z22, Z22;                 \
	VPXORD (768+64*m)(SI), Z23, Z23;                 \
	VMOVDQU32 Z20, (64*m)(DI);                       \
	VMOVDQU32 Z21, (256+64*m)(DI);                   \
	VMOVDQU32 Z22, (512+64*m)(DI);                   \
	VMOVDQU32 Z23, (768+64*m)(DI)

// func xorBlocksAVX512(dst, src *byte, n int, state *[16]uint32)
TEXT ·xorBlocksAVX512(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	MOVQ state+24(FP), AX

	// Z28/Z29: low/high counter words of the 16 lanes; Z30: 16; Z31: 1.
	VPBROADCASTD 32(AX), Z24
	VPADDD laneIota<>(SB), Z24, Z28
	VPCMPUD $1, Z24, Z28, K1 // lanes whose low word wrapped
	VPBROADCASTD 36(AX), Z29
	VPBROADCASTD const16<>(SB), Z30
	VPBROADCASTD const1<>(SB), Z31
	VPADDD Z31, Z29, K1, Z29

batch512:
	VPBROADCASTD 0(AX), Z0
	VPBROADCASTD 4(AX), Z1
	VPBROADCASTD 8(AX), Z2
	VPBROADCASTD 12(AX), Z3
	VPBROADCASTD 16(AX), Z4
	VPBROADCASTD 20(AX), Z5
	VPBROADCASTD 24(AX), Z6
	VPBROADCASTD 28(AX), Z7
	VMOVDQA32 Z28, Z8
	VMOVDQA32 Z29, Z9
	VPBROADCASTD 40(AX), Z10
	VPBROADCASTD 44(AX), Z11
	VPBROADCASTD 48(AX), Z12
	VPBROADCASTD 52(AX), Z13
	VPBROADCASTD 56(AX), Z14
	VPBROADCASTD 60(AX), Z15

	MOVQ $10, DX

rounds512:
	Z_DOUBLEROUND
	DECQ DX
	JNZ  rounds512

	// Add the input.
	VPADDD.BCST 0(AX), Z0, Z0
	VPADDD.BCST 4(AX), Z1, Z1
	VPADDD.BCST 8(AX), Z2, Z2
	VPADDD.BCST 12(AX), Z3, Z3
	VPADDD.BCST 16(AX), Z4, Z4
	VPADDD.BCST 20(AX), Z5, Z5
	VPADDD.BCST 24(AX), Z6, Z6
	VPADDD.BCST 28(AX), Z7, Z7
	VPADDD Z28, Z8, Z8
	VPADDD Z29, Z9, Z9
	VPADDD.BCST 40(AX), Z10, Z10
	VPADDD.BCST 44(AX), Z11, Z11
	VPADDD.BCST 48(AX), Z12, Z12
	VPADDD.BCST 52(AX), Z13, Z13
	VPADDD.BCST 56(AX), Z14, Z14
	VPADDD.BCST 60(AX), Z15, Z15

	Z_TRANSPOSE4(Z0, Z1, Z2, Z3)
	Z_TRANSPOSE4(Z4, Z5, Z6, Z7)
	Z_TRANSPOSE4(Z8, Z9, Z10, Z11)
	Z_TRANSPOSE4(Z12, Z13, Z14, Z15)

	Z_OUTPUT(Z0, Z4, Z8, Z12, 0)
	Z_OUTPUT(Z1, Z5, Z9, Z13, 1)
	Z_OUTPUT(Z2, Z6, Z10, Z14, 2)
	Z_OUTPUT(Z3, Z7, Z11, Z15, 3)

	// Next 16 counters, carrying into the high word where the low one wraps.
	VPADDD Z30, Z28, Z28
	VPCMPUD $1, Z30, Z28, K1
	VPADDD Z31, Z29, K1, Z29

	ADDQ $1024, SI
	ADDQ $1024, DI
	DECQ CX
	JNZ  batch512

	VZEROUPPER
	RET

// ---------------------------------------------------------------------------
// AVX2: 8 blocks per batch. Sixteen state words and two scratch registers
// do not fit in Y0..Y15, so words 11 and 14 live in memory (S11, S14) during
// the rounds and their registers serve as scratch (T, U).

#define T Y11
#define U Y14

// Frame layout, relative to BX (the frame rounded up to 32 octets):
//   0..511    the input words, one 8-lane vector each (IN(i))
//   512..575  the spilled words 11 and 14
//   576..831  words 8..15 of the finished blocks
#define IN(i) (32*i)(BX)
#define S11 512(BX)
#define S14 544(BX)
#define HI(i) (576+32*i)(BX)

// x ^= (a + b) <<< r; a may be a memory operand.
#define Y_STEP(x, a, b, r) \
	VPADDD a, b, T;         \
	VPSLLD $r, T, U;        \
	VPSRLD $(32-r), T, T;   \
	VPXOR U, x, x;          \
	VPXOR T, x, x

// m ^= (a + b) <<< r for a spilled word m.
#define Y_STEPM(m, a, b, r) \
	VPADDD a, b, T;         \
	VPSLLD $r, T, U;        \
	VPSRLD $(32-r), T, T;   \
	VPXOR U, T, T;          \
	VPXOR m, T, T;          \
	VMOVDQA T, m

#define Y_DOUBLEROUND \
	/* column round */ \
	Y_STEP(Y4, Y0, Y12, 7);    \
	Y_STEP(Y9, Y5, Y1, 7);     \
	Y_STEPM(S14, Y10, Y6, 7);  \
	Y_STEP(Y3, S11, Y15, 7);   \
	Y_STEP(Y8, Y4, Y0, 9);     \
	Y_STEP(Y13, Y9, Y5, 9);    \
	Y_STEP(Y2, S14, Y10, 9);   \
	Y_STEP(Y7, Y3, Y15, 9);    \
	Y_STEP(Y12, Y8, Y4, 13);   \
	Y_STEP(Y1, Y13, Y9, 13);   \
	Y_STEP(Y6, S14, Y2, 13);   \
	Y_STEPM(S11, Y7, Y3, 13);  \
	Y_STEP(Y0, Y12, Y8, 18);   \
	Y_STEP(Y5, Y1, Y13, 18);   \
	Y_STEP(Y10, Y6, Y2, 18);   \
	Y_STEP(Y15, S11, Y7, 18);  \
	/* row round */ \
	Y_STEP(Y1, Y0, Y3, 7);     \
	Y_STEP(Y6, Y5, Y4, 7);     \
	Y_STEPM(S11, Y10, Y9, 7);  \
	Y_STEP(Y12, S14, Y15, 7);  \
	Y_STEP(Y2, Y1, Y0, 9);     \
	Y_STEP(Y7, Y6, Y5, 9);     \
	Y_STEP(Y8, S11, Y10, 9);   \
	Y_STEP(Y13, Y12, Y15, 9);  \
	Y_STEP(Y3, Y2, Y1, 13);    \
	Y_STEP(Y4, Y7, Y6, 13);    \
	Y_STEP(Y9, S11, Y8, 13);   \
	Y_STEPM(S14, Y13, Y12, 13); \
	Y_STEP(Y0, Y3, Y2, 18);    \
	Y_STEP(Y5, Y4, Y7, 18);    \
	Y_STEP(Y10, Y9, Y8, 18);   \
	Y_STEP(Y15, S14, Y13, 18)

// In-lane 4x4 dword transpose of a0..a3 using t0..t3 as scratch: afterwards
// 128-bit lane L of a_m holds words (a0, a1, a2, a3) of block 4L+m.
#define Y_TRANSPOSE4(a0, a1, a2, a3, t0, t1, t2, t3) \
	VPUNPCKLDQ a1, a0, t0;  \
	VPUNPCKHDQ a1, a0, t1;  \
	VPUNPCKLDQ a3, a2, t2;  \
	VPUNPCKHDQ a3, a2, t3;  \
	VPUNPCKLQDQ t2, t0, a0; \
	VPUNPCKHQDQ t2, t0, a1; \
	VPUNPCKLQDQ t3, t1, a2; \
	VPUNPCKHQDQ t3, t1, a3

// a and b hold four words each (at off and off+16) of blocks m and 4+m;
// write those 32 octets of each block.
#define Y_OUTPUT(a, b, m, off, t0, t1) \
	VPERM2I128 $0x20, b, a, t0;       \
	VPERM2I128 $0x31, b, a, t1;       \
	VPXOR (64*m+off)(SI), t0, t0;     \
	VPXOR (256+64*m+off)(SI), t1, t1; \
	VMOVDQU t0, (64*m+off)(DI);       \
	VMOVDQU t1, (256+64*m+off)(DI)

// func xorBlocksAVX2(dst, src *byte, n int, state *[16]uint32)
TEXT ·xorBlocksAVX2(SB), 0, $864-32
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	MOVQ state+24(FP), AX

	// BX: the frame, aligned to 32 octets.
	LEAQ 31(SP), BX
	ANDQ $~31, BX

	// Broadcast the input words; give each lane its own counter.
	VPBROADCASTD 0(AX), Y0
	VMOVDQA Y0, IN(0)
	VPBROADCASTD 4(AX), Y0
	VMOVDQA Y0, IN(1)
	VPBROADCASTD 8(AX), Y0
	VMOVDQA Y0, IN(2)
	VPBROADCASTD 12(AX), Y0
	VMOVDQA Y0, IN(3)
	VPBROADCASTD 16(AX), Y0
	VMOVDQA Y0, IN(4)
	VPBROADCASTD 20(AX), Y0
	VMOVDQA Y0, IN(5)
	VPBROADCASTD 24(AX), Y0
	VMOVDQA Y0, IN(6)
	VPBROADCASTD 28(AX), Y0
	VMOVDQA Y0, IN(7)
	VPBROADCASTD 40(AX), Y0
	VMOVDQA Y0, IN(10)
	VPBROADCASTD 44(AX), Y0
	VMOVDQA Y0, IN(11)
	VPBROADCASTD 48(AX), Y0
	VMOVDQA Y0, IN(12)
	VPBROADCASTD 52(AX), Y0
	VMOVDQA Y0, IN(13)
	VPBROADCASTD 56(AX), Y0
	VMOVDQA Y0, IN(14)
	VPBROADCASTD 60(AX), Y0
	VMOVDQA Y0, IN(15)

	// Unsigned compares via a signed compare of values biased by 2^31.
	VPBROADCASTD constBias<>(SB), Y15
	VPBROADCASTD 32(AX), Y0 // low counter word
	VPADDD laneIota<>(SB), Y0, Y1
	VMOVDQA Y1, IN(8)
	VPXOR Y15, Y0, Y0
	VPXOR Y15, Y1, Y1
	VPCMPGTD Y1, Y0, Y2 // -1 where the lane's low word wrapped
	VPBROADCASTD 36(AX), Y0
	VPSUBD Y2, Y0, Y0
	VMOVDQA Y0, IN(9)

batch256:
	VMOVDQA IN(0), Y0
	VMOVDQA IN(1), Y1
	VMOVDQA IN(2), Y2
	VMOVDQA IN(3), Y3
	VMOVDQA IN(4), Y4
	VMOVDQA IN(5), Y5
	VMOVDQA IN(6), Y6
	VMOVDQA IN(7), Y7
	VMOVDQA IN(8), Y8
	VMOVDQA IN(9), Y9
	VMOVDQA IN(10), Y10
	VMOVDQA IN(11), Y11
	VMOVDQA Y11, S11
	VMOVDQA IN(12), Y12
	VMOVDQA IN(13), Y13
	VMOVDQA IN(14), Y14
	VMOVDQA Y14, S14
	VMOVDQA IN(15), Y15

	MOVQ $10, DX

rounds256:
	Y_DOUBLEROUND
	DECQ DX
	JNZ  rounds256

	// Add the input; park words 8..15 in the frame.
	VPADDD IN(8), Y8, Y8
	VMOVDQA Y8, HI(0)
	VPADDD IN(9), Y9, Y9
	VMOVDQA Y9, HI(1)
	VPADDD IN(10), Y10, Y10
	VMOVDQA Y10, HI(2)
	VMOVDQA S11, Y11
	VPADDD IN(11), Y11, Y11
	VMOVDQA Y11, HI(3)
	VPADDD IN(12), Y12, Y12
	VMOVDQA Y12, HI(4)
	VPADDD IN(13), Y13, Y13
	VMOVDQA Y13, HI(5)
	VMOVDQA S14, Y14
	VPADDD IN(14), Y14, Y14
	VMOVDQA Y14, HI(6)
	VPADDD IN(15), Y15, Y15
	VMOVDQA Y15, HI(7)

	VPADDD IN(0), Y0, Y0
	VPADDD IN(1), Y1, Y1
	VPADDD IN(2), Y2, Y2
	VPADDD IN(3), Y3, Y3
	VPADDD IN(4), Y4, Y4
	VPADDD IN(5), Y5, Y5
	VPADDD IN(6), Y6, Y6
	VPADDD IN(7), Y7, Y7

	// Octets 0..31 of each block.
	Y_TRANSPOSE4(Y0, Y1, Y2, Y3, Y8, Y9, Y10, Y11)
	Y_TRANSPOSE4(Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11)
	Y_OUTPUT(Y0, Y4, 0, 0, Y8, Y9)
	Y_OUTPUT(Y1, Y5, 1, 0, Y10, Y11)
	Y_OUTPUT(Y2, Y6, 2, 0, Y12, Y13)
	Y_OUTPUT(Y3, Y7, 3, 0, Y14, Y15)

	// Octets 32..63 of each block.
	VMOVDQA HI(0), Y0
	VMOVDQA HI(1), Y1
	VMOVDQA HI(2), Y2
	VMOVDQA HI(3), Y3
	VMOVDQA HI(4), Y4
	VMOVDQA HI(5), Y5
	VMOVDQA HI(6), Y6
	VMOVDQA HI(7), Y7
	Y_TRANSPOSE4(Y0, Y1, Y2, Y3, Y8, Y9, Y10, Y11)
	Y_TRANSPOSE4(Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11)
	Y_OUTPUT(Y0, Y4, 0, 32, Y8, Y9)
	Y_OUTPUT(Y1, Y5, 1, 32, Y10, Y11)
	Y_OUTPUT(Y2, Y6, 2, 32, Y12, Y13)
	Y_OUTPUT(Y3, Y7, 3, 32, Y14, Y15)

	// Next 8 counters: lo += 8, and carry where the new low word is below 8.
	VPBROADCASTD constBias<>(SB), Y15
	VPBROADCASTD const8<>(SB), Y14
	VMOVDQA IN(8), Y0
	VPADDD Y14, Y0, Y0
	VMOVDQA Y0, IN(8)
	VPXOR Y15, Y0, Y0
	VPXOR Y15, Y14, Y14
	VPCMPGTD Y0, Y14, Y1 // -1 where (lo+8) < 8, i.e. wrapped
	VMOVDQA IN(9), Y2
	VPSUBD Y1, Y2, Y2
	VMOVDQA Y2, IN(9)

	ADDQ $512, SI
	ADDQ $512, DI
	DECQ CX
	JNZ  batch256

	VZEROUPPER
	RET
