"""A host of a stateful instance (hybrid_redis) takes the entries waiting in the instance's stream
together, up to :data:`~d4p_hpc.mappings.redis.broker.OWNED_ENTRIES`, runs their items in stream
order and acknowledges them in one commit: with many instances, a unit of shared tasks writes a
small entry to each, and one commit per entry made Redis's cost per item grow with the instances
(``benchmarks/README.md``, "Scale"). In a real redis-server, through the broker and the COMMIT script."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest

from d4p_hpc.mappings.redis.broker import GROUP, OWNED_ENTRIES, RedisBroker
from d4p_hpc.mappings.redis.keys import COMMIT, Keys
from d4p_hpc.mappings.redis.server import RedisServer
from d4p_hpc.mappings.dynamic.tasks import SHARED_QUEUE
from helpers.dynamic import needs_redis

pytest.importorskip("redis")

GID = 5
ENTRIES = OWNED_ENTRIES + 8


@needs_redis
def test_an_owned_instances_waiting_entries_are_one_unit_and_one_commit():
    with RedisServer() as conn:
        client = conn.client()
        keys = Keys("owned")
        client.set(keys.state, "RUNNING")
        client.set(keys.topo, json.dumps([{"i": 0, "root": True, "up": []},
                                          {"i": 1, "root": False, "up": [0], "gids": [GID]}]))
        stream = keys.prefix + keys.stream(GID)
        for name in (stream, keys.tasks, keys.prefix + keys.stream(-2, 1)):
            client.xgroup_create(name, GROUP, id="0", mkstream=True)
        for k in range(ENTRIES):  # entries of two items, as units of shared tasks write them
            client.xadd(stream, {"b": pickle.dumps([(GID, "input", 2 * k), (GID, "input", 2 * k + 1)], protocol=5)})
        client.xadd(stream, {"eos": 1})
        broker = RedisBroker(conn, keys, 1, 2, 10.0)
        broker.runtime = SimpleNamespace(owned={GID: None}, node_of={GID: SimpleNamespace(index=1)},
                                         sink=SimpleNamespace(sizes=dict))
        client.script_load(COMMIT)  # so that no EVALSHA fails (NOSCRIPT) and is counted
        evals = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

        first = broker.take(parked=False)
        assert [(u.gid, u.eos, len(u.ref)) for u in first] == [(GID, False, OWNED_ENTRIES)]
        assert [data for _gid, _input, data in first[0].items] == list(range(2 * OWNED_ENTRIES))
        broker.commit(first[0], {}, {}, 0.0)
        assert client.xpending(stream, GROUP)["pending"] == 0 and client.xlen(stream) == ENTRIES - OWNED_ENTRIES + 1
        assert int(client.hget(keys.pending, f"g{GID}")) == -2 * OWNED_ENTRIES  # every item of the 32 entries

        second = broker.take(parked=False)
        assert [(u.gid, u.eos) for u in second] == [(GID, False), (GID, True)]  # the end of stream last, alone
        assert [data for _gid, _input, data in second[0].items] == list(range(2 * OWNED_ENTRIES, 2 * ENTRIES))
        for unit in second:
            broker.commit(unit, {}, {}, 0.0)
        assert client.xlen(stream) == 0 and client.xpending(stream, GROUP)["pending"] == 0
        stats = client.info("commandstats")
        calls = stats["cmdstat_evalsha"]["calls"] - evals - stats["cmdstat_evalsha"].get("failed_calls", 0)
        assert calls == 3, f"{ENTRIES} entries and an end of stream took {calls} commits"
        assert SHARED_QUEUE not in {u.gid for u in first + second}
        client.close()
