"""service.monitor: batches reach a PULL socket; with no daemon, observe never blocks and counts drops."""

from __future__ import annotations

import time

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
