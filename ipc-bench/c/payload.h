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

/* The words w, w + step, ... over buf[..len], the last one cut short.
   The loop counts whole words (not bytes up to a bound) and adds step to
   w: the shape GCC's vectoriser recognises (-O3), as LLVM does Rust's
   chunks_exact loop; a byte-position loop, or a w whose address is taken,
   stays one word at a time. */
static inline void store_words(uint8_t *buf, size_t len, uint64_t w, uint64_t step) {
    size_t n = len / 8;
    for (size_t k = 0; k < n; k++, w += step) {
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
    size_t n = (size - head) / 8, tail = (size - head) % 8;
    /* Counted in words, as store_words, so that it vectorises. */
    for (size_t k = 0; k < n; k++, w += step) {
        uint64_t got;
        memcpy(&got, body + 8 * k, 8);
        diff |= got ^ w;
    }
    uint64_t last = w;
    if (tail && memcmp(body + 8 * n, &last, tail) != 0) return 0;
    return diff == 0;
}

#endif
