"""service.monitor: batches reach a PULL socket; with no daemon, observe never blocks and counts drops."""

from __future__ import annotations

import time

import pytest
import torch
import zmq

from service.monitor import Monitor
from service.protocol import decode_samples


def test_samples_arrive_in_batches() -> None:
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.linger = 0
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    m = Monitor(
        "dep", f"tcp://127.0.0.1:{port}", budget_s=0.01, batch_size=100, flush_interval_s=60
    )
    with m.track():
        time.sleep(0.002)
    for _ in range(249):
        m.observe(0.001)
    m.close()
    batches = []
    while pull.poll(2000):
        batches.append(decode_samples(pull.recv(), 1 << 20))
        if sum(len(b.samples) for b in batches) == 250:
            break
    pull.close()
    assert [len(b.samples) for b in batches] == [100, 100, 50]
    assert batches[0].samples[0] >= 0.002 and batches[0].budget_s == 0.01
    assert m.sent == 250 and m.dropped == 0


def test_never_blocks_without_a_daemon() -> None:
    # Nothing listens on this port: messages queue up to the high-water mark, then are dropped.
    probe = zmq.Context.instance().socket(zmq.PULL)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close()
    m = Monitor("dep", f"tcp://127.0.0.1:{port}", batch_size=10, hwm=5)
    start = time.perf_counter()
    for _ in range(100_000):
        m.observe(0.001)
    elapsed = time.perf_counter() - start
    m.close()
    assert m.sent + m.dropped == 100_000
    # Only a bounded number of batches is queued (libzmq's pipe limits are approximate).
    assert m.sent <= 1000
    assert m.dropped >= 99_000
    assert elapsed < 5.0, f"observe took {elapsed / 1e5 * 1e6:.1f} us per call"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPU")
def test_gpu_timing_without_a_gpu_says_so() -> None:
    m = Monitor("dep", "tcp://127.0.0.1:1")
    said = r"track\(cuda=True\)\) needs a CUDA device"
    with pytest.raises(RuntimeError, match=said), m.track(cuda=True):
        raise AssertionError("the body must not run")
    m.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_timing_reads_the_gpus_time_without_waiting() -> None:
    """A 20 ms GPU kernel (torch.cuda._sleep) queued in a tracked block: the host leaves the
    block at once, track() alone would report that host time, track(cuda=True) reports the
    kernel's time once the GPU has run it, at the next call; close() waits for the rest."""
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.linger = 0
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    m = Monitor("gpu", f"tcp://127.0.0.1:{port}", batch_size=100, flush_interval_s=60)
    torch.cuda.synchronize()
    cycles = _sleep_cycles(0.02)
    with m.track("host"):
        torch.cuda._sleep(cycles)
    host_s = time.perf_counter()
    with m.track(cuda=True):
        torch.cuda._sleep(cycles)
    left_s = time.perf_counter() - host_s
    m.close()
    samples = {}
    while pull.poll(2000):
        batch = decode_samples(pull.recv(), 1 << 20)
        samples[batch.deployment] = batch.samples
        if len(samples) == 2:
            break
    pull.close()
    assert samples["host"][0] < 0.005 and left_s < 0.005  # launches only: nothing waited
    assert 0.015 <= samples["gpu"][0] <= 0.05


def _sleep_cycles(seconds: float) -> int:
    """GPU clock cycles that torch.cuda._sleep spins for about ``seconds``."""
    cycles = 10_000_000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return int(cycles * seconds / (start.elapsed_time(end) / 1e3))
