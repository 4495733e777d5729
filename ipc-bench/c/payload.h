/*
 * common/src/payload.rs in C, for reference.c and shm_twins.c: message
 * `seq` of `size` bytes is its sequence number (8 bytes, little-endian),
 * then 64-bit words start + k*step, with start and an odd step mixed from
 * (seq, size). The sender generates every message, the receiver checks
 * every byte: nothing is fast because it is wrong.
 */
#ifndef IPC_BENCH_PAYLOAD_H
#define IPC_BENCH_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The words are stored with memcpy, as the machine lays them out; the
   Rust side writes to_le_bytes. Both agree only on a little-endian CPU. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the C payload assumes a little-endian machine, as payload.rs's bytes are little-endian"
#endif

/* SplitMix64's finaliser (payload.rs's mix). */
static inline uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* payload.rs's Words::new: word k of the body is start + k*step. */
static inline void words(uint64_t seq, size_t size, uint64_t *start, uint64_t *step) {
    uint64_t s = (uint64_t)size;
    *start = mix(seq ^ ((s << 32) | (s >> 32)) ^ 0x6970632d6578616dULL);
    *step = mix(*start ^ 0x9E3779B97F4A7C15ULL) | 1;
}

/* Two 64-bit lanes (GCC and Clang vector extensions; lowered to plain
   code on a machine without SIMD). */
typedef uint64_t u64x2 __attribute__((vector_size(16)));

/* The words w, w + step, ... over buf[..len], the last one cut short. Four
   words a round in two 16-byte vectors, each lane adding 4*step: the code
   LLVM makes of Rust's chunks_exact loop (two stores per round). GCC's own
   vectorisation of the one-word loop does one store a round and takes
   half as many instructions again, which showed as the C twins filling
   1 MiB slower than Rust. */
static inline void store_words(uint8_t *buf, size_t len, uint64_t w, uint64_t step) {
    size_t n = len / 8, k = 0;
    u64x2 a = {w, w + step}, b = {w + 2 * step, w + 3 * step}, inc = {4 * step, 4 * step};
    for (; k + 4 <= n; k += 4) {
        memcpy(buf + 8 * k, &a, 16); /* memcpy: buf need not be aligned */
        memcpy(buf + 8 * k + 16, &b, 16);
        a += inc;
        b += inc;
    }
    w += k * step;
    for (; k < n; k++, w += step) {
        uint64_t word = w; /* only this copy's address is taken: w stays in a register */
        memcpy(buf + 8 * k, &word, 8);
    }
    uint64_t last = w;
    if (len % 8) memcpy(buf + 8 * n, &last, len % 8);
}

/* payload::fill(seq, buf[..size]) */
static inline void fill(uint64_t seq, uint8_t *buf, size_t size) {
    size_t head = size < 8 ? size : 8;
    memcpy(buf, &seq, head);
    uint64_t w, step;
    words(seq, size, &w, &step);
    store_words(buf + head, size - head, w, step);
}

/* payload::fill_at(seq, size, offset, buf[..len]): bytes offset..offset+len
   of the body, for a message written piece by piece straight into the
   slots of a ring. */
static inline void fill_at(uint64_t seq, size_t size, size_t offset, uint8_t *buf, size_t len) {
    uint64_t start, step;
    words(seq, size, &start, &step);
    size_t pos = offset, out = 0;
    /* The sequence number, and a word cut by `offset`, byte by byte. */
    while (out < len && (pos < 8 || (pos - 8) % 8 != 0)) {
        uint64_t v = pos < 8 ? seq : start + (uint64_t)((pos - 8) / 8) * step;
        unsigned shift = 8 * (unsigned)(pos < 8 ? pos : (pos - 8) % 8);
        buf[out++] = (uint8_t)(v >> shift);
        pos++;
    }
    if (out == len) return;
    /* Then whole words: one addition each. */
    store_words(buf + out, len - out, start + (uint64_t)((pos - 8) / 8) * step, step);
}

/* payload's matches_body: 1 if buf is exactly message seq. The
   differences are OR-ed together, no early exit, as in Rust. */
static inline int check(uint64_t seq, const uint8_t *buf, size_t size) {
    size_t head = size < 8 ? size : 8;
    if (memcmp(buf, &seq, head) != 0) return 0;
    uint64_t w, step, diff = 0;
    words(seq, size, &w, &step);
    const uint8_t *body = buf + head;
    size_t n = (size - head) / 8, tail = (size - head) % 8, k = 0;
    /* Four words a round, as store_words. */
    u64x2 a = {w, w + step}, b = {w + 2 * step, w + 3 * step}, inc = {4 * step, 4 * step}, diffs = {0, 0};
    for (; k + 4 <= n; k += 4) {
        u64x2 x, y;
        memcpy(&x, body + 8 * k, 16);
        memcpy(&y, body + 8 * k + 16, 16);
        diffs |= (x ^ a) | (y ^ b);
        a += inc;
        b += inc;
    }
    diff = diffs[0] | diffs[1];
    w += k * step;
    for (; k < n; k++, w += step) {
        uint64_t got;
        memcpy(&got, body + 8 * k, 8);
        diff |= got ^ w;
    }
    uint64_t last = w;
    if (tail && memcmp(body + 8 * n, &last, tail) != 0) return 0;
    return diff == 0;
}

#endif
