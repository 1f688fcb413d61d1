// Compile-time switches over runtime values (after flash-attn csrc/flash_attn/src/static_switch.h).
//
//   BOOL_SWITCH(is_aligned, kVec, [&] { kernel<T, kVec><<<grid, block, 0, stream>>>(params); });
#pragma once

#define BOOL_SWITCH(COND, CONST_NAME, ...)            \
  [&] {                                               \
    if (COND) {                                       \
      constexpr static bool CONST_NAME = true;        \
      return __VA_ARGS__();                           \
    } else {                                          \
      constexpr static bool CONST_NAME = false;       \
      return __VA_ARGS__();                           \
    }                                                 \
  }()
