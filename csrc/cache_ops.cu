// Launchers for the paged stream cache ops: argument checks, dtype dispatch, launch, launch-error check.
// Device code: csrc/include/nemotron/cache.cuh. References: nemotron_engine/_ext.py (fill_pages_ref, write_rows_ref).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "check.h"
#include "nemotron/cache.cuh"
#include "ops.h"

namespace nemotron {

namespace {

void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(str("nemotron_engine._C: ", op, " launch failed: ", cudaGetErrorName(err), ": ",
                                 cudaGetErrorString(err), " (module built for CUDA archs ", cuda_archs(), ")"));
  }
}

}  // namespace

void fill_pages(std::uintptr_t pool, int dtype, int64_t num_pages, int64_t page_elems, std::uintptr_t page_ids,
                int64_t n_ids, double value, std::uintptr_t skipped, std::uintptr_t stream) {
  ensure_cuda();
  NEMOTRON_CHECK(num_pages >= 0 && page_elems >= 0 && n_ids >= 0,
                 "fill_pages: sizes must be >= 0, got num_pages=", num_pages, ", page_elems=", page_elems,
                 ", n_ids=", n_ids);
  NEMOTRON_CHECK(n_ids < (int64_t{1} << 31), "fill_pages: at most 2^31 - 1 page ids per call, got n_ids=", n_ids);
  if (n_ids == 0) return;
  // Still launched for an empty pool or empty pages: out-of-range ids are counted in *skipped.
  NEMOTRON_CHECK(page_ids != 0, "fill_pages: page_ids is a null pointer");
  NEMOTRON_CHECK(pool != 0 || num_pages == 0 || page_elems == 0, "fill_pages: pool is a null pointer");

  FillPagesParams params;
  params.pool = reinterpret_cast<void*>(pool);
  params.page_ids = reinterpret_cast<const int32_t*>(page_ids);
  params.skipped = reinterpret_cast<int32_t*>(skipped);
  params.num_pages = num_pages;
  params.page_elems = page_elems;
  params.n_ids = n_ids;
  params.value = static_cast<float>(value);
  const auto cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      launch_fill_pages<float>(params, cuda_stream);
      break;
    case kBFloat16:
      launch_fill_pages<__nv_bfloat16>(params, cuda_stream);
      break;
    default:
      NEMOTRON_CHECK(false, "fill_pages: unsupported dtype code ", dtype, " (supported: ", int{kFloat32},
                     "=float32, ", int{kBFloat16}, "=bfloat16)");
  }
  check_launch("fill_pages");
}

void write_rows(std::uintptr_t pool, int dtype, int64_t num_pages, int64_t page_size, int64_t row_elems,
                std::uintptr_t src, int64_t n_rows, int64_t src_row_stride, std::uintptr_t stream_idx,
                std::uintptr_t frame_pos, std::uintptr_t page_table, int64_t n_streams, int64_t pages_per_stream,
                int64_t page_table_stride, std::uintptr_t skipped, std::uintptr_t stream) {
  ensure_cuda();
  NEMOTRON_CHECK(num_pages >= 0 && row_elems >= 0 && n_rows >= 0 && n_streams >= 0,
                 "write_rows: sizes must be >= 0, got num_pages=", num_pages, ", row_elems=", row_elems,
                 ", n_rows=", n_rows, ", n_streams=", n_streams);
  NEMOTRON_CHECK(page_size > 0, "write_rows: page_size must be > 0, got ", page_size);
  NEMOTRON_CHECK(pages_per_stream > 0, "write_rows: pages_per_stream must be > 0, got ", pages_per_stream);
  // Strides may be 0 (a broadcast src row or page-table row): reads may overlap, writes never do.
  NEMOTRON_CHECK(src_row_stride >= 0 && page_table_stride >= 0,
                 "write_rows: strides must be >= 0, got src_row_stride=", src_row_stride,
                 ", page_table_stride=", page_table_stride);
  NEMOTRON_CHECK(n_rows < (int64_t{1} << 31), "write_rows: at most 2^31 - 1 rows per call, got n_rows=", n_rows);
  if (n_rows == 0) return;
  // Still launched for empty rows or an empty pool: rows that cannot be placed are counted in *skipped.
  NEMOTRON_CHECK(stream_idx != 0 && frame_pos != 0, "write_rows: null pointer (stream_idx=", stream_idx,
                 ", frame_pos=", frame_pos, ")");
  NEMOTRON_CHECK(page_table != 0 || n_streams == 0, "write_rows: page_table is a null pointer");
  NEMOTRON_CHECK((pool != 0 && src != 0) || num_pages == 0 || row_elems == 0, "write_rows: null pointer (pool=",
                 pool, ", src=", src, ")");

  WriteRowsParams params;
  params.pool = reinterpret_cast<void*>(pool);
  params.src = reinterpret_cast<const void*>(src);
  params.stream_idx = reinterpret_cast<const int32_t*>(stream_idx);
  params.frame_pos = reinterpret_cast<const int64_t*>(frame_pos);
  params.page_table = reinterpret_cast<const int32_t*>(page_table);
  params.skipped = reinterpret_cast<int32_t*>(skipped);
  params.num_pages = num_pages;
  params.page_size = page_size;
  params.row_elems = row_elems;
  params.n_rows = n_rows;
  params.src_row_stride = src_row_stride;
  params.n_streams = n_streams;
  params.pages_per_stream = pages_per_stream;
  params.page_table_stride = page_table_stride;
  const auto cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      launch_write_rows<float>(params, cuda_stream);
      break;
    case kBFloat16:
      launch_write_rows<__nv_bfloat16>(params, cuda_stream);
      break;
    default:
      NEMOTRON_CHECK(false, "write_rows: unsupported dtype code ", dtype, " (supported: ", int{kFloat32},
                     "=float32, ", int{kBFloat16}, "=bfloat16)");
  }
  check_launch("write_rows");
}

}  // namespace nemotron
