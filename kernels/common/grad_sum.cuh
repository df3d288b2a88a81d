// SPDX-License-Identifier: Apache-2.0
//
// GradSum: where a backward kernel adds its gradient for the input features.
//
// Backward kernels scatter: many threads add into the same gradient element. Floating-point
// addition is not associative, so with atomicAdd the last bits of a sum depend on the order in
// which the threads happen to arrive, and vary from run to run. That is the default (fast).
//
// Deterministic mode sums in fixed point instead: every addend is scaled by 2**exponent,
// truncated to a 128-bit two's-complement integer and added with 64-bit integer atomics (the low
// word, then the high word plus the carry). Integer addition is associative, so the total is
// the same bits in any order; fixed_point_finalize (kernels/fixed_point.cu) converts it back.
// The caller picks `exponent` so that the largest possible sum stays below 2**125 (from a bound
// on |grad_output|, see cuproi/_cuda/_ops.py); the resolution is then 2**-exponent, over 70
// bits finer than a float64 ulp of that bound. Non-finite addends (inf, NaN) cannot be held in
// fixed point; they go to the C buffer with atomicAdd, where the result (NaN, +inf or -inf)
// does not depend on the order either, and take precedence at finalization.
#pragma once

#include "common/helpers.cuh"

namespace cuproi {

typedef unsigned long long u64;

template <typename C>
struct GradSum {
  C* value;     // zeroed (N, C, H, W) buffer: every addend, or only the non-finite ones
  u64* fixed;   // deterministic mode: zeroed, 2 words (low, high) per element; else unused
  int exponent; // deterministic mode: addends are scaled by 2**exponent
  bool deterministic;

  // The accumulator of the (height, width) plane that starts at element `offset`.
  template <typename I>
  __device__ __forceinline__ GradSum at(I offset) const {
    GradSum s = *this;
    s.value += offset;
    s.fixed += 2 * offset;
    return s;
  }

  template <typename I>
  __device__ __forceinline__ void add(I i, C v) const {
    if (!deterministic) {
      atomicAdd(value + i, v);
      return;
    }
    const double scaled = ldexp(static_cast<double>(v), exponent);
    if (!(cabs(scaled) < 4.2535295865117308e37)) {  // 2**125: inf or NaN (the test is NaN-safe)
      atomicAdd(value + i, v);
      return;
    }
    // |scaled| < 2**125: split its magnitude into 64-bit words. Below 2**64 the high word is 0
    // and the cast truncates; above, the ulp of `scaled` is at least 2**12, so the difference
    // is an exact multiple of it below 2**64 and both casts are exact.
    const double two64 = 18446744073709551616.0;
    const double m = cabs(scaled);
    u64 hi = static_cast<u64>(cfloor(m / two64));
    u64 lo = static_cast<u64>(m - static_cast<double>(hi) * two64);
    if (scaled < 0) {  // two's complement of (hi, lo)
      lo = ~lo + 1;
      hi = ~hi + (lo == 0);
    }
    const u64 old = atomicAdd(fixed + 2 * static_cast<long long>(i), lo);
    const u64 carry = old + lo < old;
    if (hi + carry != 0) atomicAdd(fixed + 2 * static_cast<long long>(i) + 1, hi + carry);
  }
};

// The accumulator of a backward kernel's arguments (`exponent` is read only when deterministic).
template <typename C>
__device__ __forceinline__ GradSum<C> grad_sum(C* value, u64* fixed, const int* exponent,
                                               int deterministic) {
  GradSum<C> s;
  s.value = value;
  s.fixed = fixed;
  s.exponent = deterministic ? *exponent : 0;
  s.deterministic = deterministic != 0;
  return s;
}

// Converts element i of a deterministic sum back to C: the non-finite result if there is one,
// else the fixed-point total times 2**-exponent (converted by magnitude, so that a small
// negative total does not cancel catastrophically between its two words).
template <typename C>
__device__ __forceinline__ C fixed_point_value(const u64* fixed, const C* value, int exponent) {
  if (*value != C(0)) return *value;  // true for NaN as well
  u64 lo = fixed[0], hi = fixed[1];
  const bool negative = static_cast<long long>(hi) < 0;
  if (negative) {
    lo = ~lo + 1;
    hi = ~hi + (lo == 0);
  }
  const double m = ldexp(static_cast<double>(hi), 64 - exponent) +
                   ldexp(static_cast<double>(lo), -exponent);
  return static_cast<C>(negative ? -m : m);
}

}  // namespace cuproi
