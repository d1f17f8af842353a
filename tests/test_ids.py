"""Hot-path event ids (sentinel.ids): valid random UUIDs (version 4: the correlation id alerts
carry), distinct, and a forked child does not repeat its parent's sequence."""

from __future__ import annotations

import os
import uuid

from sentinel.detect.flows import flow_event
from sentinel.detect.packets import Flow
from sentinel.ids import new_id


def test_ids_are_distinct_version_4_uuids():
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:500]:
        u = uuid.UUID(text)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and str(u) == text


def test_a_forked_child_draws_other_ids_than_its_parent():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(write, ",".join(new_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split(",")
    os.close(read)
    parent = [new_id() for _ in range(5)]
    assert len(child) == 5 and not set(child) & set(parent)


def test_kernel_sightings_get_such_ids():
    flow = Flow(family=4, protocol="udp", src_ip="198.18.0.10", dst_ip="198.18.5.5", dst_port=9)
    event = flow_event(flow, "blocked", 0.0)
    assert uuid.UUID(event.id).version == 4
