#!/usr/bin/env python3
"""A stand-in for Agones's SDK server (the sidecar a game server talks to on localhost), built
from the SDK's own proto files, for the tests: the official local SDK server is a prebuilt
download, which cannot be fetched here.

    fake_sdk.py PROTO_DIR CALLS_FILE [--counter NAME=CAPACITY ...]

Compiles `PROTO_DIR/sdk/sdk.proto` and `PROTO_DIR/sdk/beta/beta.proto` (the `proto/` folder
of the `agones` crate) with grpcio-tools, serves them on a free localhost port, prints the
port on stdout, and appends every call to CALLS_FILE as one JSON line (`call`, `t` seconds
since the start, and the call's fields). It keeps a GameServer as the real sidecar would:
`Ready` makes it `Ready`, `Allocate` `Allocated`, `Shutdown` `Shutdown`; labels and
annotations are stored; counters declared with `--counter` take `UpdateCounter`s within their
capacity (others are refused, as Agones refuses undeclared counters). A line `allocate
KEY=VALUE ...` written to its standard input allocates the GameServer with those annotations,
as a `GameServerAllocation` would; `WatchGameServer` streams every change.
"""
import argparse
import importlib
import json
import os
import sys
import tempfile
import threading
import time
from concurrent import futures


def compile_protos(proto_dir, out):
    from grpc_tools import protoc
    import grpc_tools
    includes = [
        os.path.join(proto_dir, "googleapis"),
        os.path.join(proto_dir, "grpc-gateway"),
        os.path.join(proto_dir, "sdk"),
        os.path.join(proto_dir, "sdk", "beta"),
        os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"),
    ]
    deps = [
        "google/api/annotations.proto", "google/api/http.proto", "google/api/client.proto",
        "google/api/field_behavior.proto", "google/api/resource.proto",
        "google/api/launch_stage.proto",
        "protoc-gen-openapiv2/options/annotations.proto",
        "protoc-gen-openapiv2/options/openapiv2.proto",
    ]
    for proto in deps + ["sdk.proto", "beta.proto"]:
        args = ["protoc"] + [f"-I{i}" for i in includes] + [
            f"--python_out={out}", f"--grpc_python_out={out}", proto]
        if protoc.main(args) != 0:
            sys.exit(f"fake_sdk: cannot compile {proto} from {proto_dir}")
    sys.path.insert(0, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("proto_dir")
    ap.add_argument("calls")
    ap.add_argument("--counter", action="append", default=[], help="NAME=CAPACITY")
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="fake-agones-sdk-")
    compile_protos(os.path.abspath(args.proto_dir), out)
    import grpc
    sdk_pb2 = importlib.import_module("sdk_pb2")
    sdk_grpc = importlib.import_module("sdk_pb2_grpc")
    beta_pb2 = importlib.import_module("beta_pb2")
    beta_grpc = importlib.import_module("beta_pb2_grpc")

    start = time.monotonic()
    lock = threading.Condition()
    calls = open(args.calls, "a", buffering=1)
    state = {"state": "Scheduled", "labels": {}, "annotations": {}, "version": 0}
    counters = {}
    for c in args.counter:
        name, _, cap = c.partition("=")
        counters[name] = {"count": 0, "capacity": int(cap)}

    def record(call, **fields):
        with lock:
            calls.write(json.dumps({"call": call, "t": round(time.monotonic() - start, 3), **fields}) + "\n")

    def change(**kw):
        with lock:
            state.update(kw)
            state["version"] += 1
            lock.notify_all()

    def keep(call, where, request):
        record(call, key=request.key, value=request.value)
        with lock:
            state[where][request.key] = request.value
        change()
        return sdk_pb2.Empty()

    def game_server():
        gs = sdk_pb2.GameServer()
        gs.object_meta.name = "apexsim-test"
        gs.object_meta.namespace = "default"
        for k, v in state["labels"].items():
            gs.object_meta.labels[k] = v
        for k, v in state["annotations"].items():
            gs.object_meta.annotations[k] = v
        gs.status.state = state["state"]
        gs.status.address = "127.0.0.1"
        for name, c in counters.items():
            gs.status.counters[name].count = c["count"]
            gs.status.counters[name].capacity = c["capacity"]
        return gs

    class Sdk(sdk_grpc.SDKServicer):
        def Ready(self, request, context):
            record("Ready")
            change(state="Ready")
            return sdk_pb2.Empty()

        def Allocate(self, request, context):
            record("Allocate")
            change(state="Allocated")
            return sdk_pb2.Empty()

        def Shutdown(self, request, context):
            record("Shutdown")
            change(state="Shutdown")
            return sdk_pb2.Empty()

        def Health(self, request_iterator, context):
            for _ in request_iterator:
                record("Health")
            return sdk_pb2.Empty()

        def GetGameServer(self, request, context):
            with lock:
                return game_server()

        def WatchGameServer(self, request, context):
            record("WatchGameServer")
            seen = -1
            while context.is_active():
                with lock:
                    if state["version"] == seen:
                        lock.wait(0.5)
                        continue
                    seen = state["version"]
                    gs = game_server()
                yield gs

        def SetLabel(self, request, context):
            return keep("SetLabel", "labels", request)

        def SetAnnotation(self, request, context):
            return keep("SetAnnotation", "annotations", request)

        def Reserve(self, request, context):
            record("Reserve", seconds=request.seconds)
            change(state="Reserved")
            return sdk_pb2.Empty()

    class Beta(beta_grpc.SDKServicer):
        def GetCounter(self, request, context):
            c = counters.get(request.name)
            if c is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"counter not found: {request.name}")
            return beta_pb2.Counter(name=request.name, count=c["count"], capacity=c["capacity"])

        def UpdateCounter(self, request, context):
            u = request.counterUpdateRequest
            c = counters.get(u.name)
            if c is None:
                record("UpdateCounter", name=u.name, refused="not declared")
                context.abort(grpc.StatusCode.NOT_FOUND, f"counter not found: {u.name}")
            count = u.count.value if u.HasField("count") else c["count"] + u.countDiff
            if count < 0 or (c["capacity"] and count > c["capacity"]):
                record("UpdateCounter", name=u.name, count=count, refused="out of range")
                context.abort(grpc.StatusCode.OUT_OF_RANGE, f"count {count} out of range")
            c["count"] = count
            record("UpdateCounter", name=u.name, count=count)
            change()
            return beta_pb2.Counter(name=u.name, count=count, capacity=c["capacity"])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    sdk_grpc.add_SDKServicer_to_server(Sdk(), server)
    beta_grpc.add_SDKServicer_to_server(Beta(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    for line in sys.stdin:
        words = line.split()
        if words and words[0] == "allocate":
            annotations = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            record("GameServerAllocation", annotations=annotations)
            with lock:
                state["annotations"].update(annotations)
            change(state="Allocated")
    server.stop(1)


if __name__ == "__main__":
    main()
