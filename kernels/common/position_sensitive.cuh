// SPDX-License-Identifier: Apache-2.0
//
// Position-sensitive score maps (R-FCN), shared by ps_roi_align and ps_roi_pool:
//   ps_channel    the input channel that output channel c reads at bin (ph, pw)
#pragma once

#include "common/helpers.cuh"

namespace cuproi {

// The input has C = C_out * pooled_h * pooled_w channels, one group of pooled_h * pooled_w
// score maps per output channel; bin (ph, pw) of output channel c reads map (ph, pw) of group c.
__device__ __forceinline__ int ps_channel(int c, int ph, int pw, int pooled_h, int pooled_w) {
  return (c * pooled_h + ph) * pooled_w + pw;
}

}  // namespace cuproi
