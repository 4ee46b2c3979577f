"""etcd's member list through its JSON gateway (infra.deploy.etcd) against a stand-in for the gateway:
what is asked of which member, in which order, and what is said when etcd refuses. The real etcd:
tests/remote/test_replicated_hosts.py."""

from __future__ import annotations

import io
import urllib.error

import pytest

from infra.deploy import etcd
from infra.deploy.replicated import ClusterNotReady

PEER = "http://{}:2380"


class Gateway:
    """Members by id -> peer address; ``down`` hosts refuse connections; ``refuse`` answers the next
    change (remove, add) with etcd's HTTP error; ``calls`` records (address, verb, body)."""

    def __init__(self, *addresses):
        self.members = {str(100 + n): a for n, a in enumerate(addresses)}
        self.down: set[str] = set()
        self.refuse: list[str] = []
        self.calls: list[tuple] = []

    def __call__(self, address, verb, body):
        self.calls.append((address, verb, body))
        if address in self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        if self.refuse and verb != "list":
            raise urllib.error.HTTPError("url", 503, "Service Unavailable", {},
                                         io.BytesIO(b'{"code":14,"message":"%s"}' % self.refuse.pop().encode()))
        if verb == "remove":
            del self.members[body["ID"]]
        if verb == "add":
            self.members[str(200 + len(self.calls))] = body["peerURLs"][0].split("//")[1].split(":")[0]
        return {"members": [{"ID": i, "peerURLs": [PEER.format(a)]} for i, a in self.members.items()]}


@pytest.fixture
def gateway(monkeypatch):
    monkeypatch.setattr(etcd.time, "sleep", lambda s: None)
    return Gateway


def test_the_members_are_listed_by_the_first_host_that_answers(monkeypatch, gateway):
    given = gateway("10.9.0.2", "10.9.0.3", "10.9.0.4")
    given.down = {"10.9.0.2"}
    monkeypatch.setattr(etcd, "_call", given)
    via, members = etcd.listed(["10.9.0.2", "10.9.0.3", "10.9.0.4"])
    assert via == "10.9.0.3"
    assert members == (etcd.EtcdMember("100", "10.9.0.2"), etcd.EtcdMember("101", "10.9.0.3"),
                       etcd.EtcdMember("102", "10.9.0.4"))
    assert [c[:2] for c in given.calls] == [("10.9.0.2", "list"), ("10.9.0.3", "list")]
    given.down = {"10.9.0.2", "10.9.0.3", "10.9.0.4"}
    assert etcd.listed(["10.9.0.2", "10.9.0.3", "10.9.0.4"]) == (None, ())


def test_a_move_removes_the_member_that_left_before_it_adds_the_one_taking_its_place(monkeypatch, gateway):
    """Removed first, etcd's majority stays two (the members that stay); added first, it would be three of four."""
    given = gateway("10.9.0.2", "10.9.0.3", "10.9.0.4")
    given.down = {"10.9.0.4"}  # its servers were stopped
    monkeypatch.setattr(etcd, "_call", given)
    done = etcd.move(["10.9.0.2", "10.9.0.3", "10.9.0.5"], 30)
    assert done == ["etcd: the member on 10.9.0.4 removed",
                    "etcd: a member on 10.9.0.5 added (its container starts it)"]
    changes = [(a, verb, body) for a, verb, body in given.calls if verb != "list"]
    assert changes == [("10.9.0.2", "remove", {"ID": "102"}),
                       ("10.9.0.2", "add", {"peerURLs": ["http://10.9.0.5:2380"]})]
    assert sorted(given.members.values()) == ["10.9.0.2", "10.9.0.3", "10.9.0.5"]
    given.calls.clear()
    assert etcd.move(["10.9.0.2", "10.9.0.3", "10.9.0.5"], 30) == [], "run again: nothing left to do"
    assert [verb for _, verb, _ in given.calls] == ["list"]


def test_a_refused_step_is_retried_and_a_move_that_stopped_half_way_goes_on(monkeypatch, gateway):
    given = gateway("10.9.0.2", "10.9.0.3")  # removed before, not added yet
    given.refuse = ["etcdserver: leader changed"]
    monkeypatch.setattr(etcd, "_call", given)
    assert etcd.move(["10.9.0.2", "10.9.0.3", "10.9.0.5"], 30) == [
        "etcd: a member on 10.9.0.5 added (its container starts it)"]
    assert sorted(given.members.values()) == ["10.9.0.2", "10.9.0.3", "10.9.0.5"]


def test_a_move_etcd_keeps_refusing_says_etcds_words_at_the_deadline(monkeypatch, gateway):
    given = gateway("10.9.0.2", "10.9.0.3", "10.9.0.4")
    given.refuse = ["etcdserver: re-configuration failed due to not enough started members"] * 1000
    monkeypatch.setattr(etcd, "_call", given)
    clock = iter(range(0, 10000, 10))
    monkeypatch.setattr(etcd.time, "monotonic", lambda: next(clock))
    with pytest.raises(ClusterNotReady) as raised:
        etcd.move(["10.9.0.2", "10.9.0.3", "10.9.0.5"], 30)
    assert str(raised.value) == (
        "etcd's members were not moved to 10.9.0.2, 10.9.0.3, 10.9.0.5 within 30 s: etcd said: etcdserver: "
        "re-configuration failed due to not enough started members; run `up` again")
    assert sorted(given.members.values()) == ["10.9.0.2", "10.9.0.3", "10.9.0.4"]


def test_a_move_with_no_etcd_answering_says_so(monkeypatch, gateway):
    given = gateway("10.9.0.2")
    given.down = {"10.9.0.2", "10.9.0.3", "10.9.0.5"}
    monkeypatch.setattr(etcd, "_call", given)
    clock = iter(range(0, 10000, 10))
    monkeypatch.setattr(etcd.time, "monotonic", lambda: next(clock))
    with pytest.raises(ClusterNotReady, match="within 30 s: no etcd member on 10.9.0.2, 10.9.0.3, 10.9.0.5 "
                                              "answers; run `up` again"):
        etcd.move(["10.9.0.2", "10.9.0.3", "10.9.0.5"], 30)


def test_the_gateway_is_asked_with_etcds_json_on_its_client_port_and_its_error_is_said(monkeypatch):
    """A stand-in server on loopback, as etcd's gateway answers: POST /v3/cluster/member/<verb>, JSON both ways."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked = []

    class Gateway(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append((self.path, self.headers["Content-Type"], body))
            if self.path.endswith("/remove"):
                reply, code = {"error": "etcdserver: member not found", "code": 5,
                               "message": "etcdserver: member not found"}, 404
            else:
                reply, code = {"header": {}, "members": [
                    {"ID": "15985099378392235387", "name": "m127_0_0_1", "peerURLs": ["http://127.0.0.1:2380"]},
                    {"ID": "834402285226417173", "peerURLs": ["http://10.9.0.5:2380"]}]}, 200
            data = json.dumps(reply).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(etcd, "ETCD_CLIENT_PORT", server.server_address[1])
    monkeypatch.setattr(etcd.time, "sleep", lambda s: None)
    try:
        assert etcd.listed(["127.0.0.1"]) == ("127.0.0.1", (etcd.EtcdMember("15985099378392235387", "127.0.0.1"),
                                                            etcd.EtcdMember("834402285226417173", "10.9.0.5")))
        assert asked == [("/v3/cluster/member/list", "application/json", {})]
        clock = iter(range(0, 10000, 10))
        monkeypatch.setattr(etcd.time, "monotonic", lambda: next(clock))
        with pytest.raises(ClusterNotReady) as raised:
            etcd.move(["127.0.0.1"], 15)
        assert str(raised.value) == ("etcd's members were not moved to 127.0.0.1 within 15 s: etcd said: etcdserver: "
                                     "member not found; run `up` again")
        assert asked[2] == ("/v3/cluster/member/remove", "application/json", {"ID": "834402285226417173"})
    finally:
        server.shutdown()
        server.server_close()


def test_forgetting_a_host_removes_its_member_only_when_etcd_lists_it(monkeypatch, gateway):
    given = gateway("10.9.0.2", "10.9.0.3", "10.9.0.5")
    given.down = {"10.9.0.5"}
    monkeypatch.setattr(etcd, "_call", given)
    assert etcd.forget("10.9.0.5", ["10.9.0.2", "10.9.0.3", "10.9.0.4"], 30) == [
        "etcd: the member on 10.9.0.5 removed"]
    assert sorted(given.members.values()) == ["10.9.0.2", "10.9.0.3"]
    given.calls.clear()
    assert etcd.forget("10.9.0.5", ["10.9.0.2", "10.9.0.3", "10.9.0.4"], 30) == []
    assert [verb for _, verb, _ in given.calls] == ["list"], "nothing removed or added"
    assert etcd.forget("10.9.0.4", ["10.9.0.2", "10.9.0.3", "10.9.0.4"], 30) == [], "a host etcd never had"
