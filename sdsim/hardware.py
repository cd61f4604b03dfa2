"""GPU spec-sheet registry: peak dense tensor throughput, HBM capacity and bandwidth, interconnect.

Every number is the vendor's published peak for one GPU, **dense** (NVIDIA's sheets quote
tensor-core FLOPS "with sparsity"; those are halved here), as the roofline cost model needs them.
Sources (vendor datasheets, read 2025):

* A100-80GB SXM: NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100):
  BF16 312 TFLOPS dense, no FP8 tensor cores, 80 GB HBM2e at 2,039 GB/s, NVLink 600 GB/s.
* H100 SXM: NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100):
  BF16 1,979 / FP8 3,958 TFLOPS with sparsity -> 989.4 / 1,978.9 dense; 80 GB HBM3 at
  3.35 TB/s; NVLink 900 GB/s.
* H200 SXM: NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200): the
  H100's compute with 141 GB HBM3e at 4.8 TB/s; NVLink 900 GB/s.
* B200 (HGX B200): NVIDIA HGX platform sheet (nvidia.com/en-us/data-center/hgx): FP16/BF16
  4.5 / FP8 9 PFLOPS with sparsity -> 2,250 / 4,500 dense; 180 GB HBM3e at 7.7 TB/s;
  NVLink 5 1.8 TB/s.
* L40S: NVIDIA L40S datasheet (nvidia.com/en-us/data-center/l40s): BF16 362.05 / FP8 733 TFLOPS
  dense (733 / 1,466 with sparsity); 48 GB GDDR6 at 864 GB/s; no NVLink (PCIe Gen4 x16, 64 GB/s
  bidirectional).
* MI300X: AMD Instinct MI300X datasheet (amd.com/en/products/accelerators/instinct/mi300/mi300x):
  BF16 1,307.4 / FP8 2,614.9 TFLOPS dense; 192 GB HBM3 at 5.3 TB/s; Infinity Fabric 896 GB/s
  peer bandwidth (7 links x 128 GB/s).

``interconnect_gbps`` is the vendor's aggregate bidirectional GPU-to-GPU figure; collectives see
half of it in each direction (see :meth:`GPUSpec.link_bytes_per_s`).
"""

from __future__ import annotations

__all__ = ["GPUS", "GPUSpec", "get_gpu", "gpu_names"]

from dataclasses import dataclass

from sdsim.errors import ScenarioError


@dataclass(frozen=True)
class GPUSpec:
    """Peak numbers of one GPU (dense tensor FLOPS, memory, interconnect).

    Attributes
    ----------
    name
        Registry name (lowercase with dashes) or a user's label for a custom spec.
    bf16_tflops
        Dense BF16 tensor-core peak, TFLOPS.
    fp8_tflops
        Dense FP8 tensor-core peak, TFLOPS; ``None`` where the GPU has no FP8 tensor cores.
    hbm_gb
        Device memory, GB (10^9 bytes).
    hbm_tbps
        Device memory bandwidth, TB/s (10^12 bytes/s).
    interconnect_gbps
        GPU-to-GPU bandwidth, GB/s, aggregate of both directions as vendors quote it.
    vendor
        ``nvidia`` or ``amd`` (or anything for a custom spec).
    """

    name: str
    bf16_tflops: float
    fp8_tflops: float | None
    hbm_gb: float
    hbm_tbps: float
    interconnect_gbps: float
    vendor: str = "nvidia"

    def flops_per_s(self, dtype: str = "bf16") -> float:
        """Peak dense tensor FLOP/s for ``dtype`` (``bf16`` or ``fp8``; fp8 falls back to bf16)."""
        if dtype == "fp8" and self.fp8_tflops is not None:
            return self.fp8_tflops * 1e12
        return self.bf16_tflops * 1e12

    @property
    def mem_bytes_per_s(self) -> float:
        """Peak device memory bandwidth, bytes/s."""
        return self.hbm_tbps * 1e12

    @property
    def link_bytes_per_s(self) -> float:
        """One direction of the GPU-to-GPU bandwidth, bytes/s (what ring collectives stream at)."""
        return self.interconnect_gbps * 1e9 / 2


GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        GPUSpec("a100-80gb", 312.0, None, 80.0, 2.039, 600.0),
        GPUSpec("h100-sxm", 989.4, 1978.9, 80.0, 3.35, 900.0),
        GPUSpec("h200", 989.4, 1978.9, 141.0, 4.8, 900.0),
        GPUSpec("b200", 2250.0, 4500.0, 180.0, 7.7, 1800.0),
        GPUSpec("l40s", 362.05, 733.0, 48.0, 0.864, 64.0),
        GPUSpec("mi300x", 1307.4, 2614.9, 192.0, 5.3, 896.0, vendor="amd"),
    )
}


def gpu_names() -> list[str]:
    """Registry names, sorted."""
    return sorted(GPUS)


def get_gpu(name: str, field: str = "hardware") -> GPUSpec:
    """The spec of a registered GPU.

    Parameters
    ----------
    name
        Registry name (case-insensitive; ``_`` accepted for ``-``).
    field
        Scenario field to name in the error.

    Raises
    ------
    ScenarioError
        Unknown name (the message lists the known ones).
    """
    key = name.strip().lower().replace("_", "-")
    if key in GPUS:
        return GPUS[key]
    raise ScenarioError(
        field,
        f"unknown GPU {name!r}; known: {', '.join(gpu_names())} "
        "(or give an inline spec with bf16_tflops, hbm_gb, hbm_tbps, ...)",
    )
