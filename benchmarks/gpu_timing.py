"""Timing helpers shared by the GPU benchmarks: CUDA-event medians and the same-run copy baseline."""

from __future__ import annotations

import math
import statistics
import subprocess

import torch

LAYER_CALLS = 10  # back-to-back calls per timed run when timing a layer's eager calls (time_ms)
LAYER_BLOCK = 5   # timed runs per block when layers are timed interleaved (time_ms_paired)
LEAD_MS = 50.0    # untimed GPU time before each such block (time_ms_paired)
MAX_LEAD_CALLS = 20000


def time_ms(fn, repeats: int, warmup: int = 3, calls: int = 1) -> float:
    """Median time of one call over `repeats` runs, each run `calls` back-to-back calls between two
    CUDA events. All runs are queued before the host waits, so an event pair measures the GPU's time
    for the calls, or the host's where the host is slower (an op that synchronises internally, such
    as int8_vectorwise_quant with outliers, still pays for it). Layers are timed with calls = 10, as
    they run in a model: one host hiccup then moves a run's time by a tenth of itself, not by the
    whole of one short call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, stop in events:
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(stop) for start, stop in events) / calls


def time_ms_paired(fns, repeats: int, warmup: int = 3, calls: int = 1, block: int = 1,
                   lead_ms: float = LEAD_MS) -> list:
    """time_ms of each of `fns` (e.g. a baseline and ours), their runs interleaved in blocks of `block`
    runs: block b of every function is queued before block b + 1 of any, the order reversed every
    other round. Where the host sets the pace, a slow spell of the host's then lands on all of them
    alike instead of on whichever happened to be timed during it, so their ratio measures the code,
    not the moment. With block > 1 each block starts with untimed calls worth about `lead_ms` of the
    function's own time (at least one run): a GPU-bound function then runs at the clock its own work
    sets, as it does layer after layer in a model, not at the one the function before it left. One
    untimed run (10 calls, 1-30 ms) was not enough on the H100 (K = 8192, 512 and 4096 rows): fp16
    nn.Linear timed after a 4-bit layer ran 10-13% faster than in its own steady state at N = 28672 M =
    512 (0.326 against 0.362-0.373 ms), and within 3% of it with 50 ms (0.356)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    lead_calls = [calls] * len(fns)
    if block > 1:
        for i, fn in enumerate(fns):  # each function's time per call, to size its lead-in
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            stop.record()
            stop.synchronize()
            per_call = max(start.elapsed_time(stop) / calls, 1e-3)
            lead_calls[i] = max(calls, min(math.ceil(lead_ms / per_call), MAX_LEAD_CALLS))
    events = [[(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
              for _ in fns]
    rounds = (repeats + block - 1) // block
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            if block > 1:
                for _ in range(lead_calls[i]):
                    fns[i]()
            for start, stop in events[i][r * block:(r + 1) * block]:
                start.record()
                for _ in range(calls):
                    fns[i]()
                stop.record()
    torch.cuda.synchronize()
    return [statistics.median(start.elapsed_time(stop) for start, stop in runs) / calls for runs in events]


def copy_bandwidth(repeats: int, n: int = 1 << 28) -> float:
    """GB/s of a device-to-device copy of n float32 values, counting bytes read + written."""
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), repeats)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 4 / ms / 1e6


def graph_time_ms(fn, repeats: int, calls: int = 20) -> float:
    """Median GPU time of one call with the host out of the way: `calls` calls are captured into a
    CUDA graph and replayed, so Python and launch overhead cannot leave the GPU idle between them."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()  # warm up on the capture stream (lazy initialisation must not be captured)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return time_ms(graph.replay, repeats) / calls


def gpu_clock_state() -> str:
    """The GPU's SM clock, temperature, power and active clock-limit reasons, read by nvidia-smi right
    after a timing: rows bound by instruction issue move with the SM clock, so a figure that differs
    between runs can be told apart from a code change. Empty where nvidia-smi cannot be run."""
    query = "clocks.sm,temperature.gpu,power.draw,clocks_event_reasons.active"
    try:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        out = subprocess.run(["nvidia-smi", f"--id={index}", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""
