"""The roofline of the device a kernel microbenchmark runs on, and the achieved fraction of it.

Peak figures are the datasheet's dense rates (leads, not truths); `measured_bandwidth()` times a large
device-to-device copy, which is the ceiling a memory-bound kernel can actually reach, and the benches report the
fraction of both.

    from roofline import Roofline
    rf = Roofline.detect()                       # None without a CUDA device
    row = rf.row("attention B=64", seconds, bytes_moved=..., flops=..., unit="fp32")
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# name fragment -> (HBM GB/s, fp32 FMA-unit TFLOP/s, tf32 tensor TFLOP/s, bf16 tensor TFLOP/s); dense datasheet rates
_PEAKS = [
    ("H200", (4800.0, 67.0, 495.0, 989.0)),
    ("H100 PCIe", (2000.0, 51.0, 378.0, 756.0)),
    ("H100", (3350.0, 67.0, 495.0, 989.0)),  # SXM5
    ("A100", (2039.0, 19.5, 156.0, 312.0)),
    ("L40S", (864.0, 91.6, 183.0, 362.0)),
]


@dataclass
class Roofline:
    device: str
    hbm_gbs: float  # datasheet
    fp32_tflops: float
    tf32_tflops: float
    bf16_tflops: float
    copy_gbs: float | None = None  # measured device-to-device copy (read + write bytes / s)

    @staticmethod
    def detect(measure: bool = True) -> "Roofline | None":
        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name()
        peaks = next((p for frag, p in _PEAKS if frag in name), None)
        if peaks is None:  # unknown card: fall back to the measured copy for bandwidth, rates unknown
            peaks = (float("nan"),) * 4
        rf = Roofline(name, *peaks)
        if measure:
            rf.copy_gbs = measured_bandwidth()
        return rf

    @property
    def bandwidth_gbs(self) -> float:
        """The memory ceiling used for fractions: the measured copy when there is one, else the datasheet."""
        return self.copy_gbs if self.copy_gbs else self.hbm_gbs

    def flops_peak(self, unit: str) -> float:
        return {"fp32": self.fp32_tflops, "tf32": self.tf32_tflops, "bf16": self.bf16_tflops}[unit]

    def row(self, case: str, seconds: float, bytes_moved: float, flops: float, unit: str = "fp32") -> dict:
        """Achieved GB/s and TFLOP/s and the fraction of the binding roofline (the larger of the two times)."""
        gbs = bytes_moved / seconds / 1e9
        tflops = flops / seconds / 1e12
        t_mem = bytes_moved / (self.bandwidth_gbs * 1e9)
        t_cmp = flops / (self.flops_peak(unit) * 1e12)
        bound = "memory" if t_mem >= t_cmp else "compute"
        return {
            "case": case, "device": self.device, "us": seconds * 1e6, "GB/s": gbs, "TFLOP/s": tflops,
            "bound": bound, "roofline_fraction": max(t_mem, t_cmp) / seconds, "unit": unit,
        }


def measured_bandwidth(n_bytes: int = 1 << 30) -> float:
    """GB/s of a large device-to-device copy (bytes read + bytes written), median of repeated runs."""
    import triton.testing

    a = torch.empty(n_bytes // 4, dtype=torch.float32, device="cuda").uniform_()
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=25, rep=100, return_mode="median")
    return 2 * n_bytes / (ms * 1e-3) / 1e9


def time_cuda(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median seconds of fn() on the device (CUDA events via triton.testing.do_bench)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") * 1e-3
