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

/* payload::fill(seq, buf[..size]) */
static inline void fill(uint64_t seq, uint8_t *buf, size_t size) {
    size_t head = size < 8 ? size : 8;
    memcpy(buf, &seq, head);
    uint64_t w, step;
    words(seq, size, &w, &step);
    size_t pos = head;
    for (; pos + 8 <= size; pos += 8, w += step) memcpy(buf + pos, &w, 8);
    if (pos < size) memcpy(buf + pos, &w, size - pos);
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
    uint64_t w = start + (uint64_t)((pos - 8) / 8) * step;
    for (; out + 8 <= len; out += 8, w += step) memcpy(buf + out, &w, 8);
    if (out < len) memcpy(buf + out, &w, len - out);
}

/* payload's matches_body: 1 if buf is exactly message seq. The
   differences are OR-ed together, no early exit, as in Rust. */
static inline int check(uint64_t seq, const uint8_t *buf, size_t size) {
    size_t head = size < 8 ? size : 8;
    if (memcmp(buf, &seq, head) != 0) return 0;
    uint64_t w, step, diff = 0, got;
    words(seq, size, &w, &step);
    size_t pos = head;
    for (; pos + 8 <= size; pos += 8, w += step) {
        memcpy(&got, buf + pos, 8);
        diff |= got ^ w;
    }
    if (pos < size && memcmp(buf + pos, &w, size - pos) != 0) return 0;
    return diff == 0;
}

#endif
