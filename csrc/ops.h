// The ops bound in bindings.cpp. Plain C++ on integers: device pointers and the CUDA stream arrive as integers
// (torch's tensor.data_ptr() and torch.cuda.current_stream().cuda_stream), so no CUDA or torch header is needed here.
#pragma once

#include <cstdint>
#include <string>

namespace nemotron {

// Element type codes shared with nemotron_engine/_ext.py (exported as _C.DTYPE_*).
enum DType : int {
  kFloat32 = 0,
  kBFloat16 = 1,
};

bool cuda_available();
int device_count();
// The -arch list the module was compiled for, e.g. "80;90".
std::string cuda_archs();

// Reference: nemotron_engine._ext.fill_pages_ref.
void fill_pages(std::uintptr_t pool,       // [num_pages, page_elems]
                int dtype,                 // DType
                int64_t num_pages, int64_t page_elems,
                std::uintptr_t page_ids,   // [n_ids] int32
                int64_t n_ids,
                double value,
                std::uintptr_t skipped,    // [1] int32 or 0
                std::uintptr_t stream);    // cudaStream_t

// Reference: nemotron_engine._ext.write_rows_ref.
void write_rows(std::uintptr_t pool,        // [num_pages, page_size, row_elems]
                int dtype,                  // DType
                int64_t num_pages, int64_t page_size, int64_t row_elems,
                std::uintptr_t src,         // [n_rows, row_elems], row stride src_row_stride
                int64_t n_rows, int64_t src_row_stride,
                std::uintptr_t stream_idx,  // [n_rows] int32
                std::uintptr_t frame_pos,   // [n_rows] int64
                std::uintptr_t page_table,  // [n_streams, pages_per_stream] int32, row stride page_table_stride
                int64_t n_streams, int64_t pages_per_stream, int64_t page_table_stride,
                std::uintptr_t skipped,     // [1] int32 or 0
                std::uintptr_t stream);     // cudaStream_t

}  // namespace nemotron
