"""What a patch-parallel DiT step should cost: FLOPs and bytes from the config, times from a device
and a link.

    flops = dit_step_flops(TRANSFORMER_CONFIGS["full"], frames=1024)            # one process
    cpu = Device.calibrated("this CPU, fp32, 1 thread", flops, measured_seconds)
    cost = patch_parallel_cost(TRANSFORMER_CONFIGS["full"], 1024, ranks=2, device=cpu,
                               link=LOOPBACK_MEASURED, mode="stale")
    cost.total_s, cost.speedup

FLOPs are counted as torch's FlopCounterMode counts them (2 per multiply-add, matrix products and
attention only), from the Stable Audio DiT's structure: per block a self-attention (query, key,
value and output projections, width `heads x head_dim`), a cross-attention to the text (keys and
values of the text tokens, `kv_heads`), and a SwiGLU feed-forward (4x wide); the projections in
and out and the conditioning MLPs around the blocks. A rank of a patch-parallel step computes its
own frames' queries against every frame's keys (`accelerando.distributed.patch_parallel`).

Times: compute = FLOPs / the device's rate; an all-gather of p ranks moves p - 1 chunks, each
costing the link's latency plus its bytes over the bandwidth. The exact mode waits for every
layer's exchange; the stale mode overlaps it with compute (the step takes the longer of the two);
both then all-gather the output. A device is either measured here (`Device.calibrated`, from a
timed step) or a published peak (`PUBLISHED_DEVICES`, labelled so: peaks are not achieved rates).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PREFIX_TOKENS = 1  # the DiT's global token before the frames
FF_MULT = 4        # the blocks' feed-forward width, x the model width (SwiGLU doubles its input projection)


def _width(config: dict) -> int:
    return config["num_attention_heads"] * config["attention_head_dim"]


def dit_step_flops(config: dict, frames: int, key_frames: int | None = None, batch: int = 2,
                   text_tokens: int = 64) -> int:
    """FLOPs of one DiT call on `frames` latent frames whose self-attention reads `key_frames`
    frames' keys (default: the same frames, one process); `batch` rows (2: classifier-free
    guidance), `text_tokens` text states. Counts as FlopCounterMode does (tested against it)."""
    if frames < 1 or batch < 1 or text_tokens < 1:
        raise ValueError(f"frames={frames}, batch={batch}, text_tokens={text_tokens}: all must be >= 1")
    key_frames = frames if key_frames is None else key_frames
    d = _width(config)
    d_kv = config["num_key_value_attention_heads"] * config["attention_head_dim"]
    d_cross, c = config["cross_attention_dim"], config["in_channels"]
    queries, keys = frames + PREFIX_TOKENS, key_frames + PREFIX_TOKENS
    per_block = (
        queries * 4 * d * d * 2                  # self-attention: q, k, v, out (keys of other frames come computed)
        + 4 * queries * keys * d                 # self-attention scores and weighted sum
        + queries * 2 * d * d * 2                # cross-attention: q and out
        + text_tokens * 2 * d_cross * d_kv * 2   # cross-attention: keys and values of the text
        + 4 * queries * text_tokens * d          # cross-attention scores and weighted sum
        + queries * (d * 2 * FF_MULT * d + FF_MULT * d * d) * 2  # SwiGLU feed-forward
    )
    outside = (
        2 * frames * c * c * 2                   # the 1x1 convolutions before and after
        + frames * c * d * 2 * 2                 # proj_in and proj_out
        + (config["time_proj_dim"] * d + d * d) * 2                       # timestep MLP
        + (config["global_states_input_dim"] * d + d * d) * 2             # global conditioning MLP
        + text_tokens * (config["cross_attention_input_dim"] * d_cross + d_cross * d_cross) * 2  # text MLP
    )
    # the timestep MLP runs once per call, not per row (the pipeline passes one timestep)
    timestep = (config["time_proj_dim"] * d + d * d) * 2
    return batch * (config["num_layers"] * per_block + outside - timestep) + timestep


def exchanged_bytes(config: dict, frames: int, ranks: int, batch: int = 2, bytes_per_element: int = 4) -> dict:
    """Bytes one rank receives per step: every layer's keys and values of the other ranks' frames
    ("keys_values") and the other ranks' output frames ("output"), at the largest rank's slice
    (all_gather moves equal sizes)."""
    if ranks < 1 or frames < ranks:
        raise ValueError(f"{frames} frames cannot be split across {ranks} ranks")
    chunk = -(-frames // ranks)  # the largest slice; smaller ones are padded to it
    others = (ranks - 1) * chunk
    keys_values = config["num_layers"] * 2 * batch * others * _width(config) * bytes_per_element
    output = batch * config["out_channels"] * others * bytes_per_element
    return {"keys_values": keys_values, "output": output, "total": keys_values + output}


@dataclass(frozen=True)
class Device:
    """A compute rate in FLOP/s, and where it comes from ("measured on ...", or a datasheet)."""

    name: str
    flops_per_s: float
    source: str

    @classmethod
    def calibrated(cls, name: str, flops: float, seconds: float) -> "Device":
        """The rate a measured call achieved: `flops` in `seconds`."""
        if not (flops > 0 and seconds > 0):
            raise ValueError(f"flops={flops}, seconds={seconds}: a calibration needs a positive count and time")
        return cls(name, flops / seconds, f"measured: {flops:.3g} FLOPs in {seconds:.4g} s")


@dataclass(frozen=True)
class Link:
    """A link between ranks: bandwidth in bytes/s (one direction) and latency per message in s."""

    name: str
    bytes_per_s: float
    latency_s: float
    source: str

    def all_gather_seconds(self, chunk_bytes: float, ranks: int) -> float:
        """A ring all-gather of `ranks` chunks: ranks - 1 hops of one chunk each."""
        return (ranks - 1) * (self.latency_s + chunk_bytes / self.bytes_per_s)


# Datasheet peaks (dense bf16 tensor-core rates; NVLink bandwidth per direction): upper bounds
# a real kernel does not reach, for projections labelled as such.
PUBLISHED_DEVICES = {
    "A100-SXM4-80GB": Device("A100-SXM4-80GB", 312e12, "published peak: NVIDIA A100 datasheet, bf16 dense"),
    "H100-SXM5-80GB": Device("H100-SXM5-80GB", 989e12, "published peak: NVIDIA H100 datasheet, bf16 dense"),
}
PUBLISHED_LINKS = {
    "NVLink3": Link("NVLink3", 300e9, 3e-6, "published peak: A100 NVLink, 600 GB/s both directions"),
    "NVLink4": Link("NVLink4", 450e9, 3e-6, "published peak: H100 NVLink, 900 GB/s both directions"),
    "PCIe4-x16": Link("PCIe4-x16", 32e9, 5e-6, "published peak: PCIe 4.0 x16, one direction"),
}


@dataclass(frozen=True)
class StepCost:
    """Predicted seconds of one patch-parallel step on each rank, and of one process alone."""

    mode: str
    ranks: int
    compute_s: float
    exchange_s: float
    output_s: float
    total_s: float
    one_process_s: float
    flops_per_rank: int
    bytes_per_rank: int

    @property
    def speedup(self) -> float:
        return self.one_process_s / self.total_s

    def to_dict(self) -> dict:
        return asdict(self) | {"speedup": self.speedup}


def patch_parallel_cost(config: dict, frames: int, ranks: int, device: Device, link: Link, mode: str = "stale",
                        batch: int = 2, text_tokens: int = 64, bytes_per_element: int = 4) -> StepCost:
    """One step of `frames` frames on `ranks` ranks of `device` joined by `link`, in `mode`
    ("exact": every layer waits for its exchange; "stale": the exchange overlaps compute)."""
    if mode not in ("exact", "stale"):
        raise ValueError(f"mode={mode!r}: 'exact' or 'stale'")
    chunk = -(-frames // ranks)
    flops = dit_step_flops(config, chunk, key_frames=frames, batch=batch, text_tokens=text_tokens)
    compute = flops / device.flops_per_s
    sizes = exchanged_bytes(config, frames, ranks, batch, bytes_per_element)
    per_layer_chunk = 2 * batch * chunk * _width(config) * bytes_per_element
    exchange = config["num_layers"] * link.all_gather_seconds(per_layer_chunk, ranks) if ranks > 1 else 0.0
    output = link.all_gather_seconds(batch * config["out_channels"] * chunk * bytes_per_element, ranks) if ranks > 1 else 0.0
    total = (compute + exchange if mode == "exact" else max(compute, exchange)) + output
    one = dit_step_flops(config, frames, batch=batch, text_tokens=text_tokens) / device.flops_per_s
    return StepCost(mode, ranks, compute, exchange, output, total, one, flops, sizes["total"] if ranks > 1 else 0)


def measure_link(name: str = "gloo loopback", sizes: tuple[int, ...] = (2**16, 2**20, 2**23), rounds: int = 5,
                 group=None) -> Link:
    """Fit a `Link` to timed all-gathers of float32 chunks of `sizes` bytes on the current process
    group (every rank calls it): time = (ranks - 1) (latency + bytes / bandwidth), least squares
    over the fastest of `rounds` per size (after one untimed call). The latency is floored at zero."""
    import time

    import numpy as np
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("measure_link times all-gathers: initialise torch.distributed first (torchrun)")
    if len(sizes) < 2:
        raise ValueError("a bandwidth and a latency need at least two sizes")
    ranks = dist.get_world_size(group)
    if ranks < 2:
        raise ValueError("one rank has no link to measure")
    per_hop = []
    for size in sizes:
        chunk = torch.zeros(max(1, size // 4))
        parts = [torch.empty_like(chunk) for _ in range(ranks)]
        dist.all_gather(parts, chunk, group=group)  # the first call of a size sets up buffers: not timed
        times = []
        for _ in range(rounds):
            dist.barrier(group)
            start = time.perf_counter()
            dist.all_gather(parts, chunk, group=group)
            elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=group)
            times.append(float(elapsed))
        per_hop.append(min(times) / (ranks - 1))
    slope, intercept = np.polyfit(np.array(sizes, dtype=float), np.array(per_hop), 1)
    if slope <= 0:
        raise RuntimeError(f"all-gather times {per_hop} do not grow with size {sizes}: the machine was too busy to "
                           "measure the link; run it alone")
    return Link(name, float(1.0 / slope), max(0.0, float(intercept)),
                f"measured: all-gather of {list(sizes)} bytes on {ranks} ranks, fastest of {rounds}")
